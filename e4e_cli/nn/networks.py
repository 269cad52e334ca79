"""The e4e encoder (IR-SE-50 + FPN, w0 + per-layer deltas) and the StyleGAN2 generator.

Module and parameter names mirror the released checkpoints (`encoder.*`, `decoder.*` in
the rosinality layout), so a state dict loads without renaming. Widths are arguments,
so tests build tiny versions of the same modules. SPEC.md in the parity folder is the
reference for every formula here: this module is the plain reference path. It knows nothing of
the fast paths (fast_encoder.py, fast_generator.py: folded BatchNorm, channels-last, fused
modulation, reduced precision), which compute the same functions from these modules and are
tested against them; `E4E` (model.py) chooses which runs.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops

# --------------------------------------------------------------------------------------
# Encoder4Editing


class SqueezeExcite(nn.Module):
    """Channel gate: global average pool -> 1x1 (C -> C/r) -> ReLU -> 1x1 -> sigmoid -> x * gate."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x):  # [NCHW]
        g = F.adaptive_avg_pool2d(x, 1)
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(g))))
        return x * g


class IRSEUnit(nn.Module):
    """IR-SE bottleneck: res(x) + shortcut(x); `stride` applies to the second 3x3 conv."""

    def __init__(self, cin: int, cout: int, stride: int, se_reduction: int = 16):
        super().__init__()
        if cin == cout:
            self.shortcut_layer = nn.MaxPool2d(1, stride)  # strided subsampling, no weights
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            SqueezeExcite(cout, se_reduction),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class EqualLinear(nn.Module):
    """Equalized-lr linear layer: y = x @ (W * lr_mul / sqrt(in)).T + b * lr_mul; optional fused lrelu."""

    def __init__(self, cin: int, cout: int, *, lr_mul: float = 1.0, bias_init: float = 0.0, activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(cin)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x):  # [N,in] -> [N,out]
        w = self.weight * self.scale
        if self.activate:
            return ops.bias_lrelu(F.linear(x, w.to(x.dtype)), self.bias * self.lr_mul)
        return F.linear(x, w.to(x.dtype), (self.bias * self.lr_mul).to(x.dtype))


class StyleBlock(nn.Module):
    """Map a feature map to one 512-d style: log2(size) stride-2 convs + LeakyReLU(0.01), then EqualLinear."""

    def __init__(self, cin: int, cout: int, spatial: int):
        super().__init__()
        n = int(math.log2(spatial))
        layers: list[nn.Module] = []
        for k in range(n):
            layers += [nn.Conv2d(cin if k == 0 else cout, cout, 3, 2, 1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(cout, cout)
        self.cout = cout
        self.spatial = spatial

    def forward(self, x):  # [N,C,h,w] -> [N,cout]
        x = self.convs(x)
        return self.linear(x.reshape(-1, self.cout))


def upsample_add(x, y):
    """Bilinear resize of x to y's size (align_corners=True), plus y."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


def ir_se_backbone(*, widths: Sequence[int], units: Sequence[int], se_reduction: int) -> tuple[nn.Sequential, nn.Sequential]:
    """IR-SE-50's stem (conv3x3 3->64, BatchNorm, PReLU) and body (IR-SE units, the first of each
    stage with stride 2): (`input_layer`, `body`), the key names e4e and HyperStyle's W-encoder share."""
    stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0]))
    body: list[nn.Module] = []
    cin = widths[0]
    for cout, n in zip(widths, units):
        for u in range(n):
            body.append(IRSEUnit(cin, cout, 2 if u == 0 else 1, se_reduction))
            cin = cout
    return stem, nn.Sequential(*body)


