"""The e4e encoder's fast path: `encode(encoder, x, dtype=..., plans=...)`, the same function
as `Encoder4Editing.forward` (networks.py, the reference) and tested against it
(tests/test_fastpaths.py).

BatchNorm folded into the convolutions, channels-last activations, the style heads' small
convolutions as matrix products, and an optional reduced precision for the convolutions. The
derived tensors live in the caller's `engine.Plans`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .engine import Plans, each, lowp, per_sample_if_tiny
from .networks import upsample_add

if TYPE_CHECKING:
    from .networks import Encoder4Editing, StyleBlock


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
    float32, 415 MB copied in bfloat16. The replaced float32 pages leave memory (`release`,
    see `encode`); the copies stay while the generator runs, where the
    in-place pages are released (float32 peak memory: ~1.6 GB instead of ~1.4 GB, for
    ~20 ms less per encode at 1024, most of it the FPN staying channels-last).
    """

    def __init__(self, enc: "Encoder4Editing", dtype: torch.dtype, release=None):
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
        hook = release
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
            x = per_sample_if_tiny(lambda v, w=w, b=b: F.conv2d(v, w, b, stride=2, padding=1), x)
        elif kind == "last":
            x = each(lambda v, w=w, b=b: torch.addmm(b, v.permute(0, 2, 3, 1).reshape(v.shape[0], -1), w.t()), x)
            x = x[:, :, None, None]
        else:
            fn = _conv_s2_gemm_cl if kind == "gemm" else _conv_s2_gemm
            x = each(lambda v, w=w, b=b, fn=fn: fn(v, w, b), x)
        F.leaky_relu_(x, 0.01)
    return each(block.linear, x.to(plan.acc).reshape(-1, block.cout))


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


def prepare(enc: "Encoder4Editing", *, device, dtype=None, plans: Plans, release=None) -> None:
    """Build in `plans` what `encode` builds on its first call for inputs on `device` (the folded
    and converted weight copies), so that a caller can do it while it waits for its first images."""
    _plan(enc, torch.empty(0, device=device).device, dtype, plans, release)


def _plan(enc: "Encoder4Editing", device: torch.device, dtype, plans: Plans, release) -> _EncoderFastPlan:
    param_dtype = enc.input_layer[0].weight.dtype
    acc0 = torch.float64 if param_dtype == torch.float64 else torch.float32
    return plans.get(enc, (str(device), param_dtype, dtype), lambda: _EncoderFastPlan(enc, dtype or acc0, release))


def encode(enc: "Encoder4Editing", x, *, dtype=None, plans: Plans | None = None, release=None):
    """The encoder's fast path: x [B,3,H,W] -> (w0 [B,D], deltas [B,n-1,D]), float32 (float64
    for a float64 model), the same function as `enc(x)`.

    `dtype` (e.g. torch.bfloat16) for the convolutions; `plans` keeps the folded weights between
    calls (None: built for this call only); `release(tensors)` is told which loaded tensors the
    plan has just replaced by its own copies, so a memory-mapped checkpoint's pages can leave
    memory (E4E passes its `_release_pages`).
    """
    plan = _plan(enc, x.device, dtype, Plans() if plans is None else plans, release)
    acc = plan.acc
    cdt = dtype or acc
    cl = torch.channels_last
    x = x.to(cdt).contiguous(memory_format=cl)
    x = F.prelu(F.conv2d(x, plan.in_w, plan.in_b, padding=1), plan.in_prelu)
    c1 = c2 = None
    tiny = per_sample_if_tiny  # a no-op at the real sizes (the backbone ends at 16x16)
    for idx, u in enumerate(plan.units):
        r = torch.addcmul(u["bn_shift"], x, u["bn_scale"])  # pre-conv BatchNorm (cannot fold: padding)
        r = F.prelu(tiny(lambda v, u=u: F.conv2d(v, u["w1"], None, padding=1), r), u["prelu"])
        r = tiny(lambda v, u=u: F.conv2d(v, u["w2"], u["b2"], stride=u["stride"], padding=1), r)  # + folded BN
        g = F.adaptive_avg_pool2d(r, 1).flatten(1).to(acc)  # squeeze-excitation gate in float32
        g = each(lambda v, u=u: torch.sigmoid(F.linear(F.relu(F.linear(v, u["se1"])), u["se2"])), g)
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
            lat = per_sample_if_tiny(lambda v: F.conv2d(v, lowp(enc.latlayer1.weight, cdt), lowp(enc.latlayer1.bias, cdt)), c2)
            p2 = feats = upsample_add(c3, lat)
        elif i == enc.middle_ind:
            lat = per_sample_if_tiny(lambda v: F.conv2d(v, lowp(enc.latlayer2.weight, cdt), lowp(enc.latlayer2.bias, cdt)), c1)
            feats = upsample_add(p2, lat)
            c1 = c2 = None
        deltas.append(_style_block_fast(enc.styles[i], feats, plan))
    return w0, torch.stack(deltas, dim=1)
