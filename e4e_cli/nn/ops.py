"""Low-level StyleGAN2 operations, each with a plain reference path and a fast path.

The reference paths read like SPEC.md and are what the parity fixtures check. The fast
paths compute the same function with fewer passes over memory; tests compare the two.
Every op takes `impl="ref" | "fast"`; an unknown or unsupported choice falls back to the
reference with a warning, never a crash.

Shapes: `[NCHW]` activations, `[B,S]` styles (one scale per input channel), `[O,I,kh,kw]`
convolution weights.

Below the two ops are the building blocks of the generator's fast path (fast_generator.py): the
blur with its bias, demodulation from precomputed squared weights, the polyphase kernel that
fuses transposed conv + blur, the pixel shuffle fused with the noise add, and oneDNN's fused
convolution + leaky ReLU (with a plain fallback). Each is checked against the reference in
tests/test_fastpaths.py.
"""
from __future__ import annotations

import contextvars
import math
import warnings

import torch
import torch.nn.functional as F

from .. import settings
from ..errors import Cancelled

IMPLS = ("ref", "fast")
LRELU_GAIN = math.sqrt(2.0)


def check_impl(impl: str, op: str) -> str:
    """`impl` when it is one of IMPLS, else "ref" with a warning naming `op`."""
    if impl not in IMPLS:
        warnings.warn(f"{op}: unknown impl {impl!r}, using the reference path", stacklevel=3)
        return "ref"
    return impl


def stop_if_asked(should_stop) -> None:
    """Between two blocks of a synthesis: raise errors.Cancelled when the caller's `should_stop()`
    says so (a newer request made this decode stale; both synthesis paths ask here)."""
    if should_stop is not None and should_stop():
        raise Cancelled("stopped between two blocks of the synthesis")


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
    impl = check_impl(impl, "upfirdn2d")
    p0, p1 = int(pad[0]), int(pad[1])
    if impl == "fast" and down == 1 and up == 2 and kernel.shape[0] == kernel.shape[1] == 4 and (p0, p1) == (2, 1):
        return _upsample2x_fir_fast(x, kernel)
    return _upfirdn2d_ref(x, kernel, up, down, p0, p1)


# How the reference path lays out its FIR convolution. "depthwise": one grouped convolution
# with a [C,1,kh,kw] weight. "per_channel": the reference implementation's CPU fallback way:
# every channel becomes its own single-channel image in the batch ([N*C,1,H,W]) and one
# [1,1,kh,kw] kernel filters them all. Same numbers (tests check), but PyTorch's CPU backend
# runs the second about ten times slower at 1024; bench/bench.py times the reference's way of
# computing with it (E4E's FastOptions.fir_layout). Set for a block of code with
# `reference_fir_layout`: a context variable, so each thread (and asyncio task) has its own.
FIR_LAYOUTS = ("depthwise", "per_channel")
_FIR_LAYOUT: contextvars.ContextVar[str] = contextvars.ContextVar("e4e_reference_fir_layout", default="depthwise")


def current_fir_layout() -> str:
    """The reference FIR layout in force here (this thread's or task's)."""
    return _FIR_LAYOUT.get()


class reference_fir_layout:
    """Context manager: `with reference_fir_layout("per_channel"): ...`; thread-safe (it sets a
    context variable, seen only by the code it wraps in this thread)."""

    def __init__(self, layout: str):
        if layout not in FIR_LAYOUTS:
            raise ValueError(f"FIR layout must be depthwise or per_channel, got {layout!r}")
        self.layout = layout
        self._tokens: list = []

    def __enter__(self):
        self._tokens.append(_FIR_LAYOUT.set(self.layout))
        return self

    def __exit__(self, *exc):
        _FIR_LAYOUT.reset(self._tokens.pop())
        return False


def _upfirdn2d_ref(x, kernel, up, down, p0, p1):
    if _FIR_LAYOUT.get() == "per_channel":
        return _upfirdn2d_per_channel(x, kernel, up, down, p0, p1)
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


