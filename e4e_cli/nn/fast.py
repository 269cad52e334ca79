"""Fast paths of the e4e encoder and the StyleGAN2 generator (impl="fast").

`networks.py` is the plain reference that reads like SPEC.md; this module computes the same
functions faster and is tested against it (tests/test_fastpaths.py): BatchNorm folded into
the convolutions, channels-last activations, all styles in one matmul, modulation applied to
activations or weights (whichever is cheaper per layer), up-sampling and blur fused, the
generator's large float32 3x3 convolutions by Winograd where that pays (`ops.conv3x3`), and an
optional reduced precision for the convolutions. Derived tensors are cached on the module
(`_fast_plans`) and dropped by `clear_fast_cache()`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from . import runtime as cputune
from .networks import upsample_add

if TYPE_CHECKING:
    from .networks import Encoder4Editing, Generator, StyleBlock

# --------------------------------------------------------------------------------------
# Encoder fast path


def _each(fn, x):
    """fn applied to each sample of x on its own, concatenated. Matrix products round differently
    for different row counts (MKL and oneDNN pick kernels by shape), so the fast paths run every
    product whose row count would depend on the batch size sample by sample: an image's result is
    then bitwise the same whatever batch it is in (the reference path does not promise that)."""
    if x.shape[0] == 1:
        return fn(x)
    return torch.cat([fn(x[i : i + 1]) for i in range(x.shape[0])])


def _bn_affine(bn: nn.BatchNorm2d, acc=torch.float32):
    """Inference BatchNorm as y = x * scale + shift: (scale [C], shift [C]) in `acc`."""
    scale = bn.weight.detach().to(acc) * torch.rsqrt(bn.running_var.detach().to(acc) + bn.eps)
    return scale, bn.bias.detach().to(acc) - bn.running_mean.detach().to(acc) * scale


def _fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, acc=torch.float32):
    """conv (no bias) followed by BatchNorm -> one conv: (weight, bias), new tensors in `acc`."""
    scale, shift = _bn_affine(bn, acc)
    w = conv.weight.detach().to(acc) * scale.reshape(-1, 1, 1, 1)
    b = shift if conv.bias is None else shift + conv.bias.detach().to(acc) * scale
    return w, b


class _EncoderFastPlan:
    """Derived tensors of the encoder's fast path for one (device, dtype).

    BatchNorms that follow a convolution are folded into it (new tensors); a BatchNorm that
    precedes a padded convolution cannot be folded exactly (the zero padding would change)
    and becomes one multiply-add. The backbone's convolution weights are kept in the compute
    dtype and channels-last layout (oneDNN would otherwise copy them on every call): about
    124 MB in float32, 62 MB in bfloat16 for IR-SE-50. The style heads' weights (about 925 MB
    in float32) get channels-last copies in the compute dtype (see _HeadConv), except the two
    smallest float32 tails of each head, read in place: 491 MB copied and 340 MB in place in
    float32, 415 MB copied in bfloat16. The replaced float32 pages leave memory (see
    `Encoder4Editing.page_release_hook`); the copies stay while the generator runs, where the
    in-place pages are released (float32 peak memory: ~1.6 GB instead of ~1.4 GB, for
    ~20 ms less per encode at 1024, most of it the FPN staying channels-last).
    """

    def __init__(self, enc: "Encoder4Editing", dtype: torch.dtype):
        acc = torch.float64 if enc.input_layer[0].weight.dtype == torch.float64 else torch.float32
        self.acc = acc
        cdt = dtype
        cl = torch.channels_last

        def cw(t):  # a convolution weight in the compute dtype, channels-last (a new tensor)
            return t.detach().to(dtype=cdt, memory_format=cl, copy=True)

        conv, bn, prelu = enc.input_layer
        w, b = _fold_conv_bn(conv, bn, acc)
        self.in_w, self.in_b, self.in_prelu = cw(w), b.to(cdt), prelu.weight.detach().to(cdt)
        self.units = []
        for unit in enc.body:
            bn1, c1, pr, c2, bn2, se = unit.res_layer
            scale, shift = _bn_affine(bn1, acc)
            w2, b2 = _fold_conv_bn(c2, bn2, acc)
            u = {
                "bn_scale": scale.reshape(1, -1, 1, 1).to(cdt),
                "bn_shift": shift.reshape(1, -1, 1, 1).to(cdt),
                "w1": cw(c1.weight),
                "prelu": pr.weight.detach().to(cdt),
                "w2": cw(w2),
                "b2": b2.to(cdt),
                "stride": c2.stride[0],
                "se1": se.fc1.weight.detach().to(acc).flatten(1),
                "se2": se.fc2.weight.detach().to(acc).flatten(1),
            }
            if isinstance(unit.shortcut_layer, nn.MaxPool2d):
                u["sc"] = None
            else:
                sw, sb = _fold_conv_bn(unit.shortcut_layer[0], unit.shortcut_layer[1], acc)
                u["sc"] = (cw(sw), sb.to(cdt))
            self.units.append(u)
        hook = getattr(enc, "page_release_hook", None)
        if hook is not None:  # the fast path never reads these originals again
            hook(list(enc.input_layer.parameters()) + list(enc.input_layer.buffers())
                 + list(enc.body.parameters()) + list(enc.body.buffers()))
        # style heads: per conv, how it runs (see _HeadConv). Tail convs (at most
        # _GEMM_MAX_PIXELS output pixels at the nominal 256 input) run as one matmul: no
        # per-call weight reorder, which is most of their cost. Weights get a channels-last copy
        # in the compute dtype (oneDNN would otherwise reorder the weight, or the whole
        # channels-last activation, on every call; the matmul reads it as [O, kh*kw*I]), except
        # the smallest float32 tails, read in place (a copy measured no faster there). The last
        # conv of a head (2x2 -> 1x1) only ever meets its 4 lower-right taps, the others fall on
        # the zero padding: just those are kept, as an [O, 4*I] matrix (4/9 of the weight).
        self.style: dict[int, _HeadConv] = {}
        for block in enc.styles:
            convs = [m for m in block.convs if isinstance(m, nn.Conv2d)]
            side = block.spatial
            replaced = []
            for conv in convs:
                in_side, side = side, (side + 1) // 2
                w0 = conv.weight.detach()
                b = conv.bias.detach().to(cdt)
                if in_side == 2:
                    w = w0[:, :, 1:, 1:].permute(0, 2, 3, 1).reshape(w0.shape[0], -1).to(cdt, copy=True)
                    self.style[id(conv)] = _HeadConv(w, b, "last", True)
                elif cdt != acc or side * side > _IN_PLACE_MAX_PIXELS:
                    w = w0.to(dtype=cdt, memory_format=cl, copy=True)
                    kind = "gemm" if side * side <= _GEMM_MAX_PIXELS else "conv"
                    self.style[id(conv)] = _HeadConv(w, b, kind, True)
                else:  # the loaded weight, read in place
                    self.style[id(conv)] = _HeadConv(w0, b, "gemm_nchw", False)
                if self.style[id(conv)].owned:
                    replaced += [conv.weight, conv.bias]
            if replaced and hook is not None:
                hook(replaced)
        self.nbytes = sum(t.numel() * t.element_size() for t in self._tensors())

    def _tensors(self):
        for hc in self.style.values():
            if hc.owned:
                yield from (hc.weight, hc.bias)
        yield from (self.in_w, self.in_b, self.in_prelu)
        for u in self.units:
            yield from (v for k, v in u.items() if isinstance(v, torch.Tensor))
            if u["sc"] is not None:
                yield from u["sc"]


_GEMM_MAX_PIXELS = 64


class _HeadConv(NamedTuple):
    """One style-head conv in the encoder's fast plan.

    kind "conv": oneDNN convolution, `weight` channels-last [O,I,3,3]; "gemm": one matmul on
    gathered patches, same weight; "gemm_nchw": F.unfold + matmul on the loaded weight (read
    in place); "last": the 2x2 -> 1x1 conv as [N, 4*I] @ `weight`.T with `weight` [O, 4*I]
    (taps (1..2, 1..2) in (kh, kw, i) order). `owned`: a copy made by the plan.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    kind: str
    owned: bool


