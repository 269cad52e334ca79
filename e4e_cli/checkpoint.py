"""Reading released e4e checkpoints safely.

A checkpoint is a `torch.save` dict: `state_dict` (flat `encoder.*` / `decoder.*` tensors),
`latent_avg` [n_styles,512], `opts` (training options) and training extras that we
ignore. Files are opened with `weights_only=True` (a downloaded file can never run code)
and memory-mapped, so the ~1.2 GB of weights are not copied into RAM twice.
"""
from __future__ import annotations

import contextlib
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from . import domains
from .errors import E4EError
from .fsutil import read_head


#: the first torch release whose `weights_only=True` loads cannot be made to run code: up to
#: 2.5.1 a crafted file could (CVE-2025-32434). setup.cfg asks for it; `load_untrusted` checks it
#: again at run time, for an install into an existing environment with `--no-deps`.
SAFE_TORCH = (2, 6)


def torch_release(version: str) -> tuple[int, int]:
    """(major, minor) of a torch version string ("2.13.0+cpu" -> (2, 13)); (0, 0) if unreadable."""
    m = re.match(r"(\d+)\.(\d+)", str(version))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def load_untrusted(source, *, what: str, mmap: bool = False):
    """`torch.load(source, weights_only=True)` on the CPU, for any file a user or a download gave
    us (`source`: a path or a binary buffer). On a torch older than SAFE_TORCH that mode is not
    safe, so the file is refused in one E4EError line before a byte of it is unpickled. Other
    failures are the caller's to word (truncated, corrupt, refused globals)."""
    if torch_release(torch.__version__) < SAFE_TORCH:
        name = f" {source}" if isinstance(source, (str, os.PathLike)) else ""
        raise E4EError(f"refusing to read {what}{name}: torch {torch.__version__} can be made to run code by a crafted "
                       f".pt file even with weights_only=True (CVE-2025-32434); install torch>="
                       f"{'.'.join(map(str, SAFE_TORCH))}")
    return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)


@dataclass
class CheckpointInfo:
    """What the checkpoint says about itself (from `opts`, SPEC "Checkpoint file")."""

    size: int
    n_styles: int
    domain: str
    encoder_type: str
    start_from_latent_avg: bool
    opts: dict = field(default_factory=dict)


def read_checkpoint(path: str | os.PathLike, *, mmap: bool = True, kind: str = "e4e") -> dict[str, Any]:
    """Load the checkpoint dict with `weights_only=True` on the CPU, or raise E4EError.

    The error names the file and the likely cause: an HTML page saved instead of the
    file, a truncated download, or a pickle that would run code.
    """
    p = Path(path)
    an = "an" if kind[:1].lower() in "aeiou" else "a"  # `kind`: "e4e", "HyperStyle", ...
    head = read_head(p, what="checkpoint", hint="delete it and run `e4e download-weights`")
    is_zip = zipfile.is_zipfile(p)
    if head[:2] == b"PK" and not is_zip:
        raise E4EError(f"checkpoint {p} is truncated or corrupt (incomplete zip archive): download it again")
    try:
        obj = load_untrusted(p, what=f"{kind} checkpoint", mmap=bool(mmap and is_zip))
    except pickle.UnpicklingError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else ""
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise E4EError(
                f"checkpoint {p} was refused: it holds Python objects that would run code when unpickled, "
                f"which a released {kind} checkpoint never does"
            ) from None
        raise E4EError(f"checkpoint {p} is not a valid PyTorch file ({msg}): download it again") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, AttributeError, TypeError, KeyError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise E4EError(f"checkpoint {p} is truncated or corrupt ({first}): download it again") from None
    if not isinstance(obj, dict):
        raise E4EError(f"checkpoint {p} holds a {type(obj).__name__}, not {an} {kind} checkpoint dict")
    if "state_dict" not in obj or not isinstance(obj["state_dict"], dict):
        hint = " (a bare state dict?)" if any(isinstance(k, str) and k.startswith("encoder.") for k in obj) else ""
        raise E4EError(f"checkpoint {p} has no 'state_dict'{hint}: not {an} {kind} checkpoint")
    return obj


