"""How close an inversion stays to W, and what that costs: statistics, reports and the LEC.

Building blocks of `e4e invert --report` and `e4e evaluate`:

- `w_statistics(model)`: mean and covariance of W, the mapping network's output, from
  `n` samples (10,000 by default). Computed once per checkpoint and kept in memory and in a
  small .npz under `$E4E_CACHE_DIR/wstats/` (default `$XDG_CACHE_HOME/e4e/wstats/`, i.e.
  `~/.cache/e4e/wstats/`), keyed by the checkpoint's content (SHA-256).
- `mahalanobis(codes, mean, cov)`: each 512-d style vector's distance from W.
- `latent_report(model, w0, deltas, delta_scale)`: per-layer delta norms, the variance of the
  style vectors across layers and each layer's distance from W (also at delta scale 0);
  `write_report(folder, report)` writes it as report.json and a chart, report.png.
- `lec(model, image, direction, strength, delta_scale)`: Latent Editing Consistency.

Latent Editing Consistency (LEC), as computed here
--------------------------------------------------
Write E_A for "encode at delta scale A" (codes = latent_avg + w0 + A * deltas), G for
"decode with the fixed noise, render to 8 bit, and resize to the encoder's input the way
any input photo is resized" (so a generated image re-enters the encoder exactly as a photo
would), and f for the edit with strength S, f(w) = w + o where o = f(w) - w is the offset
the edit adds to the first inversion (for InterFaceGAN, SeFa and direction files
o = S * d, so its inverse is the edit by -S; for GANSpace, whose strength is a target
coordinate, subtracting o is the inverse too). With w = E_A(x):

    round trip   r  = f^-1(E_A(G(f(w)))) = E_A(G(w + o)) - o
    reference    w' = E_A(G(w))           (the same trip with no edit)

    LEC (latent)        = mean over layers of || r_i - w'_i ||_2        <- `lec_latent`
    LEC, paper's form   = mean over layers of || r_i - w_i  ||_2        <- `lec_latent_paper`
    reconstruction drift = mean over layers of || w'_i - w_i ||_2       <- `drift_latent`

The paper (Tov et al. 2021) compares the round trip with the first inversion w. That number
also contains the encoder's own re-inversion error (E(G(w)) != w even with no edit), so it is
not 0 for a zero-strength edit. We report it, but our main LEC compares the edited round
trip with the unedited one: it asks "does an edit and its inverse, taken through the
encoder, come back to where the unedited trip comes back to?". The encoder is deterministic
and the decoder uses fixed noise, so a zero-strength edit gives exactly 0, and any non-zero
value is due to the edit. For linear edits it is || E(G(w + S d)) - S d - E(G(w)) ||.

The image distances compare decoded latents at the generator's output resolution, 8 bit:
`lec_image_*` G(r) against G(w'), `lec_paper_image_*` G(r) against G(w) (the first
inversion), as MSE (pixels in [0,1]) and PSNR (dB).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .errors import E4EError
from .fsutil import atomic_write, cache_dir, ensure_dir

WSTATS_VERSION = 1
DEFAULT_W_SAMPLES = 10_000
MAHALANOBIS_RIDGE = 1e-3
MAHALANOBIS_EPS = 1e-6

_WSTATS_MEMORY: dict = {}


# --------------------------------------------------------------------------------------
# W statistics


def _checkpoint_key(model, n: int, seed: int) -> Optional[str]:
    path = getattr(model, "path", None)
    if not path:
        return None
    from .digests import content_sha256

    try:
        ident = f"{content_sha256(path)}|n={n}|seed={seed}|v{WSTATS_VERSION}"
    except E4EError:
        return None
    return hashlib.sha1(ident.encode("utf-8")).hexdigest()[:20]


def _compute_w_statistics(model, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.inference_mode():
        w = model.sample_w(n, seed=seed).detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(w).all():
        raise E4EError("the mapping network produced NaN or infinite W samples: is the checkpoint damaged?")
    mean = w.mean(axis=0)
    centred = w - mean
    cov = centred.T @ centred / max(n - 1, 1)
    return mean, cov


def w_statistics(model, n: int = DEFAULT_W_SAMPLES, seed: int = 0, *,
                 use_cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Mean [512] and covariance [512,512] (float64, unbiased) of `n` mapping-network samples.

    z ~ N(0, I) from a CPU generator seeded with `seed`, w = mapping(z). The result is kept in
    memory and on disk (see `cache_dir()`), keyed by the checkpoint file's content (SHA-256) plus
    `n` and `seed`, so every later call for the same checkpoint is instant.
    """
    if n < 2:
        raise E4EError(f"W statistics need at least 2 samples, got {n}")
    key = _checkpoint_key(model, n, seed)
    mem_key = key if key is not None else ("id", id(model), n, seed)
    if use_cache and mem_key in _WSTATS_MEMORY:
        return _WSTATS_MEMORY[mem_key]
    file = None
    if use_cache and key is not None:
        file = cache_dir() / "wstats" / f"{Path(model.path).stem}-{key}.npz"
        if file.is_file():
            try:
                with np.load(file, allow_pickle=False) as z:
                    mean, cov = z["mean"].astype(np.float64), z["cov"].astype(np.float64)
                if mean.shape == (cov.shape[0],) and cov.shape == (mean.shape[0],) * 2:
                    _WSTATS_MEMORY[mem_key] = (mean, cov)
                    return mean, cov
            except (OSError, ValueError, KeyError):
                pass  # unreadable cache file: recompute and replace it
    mean, cov = _compute_w_statistics(model, n, seed)
    if file is not None:
        try:
            ensure_dir(file.parent)
            atomic_write(file, lambda fh: np.savez(fh, mean=mean, cov=cov, n=np.int64(n), seed=np.int64(seed)))
        except (E4EError, OSError):
            pass  # a read-only cache is not an error: the statistics are just recomputed next time
    if use_cache:
        _WSTATS_MEMORY[mem_key] = (mean, cov)
    return mean, cov


