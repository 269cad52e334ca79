"""`e4e edit`: a thin wrapper over `jobs.edit` (heavy modules are imported inside, so `e4e --help` is fast)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import USAGE, E4EError
from . import options


def _resume_note(kwargs: dict) -> str:
    """What Ctrl-C leaves: a video's codes done so far (the same command resumes), or summary.json."""
    from .edit_video import video_resume_note

    return video_resume_note(kwargs) or options.summary_resume()(kwargs)


@options.interruptible(_resume_note)
def edit_command(
    sources: Optional[List[Path]] = typer.Argument(None, help="Photos (inverted first), latents (.npy/.pt), refined "
                                                   "latent files (.npz), invert result folders, folders of these (not "
                                                   "searched recursively), or nothing: the last invert's latents."),
    direction: Optional[str] = typer.Option(None, "--direction", "-d", help="Preset (see `e4e directions`), a direction file, NAME of one saved by `e4e directions fit`, ganspace:COMP:START:END or sefa:K[:LAYERS]; or --text."),
    text: Optional[str] = typer.Option(None, "--text", help="Edit from words (StyleCLIP global directions): what "
                                       "the edited image should show, e.g. \"a face with glasses\"."),
    neutral: Optional[str] = typer.Option(None, "--neutral", help="With --text: the neutral text it is measured from "
                                          "(default: \"a face\" for faces, \"a car\", \"a horse\", \"a church\")."),
    alpha: Optional[List[float]] = typer.Option(None, "--alpha", help="With --text: edit strength α (default 4); "
                                                "may repeat; --sweep sweeps α."),
    beta: float = typer.Option(0.15, "--beta", help="With --text: disentanglement threshold β; channels whose "
                               "relevance to the text is below it do not move (0.1-0.2)."),
    relevance: Optional[Path] = typer.Option(None, "--relevance", help="With --text: the channel relevance file "
                                             "(`e4e directions relevance`; default for faces: styleclip_ffhq)."),
    strength: Optional[List[float]] = typer.Option(None, "--strength", "-s", help="Edit strength; may repeat (default: the preset's)."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="START:STOP:N: N strengths in one strip image and an animated GIF."),
    out: Path = typer.Option(Path("e4e-out/edits"), "--out", help="Output folder."),
    domain: Optional[str] = options.domain_option("ffhq, cars, horse or church (default: from the latent)."),
    checkpoint: Optional[Path] = options.checkpoint_option(),
    pca: Optional[Path] = typer.Option(None, "--pca", help="GANSpace PCA file for ganspace:COMP:START:END."),
    device: str = options.device_option(),
    precision: str = options.precision_option(),
    batch_size: Optional[int] = options.batch_option(),
    delta_scale: Optional[float] = typer.Option(None, "--delta-scale", help="Re-weight the per-layer deltas before editing (0 = pure W)."),
    paste_back: bool = typer.Option(False, "--paste-back", help="Also paste each edited face back into the original photo."),
    color_match: bool = typer.Option(False, "--color-match", help="With --paste-back: match the face's colour to the photo along the seam."),
    paste_mask: Optional[str] = typer.Option(None, "--paste-mask", help="With --paste-back: hull (landmark outline, "
                                             "the default) or ellipse."),
    invert_out: Path = typer.Option(Path("e4e-out"), "--invert-out", help="Where photos given as sources are inverted first."),
    preview_size: Optional[int] = typer.Option(
        None, "--preview-size", metavar="N",
        help="Fast sweeps: decode at N px (a power of two up to the checkpoint's size, e.g. 256) by stopping the "
             "generator after that block. Outputs go to OUT/preview-N/ and their records say preview_size: N."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo edits (and inversions of photos) that already "
                                   "have results, made the same way or not."),
    weights_dir: Optional[Path] = options.weights_dir_option(),
    generator: Optional[Path] = typer.Option(None, "--generator", help="Decode with this generator instead (same "
                                             "architecture: a fine-tuned rosinality .pt or SG2-ADA .pkl); refined "
                                             "latents keep their weight offsets on it."),
    refine: Optional[str] = options.refine_option(
        "hyperstyle: refine the photos given as sources with HyperStyle (as `e4e invert --refine hyperstyle`); "
        "edits keep their weight offsets."),
    refine_steps: Optional[int] = options.refine_steps_option(),
    refiner: Optional[Path] = options.refiner_option(),
    w_encoder: Optional[Path] = options.w_encoder_option(),
    offsets_precision: str = options.offsets_precision_option(),
    face: Optional[str] = typer.Option(None, "--face", help="Videos: the face to follow, largest (default) or N (0 = "
                                       "leftmost in the first frame that has faces)."),
    side_by_side: bool = typer.Option(False, "--side-by-side", help="Videos: source | edit in one video."),
    smooth_center: Optional[float] = typer.Option(None, "--smooth-center", metavar="SIGMA", help="Videos: Gaussian "
                                                  "sigma (frames) smoothing the crop's centre over time (1.0; 0 = off)."),
    smooth_axes: Optional[float] = typer.Option(None, "--smooth-axes", metavar="SIGMA", help="Videos: Gaussian sigma "
                                                "(frames) smoothing the crop's size and angle (3.0; 0 = off)."),
    smooth_codes: Optional[float] = typer.Option(None, "--smooth-codes", metavar="SIGMA", help="Videos: Gaussian "
                                                 "sigma (frames) smoothing the codes over time before the edit "
                                                 "(0 = off, the default, as STIT)."),
    tune: Optional[int] = typer.Option(None, "--tune", metavar="N", help="Videos: tune one generator on all the "
                                       "clip's face frames for N steps (STIT; 300 in the paper, each step one pass "
                                       "over every frame; slow on a CPU) and decode the edits with it; 0 = off."),
    tune_lr: Optional[float] = typer.Option(None, "--tune-lr", help="Videos, with --tune: Adam's learning rate "
                                            "(default 3e-5, STIT's)."),
):
    """Edit inverted latents with InterFaceGAN, GANSpace or SeFa directions, or from words (--text,
    StyleCLIP); or the face in a video (.mp4 .mov .m4v .mkv .webm .avi:
    OUT/<stem>/<stem>_<direction>_<strength>.mp4)."""
    from ..editing import check_delta_scale, check_strength, parse_sweep
    from ..jobs.edit import EditJob, run_edit
    from .edit_video import edit_video, photo_refusals, video_sources

    if (direction is None) == (text is None):
        raise E4EError("give --direction D or --text TARGET, one of them (see 'e4e edit --help')", exit_code=USAGE)
    if text is None:
        given = [name for name, v in (("--neutral", neutral), ("--alpha", alpha), ("--relevance", relevance),
                                      ("--beta", None if beta == 0.15 else beta)) if v]
        if given:
            raise E4EError(f"{given[0]} needs --text", exit_code=USAGE)
    else:
        if strength:
            raise E4EError("a text edit's strength is --alpha (not --strength)", exit_code=USAGE)
        strength = alpha
        if not beta >= 0:
            raise E4EError(f"--beta must be 0 or more, got {beta:g}", exit_code=USAGE)
        direction = "text"
    options.check_domain(domain)
    options.check_paste_options(paste_back, color_match=color_match, paste_mask=paste_mask)
    if strength and sweep:
        raise E4EError("give --strength or --sweep, not both (a sweep's strengths are START:STOP:N)", exit_code=USAGE)
    strengths = [check_strength(s) for s in (strength or [])]
    sweep_values = parse_sweep(sweep) if sweep else None
    if refine == "pti":
        raise E4EError("e4e edit refines photos with hyperstyle only: tune with `e4e invert PHOTO --refine pti`, "
                       "then edit its folder (clips: --tune N)", exit_code=USAGE)
    refining = options.check_refine(refine, refine_steps, refiner, w_encoder)
    if tune is not None and tune < 0:
        raise E4EError(f"--tune must be a whole number of steps >= 0, got {tune}", exit_code=USAGE)
    if tune and refining:
        raise E4EError("--tune tunes the generator for e4e's codes; it does not go with --refine hyperstyle",
                       exit_code=USAGE)
    if delta_scale is not None:
        check_delta_scale(delta_scale)
    options.check_batch_size(batch_size)
    options.check_preview_size(preview_size)
    videos = video_sources(sources, unsupported={"--paste-back": paste_back or None,
                                                 "--preview-size": preview_size, "--generator": generator,
                                                 "--delta-scale": delta_scale, "--text": text})
    if videos:  # a clip: the video job (jobs/video.py)
        return edit_video(videos[0], direction=direction, strengths=strengths, sweep=sweep_values, out=out, face=face,
                          side_by_side=side_by_side, smooth_center=smooth_center, smooth_axes=smooth_axes,
                          smooth_codes=smooth_codes, domain=domain, checkpoint=checkpoint, pca=pca, device=device,
                          precision=precision, batch_size=batch_size, weights_dir=weights_dir, overwrite=overwrite,
                          refine=refining, refine_steps=refine_steps, refiner=refiner, w_encoder=w_encoder,
                          tune=tune or 0, tune_lr=tune_lr)
    photo_refusals(face=face, side_by_side=side_by_side, smooth_center=smooth_center, smooth_axes=smooth_axes,
                   smooth_codes=smooth_codes, tune=tune, tune_lr=tune_lr)
    job = EditJob(
        sources=list(sources or []), direction=direction, strengths=strengths, sweep=sweep_values, out=out,
        domain=domain, checkpoint=checkpoint, pca=pca, device=device, precision=precision, batch_size=batch_size,
        delta_scale=delta_scale, paste_back=paste_back, color_match=color_match,
        paste_mask=options.check_mask(paste_mask or "hull"), invert_out=invert_out, overwrite=overwrite,
        weights_dir=weights_dir, preview_size=preview_size, generator=generator, refine=refining,
        refine_steps=refine_steps, refiner=refiner, w_encoder=w_encoder, offsets_precision=offsets_precision,
        text=text, neutral=neutral, beta=beta, relevance=relevance,
    )
    results = run_edit(job)
    for r in results:
        if r.status == "failed":
            options.echo_error(options.item_line(r))
    ok = [r for r in results if r.status == "ok"]
    skipped = [r for r in results if r.status == "skipped"]
    n_files = sum(len(r.files) for r in ok)
    where = next((r.outdir for r in results if r.outdir), out)  # OUT/preview-N/ for previews
    what = f"the text {text!r}" if text is not None else direction
    msg = f"{len(ok)} source(s) edited with {what}: {n_files} files in {where}/"
    if skipped:
        msg += f"; {len(skipped)} already done (use --overwrite to redo)"
    typer.echo(msg)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)