def infer_info(ckpt: dict[str, Any], *, path: str | os.PathLike = "checkpoint") -> CheckpointInfo:
    """Size, n_styles and domain from `opts` (`stylegan_size`, else from `dataset_type`)."""
    opts = ckpt.get("opts") or {}
    if not isinstance(opts, dict):
        opts = {}
    dataset = str(opts.get("dataset_type") or "")
    domain = dataset.split("_")[0] if dataset else ""
    known = domains.from_dataset_type(dataset) if dataset else None
    size = opts.get("stylegan_size")
    if size is None:
        if known is not None:
            size = known.size
        elif dataset:
            size = 256
        else:
            size = _size_from_state_dict(ckpt["state_dict"])
    try:
        size = int(size)
    except (TypeError, ValueError):
        raise E4EError(f"{path}: opts.stylegan_size is {size!r}, not an integer") from None
    if size not in (256, 512, 1024):
        # the networks support any power of two; released checkpoints are one of these
        if size < 8 or 2 ** int(math.log2(size)) != size:
            raise E4EError(f"{path}: unsupported generator size {size}")
    if not domain:
        domain = domains.guess_from_size(size)
    encoder_type = str(opts.get("encoder_type") or "Encoder4Editing")
    if encoder_type != "Encoder4Editing":
        raise E4EError(
            f"{path}: encoder_type is {encoder_type!r}; only e4e checkpoints (Encoder4Editing) are supported"
        )
    start_avg = opts.get("start_from_latent_avg")
    return CheckpointInfo(
        size=size,
        n_styles=domains.n_styles_for(size),
        domain=domain,
        encoder_type=encoder_type,
        start_from_latent_avg=True if start_avg is None else bool(start_avg),
        opts=dict(opts),
    )


def _size_from_state_dict(sd: dict[str, Any]) -> int:
    n_rgb = len({k.split(".")[2] for k in sd if isinstance(k, str) and k.startswith("decoder.to_rgbs.")})
    return 2 ** (n_rgb + 2) if n_rgb else 1024


def split_state_dict(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """`encoder.*` and `decoder.*` tensors with their prefixes stripped; other keys are ignored."""
    enc, dec = {}, {}
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            continue
        if k.startswith("encoder."):
            enc[k[len("encoder."):]] = v
        elif k.startswith("decoder."):
            dec[k[len("decoder."):]] = v
    return enc, dec


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], *, prefix: str, path: str | os.PathLike,
              what: str = "the e4e architecture") -> None:
    """Strict load with `assign=True` (no copy): a readable error names missing/unexpected/misshapen keys
    (and `what` the checkpoint should have fitted)."""
    expected = module.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [
        f"{prefix}{k} {tuple(tensors[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_few(prefix, missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_few(prefix, unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} key(s) of the wrong shape: {', '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}")
    if problems:
        raise E4EError(f"checkpoint {path} does not fit {what}: " + "; ".join(problems))
    for k, v in tensors.items():
        if v.dtype != expected[k].dtype and v.is_floating_point():
            tensors[k] = v.to(expected[k].dtype)
    module.load_state_dict(tensors, strict=True, assign=True)


class _NoInit(TorchFunctionMode):
    """Random factories give uninitialised memory, random fills do nothing (see `skeleton`)."""

    FACTORIES = frozenset({torch.randn, torch.rand})
    FILLS = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.nn.init.normal_, torch.nn.init.uniform_,
                       torch.nn.init.kaiming_uniform_, torch.nn.init.kaiming_normal_, torch.nn.init.xavier_uniform_,
                       torch.nn.init.xavier_normal_, torch.nn.init.trunc_normal_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.FACTORIES:
            kwargs.pop("generator", None)
            return torch.empty(*args, **kwargs)
        if func in self.FILLS:
            return args[0] if args else kwargs.get("tensor", kwargs.get("self"))
        return func(*args, **kwargs)


@contextlib.contextmanager
def skeleton():
    """Build modules whose every parameter and buffer `load_into` then replaces, without drawing
    their random initial values (the 1024 encoder and generator hold 300M of them).

    Not the `meta` device: there, each arithmetic op in a constructor runs one of torch's Python
    meta kernels, and the first of those imports torch._dynamo, 1.0-1.6 s of a cold `e4e invert`
    on a 2-core CPU. Here the big tensors are CPU memory that is never written (no pages), and the
    few small computed ones (blur kernels, scaled linear weights) are computed for real."""
    with _NoInit():
        yield


def _few(prefix: str, keys: list[str], n: int = 4) -> str:
    shown = ", ".join(prefix + k for k in keys[:n])
    return shown + (" ..." if len(keys) > n else "")


# --------------------------------------------------------------------------------------
# The architecture a checkpoint records, and the released layout written from networks


