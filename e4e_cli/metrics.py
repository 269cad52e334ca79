"""Image distances: MSE, PSNR, SSIM (our own implementation) and LPIPS when it is installed.

Images are RGB arrays [H,W,3] (or [H,W]); uint8 images (and PIL images) are read as
pixel/255, float images are taken to be in [0,1] already. All metrics work in float64.

- `mse(a, b)`: mean of the squared differences on the [0,1] scale (all pixels, all channels).
- `psnr(a, b, data_range=1)`: 10 * log10(data_range^2 / mse), in dB; inf for identical images.
- `ssim(a, b)`: the structural similarity of Wang et al. (2004) with a Gaussian window
  (sigma 1.5, truncated at 3.5 sigma: 11x11), K1 = 0.01, K2 = 0.03, population (not sample)
  statistics. Computed per RGB channel over every position where the window fits inside the
  image ("valid" region, no padding), averaged over positions and then over channels.
  This equals `skimage.metrics.structural_similarity(a, b, channel_axis=-1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)`.
- `lpips_distance(a, b)`: LPIPS (AlexNet, v0.1) only when the `lpips` package is installed
  together with its weights and torchvision's AlexNet weights are in the torch hub cache.
  Nothing is ever downloaded; otherwise the value is None and the text
  `LPIPS_NA` ("n/a (LPIPS weights not present)") is what reports print.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import E4EError

LPIPS_NA = "n/a (LPIPS weights not present)"
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def as_float01(image) -> np.ndarray:
    """PIL image, uint8 array or float array in [0,1] -> float64 [H,W,C] (C = 1 for grey)."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        image = np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float64) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float64) / 65535.0
    else:
        arr = arr.astype(np.float64)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise E4EError(f"expected an image [H,W,C] or [H,W], got shape {list(arr.shape)}")
    return arr


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_float01(a), as_float01(b)
    if x.shape != y.shape:
        raise E4EError(f"cannot compare images of different shapes {list(x.shape)} and {list(y.shape)}")
    return x, y


def mse(a, b) -> float:
    """Mean squared error on the [0,1] scale."""
    x, y = _pair(a, b)
    return float(np.mean((x - y) ** 2))


def psnr(a, b, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (inf when the images are identical)."""
    m = mse(a, b)
    if m == 0:
        return math.inf
    return float(10.0 * math.log10(data_range ** 2 / m))


def gaussian_window(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    """Normalised 1-D Gaussian taps, radius int(truncate * sigma + 0.5)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _filter_valid(planes, taps: np.ndarray):
    """Separable 'valid' filtering of torch float64 planes [N,1,H,W] with 1-D taps."""
    import torch
    import torch.nn.functional as F

    k = torch.from_numpy(taps)
    out = F.conv2d(planes, k.view(1, 1, 1, -1))
    return F.conv2d(out, k.view(1, 1, -1, 1))


def ssim(a, b, *, data_range: float = 1.0, sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE,
         k1: float = SSIM_K1, k2: float = SSIM_K2, full: bool = False):
    """Mean SSIM over the valid region and the channels (see the module docstring).

    With `full=True` also returns the SSIM map [H-2r, W-2r, C]."""
    import torch

    x, y = _pair(a, b)
    taps = gaussian_window(sigma, truncate)
    r = len(taps) // 2
    h, w, c = x.shape
    if h <= 2 * r or w <= 2 * r:
        raise E4EError(f"SSIM needs images larger than its {2 * r + 1}x{2 * r + 1} window, got {h}x{w}")
    px = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[:, None]  # [C,1,H,W]
    py = torch.from_numpy(np.ascontiguousarray(y.transpose(2, 0, 1)))[:, None]
    stack = torch.cat([px, py, px * px, py * py, px * py])  # [5C,1,H,W]
    f = _filter_valid(stack, taps)
    mx, my, xx, yy, xy = f.split(c)
    vx = xx - mx * mx
    vy = yy - my * my
    cxy = xy - mx * my
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    smap = smap[:, 0].numpy().transpose(1, 2, 0)  # [H',W',C]
    value = float(smap.mean(axis=(0, 1)).mean())
    return (value, smap) if full else value


# --------------------------------------------------------------------------------------
# LPIPS (optional, never downloaded)

_LPIPS_MODEL = None


def lpips_status() -> tuple[bool, str]:
    """(available, reason): LPIPS needs the `lpips` package with its linear-layer weights,
    torchvision, and AlexNet's ImageNet weights already in the torch hub cache."""
    try:
        spec = importlib.util.find_spec("lpips")
        tv = importlib.util.find_spec("torchvision")
    except (ImportError, ValueError):
        return False, LPIPS_NA
    if spec is None or spec.origin is None or tv is None:
        return False, LPIPS_NA
    lin = Path(spec.origin).parent / "weights" / "v0.1" / "alex.pth"
    if not lin.is_file():
        return False, LPIPS_NA
    try:
        import torch

        hub = Path(torch.hub.get_dir()) / "checkpoints"
    except Exception:
        return False, LPIPS_NA
    if not any(hub.glob("alexnet-*.pth")):
        return False, LPIPS_NA
    return True, "lpips (alex, v0.1)"


def _lpips_model():
    global _LPIPS_MODEL
    if _LPIPS_MODEL is None:
        import lpips  # noqa: F401  (only reached when lpips_status() found everything locally)

        _LPIPS_MODEL = lpips.LPIPS(net="alex", version="0.1", verbose=False).eval()
    return _LPIPS_MODEL


def lpips_distance(a, b) -> Optional[float]:
    """LPIPS between two RGB images, or None when it is not available locally (or fails)."""
    ok, _ = lpips_status()
    if not ok:
        return None
    import torch

    x, y = _pair(a, b)
    try:
        model = _lpips_model()
        tx = torch.from_numpy(x.transpose(2, 0, 1)[None]).float() * 2 - 1
        ty = torch.from_numpy(y.transpose(2, 0, 1)[None]).float() * 2 - 1
        with torch.inference_mode():
            return float(model(tx, ty).mean())
    except Exception:
        return None


def distortion(a, b, *, with_lpips: bool = True) -> dict:
    """{'mse', 'psnr', 'ssim', 'lpips' (None when not available)} between two images."""
    return {
        "mse": mse(a, b),
        "psnr": psnr(a, b),
        "ssim": ssim(a, b),
        "lpips": lpips_distance(a, b) if with_lpips else None,
    }
