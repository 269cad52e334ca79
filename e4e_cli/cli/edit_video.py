"""`e4e edit CLIP.mp4`: the video branch of the edit command, thin over `jobs.video`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import USAGE, E4EError


def video_sources(sources, *, unsupported: dict) -> list:
    """The videos among the sources; a video mixed with other sources, or with an option videos do
    not take yet (`unsupported`: name -> value, None when not given), is refused (exit 2)."""
    from ..video import is_video

    videos = [Path(s) for s in sources or [] if is_video(Path(s))]
    if videos and len(videos) != len(sources):
        raise E4EError("give a video on its own (one clip per `e4e edit`), not with photos or latents",
                       exit_code=USAGE)
    if len(videos) > 1:
        raise E4EError("one clip per `e4e edit`: run it once per video", exit_code=USAGE)
    given = [name for name, value in unsupported.items() if value is not None]
    if videos and given:
        raise E4EError(f"{given[0]} is not supported for videos yet (every frame is pasted back already)"
                       if given[0] == "--paste-back" else f"{given[0]} is not supported for videos yet", exit_code=USAGE)
    return videos


def video_resume_note(kwargs: dict) -> str:
    """Ctrl-C's note for a video edit ('' when the sources are no video)."""
    from ..fsutil import safe_name
    from ..video import is_video

    videos = [Path(s) for s in kwargs.get("sources") or [] if is_video(Path(s))]
    if not videos:
        return ""
    folder = Path(kwargs.get("out") or ".") / safe_name(videos[0].stem, "video")
    return (f"no video was left half-written; the frames' codes done so far are kept in {folder}/ and the same "
            "command resumes")


def photo_refusals(*, face: Optional[str], side_by_side: bool, smooth_center: Optional[float],
                   smooth_axes: Optional[float], smooth_codes: Optional[float] = None, tune: Optional[int] = None,
                   tune_lr: Optional[float] = None) -> None:
    """The video options mean nothing to photos and latents: refused there rather than ignored."""
    given = [name for name, v in (("--face", face), ("--side-by-side", side_by_side or None),
                                  ("--smooth-center", smooth_center), ("--smooth-axes", smooth_axes),
                                  ("--smooth-codes", smooth_codes), ("--tune", tune), ("--tune-lr", tune_lr))
             if v is not None]
    if given and given[0] in ("--tune", "--tune-lr"):
        raise E4EError(f"{given[0]} is for videos (e4e edit CLIP.mp4); photos are tuned with "
                       "`e4e invert PHOTO --refine pti`", exit_code=USAGE)
    if given:
        raise E4EError(f"{given[0]} is for videos (e4e edit CLIP.mp4); photos take --face in `e4e invert`",
                       exit_code=USAGE)


def edit_video(video: Path, *, direction: str, strengths: list, sweep: Optional[list], out: Path, face: Optional[str],
               side_by_side: bool, smooth_center: Optional[float], smooth_axes: Optional[float],
               smooth_codes: Optional[float] = None, **common) -> None:
    """Run the video job and say what it made."""
    from ..alignment import parse_face_choice
    from ..facetrack import DEFAULT_AXES_SIGMA, DEFAULT_CENTER_SIGMA
    from ..jobs.video import VideoEditJob, check_smoothing, run_video_edit

    try:
        choice = parse_face_choice(face or "largest")
    except E4EError as exc:
        raise E4EError(str(exc), exit_code=USAGE) from None
    if choice == "all":
        raise E4EError("--face all is for photos: a video edit follows one face (largest or N)", exit_code=USAGE)

    job = VideoEditJob(
        video=video, direction=direction, strengths=strengths, sweep=sweep, out=out, face=choice,
        side_by_side=side_by_side,
        smooth_center=check_smoothing(DEFAULT_CENTER_SIGMA if smooth_center is None else smooth_center, "--smooth-center"),
        smooth_axes=check_smoothing(DEFAULT_AXES_SIGMA if smooth_axes is None else smooth_axes, "--smooth-axes"),
        smooth_codes=check_smoothing(0.0 if smooth_codes is None else smooth_codes, "--smooth-codes"),
        **common)
    r = run_video_edit(job)
    from .. import dist

    if not dist.is_main():  # under torchrun the first process speaks for all
        return
    for note in r.notes:
        typer.echo(f"e4e: note: {note}", err=True)
    if r.tune is not None:
        t = r.tune
        typer.echo(f"e4e: note: {'reused the tuned generator' if t['reused'] else 'tuned the generator'} in "
                   f"{t['file']} ({t['steps_run']} steps over {t['frames']} frames"
                   + ("" if t["reused"] or not t.get("seconds_per_step") else f", {t['seconds_per_step']:.2f} s/step")
                   + ")", err=True)
    secs = sum(r.seconds.values())
    fps = f"; {r.frames * max(1, len(r.videos)) / secs:.2f} frames/s" if secs > 0 and r.videos else ""
    msg = (f"{video.name}: {r.edited} of {r.frames} frames have the face; {len(r.videos)} video(s) written in "
           f"{r.folder}/{fps}")
    if r.skipped:
        msg += f"; {len(r.skipped)} already done (use --overwrite to redo)"
    typer.echo(msg)
