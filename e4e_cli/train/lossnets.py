"""Loss networks of the e4e recipe, written from their published architectures (no torchvision):

- `LPIPS`: LPIPS v0.1 on AlexNet features (weights: torchvision's `alexnet-owt-7be5be79.pth`
  and the LPIPS linear layers `alex.pth`),
- `IdentityLoss`: 1 - cosine similarity of face-recognition features, ArcFace IR-SE50
  (`model_ir_se50.pth`) for faces, MoCo-v2 ResNet-50 (`moco_v2_800ep_pretrain.pth.tar`) for
  other domains.

The networks are frozen (requires_grad False, eval mode) but gradients flow through them to
the images. Weight files are registry assets (`e4e download-weights lpips|ir_se50|moco`) and
are read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import load_untrusted
from ..errors import E4EError
from ..nn.networks import IRSEUnit


def _freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def _load_state(path, *, what: str) -> dict:
    try:
        obj = load_untrusted(path, what=what)
    except E4EError:
        raise
    except Exception as exc:  # noqa: BLE001  (a bad file is the user's to fix: one line)
        raise E4EError(f"{what} {path} cannot be read: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(obj, dict):
        raise E4EError(f"{what} {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _check_layout(want: dict, sd: dict, *, what: str, path, ignore: frozenset = frozenset()) -> dict:
    """`sd` without the `ignore`d keys, once it holds exactly the keys of `want` (name -> shape)
    with those shapes; else one E4EError line (never torch's multi-line RuntimeError)."""
    sd = {k: v for k, v in sd.items() if k not in ignore}
    missing = [k for k in want if k not in sd]
    unexpected = [str(k) for k in sd if k not in want]
    if missing:
        raise E4EError(f"{what} {path} lacks {len(missing)} tensor(s), e.g. {missing[0]}: not the expected file")
    if unexpected:
        raise E4EError(f"{what} {path} has {len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}: "
                       "not the expected file")
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise E4EError(f"{what} {path}: {k} is a {type(v).__name__}, not a tensor")
        if tuple(v.shape) != tuple(want[k]):
            raise E4EError(f"{what} {path}: {k} has shape {list(v.shape)}, expected {list(want[k])}: "
                           "not the expected file")
    return sd


def _load_into(module: nn.Module, sd: dict, *, what: str, path, ignore: frozenset = frozenset()) -> None:
    """Load `sd` into `module` strictly (see `_check_layout`); keys in `ignore` are parts of the
    released file that the loss does not use."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    module.load_state_dict(_check_layout(want, sd, what=what, path=path, ignore=ignore), strict=True)


# --------------------------------------------------------------------------------------
# LPIPS (AlexNet)

# LPIPS's input scaling: (x - shift) / scale on images in [-1, 1]
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_ALEX_CHANNELS = (64, 192, 384, 256, 256)


class _AlexFeatures(nn.Module):
    """torchvision's AlexNet `features` (same module indices, so its state dict loads);
    forward returns the five ReLU outputs LPIPS compares."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, 1, 1), nn.ReLU(),
        )

    def forward(self, x):
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (1, 4, 7, 9, 11):
                taps.append(x)
        return taps


class LPIPS(nn.Module):
    """Learned perceptual distance (LPIPS v0.1, AlexNet): for each of five feature maps, unit-
    normalise every pixel's channel vector, square the difference, weight the channels (a 1x1
    conv to one channel), average over the image; sum over the five.

    forward(x, y) with x, y [N,3,H,W] in [-1,1] -> [N]. LPIPS() has random weights (tests)."""

    def __init__(self):
        super().__init__()
        self.net = _AlexFeatures()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _ALEX_CHANNELS)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))
        _freeze(self)

    @staticmethod
    def unit(f, eps: float = 1e-10):
        return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)

    def forward(self, x, y):
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        total = 0
        for a, b, lin in zip(fx, fy, self.lins):
            total = total + lin((self.unit(a) - self.unit(b)) ** 2).mean(dim=(2, 3))[:, 0]
        return total

    def train(self, mode: bool = True):  # always frozen
        return super().train(False)


