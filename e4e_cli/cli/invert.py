"""`e4e invert` and `e4e edit`: thin wrappers over `pipeline` and `editing`.

Heavy modules (torch, numpy, PIL) are imported inside the functions so `e4e --help` is fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import E4EError

DOMAINS = ("ffhq", "cars", "horse", "church")


DOMAIN_HELP = "ffhq, cars, horse or church (default: what --checkpoint records, else ffhq; an explicit one wins)."


def _check_domain(domain: Optional[str]) -> Optional[str]:
    """A known domain, or None (not given)."""
    if domain is not None and domain not in DOMAINS:
        raise E4EError(f"unknown domain {domain!r}: choose from {', '.join(DOMAINS)}")
    return domain


def _check_mask(mask: str) -> str:
    if mask not in ("hull", "ellipse"):
        raise E4EError(f"--paste-mask must be hull or ellipse, got {mask!r}")
    return mask


def _err(msg: str) -> None:
    typer.echo(f"e4e: error: {msg}", err=True)


PRECISION_HELP = ("auto (default): bf16 where the CPU (AVX512-BF16/AMX) or GPU computes it natively, else fp32; "
                  "or fp32 (the reference's numbers), bf16, fp16.")
BATCH_HELP = "Images per forward pass (default: picked to keep memory low, e.g. 1 for 1024 fp32 on a CPU)."


def invert_command(
    inputs: List[Path] = typer.Argument(..., help="Photos or folders of photos."),
    domain: Optional[str] = typer.Option(None, "--domain", help=DOMAIN_HELP),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="e4e checkpoint (default: the domain's file in the weights folder)."),
    out: Path = typer.Option(Path("e4e-out"), "--out", help="Output folder."),
    no_align: bool = typer.Option(False, "--no-align", help="Do not align faces (ffhq photos are aligned by default)."),
    face: str = typer.Option("largest", "--face", help="Which face to invert when a photo has several: largest or N."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=BATCH_HELP),
    delta_scale: float = typer.Option(1.0, "--delta-scale", help="0 = pure W (most editable), 1 = e4e, >1 exaggerates the per-layer deltas."),
    report: bool = typer.Option(False, "--report", help="Also write per-layer delta norms and distances from W (JSON + chart)."),
    paste_back: bool = typer.Option(False, "--paste-back", help="Also paste the reconstruction back into the original photo."),
    color_match: bool = typer.Option(False, "--color-match", help="With --paste-back: match the face's colour to the photo along the seam."),
    paste_mask: str = typer.Option("hull", "--paste-mask", help="With --paste-back: hull (landmark outline) or ellipse."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo inputs that already have results."),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", envvar="E4E_WEIGHTS_DIR", help="Weights folder."),
):
    """Invert photos into StyleGAN's latent space with the e4e encoder."""
    from ..jobs import invert as pipeline

    _check_domain(domain)
    if face == "all":
        raise E4EError("--face all is for `e4e align`; invert takes one face per photo (largest or N)")
    opts = pipeline.InvertOptions(out=out, align=not no_align, batch_size=batch_size, delta_scale=delta_scale,
                                  overwrite=overwrite, face=face, report=report)
    pipeline.check_delta_scale(delta_scale)
    model = pipeline.load_model(pipeline.ModelOptions(domain=domain, checkpoint=checkpoint, device=device,
                                                      precision=precision, weights_dir=weights_dir))
    results = pipeline.invert_inputs(inputs, model, opts)
    if paste_back:
        from ..jobs.pasteback import paste_back_inversions

        paste_back_inversions(results, color_match=color_match, mask=_check_mask(paste_mask))
    _print_results(results, out, "inverted")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


def _print_results(results, out: Path, verb: str) -> None:
    for r in results:
        if r.status == "failed":
            _err(f"{r.input}: {r.error}")
    ok = sum(r.status == "ok" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    failed = sum(r.status == "failed" for r in results)
    parts = [f"{ok} {verb}"]
    if skipped:
        parts.append(f"{skipped} already done (use --overwrite to redo)")
    if failed:
        parts.append(f"{failed} failed")
    typer.echo(f"{', '.join(parts)}; results in {out}/ (summary.json lists every input)")


def edit_command(
    sources: Optional[List[Path]] = typer.Argument(None, help="Photos (inverted first), latents (.npy/.pt), or nothing: the last invert's latents."),
    direction: str = typer.Option(..., "--direction", "-d", help="Preset (see `e4e directions`), a direction file, ganspace:COMP:START:END or sefa:K[:LAYERS]."),
    strength: Optional[List[float]] = typer.Option(None, "--strength", "-s", help="Edit strength; may repeat (default: the preset's)."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="START:STOP:N: N strengths in one strip image and an animated GIF."),
    out: Path = typer.Option(Path("e4e-out/edits"), "--out", help="Output folder."),
    domain: Optional[str] = typer.Option(None, "--domain", help="ffhq, cars, horse or church (default: from the latent)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="e4e checkpoint (default: the domain's file in the weights folder)."),
    pca: Optional[Path] = typer.Option(None, "--pca", help="GANSpace PCA file for ganspace:COMP:START:END."),
    device: str = typer.Option("auto", "--device"),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=BATCH_HELP),
    delta_scale: Optional[float] = typer.Option(None, "--delta-scale", help="Re-weight the per-layer deltas before editing (0 = pure W)."),
    paste_back: bool = typer.Option(False, "--paste-back", help="Also paste each edited face back into the original photo."),
    color_match: bool = typer.Option(False, "--color-match", help="With --paste-back: match the face's colour to the photo along the seam."),
    paste_mask: str = typer.Option("hull", "--paste-mask", help="With --paste-back: hull (landmark outline) or ellipse."),
    invert_out: Path = typer.Option(Path("e4e-out"), "--invert-out", help="Where photos given as sources are inverted first."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", envvar="E4E_WEIGHTS_DIR"),
):
    """Edit inverted latents with InterFaceGAN, GANSpace or SeFa directions."""
    from ..jobs import invert as pipeline

    _check_domain(domain)
    strengths = [pipeline.editing_strength(s) for s in (strength or [])]
    sweep_values = pipeline.parse_sweep(sweep) if sweep else None
    if delta_scale is not None:
        pipeline.check_delta_scale(delta_scale)
    if batch_size is not None and batch_size < 1:
        raise E4EError(f"--batch-size must be >= 1, got {batch_size}")
    job = pipeline.EditJob(
        sources=list(sources or []), direction=direction, strengths=strengths, sweep=sweep_values, out=out,
        domain=domain, checkpoint=checkpoint, pca=pca, device=device, precision=precision, batch_size=batch_size,
        delta_scale=delta_scale, paste_back=paste_back, color_match=color_match, paste_mask=_check_mask(paste_mask),
        invert_out=invert_out, overwrite=overwrite, weights_dir=weights_dir,
    )
    results = pipeline.run_edit(job)
    for r in results:
        if r.status == "failed":
            _err(f"{r.input}: {r.error}")
    ok = [r for r in results if r.status == "ok"]
    skipped = [r for r in results if r.status == "skipped"]
    n_files = sum(len(r.files) for r in ok)
    msg = f"{len(ok)} source(s) edited with {direction}: {n_files} files in {out}/"
    if skipped:
        msg += f"; {len(skipped)} already done (use --overwrite to redo)"
    typer.echo(msg)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)
