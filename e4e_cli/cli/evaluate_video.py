"""`e4e evaluate SOURCE.mp4 EDITED.mp4`: the video branch of evaluate, thin over `jobs.video_eval`."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from ..errors import USAGE, E4EError


def evaluate_videos_command(paths: list, *, out: Path, weights_dir: Optional[Path]) -> None:
    """Print TL-ID, TG-ID and flicker; write OUT/<edited stem>_temporal.json."""
    from rich.console import Console
    from rich.table import Table

    from ..fsutil import child_path, ensure_dir, safe_name
    from ..jobs.outputs import write_json
    from ..jobs.video_eval import evaluate_videos
    from ..video import is_video

    if len(paths) != 2 or not all(is_video(Path(p)) for p in paths):
        raise E4EError("videos are evaluated in pairs: e4e evaluate SOURCE_VIDEO EDITED_VIDEO", exit_code=USAGE)
    source, edited = (Path(p) for p in paths)
    scores = evaluate_videos(source, edited, weights_dir=weights_dir)
    short = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    table = Table(title=f"e4e evaluate: {edited.name} against {source.name} ({scores.with_face} of {scores.frames} "
                        "frames with the face)")
    for h in ("", "source", "edited", "edited / source"):
        table.add_column(h, justify="right")
    table.add_row("identity, consecutive frames", short(scores.source_local), short(scores.edited_local),
                  f"TL-ID {short(scores.tl_id)}")
    table.add_row("identity, all pairs", short(scores.source_global), short(scores.edited_global),
                  f"TG-ID {short(scores.tg_id)}")
    table.add_row("flicker (gray levels)", short(scores.flicker_source), short(scores.flicker_edited),
                  short(scores.flicker_ratio))
    console = Console()
    console.print(table)
    console.print("identity = mean cosine similarity of IR-SE50 features of the aligned face crops; 1.0 = as "
                  "consistent as the source. flicker = mean absolute change between consecutive face crops.",
                  highlight=False, markup=False)
    data = {"source": str(source), "edited": str(edited), **dataclasses.asdict(scores),
            "flicker_ratio": scores.flicker_ratio}
    path = write_json(child_path(ensure_dir(out), safe_name(edited.stem, "video") + "_temporal.json"), data)
    typer.echo(f"wrote {path}")