def _style_block_fast(block: "StyleBlock", x, plan):
    """A style head, on channels-last input [N,C,h,w] -> [N,cout]."""
    for layer in block.convs:
        if not isinstance(layer, nn.Conv2d):
            continue  # the LeakyReLU(0.01) is applied in place below
        w, b, kind, _ = plan.style[id(layer)]
        x = x.to(w.dtype)
        if kind == "last" and tuple(x.shape[-2:]) != (2, 2):  # not the nominal input size
            w, kind = layer.weight.detach().to(w.dtype), "gemm_nchw"
        if kind == "conv":
            x = _per_sample_if_tiny(lambda v, w=w, b=b: F.conv2d(v, w, b, stride=2, padding=1), x)
        elif kind == "last":
            x = _each(lambda v, w=w, b=b: torch.addmm(b, v.permute(0, 2, 3, 1).reshape(v.shape[0], -1), w.t()), x)
            x = x[:, :, None, None]
        else:
            fn = _conv_s2_gemm_cl if kind == "gemm" else _conv_s2_gemm
            x = _each(lambda v, w=w, b=b, fn=fn: fn(v, w, b), x)
        F.leaky_relu_(x, 0.01)
    return _each(block.linear, x.to(plan.acc).reshape(-1, block.cout))


# Float32 style-head weights of convs with at most this many output pixels are read in place.
_IN_PLACE_MAX_PIXELS = 16