# torchvision's AlexNet file also holds the classifier, which LPIPS does not use
_ALEX_CLASSIFIER = frozenset(f"classifier.{i}.{p}" for i in (1, 4, 6) for p in ("weight", "bias"))


def load_lpips(*, weights_dir=None) -> LPIPS:
    """LPIPS with the released AlexNet and linear-layer weights (MissingWeightsError names the
    download). Both files are loaded strictly: a missing, unexpected or mis-shaped tensor is one
    E4EError line."""
    from ..weights.locate import require_asset

    net = LPIPS()
    alex = require_asset("lpips_alexnet", weights_dir)
    _load_into(net.net, _load_state(alex, what="AlexNet weights"), what="AlexNet weights", path=alex,
               ignore=_ALEX_CLASSIFIER)
    lin = require_asset("lpips_alex", weights_dir)
    sd = _load_state(lin, what="LPIPS linear layers")
    # the released names lin<i>.model.1.weight are our lins.<i>.weight
    want = {f"lin{i}.model.1.weight": (1, c, 1, 1) for i, c in enumerate(_ALEX_CHANNELS)}
    sd = _check_layout(want, sd, what="LPIPS linear layers", path=lin)
    net.lins.load_state_dict({f"{i}.weight": sd[f"lin{i}.model.1.weight"] for i in range(len(want))}, strict=True)
    return _freeze(net)


# --------------------------------------------------------------------------------------
# Identity: ArcFace IR-SE50 (faces), MoCo-v2 ResNet-50 (other domains)


class ArcFaceIRSE50(nn.Module):
    """IR-SE50 face recognition network (input 112x112 in [-1,1]) -> unit 512-d embedding.
    The body's keys (`input_layer.*`, `body.N.*`) are those of the e4e encoder's backbone."""

    def __init__(self, widths=(64, 128, 256, 512), units=(3, 4, 14, 3)):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                         nn.PReLU(widths[0]))
        body, cin = [], widths[0]
        for cout, n in zip(widths, units):
            for u in range(n):
                body.append(IRSEUnit(cin, cout, 2 if u == 0 else 1))
                cin = cout
        self.body = nn.Sequential(*body)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Dropout(0.6), nn.Flatten(),
                                          nn.Linear(cin * 7 * 7, 512), nn.BatchNorm1d(512))
        _freeze(self)

    def forward(self, x):  # [N,3,112,112] -> [N,512], unit length
        return F.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)

    def train(self, mode: bool = True):
        return super().train(False)


class _Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), torchvision's key names."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50Features(nn.Module):
    """ResNet-50 up to the global average pool: [N,3,H,W] -> unit 2048-d features."""

    def __init__(self, blocks=(3, 4, 6, 3), base: int = 64):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base)
        cin = base
        for i, n in enumerate(blocks):
            width = base * 2 ** i
            layer = []
            for b in range(n):
                layer.append(_Bottleneck(cin, width, 2 if (b == 0 and i > 0) else 1))
                cin = width * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.out_dim = cin
        _freeze(self)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return F.normalize(x.mean(dim=(2, 3)), dim=1)

    def train(self, mode: bool = True):
        return super().train(False)


