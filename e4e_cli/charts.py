"""Charts drawn with PIL alone: a small plotting panel (axes, ticks, bars, lines, labels, legend),
the per-layer report chart of `e4e invert --report` and the distortion/editability curve of
`e4e evaluate`. No matplotlib: the tool's dependencies stay small.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

BLUE = (31, 100, 180)
ORANGE = (230, 120, 20)
GREY = (140, 140, 140)
LIGHT = (225, 225, 225)
BLACK = (20, 20, 20)


def _font(size: int = 13):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) if lo else 1.0)
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 0.5 and len(ticks) < 50:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e7 or a < 1e-3:
        return f"{v:.2e}"
    if a >= 1e4 or float(v).is_integer():
        return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"
    return f"{v:.4g}"


class Panel:
    """One set of axes inside an image: data -> pixel mapping, grid, ticks and labels."""

    def __init__(self, image, box, xlim, ylim, *, title: str = "", xlabel: str = "", ylabel: str = "",
                 xticks: Optional[Sequence[float]] = None, xticklabels: Optional[Sequence[str]] = None):
        from PIL import ImageDraw

        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.font = _font(13)
        self.small = _font(11)
        yt = nice_ticks(*ylim)
        self.ylim = (min(ylim[0], yt[0]), max(ylim[1], yt[-1]))
        if self.ylim[1] <= self.ylim[0]:
            self.ylim = (self.ylim[0], self.ylim[0] + 1)
        self.xlim = xlim if xlim[1] > xlim[0] else (xlim[0] - 0.5, xlim[0] + 0.5)
        x0, y0, x1, y1 = box
        self.box = (x0 + 70, y0 + (24 if title else 8), x1 - 12, y1 - 44)
        bx0, by0, bx1, by1 = self.box
        d = self.draw
        if title:
            d.text((bx0, y0 + 4), title, fill=BLACK, font=self.font)
        for t in yt:
            if self.ylim[0] - 1e-12 <= t <= self.ylim[1] + 1e-12:
                py = self.py(t)
                d.line([(bx0, py), (bx1, py)], fill=LIGHT)
                label = _fmt(t)
                w = d.textlength(label, font=self.small)
                d.text((bx0 - 6 - w, py - 6), label, fill=BLACK, font=self.small)
        if xticks is None:
            xticks = nice_ticks(*self.xlim)
            xticks = [t for t in xticks if self.xlim[0] - 1e-12 <= t <= self.xlim[1] + 1e-12]
        labels = list(xticklabels) if xticklabels is not None else [_fmt(t) for t in xticks]
        for t, label in zip(xticks, labels):
            px = self.px(t)
            d.line([(px, by1), (px, by1 + 4)], fill=BLACK)
            w = d.textlength(label, font=self.small)
            d.text((px - w / 2, by1 + 6), label, fill=BLACK, font=self.small)
        d.rectangle([bx0, by0, bx1, by1], outline=BLACK)
        if xlabel:
            w = d.textlength(xlabel, font=self.font)
            d.text(((bx0 + bx1) / 2 - w / 2, by1 + 24), xlabel, fill=BLACK, font=self.font)
        if ylabel:
            self._vertical_text(ylabel, x0 + 4, (by0 + by1) / 2)

    def _vertical_text(self, text: str, x: float, yc: float) -> None:
        from PIL import Image, ImageDraw

        w = int(self.draw.textlength(text, font=self.font)) + 4
        tmp = Image.new("RGB", (w, 18), "white")
        ImageDraw.Draw(tmp).text((2, 1), text, fill=BLACK, font=self.font)
        rot = tmp.rotate(90, expand=True)
        self.image.paste(rot, (int(x), int(yc - rot.height / 2)))

    def px(self, x: float) -> float:
        bx0, _, bx1, _ = self.box
        return bx0 + (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * (bx1 - bx0)

    def py(self, y: float) -> float:
        _, by0, _, by1 = self.box
        y = min(max(y, self.ylim[0]), self.ylim[1])
        return by1 - (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * (by1 - by0)

    def bars(self, xs, ys, width: float = 0.7, color=BLUE) -> None:
        for x, y in zip(xs, ys):
            if not math.isfinite(y):
                continue
            a, b = self.px(x - width / 2), self.px(x + width / 2)
            top, bottom = self.py(max(y, 0)), self.py(max(min(0, y), self.ylim[0]))
            self.draw.rectangle([a, min(top, bottom), b, max(top, bottom)], fill=color)

    def line(self, xs, ys, color=ORANGE, width: int = 2, dots: bool = True, dashed: bool = False) -> None:
        pts = [(self.px(x), self.py(y)) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
        for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
            if dashed:
                n = max(1, int(math.hypot(xb - xa, yb - ya) / 6))
                for k in range(0, n, 2):
                    t0, t1 = k / n, min(1, (k + 1) / n)
                    self.draw.line([(xa + (xb - xa) * t0, ya + (yb - ya) * t0), (xa + (xb - xa) * t1, ya + (yb - ya) * t1)],
                                   fill=color, width=width)
            else:
                self.draw.line([(xa, ya), (xb, yb)], fill=color, width=width)
        if dots:
            for x, y in pts:
                self.draw.ellipse([x - 3.5, y - 3.5, x + 3.5, y + 3.5], fill=color)

    def label(self, x: float, y: float, text: str, color=BLACK) -> None:
        if math.isfinite(x) and math.isfinite(y):
            self.draw.text((self.px(x) + 6, self.py(y) - 16), text, fill=color, font=self.small)

    def legend(self, entries: Sequence[tuple[str, tuple]]) -> None:
        """One row above the top-right corner of the axes (never over the data)."""
        _, by0, bx1, _ = self.box
        x = bx1
        for text, color in reversed(entries):
            w = self.draw.textlength(text, font=self.small)
            x -= w
            self.draw.text((x, by0 - 17), text, fill=BLACK, font=self.small)
            self.draw.line([(x - 22, by0 - 10), (x - 6, by0 - 10)], fill=color, width=3)
            x -= 36


def _range(values: Sequence[float], *, include_zero: bool = True) -> tuple[float, float]:
    v = [float(x) for x in values if math.isfinite(float(x))]
    if not v:
        return (0.0, 1.0)
    lo, hi = min(v), max(v)
    if include_zero:
        lo = min(lo, 0.0)
    if hi <= lo:
        hi = lo + (abs(lo) * 0.1 if lo else 1.0)
    pad = (hi - lo) * 0.08
    return (lo if include_zero and lo == 0 else lo - pad, hi + pad)


def report_chart(report: dict):
    """Bar chart of the delta norm per layer over a line chart of the distance from W per layer."""
    from PIL import Image

    layers = report["layers"]
    img = Image.new("RGB", (760, 600), "white")
    xl = (-0.6, len(layers) - 0.4)
    ticks = [float(i) for i in layers]
    labels = [str(i) for i in layers]
    top = Panel(img, (0, 0, 760, 290), xl, _range(report["delta_norm"]),
                title=f"Per-layer deltas at delta scale {report['delta_scale']:g}   "
                      f"(variance across layers {_fmt(report['layer_variance'])})",
                xlabel="layer", ylabel="delta norm", xticks=ticks, xticklabels=labels)
    top.bars(layers, report["delta_norm"])
    dist, dist0 = report["w_distance"], report["w_distance_scale0"]
    bottom = Panel(img, (0, 300, 760, 600), xl, _range(list(dist) + list(dist0), include_zero=False),
                   title="Distance from W (Mahalanobis)",
                   xlabel="layer", ylabel="distance from W", xticks=ticks, xticklabels=labels)
    bottom.line(layers, dist0, color=GREY, dots=False, dashed=True)
    bottom.line(layers, dist, color=ORANGE)
    bottom.legend([(f"delta scale {report['delta_scale']:g}", ORANGE), ("delta scale 0 (pure W)", GREY)])
    return img


def curve_chart(points: Sequence[dict], *, x_key: str, y_key: str, x_label: str, y_label: str, title: str):
    """Scatter + line through `points` (dicts with x_key, y_key and 'delta_scale'), labelled by scale."""
    from PIL import Image

    img = Image.new("RGB", (720, 520), "white")
    xs = [float(p[x_key]) for p in points]
    ys = [float(p[y_key]) for p in points]
    finite_x = [x for x in xs if math.isfinite(x)]
    xr = _range(finite_x, include_zero=False) if finite_x else (0.0, 1.0)
    panel = Panel(img, (0, 0, 720, 520), xr, _range(ys), title=title, xlabel=x_label, ylabel=y_label)
    panel.line(xs, ys, color=BLUE)
    for p, x, y in zip(points, xs, ys):
        panel.label(x, y, f"A={float(p['delta_scale']):g}")
    if len(finite_x) < len(xs):
        panel.draw.text((panel.box[0] + 8, panel.box[3] - 20), "(points with infinite PSNR not drawn)",
                        fill=GREY, font=panel.small)
    return img


def image_grid(rows: Sequence[Sequence], *, headers: Sequence[str], captions: Sequence[Sequence[str]],
               gap: int = 6):
    """PIL images in rows (one row per item, one column per header), each cell with a caption
    of one or more lines (`captions[row][col]`, "\\n"-separated) under it; cells keep their size."""
    from PIL import Image, ImageDraw

    font = _font(13)
    line_h = 16
    n_lines = max((c.count("\n") + 1 for row in captions for c in row), default=1)
    col_w = [max(row[c].width for row in rows) for c in range(len(headers))]
    row_h = [max(im.height for im in row) + n_lines * line_h + gap for row in rows]
    width = sum(col_w) + gap * (len(headers) + 1)
    img = Image.new("RGB", (width, line_h + gap + sum(row_h) + gap), "white")
    draw = ImageDraw.Draw(img)
    x = gap
    for h, w in zip(headers, col_w):
        draw.text((x, 2), h, fill=BLACK, font=font)
        x += w + gap
    y = line_h + gap
    for row, caps, rh in zip(rows, captions, row_h):
        x = gap
        for im, cap, w in zip(row, caps, col_w):
            img.paste(im.convert("RGB"), (x, y))
            draw.multiline_text((x, y + im.height + 2), cap, fill=BLACK, font=font, spacing=3)
            x += w + gap
        y += rh
    return img
