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
import re
from pathlib import Path
from typing import Any, Callable, Optional

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
    from .charts import report_chart

    img = report_chart(report)
    png_path = atomic_write(folder / "report.png", lambda fh: img.save(fh, format="PNG"))
    return {"report": str(json_path), "report_chart": str(png_path)}


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

    `direction`: a `editing.Direction` (anything with `.apply(codes, strength)`), a direction
    tensor ([512], [1,512], [n,512] or [1,n,512], added as in InterFaceGAN) or a callable
    `f(codes, strength) -> codes`. See the module docstring for the definition; the keys:
    lec_latent (main), lec_latent_paper, drift_latent, edit_norm, code_norm (mean per-layer
    norms), lec_image_mse/psnr and lec_paper_image_mse/psnr. `parts` (the image's
    `EncoderOutput`) skips the first encoding.
    """
    return lec_details(model, image, direction, strength, delta_scale, parts=parts)[0]
