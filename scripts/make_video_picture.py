#!/usr/bin/env python3
"""Make the README's video picture (docs/video_strip.jpg) from a real `e4e edit CLIP.mp4` run.

    .venv/bin/python scripts/make_video_picture.py [--checkpoint CKPT] [--out docs]

A 720p clip of the sample face drifting across a background (`bench/bench_video.make_clip`) is
edited through the CLI; the picture shows five frames of the source, with the smoothed crop the
edit used drawn on them, over the same frames of the edited video. Without --checkpoint it uses
the SYNTHETIC ffhq checkpoint of the parity fixtures (random weights): the pasted "face" is not
a face, and the picture says so.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from make_readme_pictures import MAX_BYTES, SYNTHETIC_NOTE, labelled, synthetic_checkpoint  # noqa: E402

from bench.bench_video import make_clip  # noqa: E402

PICKS = 5


def frames_of(path: Path) -> list:
    import av

    with av.open(str(path)) as c:
        return [f.to_image() for f in c.decode(video=0)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    from PIL import Image, ImageDraw

    ckpt = args.checkpoint or synthetic_checkpoint()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        clip = d / "clip.mp4"
        make_clip(clip, args.frames)
        subprocess.run([sys.executable, "-m", "e4e_cli", "edit", str(clip), "--direction", "sefa:0", "--strength",
                        "3", "--checkpoint", str(ckpt), "--out", str(d / "out")], check=True)
        folder = d / "out" / "clip"
        rec = json.loads((folder / "video.json").read_text())
        src, edited = frames_of(clip), frames_of(next(folder.glob("clip_sefa-0_*.mp4")))
    picks = [round(i * (len(src) - 1) / (PICKS - 1)) for i in range(PICKS)]
    quads = [rec["frames"][i]["quad"] for i in picks]
    xs = [x for q in quads for x, _ in q]
    ys = [y for q in quads for _, y in q]
    pad = 40
    box = (max(0, int(min(xs)) - pad), max(0, int(min(ys)) - pad),
           min(src[0].width, int(max(xs)) + pad), min(src[0].height, int(max(ys)) + pad))
    tile_w = 220
    tile_h = round(tile_w * (box[3] - box[1]) / (box[2] - box[0]))
    sheet = Image.new("RGB", (tile_w * PICKS, tile_h * 2), (24, 24, 24))
    for k, (i, q) in enumerate(zip(picks, quads)):
        top = src[i].copy()
        ImageDraw.Draw(top).polygon([tuple(p) for p in q], outline=(255, 210, 90), width=3)
        for row, img in enumerate((top, edited[i])):
            sheet.paste(img.crop(box).resize((tile_w, tile_h), Image.Resampling.LANCZOS), (k * tile_w, row * tile_h))
    note = ([] if args.checkpoint else list(SYNTHETIC_NOTE)) + [
        f"frames {', '.join(map(str, picks))} of a {len(src)}-frame 720p clip; top: source with the smoothed crop, "
        "bottom: edited"]
    out = labelled(sheet, "e4e edit clip.mp4 --direction sefa:0 --strength 3", note, width=tile_w * PICKS)
    dest = args.out / "video_strip.jpg"
    for quality in (88, 80, 70, 60):
        out.save(dest, quality=quality)
        if dest.stat().st_size <= MAX_BYTES:
            break
    print(f"wrote {dest} ({dest.stat().st_size // 1000} KB)")


if __name__ == "__main__":
    main()