class Encoder4Editing(nn.Module):
    """IR-SE-50 backbone with an FPN; predicts w0 plus per-layer deltas.

    forward(x [B,3,H,W]) -> (w0 [B,D], deltas [B,n_styles-1,D]); codes = w0 + deltas (layer
    0 gets no delta) + latent_avg. Keeping w0 and the deltas apart lets callers scale the
    deltas (closeness to W).
    """

    def __init__(
        self,
        *,
        n_styles: int = 18,
        widths: Sequence[int] = (64, 128, 256, 512),
        units: Sequence[int] = (3, 4, 14, 3),
        style_dim: int = 512,
        input_size: int = 256,
        se_reduction: int = 16,
    ):
        super().__init__()
        if widths[3] != style_dim:
            raise ValueError("the last stage width must equal style_dim (the FPN adds to it)")
        self.n_styles = n_styles
        self.coarse_ind, self.middle_ind = 3, 7
        self.input_layer, self.body = ir_se_backbone(widths=widths, units=units, se_reduction=se_reduction)
        ends = [sum(units[: s + 1]) - 1 for s in range(4)]
        self.taps = (ends[1], ends[2], ends[3])  # c1, c2, c3 (units 6, 20, 23 for IR-50)
        base = input_size // 16  # nominal size of c3
        self.styles = nn.ModuleList()
        for i in range(n_styles):
            spatial = base if i < self.coarse_ind else (base * 2 if i < self.middle_ind else base * 4)
            self.styles.append(StyleBlock(style_dim, style_dim, spatial))
        self.latlayer1 = nn.Conv2d(widths[2], style_dim, 1)
        self.latlayer2 = nn.Conv2d(widths[1], style_dim, 1)

    def features(self, x):
        """Run the backbone: (c1, c2, c3) feature maps."""
        x = self.input_layer(x)
        c1 = c2 = None
        for idx, unit in enumerate(self.body):
            x = unit(x)
            if idx == self.taps[0]:
                c1 = x
            elif idx == self.taps[1]:
                c2 = x
        return c1, c2, x

    def forward(self, x, impl: str = "ref", *, n_deltas: int | None = None):
        """x [B,3,H,W] -> (w0 [B,D], deltas [B,k,D]), float32, with k = n-1 (all), or `n_deltas`
        (training's progressive stages: the heads above it, and the lateral layers no active head
        needs, never run).

        The reference path only (`impl` other than "ref" warns and runs it); the fast path is
        `fast_encoder.encode(encoder, x, ...)`.
        """
        if impl != "ref":
            warnings.warn(f"Encoder4Editing: impl {impl!r}: the module runs the reference path only "
                          "(the fast path is e4e_cli.nn.fast_encoder.encode), using the reference", stacklevel=2)
        c1, c2, c3 = self.features(x)
        w0 = self.styles[0](c3)  # [B,D]
        k = self.n_styles - 1 if n_deltas is None else max(0, min(int(n_deltas), self.n_styles - 1))
        deltas = []
        feats = c3
        p2 = None
        for i in range(1, k + 1):
            if i == self.coarse_ind:
                p2 = upsample_add(c3, self.latlayer1(c2))
                feats = p2
            elif i == self.middle_ind:
                feats = upsample_add(p2, self.latlayer2(c1))
            deltas.append(self.styles[i](feats))
        return w0, (torch.stack(deltas, dim=1) if deltas else w0.new_zeros(w0.shape[0], 0, w0.shape[1]))


# --------------------------------------------------------------------------------------
# StyleGAN2 generator (rosinality layout)