def _upfirdn2d_per_channel(x, kernel, up, down, p0, p1):
    """The FIR with every channel a single-channel image: [N,C,H,W] -> [N*C,H,W,1] for the zero
    insertion and padding, then [N*C,1,H',W'] through one [1,1,kh,kw] convolution."""
    n, c, h, w = x.shape
    v = x.reshape(n * c, h, w, 1)
    if up > 1:  # [NC,H,1,W,1,1] padded with zeros after each sample
        v = F.pad(v.reshape(n * c, h, 1, w, 1, 1), [0, 0, 0, up - 1, 0, 0, 0, up - 1])
        v = v.reshape(n * c, h * up, w * up, 1)
    v = F.pad(v, [0, 0, max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    hh, ww = v.shape[1], v.shape[2]
    v = v[:, max(-p0, 0) : hh - max(-p1, 0), max(-p0, 0) : ww - max(-p1, 0), :]
    v = v.permute(0, 3, 1, 2).reshape(n * c, 1, v.shape[1], v.shape[2])  # [NC,1,H',W']
    kh, kw = kernel.shape
    v = F.conv2d(v, torch.flip(kernel, [0, 1]).to(v).reshape(1, 1, kh, kw))
    v = v.permute(0, 2, 3, 1)[:, ::down, ::down, :]  # [NC,Ho,Wo,1]
    return v.reshape(n, c, v.shape[1], v.shape[2])


def _upsample2x_fir_fast(x, kernel):
    """Zero insertion + pad (2,1) + 4x4 FIR == a strided depthwise transposed conv, padding 1.

    Computed channels-last (returned so): oneDNN's depthwise transposed convolution is about
    ten times faster in that layout than in NCHW.
    """
    c = x.shape[1]
    cl = torch.channels_last
    weight = kernel.to(x).reshape(1, 1, 4, 4).expand(c, 1, 4, 4).contiguous(memory_format=cl)  # [C,1,4,4]
    return F.conv_transpose2d(x.contiguous(memory_format=cl), weight, stride=2, padding=1, groups=c)


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
    1/sqrt(I*k*k), or per sample [B,O,I,k,k] / [1,O,I,k,k] (a weight with HyperStyle's offsets);
    styles [B,I]. With `up`, a stride-2 transposed conv followed by `blur_kernel` [4,4]
    (already multiplied by 4) with padding (1,1). Returns [B,O,H',W'].

    "ref": per-sample weights in one grouped convolution, as the reference does.
    "fast": scale the activations by the style, convolve with the shared weight,
    demodulate the output (no per-sample weights are built).
    """
    _check_nchw(x, "modulated_conv2d")
    b, i, h, w = x.shape
    if weight.ndim == 5 and weight.shape[0] == 1:
        weight = weight[0]  # one weight for the whole batch
    per_sample = weight.ndim == 5
    o, wi, kh, kw = weight.shape[-4:]
    if wi != i or styles.shape != (b, i) or (per_sample and weight.shape[0] != b):
        raise ValueError(
            f"modulated_conv2d: x {tuple(x.shape)}, weight {tuple(weight.shape)}, styles {tuple(styles.shape)} do not fit"
        )
    if up and blur_kernel is None:
        raise ValueError("modulated_conv2d: up=True needs blur_kernel")
    impl = check_impl(impl, "modulated_conv2d")
    if impl == "fast" and not per_sample:  # per-sample weights: the grouped convolution is the way
        return _modconv_fast(x, weight, styles, demodulate, up, blur_kernel)
    return _modconv_ref(x, weight, styles, demodulate, up, blur_kernel)


def _modconv_ref(x, weight, styles, demodulate, up, blur_kernel):
    b, i, h, w = x.shape
    o, _, k, _ = weight.shape[-4:]
    wb = (weight if weight.ndim == 5 else weight.unsqueeze(0)) * styles.reshape(b, 1, i, 1, 1)  # [B,O,I,k,k]
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


def _blur_fast(x, kernel, bias=None):
    """Depthwise 4x4 FIR with padding (1,1): the blur after the stride-2 transposed conv.

    `bias` [C] is added in the same pass (the convolution's own bias).
    """
    c = x.shape[1]
    weight = torch.flip(kernel, [0, 1]).to(x).reshape(1, 1, *kernel.shape).expand(c, 1, *kernel.shape)
    if x.is_contiguous(memory_format=torch.channels_last):
        weight = weight.contiguous(memory_format=torch.channels_last)
    else:
        weight = weight.contiguous()
    return F.conv2d(x, weight, None if bias is None else bias.to(x.dtype), padding=1, groups=c)


def blur2d(x, kernel, *, bias=None):
    """The blur of the up-sampling modulated conv: depthwise FIR `kernel`, padding (1,1), plus `bias` [C]."""
    _check_nchw(x, "blur2d")
    return _blur_fast(x, kernel, bias)


# --------------------------------------------------------------------------------------
# Building blocks of the fast generator (fast_generator.py).


def demod_from_wsq(wsq, styles, eps: float = 1e-8):
    """Demodulation coefficients [B,O] from wsq = sum over kh,kw of weight^2 [O,I] and styles [B,I]."""
    return torch.rsqrt(styles.pow(2) @ wsq.t() + eps)


def polyphase_up_weight(weight, blur_kernel, *, phase_major: bool = False):
    """Fold "stride-2 transposed conv with `weight`, then the 4x4 blur with padding (1,1)" into
    one 3x3 convolution with 4*O outputs, one per output phase (ry, rx).

    weight [O,I,k,k] (k = 3) -> [4*O, I, 3, 3] with
    `pixel_shuffle(conv2d(x, result, padding=1), 2) == blur(conv_transpose2d(x, weight^T, stride=2))`;
    output channel o*4 + ry*2 + rx (`pixel_shuffle` order), or with `phase_major`
    (ry*2 + rx)*O + o, the order `phase_shuffle_add` reads.

    Derivation (one axis): the combined kernel is the full convolution K = w * b (length 6), and
    output sample 2q+r (r in {0,1}) is sum over e in {-1,0,1} of x[q+e] * K[r+4-2e].
    """
    o, i, k, k2 = weight.shape
    if k != 3 or k2 != 3 or tuple(blur_kernel.shape) != (4, 4):
        raise ValueError(f"polyphase_up_weight: needs a 3x3 weight and a 4x4 blur, got {tuple(weight.shape)}, {tuple(blur_kernel.shape)}")
    b = torch.flip(blur_kernel, [0, 1]).to(weight).reshape(1, 1, 4, 4)
    full = F.conv2d(weight.reshape(o * i, 1, 3, 3), b, padding=3).reshape(o, i, 6, 6)  # K = w (full conv) blur
    # phase r along an axis takes taps K[r+4], K[r+2], K[r] at offsets -1, 0, +1
    idx = torch.tensor([[4, 2, 0], [5, 3, 1]], device=weight.device)  # [r, a]
    rows = full[:, :, idx]  # [O,I,2(ry),3(a),6]
    taps = rows[:, :, :, :, idx]  # [O,I,2(ry),3(a),2(rx),3(b)]
    if phase_major:
        return taps.permute(2, 4, 0, 1, 3, 5).reshape(4 * o, i, 3, 3)
    return taps.permute(0, 2, 4, 1, 3, 5).reshape(o * 4, i, 3, 3)


def phase_shuffle_add(y, other, extra=None):
    """pixel_shuffle for a phase-major [N,4*C,H,W] tensor (channel (ry*2+rx)*C + c), fused with
    adding `other` [N or 1, 1 or C, 2H, 2W] (None: a plain copy): one pass writes the
    channels-last [N,C,2H,2W] result.

    `extra` [N or 1, E, 2H, 2W] is appended as channels C..C+E-1 of the result.
    """
    n, c4, h, w = y.shape
    c = c4 // 4
    e = 0 if extra is None else extra.shape[1]
    out = torch.empty((n, c + e, 2 * h, 2 * w), dtype=y.dtype, device=y.device, memory_format=torch.channels_last)
    src = y.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, c).permute(0, 1, 3, 2, 4, 5)  # [N,H,ry,W,rx,C]
    dst = out[:, :c].permute(0, 2, 3, 1).view(n, h, 2, w, 2, c) if e == 0 else \
        out.permute(0, 2, 3, 1)[..., :c].unflatten(1, (h, 2)).unflatten(3, (w, 2))
    if other is None:
        dst.copy_(src)
    else:
        oth = other.permute(0, 2, 3, 1).reshape(other.shape[0], h, 2, w, 2, other.shape[1])
        torch.add(src, oth.to(y.dtype), out=dst)
    if e:
        out[:, c:].copy_(extra.to(y.dtype).expand(n, -1, -1, -1))
    return out


_FUSED_LRELU_OK: dict = {}  # a fact about this PyTorch build, per dtype


def fused_conv_lrelu_ok(x, w) -> bool:
    """Whether oneDNN's fused convolution + leaky ReLU (torch.ops.mkldnn._convolution_pointwise,
    the op torch.compile's CPU backend uses) is usable here; checked once per dtype on a tiny input."""
    if x.device.type != "cpu" or torch.is_grad_enabled() or w.dtype != x.dtype:
        return False
    key = x.dtype
    ok = _FUSED_LRELU_OK.get(key)
    if ok is None:
        ok = False
        try:
            op = torch.ops.mkldnn._convolution_pointwise
            if torch.backends.mkldnn.is_available():
                g = torch.Generator().manual_seed(0)
                tx = torch.randn(1, 5, 6, 6, generator=g).to(key).contiguous(memory_format=torch.channels_last)
                tw = torch.randn(4, 5, 3, 3, generator=g).to(key).contiguous(memory_format=torch.channels_last)
                tb = torch.randn(4, generator=g).to(key)
                got = op(tx, tw, tb, [1, 1], [1, 1], [1, 1], 1, "leaky_relu", [0.2], "")
                want = F.leaky_relu(F.conv2d(tx.float(), tw.float(), tb.float(), padding=1), 0.2)
                ok = bool(torch.allclose(got.float(), want, atol=0.1, rtol=0.02))
        except (AttributeError, RuntimeError, NotImplementedError):
            ok = False
        _FUSED_LRELU_OK[key] = ok
    return ok


def conv2d_lrelu(x, weight, bias, *, padding: int, slope: float = 0.2, fused: bool = True):
    """leaky_relu(conv2d(x, weight, bias, padding), slope): one oneDNN call with the activation
    fused where available and `fused` (saves two passes over the output), else conv then
    in-place lrelu."""
    if fused and fused_conv_lrelu_ok(x, weight):
        b = None if bias is None else bias.to(x.dtype)
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, b, [padding, padding], [1, 1], [1, 1], 1, "leaky_relu", [slope], "")
    return F.leaky_relu_(F.conv2d(x, weight, bias, padding=padding), slope)


# --------------------------------------------------------------------------------------
# Layout changes.

_RELAYOUT_BLOCK_ELEMENTS = 1 << 18  # a block of pixels x channels: 1 MB in float32, stays in L2


def relayout(x, memory_format):
    """x [NCHW] in `memory_format` (torch.channels_last or torch.contiguous_format): x itself
    when already so, else a copy made in blocks of pixels.

    PyTorch's own copy between the two layouts walks one side with a stride of H*W elements:
    at 64 channels x 512x512 (float32, 2 Zen 4 cores) it took 75-130 ms to NCHW, where a plain
    copy takes 4 ms; in blocks of about 1 MB it takes 11-15 ms (to channels-last ~25 ms either way).
    """
    _check_nchw(x, "relayout")
    if memory_format not in (torch.channels_last, torch.contiguous_format):
        raise ValueError(f"relayout: memory_format must be channels_last or contiguous_format, got {memory_format}")
    if x.is_contiguous(memory_format=memory_format):
        return x
    n, c, h, w = x.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format)
    to_cl = memory_format is torch.channels_last
    source_ok = x.is_contiguous() if to_cl else x.is_contiguous(memory_format=torch.channels_last)
    if x.device.type != "cpu" or not source_ok or h * w <= 4096:
        return out.copy_(x)
    hw = h * w
    blk = max(512, _RELAYOUT_BLOCK_ELEMENTS // c)  # pixels per block
    if to_cl:  # [N,C,HW] -> [N,HW,C]
        src, dst = x.reshape(n, c, hw), out.permute(0, 2, 3, 1).reshape(n, hw, c)
        for i in range(n):
            for j in range(0, hw, blk):
                dst[i, j : j + blk].copy_(src[i, :, j : j + blk].t())
    else:  # [N,HW,C] -> [N,C,HW]
        src, dst = x.permute(0, 2, 3, 1).reshape(n, hw, c), out.reshape(n, c, hw)
        for i in range(n):
            for j in range(0, hw, blk):
                dst[i, :, j : j + blk].copy_(src[i, j : j + blk].t())
    return out


# --------------------------------------------------------------------------------------
# 3x3 convolution by Winograd's minimal filtering (NNPACK).
#
# NNPACK, built into PyTorch's x86-64 and ARM CPU wheels, computes a stride-1 3x3 convolution
# with Winograd's F(6x6, 3x3): about 5x fewer multiplications than the direct method, in AVX2 +
# FMA code that runs the same on every x86-64 CPU since 2013. Float32 only; relative error about
# 5e-6 (direct: 2e-7), far inside the parity bounds. Measured against oneDNN's direct
# convolution on 2 Zen 4 cores, NCHW in and out (ms, direct -> Winograd; AVX-512 / AVX2-only):
#   512 ch x 64x64: 90 -> 35 / 96 -> 35     256 x 128x128: 86 -> 33 / 87 -> 39
#   128 x 256x256:  88 -> 40-52 / 120 -> 52  64 x 512x512: 87-114 -> 52-77 / 145 -> 109
#   256 x 32x32: Winograd 25% slower; 32 x 1024x1024: about equal.
# The generator runs channels-last, and changing layout around NNPACK costs 10-40 ms at the
# larger images. So "auto" takes Winograd where it is more than twice as fast as the direct
# method: 256 channels or more at 64x64 and up, a margin that a CPU with twice Zen 4's float32
# throughput per core (two 512-bit FMA units) would still not close. Where oneDNN is limited to
# AVX2 (at most two 256-bit FMA units, so no faster than the Zen 4 measured AVX2-only above),
# from 128 channels: 120 -> 77 ms with the layout changes at 128 x 256x256.

CONV3X3_IMPLS = ("auto", "direct", "winograd")
_WINOGRAD_OK: dict = {}  # a fact about this PyTorch build, checked once


def winograd_min_channels() -> int:
    """The channel threshold of conv3x3's "auto" on this CPU (see above): 256, or 128 where
    ATen's kernels are at most AVX2."""
    try:
        wide = torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2", "NO AVX")
    except (AttributeError, RuntimeError):
        wide = True
    return 256 if wide else 128


def winograd_available() -> bool:
    """Whether NNPACK is in this PyTorch build and gives the right numbers (checked once; the
    check also initialises NNPACK, which its convolution needs)."""
    ok = _WINOGRAD_OK.get("cpu")
    if ok is None:
        ok = False
        try:
            if torch._nnpack_available():
                g = torch.Generator().manual_seed(0)
                tx = torch.randn(1, 8, 12, 12, generator=g)
                tw = torch.randn(8, 8, 3, 3, generator=g)
                tb = torch.randn(8, generator=g)
                got = torch._nnpack_spatial_convolution(tx, tw, tb, [1, 1], [1, 1])
                ok = bool(torch.allclose(got, F.conv2d(tx, tw, tb, padding=1), atol=1e-3, rtol=1e-3))
        except (AttributeError, RuntimeError, NotImplementedError):
            ok = False
        _WINOGRAD_OK["cpu"] = ok
    return ok


def _winograd_can_run(x, weight) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_grad_enabled() and winograd_available())


def _winograd_pays(x, weight, min_channels, min_side) -> bool:
    min_channels = winograd_min_channels() if min_channels is None else min_channels
    return min(weight.shape[0], weight.shape[1]) >= min_channels and min(x.shape[2], x.shape[3]) >= min_side


def conv3x3(x, weight, bias=None, *, addend=None, impl: str = "auto", min_channels: int | None = None,
            min_side: int = 64):
    """conv2d(x, weight, bias, padding=1) + addend, for x [N,I,H,W], weight [O,I,3,3], bias [O],
    `addend` broadcastable to [N,O,H,W] (the generator's noise). The result has x's layout
    (channels-last in, channels-last out).

    impl: "direct" (PyTorch's convolution: oneDNN on CPUs); "winograd" (NNPACK; float32 CPU
    inference only, falls back to direct with a warning elsewhere); "auto": Winograd where it
    can run and pays, else direct (E4E_WINOGRAD=0: always direct). It pays where both channel
    counts are at least `min_channels` (None: `winograd_min_channels()`, by the CPU) and both
    image sides at least `min_side`.
    """
    _check_nchw(x, "conv3x3")
    if tuple(weight.shape[2:]) != (3, 3) or weight.shape[1] != x.shape[1]:
        raise ValueError(f"conv3x3: x {tuple(x.shape)} and weight {tuple(weight.shape)} do not fit")
    if impl not in CONV3X3_IMPLS:
        warnings.warn(f"conv3x3: unknown impl {impl!r}, using direct", stacklevel=2)
        impl = "direct"
    winograd = False
    if impl == "winograd":
        winograd = _winograd_can_run(x, weight)
        if not winograd:
            warnings.warn("conv3x3: Winograd (NNPACK) cannot run here (it needs float32 CPU inference and "
                          "NNPACK in PyTorch), using direct", stacklevel=2)
    elif impl == "auto":
        winograd = _winograd_pays(x, weight, min_channels, min_side) and _winograd_can_run(x, weight) and settings.winograd()
    if not winograd:
        y = F.conv2d(x, weight, bias, padding=1)
        return y if addend is None else y.add_(addend)
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    y = torch._nnpack_spatial_convolution(relayout(x, torch.contiguous_format), weight.contiguous(), bias, [1, 1], [1, 1])  # [NCHW]
    if addend is not None:
        y.add_(addend)
    return relayout(y, torch.channels_last) if cl else y


# --------------------------------------------------------------------------------------
# Small pointwise pieces.


def bias_lrelu(x, bias, *, slope: float = 0.2, gain: float = LRELU_GAIN):
    """leaky_relu(x + bias, slope) * gain, with `bias` [C] broadcast over [N,C,...]."""
    shape = [1, -1] + [1] * (x.ndim - 2)
    return F.leaky_relu(x + bias.reshape(shape).to(x.dtype), slope) * gain


def pixel_norm(z, eps: float = 1e-8):
    """z * rsqrt(mean(z^2 over channels) + eps) for z [N,C]."""
    return z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + eps)