def _conv_s2_gemm_cl(x, w, b):
    """3x3 stride-2 pad-1 convolution of a small channels-last input as one matmul, with a
    channels-last weight `w` [O,I,3,3] read as [O, 3*3*I]: the patches are gathered straight
    from the padded input in that (kh, kw, i) order (cheaper than F.unfold, which also needs
    the weight in (i, kh, kw) order)."""
    n, c, h, wd = x.shape
    o = w.shape[0]
    xp = F.pad(x, (1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)  # [N,C,h+2,w+2]
    oh, ow = (h + 1) // 2, (wd + 1) // 2
    sn, sc, sh, sw = xp.stride()
    cols = xp.as_strided((n, oh, ow, 3, 3, c), (sn, 2 * sh, 2 * sw, sh, sw, sc)).reshape(n * oh * ow, 9 * c)
    y = torch.addmm(b, cols, w.permute(0, 2, 3, 1).reshape(o, 9 * c).t())  # [N*L, O]
    return y.view(n, oh, ow, o).permute(0, 3, 1, 2)  # channels-last view


def _conv_s2_gemm(x, w, b):
    """3x3 stride-2 pad-1 convolution of a small input as im2col + one matmul on the plain weight."""
    n, _, h, wd = x.shape
    o = w.shape[0]
    cols = F.unfold(x, 3, padding=1, stride=2)  # [N, I*9, L]: tiny at these sizes
    y = torch.addmm(b, cols.transpose(1, 2).reshape(-1, cols.shape[1]), w.reshape(o, -1).t())  # [N*L, O]
    return y.view(n, (h + 1) // 2, (wd + 1) // 2, o).permute(0, 3, 1, 2)  # channels-last view


def encoder_fast(enc: "Encoder4Editing", x, dtype):
    key = (str(x.device), enc.input_layer[0].weight.dtype, dtype)
    cache = enc.__dict__.setdefault("_fast_plans", {})
    plan = cache.get(key)
    if plan is None:
        plan = cache[key] = _EncoderFastPlan(enc, dtype or (torch.float64 if key[1] == torch.float64 else torch.float32))
    acc = plan.acc
    cdt = dtype or acc
    cl = torch.channels_last
    x = x.to(cdt).contiguous(memory_format=cl)
    x = F.prelu(F.conv2d(x, plan.in_w, plan.in_b, padding=1), plan.in_prelu)
    c1 = c2 = None
    tiny = _per_sample_if_tiny  # a no-op at the real sizes (the backbone ends at 16x16)
    for idx, u in enumerate(plan.units):
        r = torch.addcmul(u["bn_shift"], x, u["bn_scale"])  # pre-conv BatchNorm (cannot fold: padding)
        r = F.prelu(tiny(lambda v, u=u: F.conv2d(v, u["w1"], None, padding=1), r), u["prelu"])
        r = tiny(lambda v, u=u: F.conv2d(v, u["w2"], u["b2"], stride=u["stride"], padding=1), r)  # + folded BN
        g = F.adaptive_avg_pool2d(r, 1).flatten(1).to(acc)  # squeeze-excitation gate in float32
        g = _each(lambda v, u=u: torch.sigmoid(F.linear(F.relu(F.linear(v, u["se1"])), u["se2"])), g)
        if u["sc"] is None:
            sc = x[:, :, :: u["stride"], :: u["stride"]]
        else:
            sc = tiny(lambda v, u=u: F.conv2d(v, u["sc"][0], u["sc"][1], stride=u["stride"]), x)
        x = torch.addcmul(sc, r, g[:, :, None, None].to(cdt))  # res * gate + shortcut in one pass
        del r, sc
        if idx == enc.taps[0]:
            c1 = x
        elif idx == enc.taps[1]:
            c2 = x
    c3 = x
    w0 = _style_block_fast(enc.styles[0], c3, plan)
    deltas = []
    feats = c3
    p2 = None
    for i in range(1, enc.n_styles):
        if i == enc.coarse_ind:
            lat = _per_sample_if_tiny(lambda v: F.conv2d(v, _lowp(enc.latlayer1.weight, cdt), _lowp(enc.latlayer1.bias, cdt)), c2)
            p2 = feats = upsample_add(c3, lat)
        elif i == enc.middle_ind:
            lat = _per_sample_if_tiny(lambda v: F.conv2d(v, _lowp(enc.latlayer2.weight, cdt), _lowp(enc.latlayer2.bias, cdt)), c1)
            feats = upsample_add(p2, lat)
            c1 = c2 = None
        deltas.append(_style_block_fast(enc.styles[i], feats, plan))
    return w0, torch.stack(deltas, dim=1)


# --------------------------------------------------------------------------------------
# Generator fast path


class _Step:
    """One style-reading layer of the synthesis network, in execution order."""

    __slots__ = ("kind", "mod", "owner", "code", "noise", "res_in", "gain", "weight_mode", "off", "wsq", "poly", "wcache")

    def __init__(self, kind, mod, owner, code, noise, res_in, gain):
        self.kind, self.mod, self.owner, self.code, self.noise = kind, mod, owner, code, noise
        self.res_in, self.gain = res_in, gain
        self.weight_mode, self.off, self.wsq, self.poly = False, 0, None, None
        self.wcache: dict = {}

    def shared_weight(self, dtype):
        """The layer's unmodulated weight for activation mode in `dtype` ([I,O,k,k] for a
        transposed conv). In another dtype than the loaded one, a channels-last copy made once
        (about 5 MB a layer in bfloat16: converting on every call cost ~12 ms per 1024 image);
        in the loaded dtype, the weight itself (a channels-last copy measured no faster)."""
        w0 = self.mod.weight.detach()[0]
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
        if up_mode not in FAST_UP_MODES:
            raise ValueError(f"fast_up_mode must be one of {FAST_UP_MODES}, got {up_mode!r}")
        if mode not in FAST_MODES:
            raise ValueError(f"fast_mode must be one of {FAST_MODES}, got {mode!r}")
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
            w0 = st.mod.weight.detach()[0]
            o, _, k, _ = w0.shape
            if st.kind == "conv":
                if mode == "auto":
                    st.weight_mode = prev_weight_mode or o * k * k <= st.res_in * st.res_in
                else:
                    st.weight_mode = mode == "weight"
                prev_weight_mode = st.weight_mode
                wsc = w0.to(acc) * st.mod.scale
                st.wsq = wsc.pow(2).sum(dim=[2, 3])  # [O,I]
                if st.mod.up and st.weight_mode and up_mode == "polyphase":
                    st.poly = ops.polyphase_up_weight(wsc, st.mod.blur.kernel.to(acc), phase_major=True)  # [4O,I,3,3]
            else:
                st.weight_mode = prev_weight_mode
        self.steps = steps
        self.style_w = torch.cat(ws)  # [sum(I), D]
        self.style_b = torch.cat(bs)
        self.up_mode = up_mode


def _lowp(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _noise_term(st: _Step, noise, cdt):
    """noise.weight * noise: [N,1,H,W] in the compute dtype (tiny)."""
    w = st.owner.noise.weight.detach()
    return (w * noise.to(w.dtype)).to(cdt)


# PyTorch picks a convolution's backend (and oneDNN its kernel) by shape, batch size included,
# so a batch and its samples alone can round differently. Below this many input pixels that was
# seen with the real model's shapes; the generator's activation-mode layers go sample by sample
# always (their activations are small: it costs little), see _each.
_TINY_PIXELS = 32


def _per_sample_if_tiny(conv, x):
    if x.shape[0] == 1 or x.shape[2] * x.shape[3] > _TINY_PIXELS:
        return conv(x)
    return torch.cat([conv(x[i : i + 1]) for i in range(x.shape[0])])


def _conv_activation_mode(st: _Step, x, s, nz, cdt, conv3x3_impl: str = "auto"):
    """Batched modulated conv for low resolutions: scale x by the style, demodulate the output."""
    m = st.mod
    w0 = m.weight[0]
    k = w0.shape[-1]
    x = x * (s * (m.scale * st.gain)).to(cdt)[:, :, None, None]
    w = st.shared_weight(cdt)
    if m.up:
        y = _each(lambda v: ops.blur2d(F.conv_transpose2d(v, w, stride=2), m.blur.kernel), x)
    elif k == 3:
        y = _each(lambda v: ops.conv3x3(v, w, impl=conv3x3_impl), x)
    else:
        y = _each(lambda v: F.conv2d(v, w, padding=k // 2), x)
    del x
    d = _each(lambda v: ops.demod_from_wsq(st.wsq, v), s)  # [B,O], float32
    y.mul_(d.to(cdt)[:, :, None, None])
    y.add_(_noise_term(st, nz, cdt))
    y.add_(_lowp(st.owner.activate.bias, cdt)[None, :, None, None])
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


def _conv_weight_mode(st: _Step, x, s, nz, cdt, extras=None, conv3x3_impl: str = "auto"):
    """One sample's modulated conv with style and demodulation folded into its (small) weights.

    `x` may carry the noise channels described above after its I real ones. For a polyphase
    up-sampling layer, `extras` ([1,E,2H,2W]) are appended to its output.
    """
    m = st.mod
    w0 = m.weight[0]
    o, i, k, _ = w0.shape
    c = k // 2
    d = ops.demod_from_wsq(st.wsq, s)  # [1,O]
    coef = d[0][:, None] * s[0][None, :] * st.gain  # [O,I] (the equalized-lr scale is in wsq/poly)
    bias = st.owner.activate.bias
    if m.up and st.poly is not None:  # one conv for all four output phases
        # [4O,I,3,3], phase-major rows: modulated, cast and laid out channels-last in one pass
        w = torch.empty(st.poly.shape, dtype=cdt, device=x.device, memory_format=torch.channels_last)
        torch.mul(st.poly, coef.repeat(4, 1)[:, :, None, None], out=w)
        y = F.conv2d(x, w, _lowp(bias.repeat(4), cdt), padding=1)
        del x
        y = ops.phase_shuffle_add(y, _noise_term(st, nz, cdt), extras)  # shuffle + noise in one pass
        return F.leaky_relu_(y, 0.2)
    w = w0 * (coef * m.scale)[:, :, None, None]
    if x.shape[1] == i + _NOISE_OWN and not m.up:  # the noise arrived as input channels
        ext = w.new_zeros(o, _NOISE_OWN, k, k)
        ext[:, 0, c, c] = 1.0
        ext[:, 1, c, c] = -1.0
        w = torch.cat([w, ext], dim=1).to(dtype=cdt, memory_format=torch.channels_last)
        return ops.conv2d_lrelu(x, w, _lowp(bias, cdt), padding=c)
    w = _lowp(w, cdt)
    if m.up:
        y = F.conv_transpose2d(x, w.transpose(0, 1), stride=2)
        del x
        y = ops.blur2d(y, m.blur.kernel, bias=bias)
        y.add_(_noise_term(st, nz, cdt))
    elif k == 3:  # direct or Winograd, whichever is faster here (ops.conv3x3), noise added in its last pass
        y = ops.conv3x3(x, w, _lowp(bias, cdt), addend=_noise_term(st, nz, cdt), impl=conv3x3_impl)
        del x
    else:
        y = F.conv2d(x, w, _lowp(bias, cdt), padding=c)
        del x
        y.add_(_noise_term(st, nz, cdt))
    return F.leaky_relu_(y, 0.2)


def _to_rgb_fast(st: _Step, x, s, skip, cdt):
    """ToRGB: 1x1 modulated conv (no demodulation) + bias in the compute dtype; the running RGB
    image (`skip`, up-sampled by the FIR) is accumulated in float32."""
    m = st.mod
    w0 = m.weight[0]  # [3,I,1,1]
    coef = s * (m.scale * st.gain)  # [B,I]
    bias = _lowp(st.owner.bias.reshape(-1), cdt)
    if st.weight_mode and x.shape[0] == 1:
        w = w0 * coef[0][None, :, None, None]
        if x.shape[1] > w.shape[1]:  # noise channels riding along: not part of the image
            w = torch.cat([w, w.new_zeros(w.shape[0], x.shape[1] - w.shape[1], 1, 1)], dim=1)
        y = F.conv2d(x, _lowp(w, cdt), bias)
    else:
        w = _lowp(w0, cdt)
        y = _each(lambda v: F.conv2d(v, w, bias), x * coef.to(cdt)[:, :, None, None])
    y = y.to(s.dtype)  # float32 (float64 for a float64 model), channels-last
    if skip is not None:
        y += _each(lambda v: ops.upfirdn2d(v, st.owner.upsample.kernel, up=2, pad=(2, 1), impl="fast"), skip)
    return y


# Up-sampling layers in weight mode. "transpose": stride-2 transposed conv, then a depthwise
# blur with the bias; "polyphase": one 3x3 conv with 4*O outputs (transposed conv and blur
# folded together: 4x the multiply-adds), then the pixel shuffle fused with the noise add:
# one pass less over the large output. "auto": polyphase in reduced precision where the
# convolution is cheap (a matrix engine: AMX on CPUs, tensor cores on GPUs; see
# cputune.matrix_engine), transpose otherwise. Measured at 1024 (bench/bench.py's ablation,
# 2 cores): Sapphire Rapids (AMX) float32 transpose ~0.6 s vs polyphase ~0.85 s, bfloat16 about
# equal with polyphase slightly ahead; Zen 4 (AVX512-BF16, no AMX) float32 0.80 vs 1.30 s,
# bfloat16 0.43 vs 0.68 s.
FAST_UP_MODES = ("auto", "transpose", "polyphase")
# "auto": weight mode where the weights are smaller than one image's input activations;
# "activation" / "weight": every layer in that mode (tests use these to cover both).
FAST_MODES = ("auto", "activation", "weight")


def synthesize_fast(g: "Generator", codes, noise, dtype):
    up_mode, mode = g.fast_up_mode, g.fast_mode
    if up_mode == "auto":
        lowp = dtype is not None and dtype not in (torch.float32, torch.float64)
        engine = codes.device.type != "cpu" or cputune.matrix_engine()
        up_mode = "polyphase" if lowp and engine else "transpose"
    if mode == "auto" and codes.device.type != "cpu":
        mode = "activation"  # GPUs: batched convolutions everywhere (elementwise passes are cheap there)
    key = (str(codes.device), g.input.input.dtype, up_mode, mode)
    cache = g.__dict__.setdefault("_fast_plans", {})
    plan = cache.get(key)
    if plan is None:
        plan = cache[key] = _GeneratorFastPlan(g, up_mode, mode)
    base = plan.dtype  # styles, demodulation and the RGB image: float32 (float64 for a float64 model)
    cdt = dtype or base
    b = codes.shape[0]
    # every layer's style in one matmul (per sample: see _each)
    styles = _each(lambda c: F.linear(c, plan.style_w, plan.style_b), codes.to(base))  # [B, n_styles, sum(I)]
    svec = [styles[:, st.code, st.off : st.off + st.mod.weight.shape[2]] for st in plan.steps]
    cl = torch.channels_last
    x = g.input.input.expand(b, -1, -1, -1).to(cdt).contiguous(memory_format=cl)
    skip = None
    steps = plan.steps
    first_w = next((i for i, st in enumerate(steps) if st.weight_mode), len(steps))
    for j, st in enumerate(steps[:first_w]):  # low resolutions: the whole batch at once
        if st.kind == "conv":
            x = _conv_activation_mode(st, x, svec[j], noise[st.noise], cdt, g.fast_conv3x3)
        else:
            skip = _to_rgb_fast(st, x, svec[j], skip, cdt)
    if first_w == len(steps):
        return skip.contiguous()
    outs = []
    for i in range(b):  # high resolutions: one sample at a time (small weights, large activations)
        xi = x[i : i + 1].contiguous(memory_format=cl)
        si = None if skip is None else skip[i : i + 1]
        rest = steps[first_w:]
        carry = ops._fused_conv_lrelu_ok(xi, xi)  # noise as input channels needs the fused op

        def nterm(st_, _i=i):
            n = noise[st_.noise]
            return _noise_term(st_, n[_i : _i + 1] if n.shape[0] > 1 else n, torch.float32)

        for j, st in enumerate(rest):
            if st.kind == "conv":
                extras = None
                if carry and st.poly is not None and j + 1 < len(rest) and rest[j + 1].kind == "conv" \
                        and not rest[j + 1].mod.up:
                    extras = _plus_minus(nterm(rest[j + 1]) / 1.2)
                nz = noise[st.noise]
                nz = nz[i : i + 1] if nz.shape[0] > 1 else nz
                xi = _conv_weight_mode(st, xi, svec[first_w + j][i : i + 1], nz, cdt, extras, g.fast_conv3x3)
            else:
                si = _to_rgb_fast(st, xi, svec[first_w + j][i : i + 1], si, cdt)
        del xi
        outs.append(si)
    del x
    return outs[0].contiguous() if b == 1 else torch.cat(outs).contiguous()