def blur_kernel_2d(taps: Sequence[float] = (1, 3, 3, 1), scale: float = 1.0) -> torch.Tensor:
    """Normalised separable FIR kernel [k,k] times `scale` (4 for 2x upsampling)."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum() * scale


def default_channels(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
             256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {r: c for r, c in table.items() if r <= size}


class PixelNorm(nn.Module):
    def forward(self, z):
        return ops.pixel_norm(z)


class ModulatedConv2d(nn.Module):
    """Weight [1,O,I,k,k] (raw) + modulation EqualLinear(style_dim -> I, bias init 1)."""

    def __init__(self, cin: int, cout: int, k: int, style_dim: int, *, demodulate: bool = True, up: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, cout, cin, k, k))
        self.modulation = EqualLinear(style_dim, cin, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(cin * k * k)
        self.demodulate = demodulate
        self.up = up
        if up:
            self.blur = nn.Module()
            self.blur.register_buffer("kernel", blur_kernel_2d(scale=4.0))

    def forward(self, x, code, impl: str = "ref", styles=None, offset=None):
        """`offset`: a relative change of the raw weight (HyperStyle's per-image weight delta,
        applied before modulation and demodulation): the weight becomes W * (1 + offset).
        [O,I,k,k] or [O,I,1,1] (shared by the batch), or [B,O,I,k,k] / [B,O,I,1,1] (per sample)."""
        s = self.modulation(code) if styles is None else styles  # [B,I]
        w = self.weight[0] * self.scale  # [O,I,k,k]
        if offset is not None:
            w = w * (1 + offset.to(w.dtype))  # [O,I,k,k] or [B,O,I,k,k]
        return ops.modulated_conv2d(
            x, w, s, demodulate=self.demodulate, up=self.up,
            blur_kernel=self.blur.kernel if self.up else None, impl=impl,
        )


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise):  # noise [N or 1,1,H,W]
        return x + self.weight.to(x.dtype) * noise.to(x.dtype)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return ops.bias_lrelu(x, self.bias)


class StyledConv(nn.Module):
    """Modulated conv -> noise -> bias + lrelu * sqrt(2)."""

    def __init__(self, cin: int, cout: int, k: int, style_dim: int, *, up: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(cin, cout, k, style_dim, up=up)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(cout)

    def forward(self, x, code, noise, impl: str = "ref", styles=None, offset=None):
        return self.activate(self.noise(self.conv(x, code, impl, styles, offset), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation) + bias, plus the 2x-upsampled previous RGB."""

    def __init__(self, cin: int, style_dim: int, *, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = nn.Module()
            self.upsample.register_buffer("kernel", blur_kernel_2d(scale=4.0))
        self.conv = ModulatedConv2d(cin, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, code, skip=None, impl: str = "ref", styles=None, offset=None):
        out = self.conv(x, code, impl, styles, offset) + self.bias.to(x.dtype)
        if skip is not None:
            out = out + ops.upfirdn2d(skip, self.upsample.kernel, up=2, pad=(2, 1), impl=impl)
        return out


class Generator(nn.Module):
    """StyleGAN2 generator: mapping network `style` and synthesis from W+ codes.

    synthesize(codes [B,n_styles,D]) -> image [B,3,size,size], nominally in [-1,1].
    """

    def __init__(self, size: int = 1024, *, style_dim: int = 512, n_mlp: int = 8, channels: dict[int, int] | None = None):
        super().__init__()
        self.size = size
        self.style_dim = style_dim
        self.log_size = int(math.log2(size))
        if 2**self.log_size != size or size < 8:
            raise ValueError(f"generator size must be a power of two >= 8, got {size}")
        self.n_styles = 2 * self.log_size - 2
        ch = channels or default_channels(size)
        self.channels = ch
        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=0.01, activate=True) for _ in range(n_mlp)])
        self.input = nn.Module()
        self.input.input = nn.Parameter(torch.randn(1, ch[4], 4, 4))
        self.conv1 = StyledConv(ch[4], ch[4], 3, style_dim)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        self.noises.register_buffer("noise_0", torch.randn(1, 1, 4, 4))
        cin = ch[4]
        for lvl in range(3, self.log_size + 1):
            res = 2**lvl
            cout = ch[res]
            self.convs.append(StyledConv(cin, cout, 3, style_dim, up=True))
            self.convs.append(StyledConv(cout, cout, 3, style_dim))
            self.to_rgbs.append(ToRGB(cout, style_dim))
            cin = cout
        for i in range(1, 2 * self.log_size - 3):
            r = 2 ** (2 + (i + 1) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))

    @property
    def n_noise(self) -> int:
        return 2 * self.log_size - 3

    def fixed_noise(self) -> list[torch.Tensor]:
        return [getattr(self.noises, f"noise_{i}") for i in range(self.n_noise)]

    def random_noise(self, batch: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        dev = self.noises.noise_0.device
        return [torch.randn(batch, 1, n.shape[2], n.shape[3], generator=generator).to(dev) for n in self.fixed_noise()]

    def mapping(self, z):
        """z [N,D] -> w [N,D]."""
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 10_000, *, seed: int = 0, chunk: int = 2_000) -> torch.Tensor:
        """Mean of the mapping network's outputs over `n` fixed-seed samples: [D]."""
        gen = torch.Generator().manual_seed(seed)
        dev = self.noises.noise_0.device
        total = torch.zeros(self.style_dim, dtype=torch.float64)
        for start in range(0, n, chunk):
            z = torch.randn(min(chunk, n - start), self.style_dim, generator=gen).to(dev)
            total += self.mapping(z).double().sum(0).cpu()
        return (total / n).float()

    def layers(self):
        """(modulated layer, code index) for every layer that reads a style, in code order."""
        out = [(self.conv1.conv, 0), (self.to_rgb1.conv, 1)]
        for k in range(len(self.to_rgbs)):
            out += [(self.convs[2 * k].conv, 1 + 2 * k), (self.convs[2 * k + 1].conv, 2 + 2 * k), (self.to_rgbs[k].conv, 3 + 2 * k)]
        return out

    def style_layers(self) -> list[tuple[int, int, int]]:
        """StyleSpace's layers (every modulated convolution except ToRGB), in code order:
        (index in `layers()`, code index, channels). Their styles, concatenated, are S."""
        return [(i, c, mod.weight.shape[2]) for i, (mod, c) in enumerate(self.layers()) if mod.demodulate]

    @property
    def n_style_channels(self) -> int:
        """StyleSpace's size: 6048 at 1024 (the ToRGB layers' 3040 excluded)."""
        return sum(n for _, _, n in self.style_layers())

    def styles(self, codes) -> torch.Tensor:
        """codes [B,n_styles,D] -> S [B,n_style_channels]: each convolution's modulation output."""
        layers = self.layers()
        return torch.cat([layers[i][0].modulation(codes[:, c]) for i, c, _ in self.style_layers()], dim=1)

    def check_style_offsets(self, style_offsets, *, batch: int) -> dict[int, torch.Tensor] | None:
        """Style offsets [C] or [B or 1, C] (C = n_style_channels) split per layer:
        {index in `layers()`: [B or 1, channels]}. Raises ValueError on another shape."""
        if style_offsets is None:
            return None
        t = style_offsets if style_offsets.ndim == 2 else style_offsets.reshape(1, -1)
        if t.ndim != 2 or t.shape[1] != self.n_style_channels or t.shape[0] not in (1, batch):
            raise ValueError(f"style offsets have shape {tuple(style_offsets.shape)}; this generator's StyleSpace "
                             f"has {self.n_style_channels} channels ([{self.n_style_channels}] or [B,{self.n_style_channels}])")
        out, start = {}, 0
        for i, _, n in self.style_layers():
            out[i] = t[:, start : start + n]
            start += n
        return out

    def synthesize(self, codes, *, noise: list[torch.Tensor] | None = None, impl: str = "ref", dtype=None,
                   offsets=None, stop_at: int | None = None, should_stop=None, style_offsets=None):
        """codes [B,n_styles,D] -> image [B,3,size,size]. `noise` defaults to the fixed buffers.

        `dtype` runs the convolutions in a reduced precision (styles, demodulation and the
        RGB accumulation stay float32). `impl` is every op's implementation (ops.IMPLS: "fast"
        is each op's own fast path inside this reference structure). The whole-network fast
        path is `fast_generator.synthesize(generator, codes, ...)`.

        `offsets`: per-layer relative weight offsets (HyperStyle), indexed as `layers()`
        ({index: tensor} or a sequence with None for untouched layers; see `check_offsets`).
        `stop_at`: a resolution r (4 .. size): return the skip branch's image after the r block,
        [B,3,r,r] -- exactly the low-resolution partial sum that the full decode up-samples on.
        `should_stop`: called before each up-sampling block; True raises errors.Cancelled.
        `style_offsets`: StyleSpace offsets [C] or [B,C] (`check_style_offsets`) added to the
        convolutions' styles (StyleCLIP's global directions); ToRGB styles are never moved.
        """
        if codes.ndim != 3 or codes.shape[1] != self.n_styles or codes.shape[2] != self.style_dim:
            raise ValueError(f"codes must be [B,{self.n_styles},{self.style_dim}], got {tuple(codes.shape)}")
        noise = self.fixed_noise() if noise is None else noise
        b = codes.shape[0]
        off = self.check_offsets(offsets, batch=b)
        last = self.blocks_until(stop_at)
        cdt = dtype or codes.dtype
        x = self.input.input.expand(b, -1, -1, -1).to(cdt)
        sty = self.check_style_offsets(style_offsets, batch=b)

        def styled(conv, i, code):  # the layer's style, moved by its StyleSpace offset (None: computed in the layer)
            if sty is None:
                return None
            return conv.conv.modulation(code) + sty[i].to(code.dtype)

        x = self.conv1(x, codes[:, 0], noise[0], impl, styled(self.conv1, 0, codes[:, 0]), offset=off.get(0))
        skip = self.to_rgb1(x, codes[:, 1], impl=impl, offset=off.get(1)).float()
        for k in range(last):
            ops.stop_if_asked(should_stop)
            c0, c1 = self.convs[2 * k], self.convs[2 * k + 1]
            x = c0(x, codes[:, 1 + 2 * k], noise[1 + 2 * k], impl, styled(c0, 2 + 3 * k, codes[:, 1 + 2 * k]),
                   offset=off.get(2 + 3 * k))
            x = c1(x, codes[:, 2 + 2 * k], noise[2 + 2 * k], impl, styled(c1, 3 + 3 * k, codes[:, 2 + 2 * k]),
                   offset=off.get(3 + 3 * k))
            skip = self.to_rgbs[k](x, codes[:, 3 + 2 * k], skip, impl, offset=off.get(4 + 3 * k)).float()
        return skip

    def blocks_until(self, stop_at: int | None) -> int:
        """How many up-sampling blocks run to stop after resolution `stop_at` (None: all)."""
        if stop_at is None:
            return len(self.to_rgbs)
        r = int(stop_at)
        if r < 4 or r > self.size or r & (r - 1):
            raise ValueError(f"stop_at must be a power of two from 4 to {self.size}, got {stop_at}")
        return int(math.log2(r)) - 2

    def check_offsets(self, offsets, *, batch: int | None = None) -> dict[int, torch.Tensor]:
        """Weight offsets as {layer index (as `layers()`): tensor}, each checked against its layer:
        [O,I,k,k] or [O,I,1,1] (one image's, broadcast over the batch), or the same with a
        leading batch dimension equal to `batch`. Raises ValueError naming the layer."""
        if offsets is None:
            return {}
        items = offsets.items() if isinstance(offsets, Mapping) else enumerate(offsets)
        layers = self.layers()
        out = {}
        for i, t in items:
            if t is None:
                continue
            i = int(i)
            if not 0 <= i < len(layers):
                raise ValueError(f"weight offset for layer {i}: this generator has layers 0..{len(layers) - 1}")
            o, c, k, _ = layers[i][0].weight.shape[1:]
            shape = tuple(t.shape)
            core = shape[-4:] if len(shape) == 5 else shape
            ok = len(shape) in (4, 5) and core[:2] == (o, c) and core[2:] in ((k, k), (1, 1))
            if ok and len(shape) == 5 and batch is not None and shape[0] not in (1, batch):
                ok = False
            if not ok:
                raise ValueError(f"weight offset for layer {i} has shape {shape}; the layer's weight is [{o},{c},{k},{k}]")
            out[i] = t
        return out

    def forward(self, codes, **kw):
        return self.synthesize(codes, **kw)
