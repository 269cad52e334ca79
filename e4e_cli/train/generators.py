"""The StyleGAN2 generator an encoder is trained for, read from a file without running code.

Accepted: a rosinality-layout checkpoint (`{"g_ema": state_dict, "latent_avg": [512]}`, what
the reference trainer reads), an e4e checkpoint (its `decoder.*`), or a bare generator state
dict. Size, style dimension, mapping depth and every resolution's channel count are read off the
weights, so narrow generators work too. StyleGAN2-ADA `.pkl` files are opened with a restricted
unpickler that never runs their embedded code: a pickle that asks for anything outside the
allow-list is refused, and the conversion of ADA networks to this layout is not implemented yet
(a one-line error says so).
"""
from __future__ import annotations

import io
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..errors import E4EError
from ..fsutil import atomic_write, looks_like_html
from ..networks import Generator, default_channels


@dataclass
class LoadedGenerator:
    generator: Generator  # float32, eval(), requires_grad False
    latent_avg: torch.Tensor  # [style_dim], the mean of W
    size: int
    channel_multiplier: Optional[int]  # None when the channels match no multiplier
    kind: str  # "rosinality", "e4e" or "state_dict"


def _sniff(p: Path) -> bytes:
    if not p.exists():
        raise E4EError(f"generator {p} not found")
    if p.is_dir():
        raise E4EError(f"generator {p} is a folder, not a file")
    with open(p, "rb") as fh:
        head = fh.read(1024)
    if not head:
        raise E4EError(f"generator {p} is empty")
    if looks_like_html(head):
        raise E4EError(f"generator {p} is an HTML page, not a generator (a failed download?)")
    return head


class _Refusing(pickle.Unpickler):
    """Unpickles plain containers only; any other global is refused before it can run."""

    ALLOWED = {("collections", "OrderedDict")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if module.startswith("torch_utils") or module.startswith("dnnlib"):
            raise E4EError("a StyleGAN2-ADA network pickle: converting ADA networks is not implemented yet; "
                           "export its G_ema to a rosinality-layout checkpoint ({'g_ema': state_dict, 'latent_avg': w_avg})")
        raise E4EError(f"refusing to load: the pickle wants to run {module}.{name}")


def _read_object(p: Path) -> object:
    head = _sniff(p)
    import zipfile

    if zipfile.is_zipfile(p):
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise E4EError(f"generator {p} was refused: it holds Python objects that would run code") from None
        except Exception as exc:  # noqa: BLE001
            raise E4EError(f"generator {p} is truncated or corrupt ({type(exc).__name__}): fetch it again") from None
    if head[:2] == b"PK":
        raise E4EError(f"generator {p} is truncated or corrupt (incomplete zip archive)")
    if head[:1] == b"\x80":  # a plain pickle (.pkl): restricted, never runs code
        try:
            with open(p, "rb") as fh:
                return _Refusing(io.BufferedReader(fh)).load()
        except E4EError as exc:
            raise E4EError(f"generator {p}: {exc}") from None
        except Exception as exc:  # noqa: BLE001
            raise E4EError(f"generator {p} is truncated or corrupt ({type(exc).__name__})") from None
    raise E4EError(f"generator {p} is not a PyTorch checkpoint or pickle")


def _generator_state(obj, p: Path) -> tuple[dict, Optional[torch.Tensor], str]:
    if not isinstance(obj, dict):
        raise E4EError(f"generator {p} holds a {type(obj).__name__}, not a checkpoint dict")
    if isinstance(obj.get("g_ema"), dict):
        return obj["g_ema"], obj.get("latent_avg"), "rosinality"
    if isinstance(obj.get("state_dict"), dict):
        sd = {k[len("decoder."):]: v for k, v in obj["state_dict"].items() if k.startswith("decoder.")}
        if sd:
            avg = obj.get("latent_avg")
            if isinstance(avg, torch.Tensor) and avg.ndim >= 2:
                avg = avg.reshape(-1, avg.shape[-1])[0]
            return sd, avg, "e4e"
    if any(isinstance(k, str) and k.startswith("convs.") for k in obj):
        return obj, None, "state_dict"
    raise E4EError(f"generator {p} has no generator weights ('g_ema', or an e4e checkpoint's decoder.*)")


def architecture(sd: dict) -> dict:
    """size, style_dim, n_mlp and channels {resolution: width} read off a rosinality state dict."""
    try:
        n_mlp = len({int(m.group(1)) for k in sd if (m := re.fullmatch(r"style\.(\d+)\.weight", k))})
        style_dim = int(sd["conv1.conv.modulation.weight"].shape[1])
        channels = {4: int(sd["conv1.conv.weight"].shape[1])}
        k = 0
        while f"convs.{2 * k}.conv.weight" in sd:
            channels[2 ** (k + 3)] = int(sd[f"convs.{2 * k}.conv.weight"].shape[1])
            k += 1
    except (KeyError, AttributeError, IndexError) as exc:
        raise E4EError(f"not a StyleGAN2 generator state dict (missing {exc})") from None
    if k == 0 or n_mlp == 0:
        raise E4EError("not a StyleGAN2 generator state dict (no up-sampling layers or no mapping network)")
    return {"size": 2 ** (k + 2), "style_dim": style_dim, "n_mlp": n_mlp, "channels": channels}


def channel_multiplier(size: int, channels: dict) -> Optional[int]:
    for cm in (1, 2, 4):
        ref = default_channels(size, cm)
        if all(ref.get(r) == c for r, c in channels.items()):
            return cm
    return None


def load_generator(path, *, size: Optional[int] = None) -> LoadedGenerator:
    """Read and build the generator in `path`; `size` (if given) must match the file's."""
    p = Path(path)
    obj = _read_object(p)
    sd, avg, kind = _generator_state(obj, p)
    try:
        arch = architecture(sd)
    except E4EError as exc:
        raise E4EError(f"generator {p}: {exc}") from None
    if size is not None and int(size) != arch["size"]:
        raise E4EError(f"generator {p} makes {arch['size']}x{arch['size']} images, but {size} was asked for")
    g = Generator(arch["size"], style_dim=arch["style_dim"], n_mlp=arch["n_mlp"], channels=arch["channels"])
    missing, unexpected = g.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    missing = [m for m in missing if not m.endswith("blur.kernel") and not m.endswith("upsample.kernel")]
    if missing:
        raise E4EError(f"generator {p} lacks {len(missing)} tensor(s), e.g. {missing[0]}")
    g = g.float().eval().requires_grad_(False)
    if avg is None:
        avg = g.mean_latent(10_000, seed=0)
    avg = torch.as_tensor(avg).float().reshape(-1)
    if avg.numel() != arch["style_dim"]:
        raise E4EError(f"generator {p}: latent_avg has {avg.numel()} values, expected {arch['style_dim']}")
    return LoadedGenerator(g, avg, arch["size"], channel_multiplier(arch["size"], arch["channels"]), kind)


def save_rosinality_checkpoint(path, *, generator: Generator, latent_avg: torch.Tensor) -> Path:
    """{"g_ema": state_dict, "latent_avg": [style_dim]}, written atomically."""
    obj = {"g_ema": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
           "latent_avg": latent_avg.detach().cpu().reshape(-1)}
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def n_styles_of(size: int) -> int:
    return 2 * int(math.log2(size)) - 2


__all__ = ["LoadedGenerator", "load_generator", "save_rosinality_checkpoint", "architecture", "channel_multiplier",
           "n_styles_of"]
