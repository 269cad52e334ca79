"""Low-level StyleGAN2 operations, each with a plain reference path and a fast path.

The reference paths read like SPEC.md and are what the parity fixtures check. The fast
paths compute the same function with fewer passes over memory; tests compare the two.
Every op takes `impl="ref" | "fast"`; an unknown or unsupported choice falls back to the
reference with a warning, never a crash.

Shapes: `[NCHW]` activations, `[B,S]` styles (one scale per input channel), `[O,I,kh,kw]`
convolution weights.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

IMPLS = ("ref", "fast")
LRELU_GAIN = math.sqrt(2.0)


def _check_impl(impl: str, op: str) -> str:
    if impl not in IMPLS:
        warnings.warn(f"{op}: unknown impl {impl!r}, using the reference path", stacklevel=3)
        return "ref"
    return impl


def _check_nchw(x: torch.Tensor, op: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{op}: expected a [NCHW] tensor, got shape {tuple(x.shape)}")


# --------------------------------------------------------------------------------------
# FIR filtering: upsample by zero insertion, pad, convolve, downsample.


def upfirdn2d(x, kernel, *, up: int = 1, down: int = 1, pad=(0, 0), impl: str = "ref"):
    """Filter `x` [NCHW] with a 2-D FIR `kernel` [kh,kw] (SPEC "FIR filtering").

    `pad` = (before, after), applied to both axes after zero insertion; negative values crop.
    """
    _check_nchw(x, "upfirdn2d")
    if kernel.ndim != 2:
        raise ValueError(f"upfirdn2d: kernel must be 2-D, got {tuple(kernel.shape)}")
    if up < 1 or down < 1:
        raise ValueError(f"upfirdn2d: up and down must be >= 1, got {up}, {down}")
    impl = _check_impl(impl, "upfirdn2d")
    p0, p1 = int(pad[0]), int(pad[1])
    if impl == "fast" and down == 1 and up == 2 and kernel.shape[0] == kernel.shape[1] == 4 and (p0, p1) == (2, 1):
        return _upsample2x_fir_fast(x, kernel)
    return _upfirdn2d_ref(x, kernel, up, down, p0, p1)


def _upfirdn2d_ref(x, kernel, up, down, p0, p1):
    n, c, h, w = x.shape
    if up > 1:  # each sample followed by up-1 zeros: [N,C,H,1,W,1] -> [N,C,H*up,W*up]
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    hh, ww = x.shape[2], x.shape[3]
    x = x[:, :, max(-p0, 0) : hh - max(-p1, 0), max(-p0, 0) : ww - max(-p1, 0)]
    kh, kw = kernel.shape
    weight = torch.flip(kernel, [0, 1]).to(x).reshape(1, 1, kh, kw).expand(c, 1, kh, kw)  # [C,1,kh,kw]
    x = F.conv2d(x, weight, groups=c)
    return x[:, :, ::down, ::down]


def _upsample2x_fir_fast(x, kernel):
    """Zero insertion + pad (2,1) + 4x4 FIR == a strided depthwise transposed conv, padding 1."""
    c = x.shape[1]
    weight = kernel.to(x).reshape(1, 1, 4, 4).expand(c, 1, 4, 4)  # [C,1,4,4]
    return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=c)


# --------------------------------------------------------------------------------------
# Modulated convolution.


def demod_coefficients(weight, styles, eps: float = 1e-8):
    """rsqrt(sum over in,kh,kw of (weight * style)^2 + eps): [B,O] from weight [O,I,k,k], styles [B,I]."""
    wsq = weight.pow(2).sum(dim=[2, 3])  # [O,I]
    return torch.rsqrt(styles.pow(2) @ wsq.t() + eps)  # [B,O]


def modulated_conv2d(
    x,
    weight,
    styles,
    *,
    demodulate: bool = True,
    up: bool = False,
    blur_kernel=None,
    impl: str = "ref",
):
    """StyleGAN2 modulated convolution (SPEC "Modulated conv").

    x [B,I,H,W]; weight [O,I,k,k], already multiplied by its equalized-lr scale
    1/sqrt(I*k*k); styles [B,I]. With `up`, a stride-2 transposed conv followed by
    `blur_kernel` [4,4] (already multiplied by 4) with padding (1,1). Returns [B,O,H',W'].

    "ref": per-sample weights in one grouped convolution, as the reference does.
    "fast": scale the activations by the style, convolve with the shared weight,
    demodulate the output (no per-sample weights are built).
    """
    _check_nchw(x, "modulated_conv2d")
    b, i, h, w = x.shape
    o, wi, kh, kw = weight.shape
    if wi != i or styles.shape != (b, i):
        raise ValueError(
            f"modulated_conv2d: x {tuple(x.shape)}, weight {tuple(weight.shape)}, styles {tuple(styles.shape)} do not fit"
        )
    if up and blur_kernel is None:
        raise ValueError("modulated_conv2d: up=True needs blur_kernel")
    impl = _check_impl(impl, "modulated_conv2d")
    if impl == "fast":
        return _modconv_fast(x, weight, styles, demodulate, up, blur_kernel)
    return _modconv_ref(x, weight, styles, demodulate, up, blur_kernel)


def _modconv_ref(x, weight, styles, demodulate, up, blur_kernel):
    b, i, h, w = x.shape
    o, _, k, _ = weight.shape
    wb = weight.unsqueeze(0) * styles.reshape(b, 1, i, 1, 1)  # [B,O,I,k,k]
    if demodulate:
        d = torch.rsqrt(wb.pow(2).sum(dim=[2, 3, 4]) + 1e-8)  # [B,O]
        wb = wb * d.reshape(b, o, 1, 1, 1)
    xg = x.reshape(1, b * i, h, w)
    if up:
        wt = wb.transpose(1, 2).reshape(b * i, o, k, k)  # [B*I,O,k,k] for the transposed conv
        out = F.conv_transpose2d(xg, wt, stride=2, padding=0, groups=b)
        out = out.reshape(b, o, out.shape[2], out.shape[3])
        return upfirdn2d(out, blur_kernel, pad=(1, 1), impl="ref")
    out = F.conv2d(xg, wb.reshape(b * o, i, k, k), padding=k // 2, groups=b)
    return out.reshape(b, o, out.shape[2], out.shape[3])


def _modconv_fast(x, weight, styles, demodulate, up, blur_kernel):
    b, i = styles.shape
    k = weight.shape[-1]
    x = x * styles.reshape(b, i, 1, 1).to(x.dtype)
    w = weight.to(x.dtype)
    if up:
        out = F.conv_transpose2d(x, w.transpose(0, 1), stride=2, padding=0)
    else:
        out = F.conv2d(x, w, padding=k // 2)
    if demodulate:
        acc = torch.float64 if weight.dtype == torch.float64 else torch.float32  # never below float32
        d = demod_coefficients(weight.to(acc), styles.to(acc))  # [B,O]
        out = out * d.reshape(b, -1, 1, 1).to(out.dtype)
    if up:
        out = _blur_fast(out, blur_kernel)
    return out


def _blur_fast(x, kernel):
    """Depthwise 4x4 FIR with padding (1,1): the blur after the stride-2 transposed conv."""
    c = x.shape[1]
    weight = torch.flip(kernel, [0, 1]).to(x).reshape(1, 1, *kernel.shape).expand(c, 1, *kernel.shape)
    return F.conv2d(F.pad(x, [1, 1, 1, 1]), weight, groups=c)


# --------------------------------------------------------------------------------------
# Small pointwise pieces.


def bias_lrelu(x, bias, *, slope: float = 0.2, gain: float = LRELU_GAIN):
    """leaky_relu(x + bias, slope) * gain, with `bias` [C] broadcast over [N,C,...]."""
    shape = [1, -1] + [1] * (x.ndim - 2)
    return F.leaky_relu(x + bias.reshape(shape).to(x.dtype), slope) * gain


def pixel_norm(z, eps: float = 1e-8):
    """z * rsqrt(mean(z^2 over channels) + eps) for z [N,C]."""
    return z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + eps)
