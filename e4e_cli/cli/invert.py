"""`e4e invert`: a thin wrapper over `jobs.invert` (heavy modules are imported inside, so `e4e --help` is fast)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import E4EError
from . import options


def invert_command(
    inputs: List[Path] = typer.Argument(..., help="Photos or folders of photos."),
    domain: Optional[str] = options.domain_option(),
    checkpoint: Optional[Path] = options.checkpoint_option(),
    out: Path = typer.Option(Path("e4e-out"), "--out", help="Output folder."),
    no_align: bool = typer.Option(False, "--no-align", help="Do not align faces (ffhq photos are aligned by default)."),
    face: str = typer.Option("largest", "--face", help="Which face to invert when a photo has several: largest or N."),
    device: str = options.device_option(),
    precision: str = options.precision_option(),
    batch_size: Optional[int] = options.batch_option(),
    delta_scale: float = typer.Option(1.0, "--delta-scale", help="0 = pure W (most editable), 1 = e4e, >1 exaggerates the per-layer deltas."),
    report: bool = typer.Option(False, "--report", help="Also write per-layer delta norms and distances from W (JSON + chart)."),
    paste_back: bool = typer.Option(False, "--paste-back", help="Also paste the reconstruction back into the original photo."),
    color_match: bool = typer.Option(False, "--color-match", help="With --paste-back: match the face's colour to the photo along the seam."),
    paste_mask: str = typer.Option("hull", "--paste-mask", help="With --paste-back: hull (landmark outline) or ellipse."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo inputs that already have results."),
    weights_dir: Optional[Path] = options.weights_dir_option(),
    refine: Optional[str] = options.refine_option(
        "hyperstyle: start from HyperStyle's W-encoder and refine the reconstruction with per-image generator "
        "weight offsets (weight_offsets.npz; edits keep them). Slower, much closer to the photo."),
    refine_steps: Optional[int] = options.refine_steps_option(),
    refiner: Optional[Path] = options.refiner_option(),
    w_encoder: Optional[Path] = options.w_encoder_option(),
    offsets_precision: str = typer.Option("fp16", "--offsets-precision", help="With --refine: fp16 (half the size) or fp32."),
):
    """Invert photos into StyleGAN's latent space with the e4e encoder (or refine with HyperStyle)."""
    from ..domains import DEFAULT, aligns_faces
    from ..jobs.ahead import AlignAhead

    options.check_domain(domain)
    options.check_batch_size(batch_size)
    if face == "all":
        raise E4EError("--face all is for `e4e align`; invert takes one face per photo (largest or N)")
    # the first photo is aligned while torch and the checkpoint load, unless --domain says that
    # it is no face (a checkpoint of another domain, given without --domain, wastes that work)
    ahead = AlignAhead(inputs, out=out, face=face, overwrite=overwrite) if not no_align and aligns_faces(domain or DEFAULT) else None

    from ..editing import check_delta_scale
    from ..jobs.invert import InvertOptions, invert_inputs
    from ..model import ModelOptions, load_model

    opts = InvertOptions(out=out, align=not no_align, batch_size=batch_size, delta_scale=delta_scale,
                         overwrite=overwrite, face=face, report=report, refine_steps=refine_steps,
                         offsets_precision=offsets_precision)
    check_delta_scale(delta_scale)
    if options.check_refine(refine, refine_steps, refiner, w_encoder):
        model = _refiner(refiner, w_encoder, offsets_precision, domain=domain,
                         checkpoint=checkpoint, delta_scale=delta_scale, report=report, device=device,
                         precision=precision, weights_dir=weights_dir)
    else:
        model = load_model(ModelOptions(domain=domain, checkpoint=checkpoint, device=device, precision=precision,
                                        weights_dir=weights_dir))
    results = invert_inputs(inputs, model, opts, ahead=ahead)
    if paste_back:
        from ..jobs.pasteback import paste_back_inversions

        paste_back_inversions(results, color_match=color_match, mask=options.check_mask(paste_mask))
    options.print_results(results, out, "inverted")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


def _refiner(refiner, w_encoder, offsets_precision, *, domain, checkpoint, delta_scale, report,
             device, precision, weights_dir):
    """The HyperStyle model `--refine` asks for, after checking the invert options that go with it."""
    from ..refine import check_offsets_precision, load_refiner

    check_offsets_precision(offsets_precision)
    if checkpoint is not None:
        raise E4EError("--checkpoint is an e4e checkpoint; HyperStyle uses its own files: --refiner and --w-encoder")
    if delta_scale != 1.0 or report:
        raise E4EError("--delta-scale and --report are about e4e's per-layer deltas; a HyperStyle code has none")
    return load_refiner(domain=domain, refiner=refiner, w_encoder=w_encoder, device=device, precision=precision,
                        weights_dir=weights_dir)