class IdentityLoss(nn.Module):
    """mean(1 - cos(f(y_hat), f(y))) over the batch, with f a frozen feature network.

    kind "arcface": the 256 face is cropped to rows 35:223, columns 32:220 and pooled to
    112x112 (the reference's crop); kind "moco": resized to 224x224 (nearest, as the reference). forward(y_hat, y, x) ->
    (loss, {"id_similarity": mean cos(y_hat, y), "id_improve": mean of cos(y_hat, y) - cos(y, x)})."""

    def __init__(self, features: nn.Module, kind: str):
        super().__init__()
        if kind not in ("arcface", "moco"):
            raise ValueError(f"unknown identity network {kind!r}")
        self.features, self.kind = features, kind

    def embed(self, img):
        """[N,3,H,W] in [-1,1] -> unit features [N,512] (arcface) or [N,2048] (moco)."""
        if self.kind == "arcface":
            if img.shape[-1] != 256 or img.shape[-2] != 256:
                img = F.adaptive_avg_pool2d(img, (256, 256))
            img = F.adaptive_avg_pool2d(img[:, :, 35:223, 32:220], (112, 112))
        else:
            # the reference's plain F.interpolate(size=224): nearest neighbour, and a 192x256
            # cars crop is squashed to a square
            img = F.interpolate(img, size=(224, 224), mode="nearest")
        return self.features(img)

    def forward(self, y_hat, y, x):
        f_hat = self.embed(y_hat)
        with torch.no_grad():
            f_y, f_x = self.embed(y), self.embed(x)
        sim = (f_hat * f_y).sum(dim=1)  # [N]
        improve = sim.detach() - (f_y * f_x).sum(dim=1)
        return (1 - sim).mean(), {"id_similarity": float(sim.mean()), "id_improve": float(improve.mean())}


def _irse50_state(weights_dir, *, hint: str = "") -> tuple[dict, str]:
    """The IR-SE50 file's tensors, checked against the ArcFace layout (one E4EError line if not)."""
    from ..weights.locate import require_asset
    from ..errors import MissingWeightsError

    try:
        path = require_asset("ir_se50", weights_dir)
    except MissingWeightsError as exc:
        raise MissingWeightsError(f"{exc}{hint}") from None
    sd = _load_state(path, what="IR-SE50 weights")
    with torch.device("meta"):  # shapes only, no memory, no random init
        want = {k: tuple(v.shape) for k, v in ArcFaceIRSE50().state_dict().items()}
    return _check_layout(want, sd, what="IR-SE50 weights", path=path), str(path)


def load_identity_loss(*, domain: str, weights_dir=None) -> IdentityLoss:
    """ArcFace IR-SE50 for faces (`ffhq`), MoCo-v2 ResNet-50 for other domains (as the reference
    picks them by dataset type). Files are loaded strictly (one E4EError line on any mismatch)."""
    from ..domains import identity_loss
    from ..weights.locate import require_asset

    if identity_loss(domain) == "arcface":
        sd, path = _irse50_state(weights_dir)
        net = ArcFaceIRSE50()
        _load_into(net, sd, what="IR-SE50 weights", path=path)
        return IdentityLoss(_freeze(net), "arcface")
    path = require_asset("moco", weights_dir)
    obj = _load_state(path, what="MoCo-v2 weights")
    sd = obj.get("state_dict")
    if not isinstance(sd, dict):
        raise E4EError(f"MoCo-v2 weights {path} have no 'state_dict': not a MoCo checkpoint")
    # the query encoder is the feature network (checked under the file's own key names); its
    # projection head (fc.*) is not used; nothing else may be there
    prefix = "module.encoder_q."
    net = ResNet50Features()
    want = {prefix + k: tuple(v.shape) for k, v in net.state_dict().items()}
    head = frozenset(k for k in sd if str(k).startswith(prefix + "fc."))
    sd = _check_layout(want, sd, what="MoCo-v2 weights", path=path, ignore=head)
    net.load_state_dict({k[len(prefix):]: v for k, v in sd.items()}, strict=True)
    return IdentityLoss(_freeze(net), "moco")


def irse50_encoder_init(*, weights_dir=None) -> dict:
    """`input_layer.*` and `body.*` tensors of the face-recognition IR-SE50, which the reference
    starts every e4e encoder's backbone from (all domains). MissingWeightsError (one line,
    naming the download and `--encoder-init random`) when the file is absent."""
    sd, _ = _irse50_state(weights_dir, hint=", or start from random weights with --encoder-init random")
    return {k: v for k, v in sd.items() if k.startswith(("input_layer.", "body."))}