def regulariser(cov: np.ndarray, ridge: float = MAHALANOBIS_RIDGE, eps: float = MAHALANOBIS_EPS) -> float:
    """The λ added to the covariance's diagonal: ridge * (mean variance) + eps."""
    d = cov.shape[0]
    return float(ridge * max(np.trace(cov), 0.0) / d + eps)


def mahalanobis(codes, mean, cov, *, ridge: float = MAHALANOBIS_RIDGE, eps: float = MAHALANOBIS_EPS) -> np.ndarray:
    """sqrt((x - mean)^T (cov + λI)^-1 (x - mean)) for every 512-d vector x in `codes` [..., 512].

    The sample covariance of W is close to singular (W lies near a lower-dimensional set, and
    a degenerate mapping network can make it exactly singular), so it is regularised by a
    ridge: λ = ridge * trace(cov)/512 + eps, i.e. 0.1% of the average per-dimension variance
    plus an absolute floor of 1e-6. The distance is then computed stably with the Cholesky
    factor L of cov + λI as ||L^-1 (x - mean)||, in float64. Returns an array of shape
    codes.shape[:-1]; the mean itself is at distance 0.
    """
    import torch

    x = np.asarray(codes.detach().cpu().numpy() if hasattr(codes, "detach") else codes, dtype=np.float64)
    mean = np.asarray(mean.detach().cpu().numpy() if hasattr(mean, "detach") else mean, dtype=np.float64).reshape(-1)
    cov = np.asarray(cov.detach().cpu().numpy() if hasattr(cov, "detach") else cov, dtype=np.float64)
    d = mean.shape[0]
    if x.shape[-1] != d or cov.shape != (d, d):
        raise E4EError(f"mahalanobis: codes [...,{x.shape[-1]}], mean [{d}] and cov {list(cov.shape)} do not fit")
    reg = 0.5 * (cov + cov.T) + regulariser(cov, ridge, eps) * np.eye(d)
    chol = torch.linalg.cholesky(torch.from_numpy(reg))
    diff = torch.from_numpy((x - mean).reshape(-1, d).T.copy())  # [d, N]
    z = torch.linalg.solve_triangular(chol, diff, upper=False)
    return z.norm(dim=0).numpy().reshape(x.shape[:-1])


# --------------------------------------------------------------------------------------
# Per-inversion report


