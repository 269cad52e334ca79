"""Draw docs/layout.png: the package's layers (the table in tests/test_layout.py, which also checks
that every import points down them), with each package's modules and their line counts.

    .venv/bin/python scripts/make_layout_diagram.py [--out docs/layout.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_layout import LAYERS, MODULES, layer_of  # noqa: E402

BAND_COLOURS = [(225, 236, 250), (231, 245, 230), (253, 243, 222), (243, 231, 246), (236, 236, 236)]
INK = (30, 30, 30)
MUTED = (95, 95, 95)
WIDTH = 1400


def font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def groups_of(layer: int) -> list[tuple[str, list[str]]]:
    """(box title, module lines) per package or top-level module of a layer."""
    boxes: dict[str, list[str]] = {}
    for name, path in MODULES.items():
        if not name or path.name == "__init__.py" or layer_of(name) != layer:
            continue  # the package root and package markers: a package is drawn as one box
        lines = len(path.read_text().splitlines())
        if "." in name:
            pkg, mod = name.split(".", 1)
            boxes.setdefault(pkg + "/", []).append(f"{mod}.py  {lines}")
        else:
            boxes.setdefault(name + ".py", []).append(f"{lines} lines")
    return sorted(boxes.items(), key=lambda kv: (not kv[0].endswith("/"), kv[0]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "layout.png")
    args = parser.parse_args()

    title_f, band_f, box_f, line_f = font(26), font(19), font(16), font(13)
    layouts = []
    y = 70
    for i, (name, about, _) in enumerate(LAYERS):
        boxes = groups_of(i)
        x, row_h, rows = 260, 0, []
        placed = []
        for title, lines in boxes:
            w = max(150, 24 + 8 * max(len(title), *(len(s) for s in lines)))
            h = 34 + 17 * len(lines) if title.endswith("/") else 52
            if x + w > WIDTH - 90:
                rows.append(row_h)
                x = 260
                row_h = 0
            placed.append((x, sum(rows) + 12 * len(rows), w, h, title, lines))
            x += w + 12
            row_h = max(row_h, h)
        rows.append(row_h)
        band_h = max(120, sum(rows) + 12 * len(rows) + 24)
        layouts.append((y, band_h, name, about, placed))
        y += band_h + 10
    img = Image.new("RGB", (WIDTH, y + 50), "white")
    d = ImageDraw.Draw(img)
    d.text((24, 20), "e4e_cli: layers (imports point down; tests/test_layout.py checks it)", fill=INK, font=title_f)
    for i, (y0, band_h, name, about, placed) in enumerate(layouts):
        d.rounded_rectangle([16, y0, WIDTH - 80, y0 + band_h], radius=12, fill=BAND_COLOURS[i % len(BAND_COLOURS)])
        d.text((30, y0 + 14), name, fill=INK, font=band_f)
        words, line, ty = about.split(), "", y0 + 44
        for word in words:  # wrap the description into the band's left column
            if len(line) + len(word) > 27:
                d.text((30, ty), line, fill=MUTED, font=line_f)
                line, ty = word, ty + 17
            else:
                line = f"{line} {word}".strip()
        d.text((30, ty), line, fill=MUTED, font=line_f)
        for x, dy, w, h, title, lines in placed:
            top = y0 + 12 + dy
            d.rounded_rectangle([x, top, x + w, top + h], radius=8, fill="white", outline=(150, 150, 150))
            d.text((x + 10, top + 7), title, fill=INK, font=box_f)
            for k, text in enumerate(lines if title.endswith("/") else lines[:1]):
                d.text((x + 12, top + 30 + 17 * k), text, fill=MUTED, font=line_f)
    # the direction of imports
    ax = WIDTH - 45
    d.line([(ax, 80), (ax, y - 30)], fill=INK, width=4)
    d.polygon([(ax - 12, y - 40), (ax + 12, y - 40), (ax, y - 14)], fill=INK)
    d.text((ax - 28, y - 8), "imports", fill=INK, font=line_f)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out, optimize=True)
    print(f"wrote {args.out} ({img.width}x{img.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
