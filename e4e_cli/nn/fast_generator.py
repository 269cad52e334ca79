"""The StyleGAN2 generator's fast path: `synthesize(generator, codes, noise, dtype=...,
options=..., plans=...)`, the same function as `Generator.synthesize` (networks.py, the
reference) and tested against it (tests/test_fastpaths.py).

All styles in one matmul, modulation applied to activations or weights (whichever is cheaper per
layer), up-sampling and blur fused, the large float32 3x3 convolutions by Winograd where that
pays (`ops.conv3x3`), channels-last activations, the high-resolution layers one sample at a
time (only one image's large activations are alive), and an optional reduced precision for the
convolutions. How is chosen by an `engine.FastOptions`; the derived tensors live in the
caller's `engine.Plans`.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from . import ops, runtime
from .engine import FAST_MODES, FAST_UP_MODES, FastOptions, Plans, each, lowp

if TYPE_CHECKING:
    from .networks import Generator


class _Step:
    """One style-reading layer of the synthesis network, in execution order."""

    __slots__ = ("kind", "mod", "owner", "code", "noise", "res_in", "gain", "weight_mode", "off", "wsq", "poly", "wcache",
                 "weight")

    def __init__(self, kind, mod, owner, code, noise, res_in, gain):
        self.kind, self.mod, self.owner, self.code, self.noise = kind, mod, owner, code, noise
        self.res_in, self.gain = res_in, gain
        self.weight_mode, self.off, self.wsq, self.poly = False, 0, None, None
        self.wcache: dict = {}
        self.weight = mod.weight.detach()[0]  # [O,I,k,k] raw (a copy with offsets applied: `_GeneratorFastPlan.with_offsets`)

    def derive(self, acc, up_mode: str) -> None:
        """The tensors derived from `weight`: squared scaled weights for demodulation and, for a
        high-resolution up-sampling layer, the polyphase kernels."""
        if self.kind != "conv":
            return
        wsc = self.weight.to(acc) * self.mod.scale
        self.wsq = wsc.pow(2).sum(dim=[2, 3])  # [O,I]
        if self.mod.up and self.weight_mode and up_mode == "polyphase":
            self.poly = ops.polyphase_up_weight(wsc, self.mod.blur.kernel.to(acc), phase_major=True)  # [4O,I,3,3]

    def shared_weight(self, dtype):
        """The layer's unmodulated weight for activation mode in `dtype` ([I,O,k,k] for a
        transposed conv). In another dtype than the loaded one, a channels-last copy made once
        (about 5 MB a layer in bfloat16: converting on every call cost ~12 ms per 1024 image);
        in the loaded dtype, the weight itself (a channels-last copy measured no faster)."""
        w0 = self.weight
        if self.mod.up:
            w0 = w0.transpose(0, 1)
        if w0.dtype == dtype:
            return w0
        w = self.wcache.get(dtype)
        if w is None:
            w = self.wcache[dtype] = w0.to(dtype=dtype, memory_format=torch.channels_last, copy=True)
        return w


class _GeneratorFastPlan:
    """Derived tensors of the generator's fast path (parameters are never modified):

    - every layer's modulation linear stacked into one [sum(I), D] matrix (about 19 MB at
      1024), so all styles come from one matmul;
    - sum over kh,kw of the squared scaled weights [O,I] per demodulated layer (demodulation
      coefficients are then a small matmul, no per-sample weights);
    - for the high-resolution up-sampling layers, the polyphase 3x3 kernels that fuse the
      transposed convolution with the blur (only where the weights are small).

    A layer runs in "weight mode" when its weights are smaller than one image's input
    activations: the style and demodulation then go into a per-sample copy of the (small)
    weights and the conv's bias, so the activations are touched only by the convolution, the
    noise add and the activation. Otherwise ("activation mode", low resolutions) the input is
    scaled by the style and the output by the demodulation, for the whole batch at once.
    The lrelu gain sqrt(2) is folded into the next layer's weights.
    """

    def __init__(self, g: "Generator", up_mode: str, mode: str = "auto"):
        if up_mode not in FAST_UP_MODES[1:]:
            raise ValueError(f"up_mode must be one of {FAST_UP_MODES[1:]} here, got {up_mode!r}")
        if mode not in FAST_MODES:
            raise ValueError(f"mode must be one of {FAST_MODES}, got {mode!r}")
        gain = ops.LRELU_GAIN
        acc = torch.float64 if g.input.input.dtype == torch.float64 else torch.float32  # never below float32
        self.dtype = acc
        steps = [_Step("conv", g.conv1.conv, g.conv1, 0, 0, 4, 1.0), _Step("rgb", g.to_rgb1.conv, g.to_rgb1, 1, None, 4, gain)]
        for k in range(len(g.to_rgbs)):
            res = 2 ** (k + 3)
            steps.append(_Step("conv", g.convs[2 * k].conv, g.convs[2 * k], 1 + 2 * k, 1 + 2 * k, res // 2, gain))
            steps.append(_Step("conv", g.convs[2 * k + 1].conv, g.convs[2 * k + 1], 2 + 2 * k, 2 + 2 * k, res, gain))
            steps.append(_Step("rgb", g.to_rgbs[k].conv, g.to_rgbs[k], 3 + 2 * k, None, res, gain))
        ws, bs, off = [], [], 0
        prev_weight_mode = False
        for st in steps:
            lin = st.mod.modulation
            ws.append(lin.weight.detach().to(acc) * lin.scale)
            bs.append(lin.bias.detach().to(acc) * lin.lr_mul)
            st.off = off
            off += lin.weight.shape[0]
            o, _, k, _ = st.weight.shape
            if st.kind == "conv":
                if mode == "auto":
                    st.weight_mode = prev_weight_mode or o * k * k <= st.res_in * st.res_in
                else:
                    st.weight_mode = mode == "weight"
                prev_weight_mode = st.weight_mode
            else:
                st.weight_mode = prev_weight_mode
            st.derive(acc, up_mode)
        self.steps = steps
        self.style_w = torch.cat(ws)  # [sum(I), D]
        self.style_b = torch.cat(bs)
        self.up_mode = up_mode

    def with_offsets(self, offsets: dict) -> "_GeneratorFastPlan":
        """This plan for the weights W * (1 + offset) of the layers in `offsets` ({layer index:
        [O,I,k,k] or [O,I,1,1]}, indices as `Generator.layers()`, which is the steps' order):
        the stacked styles are shared, the offset layers' steps are copies with their own
        weight and derived tensors. Built per call (offsets are per image)."""
        plan = copy.copy(self)
        plan.steps = list(self.steps)
        for i, off in offsets.items():
            st = copy.copy(self.steps[i])
            st.weight = st.weight * (1 + off.to(device=st.weight.device, dtype=st.weight.dtype))
            st.wcache = {}
            st.derive(self.dtype, self.up_mode)
            plan.steps[i] = st
        return plan


def _noise_term(st: _Step, noise, cdt):
    """noise.weight * noise: [N,1,H,W] in the compute dtype (tiny)."""
    w = st.owner.noise.weight.detach()
    return (w * noise.to(w.dtype)).to(cdt)


def _conv_activation_mode(st: _Step, x, s, nz, cdt, opts: FastOptions):
    """Batched modulated conv for low resolutions: scale x by the style, demodulate the output."""
    m = st.mod
    k = st.weight.shape[-1]
    x = x * (s * (m.scale * st.gain)).to(cdt)[:, :, None, None]
    w = st.shared_weight(cdt)
    if m.up:
        y = each(lambda v: ops.blur2d(F.conv_transpose2d(v, w, stride=2), m.blur.kernel), x)
    elif k == 3:
        y = each(lambda v: ops.conv3x3(v, w, **_conv3x3_args(opts)), x)
    else:
        y = each(lambda v: F.conv2d(v, w, padding=k // 2), x)
    del x
    d = each(lambda v: ops.demod_from_wsq(st.wsq, v), s)  # [B,O], float32
    y.mul_(d.to(cdt)[:, :, None, None])
    y.add_(_noise_term(st, nz, cdt))
    y.add_(lowp(st.owner.activate.bias, cdt)[None, :, None, None])
    return F.leaky_relu_(y, 0.2)


# Noise carried as input channels. A polyphase up-sampling layer's shuffle (which writes its
# output anyway) appends two channels holding the next convolution's noise term n as
# (+n/1.2, -n/1.2); they go through the leaky ReLU with the rest, and lrelu(v) - lrelu(-v) = 1.2 v,
# so +-1 centre taps in the next convolution add exactly n. That convolution is then one oneDNN
# call with the leaky ReLU fused (ops.conv2d_lrelu): no separate noise and activation passes over
# its large output (at 1024 in bfloat16: ~50 ms -> ~21 ms). Carrying the following up-sampling
# layer's noise the same way (8 more channels: 4 phases, +-) was measured slower: oneDNN's
# convolutions lose more on the odd channel counts than the saved passes gain.
_NOISE_OWN = 2


def _plus_minus(v):
    return torch.cat([v, -v], dim=1)


def _conv_weight_mode(st: _Step, x, s, nz, cdt, opts: FastOptions, extras=None):
    """One sample's modulated conv with style and demodulation folded into its (small) weights.

    `x` may carry the noise channels described above after its I real ones. For a polyphase
    up-sampling layer, `extras` ([1,E,2H,2W]) are appended to its output.
    """
    m = st.mod
    w0 = st.weight
    o, i, k, _ = w0.shape
    c = k // 2
    d = ops.demod_from_wsq(st.wsq, s)  # [1,O]
    coef = d[0][:, None] * s[0][None, :] * st.gain  # [O,I] (the equalized-lr scale is in wsq/poly)
    bias = st.owner.activate.bias
    if m.up and st.poly is not None:  # one conv for all four output phases
        # [4O,I,3,3], phase-major rows: modulated, cast and laid out channels-last in one pass
        w = torch.empty(st.poly.shape, dtype=cdt, device=x.device, memory_format=torch.channels_last)
        torch.mul(st.poly, coef.repeat(4, 1)[:, :, None, None], out=w)
        y = F.conv2d(x, w, lowp(bias.repeat(4), cdt), padding=1)
        del x
        y = ops.phase_shuffle_add(y, _noise_term(st, nz, cdt), extras)  # shuffle + noise in one pass
        return F.leaky_relu_(y, 0.2)
    w = w0 * (coef * m.scale)[:, :, None, None]
    if x.shape[1] == i + _NOISE_OWN and not m.up:  # the noise arrived as input channels
        ext = w.new_zeros(o, _NOISE_OWN, k, k)
        ext[:, 0, c, c] = 1.0
        ext[:, 1, c, c] = -1.0
        w = torch.cat([w, ext], dim=1).to(dtype=cdt, memory_format=torch.channels_last)
        return ops.conv2d_lrelu(x, w, lowp(bias, cdt), padding=c, fused=opts.fused_lrelu)
    w = lowp(w, cdt)
    if m.up:
        y = F.conv_transpose2d(x, w.transpose(0, 1), stride=2)
        del x
        y = ops.blur2d(y, m.blur.kernel, bias=bias)
        y.add_(_noise_term(st, nz, cdt))
    elif k == 3:  # direct or Winograd, whichever is faster here (ops.conv3x3), noise added in its last pass
        y = ops.conv3x3(x, w, lowp(bias, cdt), addend=_noise_term(st, nz, cdt), **_conv3x3_args(opts))
        del x
    else:
        y = F.conv2d(x, w, lowp(bias, cdt), padding=c)
        del x
        y.add_(_noise_term(st, nz, cdt))
    return F.leaky_relu_(y, 0.2)


def _to_rgb_fast(st: _Step, x, s, skip, cdt):
    """ToRGB: 1x1 modulated conv (no demodulation) + bias in the compute dtype; the running RGB
    image (`skip`, up-sampled by the FIR) is accumulated in float32."""
    m = st.mod
    w0 = st.weight  # [3,I,1,1]
    coef = s * (m.scale * st.gain)  # [B,I]
    bias = lowp(st.owner.bias.reshape(-1), cdt)
    if st.weight_mode and x.shape[0] == 1:
        w = w0 * coef[0][None, :, None, None]
        if x.shape[1] > w.shape[1]:  # noise channels riding along: not part of the image
            w = torch.cat([w, w.new_zeros(w.shape[0], x.shape[1] - w.shape[1], 1, 1)], dim=1)
        y = F.conv2d(x, lowp(w, cdt), bias)
    else:
        w = lowp(w0, cdt)
        y = each(lambda v: F.conv2d(v, w, bias), x * coef.to(cdt)[:, :, None, None])
    y = y.to(s.dtype)  # float32 (float64 for a float64 model), channels-last
    if skip is not None:
        y += each(lambda v: ops.upfirdn2d(v, st.owner.upsample.kernel, up=2, pad=(2, 1), impl="fast"), skip)
    return y


# Up-sampling layers in weight mode. "transpose": stride-2 transposed conv, then a depthwise
# blur with the bias; "polyphase": one 3x3 conv with 4*O outputs (transposed conv and blur
# folded together: 4x the multiply-adds), then the pixel shuffle fused with the noise add:
# one pass less over the large output. "auto": polyphase in reduced precision where the
# convolution is cheap (a matrix engine: AMX on CPUs, tensor cores on GPUs; see
# runtime.matrix_engine), transpose otherwise. Measured at 1024 (bench/bench.py's ablation,
# 2 cores): Sapphire Rapids (AMX) float32 transpose ~0.6 s vs polyphase ~0.85 s, bfloat16 about
# equal with polyphase slightly ahead; Zen 4 (AVX512-BF16, no AMX) float32 0.80 vs 1.30 s,
# bfloat16 0.43 vs 0.68 s.
# (FAST_UP_MODES and FAST_MODES: see engine.py, where FastOptions checks them.)


def _conv3x3_args(opts: FastOptions) -> dict:
    return {"impl": opts.conv3x3, "min_channels": opts.winograd_min_channels, "min_side": opts.winograd_min_side}


def synthesize(g: "Generator", codes, noise=None, *, dtype=None, options: FastOptions | None = None,
               plans: Plans | None = None, offsets=None, stop_at: int | None = None, should_stop=None,
               style_offsets=None):
    """The generator's fast path: codes [B,n_styles,D] -> image [B,3,size,size], the same
    function as `g.synthesize(codes, noise=noise, offsets=offsets, stop_at=stop_at)`
    (networks.py, the reference).

    `noise` defaults to the fixed buffers; `dtype` runs the convolutions in a reduced precision
    (styles, demodulation and the RGB image stay float32); `options` (engine.FastOptions) choose
    the modes; `plans` keeps the derived tensors between calls (None: built for this call only).
    `offsets`: per-layer relative weight offsets (`Generator.check_offsets`); one image's are
    folded into a per-call copy of the plan's weights, per-sample ones run image by image.
    `stop_at`: return the [B,3,r,r] image after the r block (the skip branch's partial sum).
    `should_stop`: called before each up-sampling block; True raises errors.Cancelled.
    `style_offsets`: StyleSpace offsets [C] or [B,C] added to the convolutions' styles
    (`Generator.check_style_offsets`); the ToRGB styles are left alone.
    """
    if codes.ndim != 3 or codes.shape[1] != g.n_styles or codes.shape[2] != g.style_dim:
        raise ValueError(f"codes must be [B,{g.n_styles},{g.style_dim}], got {tuple(codes.shape)}")
    noise = g.fixed_noise() if noise is None else noise
    b = codes.shape[0]
    off = g.check_offsets(offsets, batch=b)
    sty = g.check_style_offsets(style_offsets, batch=b)
    n_steps = 2 + 3 * g.blocks_until(stop_at)
    if any(t.ndim == 5 and t.shape[0] > 1 for t in off.values()):  # a different generator per image
        parts = []
        for i in range(b):
            own = {k: (t[i] if t.ndim == 5 and t.shape[0] > 1 else t) for k, t in off.items()}
            nz = [n[i : i + 1] if n.shape[0] > 1 else n for n in noise]
            so = None
            if style_offsets is not None:
                so = style_offsets[i : i + 1] if style_offsets.ndim == 2 and style_offsets.shape[0] > 1 else style_offsets
            parts.append(synthesize(g, codes[i : i + 1], nz, dtype=dtype, options=options, plans=plans,
                                    offsets=own, stop_at=stop_at, should_stop=should_stop, style_offsets=so))
        return torch.cat(parts)
    opts = FastOptions() if options is None else options
    up_mode, mode = opts.up_mode, opts.mode
    if up_mode == "auto":
        reduced = dtype is not None and dtype not in (torch.float32, torch.float64)
        engine = codes.device.type != "cpu" or runtime.matrix_engine()
        up_mode = "polyphase" if reduced and engine else "transpose"
    if mode == "auto" and codes.device.type != "cpu":
        mode = "activation"  # GPUs: batched convolutions everywhere (elementwise passes are cheap there)
    key = (str(codes.device), g.input.input.dtype, up_mode, mode)
    plans = Plans() if plans is None else plans
    plan = plans.get(g, key, lambda: _GeneratorFastPlan(g, up_mode, mode))
    if off:
        plan = plan.with_offsets({k: (t[0] if t.ndim == 5 else t) for k, t in off.items()})
    base = plan.dtype  # styles, demodulation and the RGB image: float32 (float64 for a float64 model)
    cdt = dtype or base
    styles = each(lambda c: F.linear(c, plan.style_w, plan.style_b), codes.to(base))  # [B, n_styles, sum(I)]
    svec = [styles[:, st.code, st.off : st.off + st.weight.shape[1]] for st in plan.steps[:n_steps]]
    if sty is not None:  # StyleSpace offsets: step j is layer j of `g.layers()`
        svec = [v + sty[j].to(device=v.device, dtype=v.dtype) if j in sty else v for j, v in enumerate(svec)]
    cl = torch.channels_last
    x = g.input.input.expand(b, -1, -1, -1).to(cdt).contiguous(memory_format=cl)
    skip = None
    steps = plan.steps[:n_steps]
    first_w = next((i for i, st in enumerate(steps) if st.weight_mode), len(steps))
    for j, st in enumerate(steps[:first_w]):  # low resolutions: the whole batch at once
        if st.kind == "conv" and st.mod.up:  # a block starts
            ops.stop_if_asked(should_stop)
        if st.kind == "conv":
            x = _conv_activation_mode(st, x, svec[j], noise[st.noise], cdt, opts)
        else:
            skip = _to_rgb_fast(st, x, svec[j], skip, cdt)
    if first_w == len(steps):
        return skip.contiguous()
    outs = []
    for i in range(b):  # high resolutions: one sample at a time (small weights, large activations)
        xi = x[i : i + 1].contiguous(memory_format=cl)
        si = None if skip is None else skip[i : i + 1]
        rest = steps[first_w:]
        carry = opts.fused_lrelu and ops.fused_conv_lrelu_ok(xi, xi)  # noise as input channels needs the fused op

        def nterm(st_, _i=i):
            n = noise[st_.noise]
            return _noise_term(st_, n[_i : _i + 1] if n.shape[0] > 1 else n, torch.float32)

        for j, st in enumerate(rest):
            if st.kind == "conv" and st.mod.up:
                ops.stop_if_asked(should_stop)
            if st.kind == "conv":
                extras = None
                if carry and st.poly is not None and j + 1 < len(rest) and rest[j + 1].kind == "conv" \
                        and not rest[j + 1].mod.up:
                    extras = _plus_minus(nterm(rest[j + 1]) / 1.2)
                nz = noise[st.noise]
                nz = nz[i : i + 1] if nz.shape[0] > 1 else nz
                xi = _conv_weight_mode(st, xi, svec[first_w + j][i : i + 1], nz, cdt, opts, extras)
            else:
                si = _to_rgb_fast(st, xi, svec[first_w + j][i : i + 1], si, cdt)
        del xi
        outs.append(si)
    del x
    return outs[0].contiguous() if b == 1 else torch.cat(outs).contiguous()