def _np(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().to("cpu").double().numpy()
    return np.asarray(t, dtype=np.float64)


def latent_report(model, w0, deltas, delta_scale: float = 1.0, *, stats: Optional[tuple] = None,
                  n_samples: int = DEFAULT_W_SAMPLES, seed: int = 0) -> dict:
    """Where one inversion sits relative to W (JSON-ready dict).

    w0 [512] and deltas [n_styles-1,512] are the encoder's outputs for one image
    (`EncoderOutput.w0[j]`, `.deltas[j]`); codes = latent_avg + w0 + delta_scale * [0, deltas].

    - `delta_norm[i]` = ||codes_i - codes_i(scale 0)||: the norm of the scaled delta that layer
      i actually uses (0 for layer 0); `delta_norm_unscaled[i]` is the encoder's raw delta.
    - `layer_variance`: variance of the style vectors across layers (population variance
      over the n_styles vectors, averaged over the 512 dimensions); 0 for a pure W code
      when latent_avg is the same on every layer (as in the released checkpoints).
    - `w_distance[i]`: Mahalanobis distance of codes_i from W (see `mahalanobis`), and
      `w_distance_scale0[i]` the same for the scale-0 code, for reference.
    `stats` = (mean, cov) skips `w_statistics(model, n_samples, seed)`.
    """
    a = float(delta_scale)
    w0 = _np(w0).reshape(-1)
    deltas = _np(deltas)
    if deltas.ndim == 3 and deltas.shape[0] == 1:
        deltas = deltas[0]
    avg = _np(model.latent_avg)
    n, d = avg.shape
    if w0.shape != (d,) or deltas.shape != (n - 1, d):
        raise E4EError(f"latent_report: w0 {list(w0.shape)} and deltas {list(deltas.shape)} do not fit "
                       f"{n} layers of {d}")
    full_deltas = np.concatenate([np.zeros((1, d)), deltas], axis=0)
    base = avg + w0[None]
    codes = base + a * full_deltas
    given = stats is not None
    if stats is None:
        stats = w_statistics(model, n_samples, seed)
    mean, cov = stats
    dist = mahalanobis(codes, mean, cov)
    dist0 = mahalanobis(base, mean, cov)
    delta_norm = np.linalg.norm(codes - base, axis=1)
    r = lambda v: [float(x) for x in v]  # noqa: E731
    return {
        "checkpoint": getattr(model, "path", None),
        "domain": getattr(model, "domain", None),
        "n_styles": int(n),
        "delta_scale": a,
        "layers": list(range(n)),
        "delta_norm": r(delta_norm),
        "delta_norm_unscaled": r(np.linalg.norm(full_deltas, axis=1)),
        "code_norm": r(np.linalg.norm(codes, axis=1)),
        "w_distance": r(dist),
        "w_distance_scale0": r(dist0),
        "mean_delta_norm": float(delta_norm.mean()),
        "layer_variance": float(codes.var(axis=0).mean()),
        "layer_variance_scale0": float(base.var(axis=0).mean()),
        "mean_w_distance": float(dist.mean()),
        "mean_w_distance_scale0": float(dist0.mean()),
        "w_stats": {
            "samples": None if given else int(n_samples),
            "seed": None if given else int(seed),
            "mean_variance": float(np.trace(cov) / d),
            "ridge": MAHALANOBIS_RIDGE,
            "regulariser": regulariser(cov),
        },
    }


def _json_text(data) -> str:
    """Indented JSON with lists of numbers kept on one line each (a per-layer list reads as a row)."""
    text = json.dumps(data, indent=2)
    flat = lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]"  # noqa: E731
    number = r"(?:-?[\d.eE+-]+|NaN|-?Infinity|null)"
    return re.sub(rf"\[\s*({number}(?:,\s*{number})*)\s*\]", flat, text) + "\n"


def write_report(folder, report: dict) -> dict:
    """Write `report.json` and `report.png` (chart) into `folder` atomically: {name: path}."""
    folder = ensure_dir(folder)
    text = _json_text(report)
    json_path = atomic_write(folder / "report.json", lambda fh: fh.write(text.encode("utf-8")))
    img = report_chart(report)
    png_path = atomic_write(folder / "report.png", lambda fh: img.save(fh, format="PNG"))
    return {"report": str(json_path), "report_chart": str(png_path)}


# --------------------------------------------------------------------------------------
# Charts (PIL only)

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


# --------------------------------------------------------------------------------------
# Latent Editing Consistency


