"""HyperStyle's networks: the W-encoder and the hypernetwork that predicts generator weight deltas.

HyperStyle refines a W inversion by predicting, per image, relative offsets of the StyleGAN2
convolution weights (W * (1 + delta)). Module and parameter names mirror the released
checkpoints (`encoder.*` of the W-encoder file, `hypernet.*` of the HyperStyle file, prefixes
stripped), so a state dict loads without renaming; parity/hyperstyle/SPEC.md is the reference
for every formula. Loading, with the checkpoint's aliases of the shared hypernet, is in
hyperstyle_ckpt.py.

Deltas come in two forms. Full: [B,out,in,k,k] per tuned layer (None for the others), what the
generator multiplies. Compact: the per-channel and ToRGB blocks predict one value per (out, in)
pair, constant over the kernel, so they are kept as [B,out,in] (a 9x saving on the 3x3 layers);
the shared layers' deltas vary over the kernel and stay [B,512,512,3,3]. `expand_delta` turns a
compact delta into the full one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .networks import EqualLinear, default_channels, ir_se_backbone

# --------------------------------------------------------------------------------------
# W-encoder


class WEncoder(nn.Module):
    """IR-SE-50 (as Encoder4Editing's input layer and body) -> global average pool -> EqualLinear.

    One W code per image: forward(x [B,3,H,W]) -> w [B,512]; the caller adds the HyperStyle
    checkpoint's latent_avg on every style row (`w_codes`).
    """

    def __init__(self, *, widths: Sequence[int] = (64, 128, 256, 512), units: Sequence[int] = (3, 4, 14, 3),
                 se_reduction: int = 16):
        super().__init__()
        self.input_layer, self.body = ir_se_backbone(widths=widths, units=units, se_reduction=se_reduction)
        cin = widths[-1]
        self.linear = EqualLinear(cin, cin)
        self.style_dim = cin

    def forward(self, x):  # [B,3,256,256] (cars [B,3,192,256]) -> [B,512]
        x = self.body(self.input_layer(x))  # [B,512,16,16] (cars [B,512,12,16])
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # [B,512]
        return self.linear(x)


def w_codes(w: torch.Tensor, latent_avg: torch.Tensor) -> torch.Tensor:
    """w [B,D] and latent_avg [n,D] -> codes [B,n,D] = w on every style row + latent_avg."""
    return w[:, None, :] + latent_avg[None].to(w)


# --------------------------------------------------------------------------------------
# Which generator weight each delta index changes


#: delta indices of the nine 512->512 3x3 convs that share one weight hypernet
SHARED_LAYERS = (0, 2, 3, 5, 6, 8, 9, 11, 12)


@dataclass(frozen=True)
class DeltaLayer:
    """Delta index i of the hypernet's output: the shape of the generator weight it changes."""

    index: int
    out: int
    cin: int
    k: int  # 3 (styled convs) or 1 (ToRGB)
    kind: str  # "shared", "channel" (per-channel RefinementBlock) or "rgb" (ToRGB RefinementBlock)
    weight: str  # the decoder's module holding the weight, e.g. "convs.3.conv" (`decoder.<weight>.weight`)

    @property
    def full_shape(self) -> tuple[int, int, int, int]:
        return (self.out, self.cin, self.k, self.k)

    @property
    def compact_shape(self) -> tuple[int, ...]:
        """Per image: [out,in,3,3] for shared layers, [out,in] for the kernel-constant ones."""
        return self.full_shape if self.kind == "shared" else (self.out, self.cin)


def n_outputs_for(size: int) -> int:
    """Deltas of a generator with output side `size`: 26 / 23 / 20 at 1024 / 512 / 256."""
    return 3 * (int(math.log2(size)) - 2) + 2


def delta_layers(size: int, channels: Optional[dict[int, int]] = None) -> list[DeltaLayer]:
    """Every delta index in order: 0 conv1, 1 to_rgb1, then per resolution the upsampling conv,
    the second conv and the ToRGB (SPEC "Where the deltas go")."""
    ch = channels or default_channels(size)
    out = [DeltaLayer(0, ch[4], ch[4], 3, "shared", "conv1.conv"), DeltaLayer(1, 3, ch[4], 1, "rgb", "to_rgb1.conv")]
    cin = ch[4]
    for k, lvl in enumerate(range(3, int(math.log2(size)) + 1)):
        c = ch[2**lvl]
        i = 2 + 3 * k
        out.append(DeltaLayer(i, c, cin, 3, "shared" if i in SHARED_LAYERS else "channel", f"convs.{2 * k}.conv"))
        out.append(DeltaLayer(i + 1, c, c, 3, "shared" if i + 1 in SHARED_LAYERS else "channel", f"convs.{2 * k + 1}.conv"))
        out.append(DeltaLayer(i + 2, 3, c, 1, "rgb", f"to_rgbs.{k}.conv"))
        cin = c
    return out


def expand_delta(delta: Optional[torch.Tensor], k: int) -> Optional[torch.Tensor]:
    """Compact -> full: [B,out,in] (or [out,in]) repeated over the k x k kernel; a full delta
    (shared layers, already [...,k,k]) and None pass through. The result is an expanded view:
    `.contiguous()` where a caller needs its own memory."""
    if delta is None or delta.dim() in (4, 5):
        return delta
    return delta[..., None, None].expand(*delta.shape, k, k)


# --------------------------------------------------------------------------------------
# The hypernetwork (SharedWeightsHyperNetResNet)


class BasicBlock(nn.Module):
    """ResNet-34 block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); stride on conv1."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


def _conv_stack(channels: Sequence[int], strides: Sequence[int]) -> nn.Sequential:
    """conv3x3 (+bias) -> LeakyReLU(0.01) per step; module indices 0, 2, 4, ... as released."""
    layers: list[nn.Module] = []
    for cin, cout, s in zip(channels[:-1], channels[1:], strides):
        layers += [nn.Conv2d(cin, cout, 3, s, 1), nn.LeakyReLU(0.01)]
    return nn.Sequential(*layers)


class SharedWeightHypernet(nn.Module):
    """z [N,512] -> a 512x512x3x3 weight delta per row, with one pair of matrices for all nine
    shared layers: h = (z @ w2 + b2) viewed [N,512,512] (row = output channel), then @ w1 + b1."""

    def __init__(self, *, z_dim: int = 512, cin: int = 512, cout: int = 512, k: int = 3):
        super().__init__()
        self.w1 = nn.Parameter(torch.zeros(z_dim, cin * k * k))
        self.b1 = nn.Parameter(torch.zeros(cin * k * k))
        self.w2 = nn.Parameter(torch.zeros(z_dim, cout * z_dim))
        self.b2 = nn.Parameter(torch.zeros(cout * z_dim))
        self.z_dim, self.cin, self.cout, self.k = z_dim, cin, cout, k

    def forward(self, z):  # [N,512] -> [N,out,in,k,k]
        n = z.shape[0]
        h = torch.addmm(self.b2, z, self.w2)  # [N,out*512]: w2 (512 MB) is read once for all N rows
        h = torch.addmm(self.b1, h.view(n * self.cout, self.z_dim), self.w1)  # [N*out, in*k*k]
        return h.view(n, self.cout, self.cin, self.k, self.k)  # delta[b,o,i,kh,kw] = h[b,o,i*9+kh*3+kw]


class SharedRefinementBlock(nn.Module):
    """Feature map [B,512,h,w] -> z [B,512] for the shared hypernet (which is not a submodule:
    the checkpoint's `refinement_blocks.<i>.hypernet.*` aliases are resolved by the loader)."""

    def __init__(self, feat: int = 512, mid: int = 128, n_down: int = 4):
        super().__init__()
        self.convs = _conv_stack([feat] + [mid] * n_down + [feat], [1] + [2] * n_down)
        self.linear = EqualLinear(feat, feat)

    def forward(self, f):  # [B,512,16,16] -> [B,512]
        z = self.convs(f)  # [B,512,1,1]
        return self.linear(z.flatten(1))


class ChannelRefinementBlock(nn.Module):
    """Feature map -> one delta per (out, in) weight pair, compact [B,out,in].

    3x3 layers (`channel`): 3 stride-2 convs, average pool, 1x1 conv (`output.1`); ToRGB layers
    (`rgb`): 4 stride-2 convs to 1x1, 1x1 conv (`output.0`, no pooling)."""

    def __init__(self, layer: DeltaLayer, feat: int = 512, mid: int = 256):
        super().__init__()
        self.out_shape = (layer.out, layer.cin)
        if layer.kind == "rgb":
            self.convs = _conv_stack([feat, mid, mid, mid, feat], [2, 2, 2, 2])
            self.output = nn.Sequential(nn.Conv2d(feat, layer.out * layer.cin, 1))
        else:
            self.convs = _conv_stack([feat, mid, mid, feat], [2, 2, 2])
            self.output = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(feat, layer.out * layer.cin, 1))
        self.pool = layer.kind != "rgb"

    def forward(self, f):  # [B,512,16,16] -> [B,out,in]
        v = self.convs(f)  # [B,512,2,2] (rgb: [B,512,1,1])
        v = v.mean(dim=(2, 3)) if self.pool else v.flatten(1)  # [B,512]
        conv = self.output[-1]
        v = F.linear(v, conv.weight.flatten(1), conv.bias)  # the 1x1 conv on a 1x1 map: [B,out*in]
        return v.view(v.shape[0], *self.out_shape)  # channel c = o*in + i


class HyperNet(nn.Module):
    """SharedWeightsHyperNetResNet: cat([x, y_hat]) [B,6,H,W] -> a weight delta per tuned layer.

    A ResNet-34 trunk (7x7 stem with PReLU, no max-pool) gives one 512-channel map (16x16, cars
    12x16); each tuned layer i has its own head `refinement_blocks.<i>` on that map. `forward`
    returns full deltas, `forward_compact` the compact ones (module docstring).
    """

    def __init__(self, size: int, layers_to_tune: Sequence[int], *, input_nc: int = 6,
                 channels: Optional[dict[int, int]] = None):
        super().__init__()
        self.size = size
        self.layers = delta_layers(size, channels)
        self.n_outputs = len(self.layers)
        self.tuned = tuple(sorted({int(i) for i in layers_to_tune if 0 <= int(i) < self.n_outputs}))
        self.conv1 = nn.Conv2d(input_nc, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.PReLU(64)
        body: list[nn.Module] = []
        cin = 64
        for cout, n in zip((64, 128, 256, 512), (3, 4, 6, 3)):
            for u in range(n):
                body.append(BasicBlock(cin, cout, 2 if u == 0 and cout != 64 else 1))
                cin = cout
        self.body = nn.Sequential(*body)
        s = self.layers[SHARED_LAYERS[0]]  # present whatever is tuned, as in the released layout
        self.shared_weight_hypernet = SharedWeightHypernet(cin=s.cin, cout=s.out, k=s.k)
        self.refinement_blocks = nn.ModuleDict({
            str(i): SharedRefinementBlock() if self.layers[i].kind == "shared" else ChannelRefinementBlock(self.layers[i])
            for i in self.tuned
        })

    def features(self, x):  # [B,6,256,256] -> [B,512,16,16] (cars [B,6,192,256] -> [B,512,12,16])
        x = self.relu(self.bn1(self.conv1(x)))  # [B,64,128,128]
        return self.body(x)

    def forward_compact(self, x) -> list[Optional[torch.Tensor]]:
        """x [B,6,H,W] (input first, reconstruction second) -> n_outputs entries: None (untuned),
        [B,512,512,3,3] (shared layers), [B,out,in] (per-channel and ToRGB layers)."""
        f = self.features(x)  # [B,512,16,16]
        out: list[Optional[torch.Tensor]] = [None] * self.n_outputs
        shared = [i for i in self.tuned if self.layers[i].kind == "shared"]
        for i in self.tuned:
            if i not in shared:
                out[i] = self.refinement_blocks[str(i)](f)
        if shared:
            z = torch.cat([self.refinement_blocks[str(i)](f) for i in shared])  # [S*B,512], layer-major
            deltas = self.shared_weight_hypernet(z).split(f.shape[0])  # S x [B,512,512,3,3]
            for i, d in zip(shared, deltas):
                out[i] = d
        return out

    def expand(self, compact: Sequence[Optional[torch.Tensor]]) -> list[Optional[torch.Tensor]]:
        """Compact deltas (of this network's layers) -> full [B,out,in,k,k] expanded views."""
        return [expand_delta(d, layer.k) for d, layer in zip(compact, self.layers)]

    def forward(self, x) -> list[Optional[torch.Tensor]]:
        """x [B,6,H,W] -> n_outputs entries: None or a full delta [B,out,in,k,k] (own memory)."""
        return [None if d is None else d.contiguous() for d in self.expand(self.forward_compact(x))]
