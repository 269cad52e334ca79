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
    refine: Optional[str] = typer.Option(
        None, "--refine", help="hyperstyle: start from HyperStyle's W-encoder and refine the reconstruction with "
        "per-image generator weight offsets (weight_offsets.npz; edits keep them). Slower, much closer to the photo."),
    refine_steps: Optional[int] = typer.Option(None, "--refine-steps", help="With --refine: hypernetwork passes (default 5)."),
    refiner: Optional[Path] = typer.Option(None, "--refiner", help="With --refine: the HyperStyle checkpoint file "
                                           "(default: the domain's in the weights folder)."),
    w_encoder: Optional[Path] = typer.Option(None, "--w-encoder", help="With --refine: the W-encoder file it starts from."),
    offsets_precision: str = typer.Option("fp16", "--offsets-precision", help="With --refine: fp16 (half the size) or fp32."),
):
    """Invert photos into StyleGAN's latent space with the e4e encoder (or refine with HyperStyle)."""
    from ..editing import check_delta_scale
    from ..jobs.invert import InvertOptions, invert_inputs
    from ..model import ModelOptions, load_model

    options.check_domain(domain)
    options.check_batch_size(batch_size)
    if face == "all":
        raise E4EError("--face all is for `e4e align`; invert takes one face per photo (largest or N)")
    opts = InvertOptions(out=out, align=not no_align, batch_size=batch_size, delta_scale=delta_scale,
                         overwrite=overwrite, face=face, report=report, refine_steps=refine_steps,
                         offsets_precision=offsets_precision)
    check_delta_scale(delta_scale)
    if refine is not None or refine_steps is not None or refiner is not None or w_encoder is not None:
        model = _refiner(refine, refine_steps, refiner, w_encoder, offsets_precision, domain=domain,
                         checkpoint=checkpoint, delta_scale=delta_scale, report=report, device=device,
                         precision=precision, weights_dir=weights_dir)
    else:
        model = load_model(ModelOptions(domain=domain, checkpoint=checkpoint, device=device, precision=precision,
                                        weights_dir=weights_dir))
    results = invert_inputs(inputs, model, opts)
    if paste_back:
        from ..jobs.pasteback import paste_back_inversions

        paste_back_inversions(results, color_match=color_match, mask=options.check_mask(paste_mask))
    options.print_results(results, out, "inverted")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


def _refiner(refine, steps, refiner, w_encoder, offsets_precision, *, domain, checkpoint, delta_scale, report,
             device, precision, weights_dir):
    """The HyperStyle model `--refine` asks for, after checking the options that go with it."""
    from ..refine import OFFSET_PRECISIONS, load_refiner

    if refine != "hyperstyle":
        raise E4EError("--refine-steps, --refiner and --w-encoder need --refine hyperstyle" if refine is None
                       else f"unknown --refine {refine!r}: the one refinement is hyperstyle")
    if steps is not None and not 0 <= steps <= 50:
        raise E4EError(f"--refine-steps must be from 0 to 50, got {steps}")
    if offsets_precision not in OFFSET_PRECISIONS:
        raise E4EError(f"--offsets-precision must be one of {', '.join(OFFSET_PRECISIONS)}, got {offsets_precision!r}")
    if checkpoint is not None:
        raise E4EError("--checkpoint is an e4e checkpoint; HyperStyle uses its own files: --refiner and --w-encoder")
    if delta_scale != 1.0 or report:
        raise E4EError("--delta-scale and --report are about e4e's per-layer deltas; a HyperStyle code has none")
    return load_refiner(domain=domain, refiner=refiner, w_encoder=w_encoder, device=device, precision=precision,
                        weights_dir=weights_dir)
