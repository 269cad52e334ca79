#!/usr/bin/env python3
"""Make the README's paste-back pictures (docs/pasteback_*.jpg) from a real pipeline run.

    .venv/bin/python scripts/make_readme_pictures.py [--photo PHOTO] [--checkpoint CKPT] [--out docs]

It aligns the sample photo, inverts it with the e4e encoder, pastes the reconstruction back
into the photo, edits the latent (smile +3) and pastes the edit back: the same library
calls `e4e invert --paste-back` and `e4e edit --paste-back` make. Without --checkpoint it
uses the SYNTHETIC ffhq checkpoint of the parity fixtures (random weights, built with
../shared/parity/make_checkpoint.py when it is not cached yet): the "face" it generates is
not a face, and every picture says so. Pictures are ~512 px wide JPEGs well under 200 KB.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from e4e_cli.synthetic import parity_dir  # noqa: E402

PARITY = parity_dir()
SYNTHETIC_NOTE = ("synthetic checkpoint (random weights):", "shows the pipeline, not the quality")
WIDTH = 512
MAX_BYTES = 200_000


def synthetic_checkpoint() -> Path:
    """The parity fixtures' synthetic ffhq 1024 checkpoint (the tests' cache, else built)."""
    from e4e_cli.errors import E4EError
    from e4e_cli.synthetic import synthetic_checkpoint as build

    try:
        return build(1024, 1, "ffhq")
    except E4EError as exc:
        sys.exit(f"no --checkpoint given and {exc}")


def labelled(image, title: str, note, width: int = WIDTH):
    """`image` scaled to `width` px wide with a caption band: the title, then the note lines."""
    from PIL import Image, ImageDraw, ImageFont

    img = image.convert("RGB")
    img = img.resize((width, max(1, round(img.height * width / img.width))), Image.Resampling.LANCZOS)
    try:
        big, small = ImageFont.load_default(size=18), ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        big = small = ImageFont.load_default()
    lines = [(title, big, (255, 255, 255))] + [(t, small, (255, 210, 90)) for t in note]
    pad, gap = 8, 4
    heights = [draw_font.getbbox(text)[3] for text, draw_font, _ in lines]
    band_h = pad * 2 + sum(heights) + gap * (len(lines) - 1)
    out = Image.new("RGB", (img.width, img.height + band_h), (24, 24, 24))
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    y = img.height + pad
    for (text, draw_font, colour), h in zip(lines, heights):
        draw.text((pad, y), text, font=draw_font, fill=colour)
        y += h + gap
    return out


def save_small(image, path: Path) -> Path:
    from e4e_cli.fsutil import atomic_save_image

    for quality in (88, 80, 70, 60):
        atomic_save_image(image, path, quality=quality, optimize=True)
        if path.stat().st_size <= MAX_BYTES:
            break
    path.chmod(0o644)  # atomic writes create private files; these are for everyone to read
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", type=Path, default=PARITY / "images" / "input_img.jpg")
    ap.add_argument("--checkpoint", type=Path, default=None, help="real ffhq checkpoint (default: the synthetic one)")
    ap.add_argument("--direction", type=Path, default=PARITY / "directions" / "smile.pt")
    ap.add_argument("--strength", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    from PIL import Image

    from e4e_cli.jobs.edit import EditJob, run_edit
    from e4e_cli.jobs.invert import InvertOptions, invert_inputs
    from e4e_cli.model import ModelOptions, load_model
    from e4e_cli.images import load_image
    from e4e_cli.jobs.pasteback import paste_back_inversions

    synthetic = args.checkpoint is None
    ckpt = synthetic_checkpoint() if synthetic else args.checkpoint
    note = SYNTHETIC_NOTE if synthetic else ()
    if not args.photo.is_file():
        sys.exit(f"sample photo {args.photo} not found (pass --photo)")
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="e4e-readme-") as tmp:
        tmp = Path(tmp)
        photo = tmp / args.photo.name
        photo.write_bytes(args.photo.read_bytes())
        model = load_model(ModelOptions(checkpoint=ckpt, device=args.device))
        results = invert_inputs([photo], model, InvertOptions(out=tmp / "out", batch_size=1))
        paste_back_inversions(results)
        r = results[0]
        if r.status != "ok":
            sys.exit(f"invert failed: {r.error}")
        folder = Path(r.outdir)
        job = EditJob(sources=[folder / "latent.npy"], direction=str(args.direction),
                      strengths=[args.strength], sweep=None, out=tmp / "edits", checkpoint=ckpt,
                      device=args.device, paste_back=True)
        edits = run_edit(job)
        if edits[0].status != "ok":
            sys.exit(f"edit failed: {edits[0].error}")
        edit_full = next(Path(p) for k, p in edits[0].files.items() if k.endswith("_full"))

        label = args.direction.stem
        pictures = {
            "pasteback_1_original.jpg": (load_image(photo), "1. original photo"),
            "pasteback_2_aligned.jpg": (Image.open(folder / "aligned.png"), "2. aligned face (e4e's 256x256 input)"),
            "pasteback_3_inversion_full.jpg": (Image.open(r.files["inversion_full"]),
                                               "3. inversion pasted back (e4e invert --paste-back)"),
            "pasteback_4_edit_full.jpg": (Image.open(edit_full),
                                          f"4. edit {label} {args.strength:+g} pasted back (e4e edit --paste-back)"),
        }
        for name, (image, title) in pictures.items():
            path = save_small(labelled(image, title, note), args.out / name)
            print(f"{path}  {path.stat().st_size / 1000:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
