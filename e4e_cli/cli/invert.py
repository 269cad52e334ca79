"""`e4e invert`: a thin wrapper over `jobs.invert` (heavy modules are imported inside, so `e4e --help` is fast)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import USAGE, E4EError
from . import options


@options.interruptible(options.summary_resume())
def invert_command(
    inputs: List[Path] = typer.Argument(..., help="Photos or folders of photos (a folder's own photos: it is not "
                                        "searched recursively; `e4e invert-dataset` is)."),
    domain: Optional[str] = options.domain_option(),
    checkpoint: Optional[Path] = options.checkpoint_option(),
    out: Path = typer.Option(Path("e4e-out"), "--out", help="Output folder."),
    no_align: bool = typer.Option(False, "--no-align", help="Do not align faces (ffhq photos are aligned by default)."),
    face: str = typer.Option("largest", "--face", help="Which face to invert when a photo has several: largest or N "
                             "(faces only: ffhq without --no-align)."),
    device: str = options.device_option(),
    precision: str = options.precision_option(),
    batch_size: Optional[int] = options.batch_option(),
    delta_scale: float = typer.Option(1.0, "--delta-scale", help="0 = pure W (most editable), 1 = e4e, >1 exaggerates the per-layer deltas."),
    report: bool = typer.Option(False, "--report", help="Also write per-layer delta norms and distances from W (JSON + chart)."),
    paste_back: bool = typer.Option(False, "--paste-back", help="Also paste the reconstruction back into the original photo."),
    color_match: bool = typer.Option(False, "--color-match", help="With --paste-back: match the face's colour to the photo along the seam."),
    paste_mask: Optional[str] = typer.Option(None, "--paste-mask", help="With --paste-back: hull (landmark outline, "
                                             "the default) or ellipse."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo inputs that already have results (a rerun without "
                                   "it skips results made the same way and refuses others)."),
    weights_dir: Optional[Path] = options.weights_dir_option(),
    refine: Optional[str] = options.refine_option(
        "hyperstyle: start from HyperStyle's W-encoder and refine the reconstruction with per-image generator "
        "weight offsets (weight_offsets.npz; edits keep them). Slower, much closer to the photo. "
        "pti: pivotal tuning, the pivot code (e4e's, or --pivot w) kept and the generator tuned to the photo (tuned_generator.npz; "
        "edits keep it). Much slower, closest."),
    refine_steps: Optional[int] = options.refine_steps_option(),
    refiner: Optional[Path] = options.refiner_option(),
    w_encoder: Optional[Path] = options.w_encoder_option(),
    offsets_precision: str = options.offsets_precision_option(),
    pti_steps: Optional[int] = options.pti_steps_option(),
    pti_lr: Optional[float] = options.pti_lr_option(),
    lpips_stop: Optional[float] = options.lpips_stop_option(),
    pivot: Optional[str] = options.pivot_option(),
    pivot_steps: Optional[int] = options.pivot_steps_option(),
    pti_resolution: Optional[int] = options.pti_resolution_option(),
    locality: bool = options.locality_option(),
):
    """Invert photos into StyleGAN's latent space with the e4e encoder (or refine with HyperStyle or PTI)."""
    from ..domains import DEFAULT, aligns_faces
    from ..jobs.ahead import AlignAhead

    options.check_domain(domain)
    options.check_batch_size(batch_size)
    options.check_paste_options(paste_back, color_match=color_match, paste_mask=paste_mask)
    if face == "all":
        raise E4EError("--face all is for `e4e align`; invert takes one face per photo (largest or N)")
    # the first photo is aligned while torch and the checkpoint load, unless --domain says that
    # it is no face (a checkpoint of another domain, given without --domain, wastes that work)
    ahead = AlignAhead(inputs, out=out, face=face, overwrite=overwrite) if not no_align and aligns_faces(domain or DEFAULT) else None

    from ..editing import check_delta_scale
    from ..jobs.invert import InvertOptions, invert_inputs
    from ..jobs.outputs import check_domain_fits
    from ..model import ModelOptions, load_model

    opts = InvertOptions(out=out, align=not no_align, batch_size=batch_size, delta_scale=delta_scale,
                         overwrite=overwrite, face=face, report=report, refine_steps=refine_steps,
                         offsets_precision=offsets_precision)
    check_delta_scale(delta_scale)
    pti = options.check_pti(refine, pti_steps, pti_lr, lpips_stop, pivot, locality, pivot_steps, pti_resolution)
    if pti is not None:
        model = _pti(pti, refine_steps, refiner, w_encoder, offsets_precision, domain=domain, checkpoint=checkpoint,
                     delta_scale=delta_scale, report=report, device=device, precision=precision,
                     weights_dir=weights_dir)
    elif options.check_refine(refine, refine_steps, refiner, w_encoder):
        model = _refiner(refiner, w_encoder, offsets_precision, domain=domain,
                         checkpoint=checkpoint, delta_scale=delta_scale, report=report, device=device,
                         precision=precision, weights_dir=weights_dir)
    else:
        model = load_model(ModelOptions(domain=domain, checkpoint=checkpoint, device=device, precision=precision,
                                        weights_dir=weights_dir))
        check_domain_fits(domain, model)
    _check_face_options(model.domain, no_align=no_align, face=face, paste_back=paste_back)
    results = invert_inputs(inputs, model, opts, ahead=ahead)
    if paste_back:
        from ..jobs.pasteback import paste_back_inversions

        paste_back_inversions(results, color_match=color_match, mask=paste_mask or "hull")
    options.print_results(results, out, "inverted")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