def _as_input(model, image):
    import torch

    if isinstance(image, torch.Tensor):
        x = image if image.ndim == 4 else image[None]
    elif isinstance(image, (list, tuple)):
        x = model.preprocess(list(image))
    else:
        x = model.preprocess([image])
    if x.shape[0] != 1:
        raise E4EError(f"lec works on one image at a time, got a batch of {x.shape[0]}")
    return x


def reencode_input(model, images):
    """Decoded images [B,3,H,W] -> encoder input, as a photo would be: 8 bit, PIL bilinear resize."""
    return model.preprocess(model.to_pil(images))


def _edit_fn(direction) -> Callable:
    import torch

    if hasattr(direction, "apply"):
        return direction.apply
    if isinstance(direction, torch.Tensor):
        from .editing import interfacegan

        d = direction if direction.ndim == 3 else direction.reshape(1, -1, direction.shape[-1])
        return lambda c, s: interfacegan(c, d, s)
    if callable(direction):
        return direction
    raise E4EError(f"lec: direction must be a Direction, a tensor or a callable, not {type(direction).__name__}")


def layer_l2(a, b) -> float:
    """Mean over layers of the per-layer L2 distance between codes a and b ([1,n,512] or [n,512])."""
    return float((a.double() - b.double()).norm(dim=-1).mean())


def _mse_psnr(a_u8: np.ndarray, b_u8: np.ndarray) -> tuple[float, float]:
    from .metrics import mse, psnr

    return mse(a_u8, b_u8), psnr(a_u8, b_u8)


def lec_details(model, image, direction, strength: float, delta_scale: float = 1.0, *, parts=None) -> tuple[dict, Any]:
    """`lec` plus the decoded first inversion G(w) [1,3,H,W] (so callers need not decode it again)."""
    import torch

    from .editing import check_strength

    s = check_strength(strength)
    a = float(delta_scale)
    edit = _edit_fn(direction)
    with torch.inference_mode():
        if parts is None:
            parts = model.encode_parts(_as_input(model, image))
        w = parts.codes(a)[:1]
        w_edit = edit(w, s)
        offset = w_edit - w
        imgs = model.decode(torch.cat([w, w_edit]))  # G(w), G(f(w))
        re = model.encode_parts(reencode_input(model, imgs)).codes(a)  # E(G(w)), E(G(f(w)))
        ref = re[:1]
        back = re[1:] - offset
        imgs2 = model.decode(torch.cat([ref, back]))  # G(w'), G(r)
    u8_w, u8_ref, u8_back = model.to_uint8(imgs[:1])[0], model.to_uint8(imgs2[:1])[0], model.to_uint8(imgs2[1:])[0]
    img_mse, img_psnr = _mse_psnr(u8_back, u8_ref)
    paper_mse, paper_psnr = _mse_psnr(u8_back, u8_w)
    result = {
        "strength": s,
        "delta_scale": a,
        "lec_latent": layer_l2(back, ref),
        "lec_latent_paper": layer_l2(back, w),
        "drift_latent": layer_l2(ref, w),
        "edit_norm": float(offset.double().norm(dim=-1).mean()),
        "code_norm": float(w.double().norm(dim=-1).mean()),
        "lec_image_mse": img_mse,
        "lec_image_psnr": img_psnr,
        "lec_paper_image_mse": paper_mse,
        "lec_paper_image_psnr": paper_psnr,
    }
    return result, imgs[:1]


def lec(model, image, direction, strength: float, delta_scale: float = 1.0, *, parts=None) -> dict:
    """Latent Editing Consistency of one image (PIL image or encoder input [1,3,H,W]).

    `direction`: a `pipeline.Direction` (anything with `.apply(codes, strength)`), a direction
    tensor ([512], [1,512], [n,512] or [1,n,512], added as in InterFaceGAN) or a callable
    `f(codes, strength) -> codes`. See the module docstring for the definition; the keys:
    lec_latent (main), lec_latent_paper, drift_latent, edit_norm, code_norm (mean per-layer
    norms), lec_image_mse/psnr and lec_paper_image_mse/psnr. `parts` (the image's
    `EncoderOutput`) skips the first encoding.
    """
    return lec_details(model, image, direction, strength, delta_scale, parts=parts)[0]