@dataclass(frozen=True)
class Architecture:
    """The networks' shape as a checkpoint's `opts` records it. Released files record none of it
    (every field None: the released encoder and generator); `e4e train` records what it trained
    (narrow encoders for tests, a generator's own channels and mapping depth). The trainer writes
    it with `to_opts`, the model reads it back with `from_opts`: one vocabulary for both."""

    encoder_widths: tuple | None = None  # 4 stage widths; the last is the style dimension
    encoder_units: tuple | None = None  # IR-SE units per stage
    input_size: int | None = None  # encoder input side (256)
    style_dim: int | None = None
    n_mlp: int | None = None  # mapping network depth
    generator_channels: dict | None = None  # resolution -> channels

    @classmethod
    def from_opts(cls, opts: dict) -> "Architecture":
        try:
            widths = tuple(int(v) for v in opts["encoder_widths"]) if opts.get("encoder_widths") else None
            units = tuple(int(v) for v in opts["encoder_units"]) if opts.get("encoder_units") else None
            channels = ({int(k): int(v) for k, v in opts["generator_channels"].items()}
                        if opts.get("generator_channels") else None)
            return cls(encoder_widths=widths, encoder_units=units,
                       input_size=int(opts["input_size"]) if opts.get("input_size") else None,
                       style_dim=int(opts["style_dim"]) if opts.get("style_dim") else None,
                       n_mlp=int(opts["n_mlp"]) if opts.get("n_mlp") else None, generator_channels=channels)
        except (TypeError, ValueError, AttributeError) as exc:
            raise E4EError(f"checkpoint opts describe an unreadable architecture ({exc})") from None

    def to_opts(self) -> dict:
        """Plain values for `opts` (only what is set)."""
        out: dict[str, Any] = {}
        if self.encoder_widths is not None:
            out["encoder_widths"] = [int(v) for v in self.encoder_widths]
        if self.encoder_units is not None:
            out["encoder_units"] = [int(v) for v in self.encoder_units]
        if self.input_size is not None:
            out["input_size"] = int(self.input_size)
        if self.style_dim is not None:
            out["style_dim"] = int(self.style_dim)
        if self.n_mlp is not None:
            out["n_mlp"] = int(self.n_mlp)
        if self.generator_channels is not None:
            out["generator_channels"] = {str(k): int(v) for k, v in self.generator_channels.items()}
        return out

    def encoder_kwargs(self) -> dict:
        """Arguments of `Encoder4Editing` beyond n_styles."""
        kw: dict[str, Any] = {}
        if self.encoder_widths is not None:
            kw["widths"] = tuple(self.encoder_widths)
            kw["style_dim"] = kw["widths"][-1]
        if self.encoder_units is not None:
            kw["units"] = tuple(self.encoder_units)
        if self.input_size is not None:
            kw["input_size"] = int(self.input_size)
        return kw

    def generator_kwargs(self) -> dict:
        """Arguments of `Generator` beyond its size."""
        kw: dict[str, Any] = {}
        if self.style_dim is not None:
            kw["style_dim"] = int(self.style_dim)
        if self.n_mlp is not None:
            kw["n_mlp"] = int(self.n_mlp)
        if self.generator_channels is not None:
            kw["channels"] = dict(self.generator_channels)
        return kw


def released_payload(*, encoder_state: dict, generator_state: dict, latent_avg: torch.Tensor, size: int,
                     dataset_type: str, architecture: Architecture, extra_opts: dict | None = None) -> dict:
    """A checkpoint dict in the released layout (what `read_checkpoint`/`infer_info` read back):
    `state_dict` with `encoder.*` and `decoder.*`, `latent_avg` [n_styles,512] and `opts`."""
    n_styles = domains.n_styles_for(size)
    sd = {"encoder." + k: v.detach().cpu().clone() for k, v in encoder_state.items()}
    sd.update({"decoder." + k: v.detach().cpu().clone() for k, v in generator_state.items()})
    opts = {"encoder_type": "Encoder4Editing", "dataset_type": dataset_type, "stylegan_size": int(size),
            "start_from_latent_avg": True, **architecture.to_opts(), **(extra_opts or {})}
    avg = latent_avg.detach().cpu().float().reshape(-1, latent_avg.shape[-1])
    return {"state_dict": sd, "latent_avg": avg[:1].repeat(n_styles, 1) if avg.shape[0] == 1 else avg, "opts": opts}