def _check_face_options(domain: str, *, no_align: bool, face: str, paste_back: bool) -> None:
    """--face and --paste-back are about an aligned face: with --no-align or a domain whose photos
    are inverted whole they are a usage error, not silently ignored."""
    from ..domains import aligns_faces

    why = "with --no-align" if no_align else None if aligns_faces(domain) else f"{domain} photos are inverted whole"
    if why is None:
        return
    if face != "largest":
        raise E4EError(f"--face {face} picks a face to align, but nothing is aligned ({why})", exit_code=USAGE)
    if paste_back:
        raise E4EError(f"--paste-back puts an aligned face back into its photo, but nothing is aligned ({why})",
                       exit_code=USAGE)


def _refiner(refiner, w_encoder, offsets_precision, *, domain, checkpoint, delta_scale, report,
             device, precision, weights_dir):
    """The HyperStyle model `--refine` asks for, after checking the invert options that go with it."""
    from ..refine import check_offsets_precision, load_refiner
    from ..weights.locate import refiner_files

    check_offsets_precision(offsets_precision)
    if checkpoint is not None:
        raise E4EError("--checkpoint is an e4e checkpoint; HyperStyle uses its own files: --refiner and --w-encoder")
    if delta_scale != 1.0 or report:
        raise E4EError("--delta-scale and --report are about e4e's per-layer deltas; a HyperStyle code has none",
                       exit_code=USAGE)
    refiner, w_encoder = refiner_files(domain, refiner, w_encoder, weights_dir)
    return load_refiner(domain=domain, refiner=refiner, w_encoder=w_encoder, device=device, precision=precision,
                        weights_dir=weights_dir)


def _pti(settings, refine_steps, refiner, w_encoder, offsets_precision, *, domain, checkpoint, delta_scale, report,
         device, precision, weights_dir):
    """The pti.PTI model `--refine pti` asks for (the e4e checkpoint and the LPIPS weights, exit 3
    naming `e4e download-weights lpips` when they are missing), after checking its options."""
    from ..jobs.outputs import check_domain_fits
    from ..model import ModelOptions, load_model
    from ..pti import PTI
    from ..train.lossnets import load_lpips

    if refine_steps is not None or refiner is not None or w_encoder is not None:
        raise E4EError("--refine-steps, --refiner and --w-encoder are HyperStyle's; --refine pti takes "
                       "--pti-steps, --pti-lr, --lpips-stop, --pivot and --locality", exit_code=USAGE)
    if delta_scale != 1.0 or report:
        raise E4EError("--delta-scale and --report are not supported with --refine pti (its pivot is stored as it is tuned around)",
                       exit_code=USAGE)
    settings.precision = offsets_precision
    settings.check()
    lpips = load_lpips(weights_dir=weights_dir)  # first: missing weights are said before the checkpoint loads
    model = load_model(ModelOptions(domain=domain, checkpoint=checkpoint, device=device, precision=precision,
                                    weights_dir=weights_dir))
    check_domain_fits(domain, model)
    return PTI(model, lpips, settings)
