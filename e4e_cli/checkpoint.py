"""Reading released e4e checkpoints safely.

A checkpoint is a `torch.save` dict: `state_dict` (flat `encoder.*` / `decoder.*` tensors),
`latent_avg` [n_styles,512], `opts` (training options) and training extras that we
ignore. Files are opened with `weights_only=True` (a downloaded file can never run code)
and memory-mapped, so the ~1.2 GB of weights are not copied into RAM twice.
"""
from __future__ import annotations

import math
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import E4EError
from .fsutil import read_head

DOMAIN_SIZES = {"ffhq": 1024, "cars": 512, "horse": 256, "church": 256}


@dataclass
class CheckpointInfo:
    """What the checkpoint says about itself (from `opts`, SPEC "Checkpoint file")."""

    size: int
    n_styles: int
    domain: str
    encoder_type: str
    start_from_latent_avg: bool
    opts: dict = field(default_factory=dict)


def read_checkpoint(path: str | os.PathLike, *, mmap: bool = True) -> dict[str, Any]:
    """Load the checkpoint dict with `weights_only=True` on the CPU, or raise E4EError.

    The error names the file and the likely cause: an HTML page saved instead of the
    file, a truncated download, or a pickle that would run code.
    """
    p = Path(path)
    head = read_head(p, what="checkpoint", hint="delete it and run `e4e download-weights`")
    is_zip = zipfile.is_zipfile(p)
    if head[:2] == b"PK" and not is_zip:
        raise E4EError(f"checkpoint {p} is truncated or corrupt (incomplete zip archive): download it again")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=bool(mmap and is_zip))
    except pickle.UnpicklingError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else ""
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise E4EError(
                f"checkpoint {p} was refused: it holds Python objects that would run code when unpickled, "
                "which a released e4e checkpoint never does"
            ) from None
        raise E4EError(f"checkpoint {p} is not a valid PyTorch file ({msg}): download it again") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, AttributeError, TypeError, KeyError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise E4EError(f"checkpoint {p} is truncated or corrupt ({first}): download it again") from None
    if not isinstance(obj, dict):
        raise E4EError(f"checkpoint {p} holds a {type(obj).__name__}, not an e4e checkpoint dict")
    if "state_dict" not in obj or not isinstance(obj["state_dict"], dict):
        hint = " (a bare state dict?)" if any(isinstance(k, str) and k.startswith("encoder.") for k in obj) else ""
        raise E4EError(f"checkpoint {p} has no 'state_dict'{hint}: not an e4e checkpoint")
    return obj


def infer_info(ckpt: dict[str, Any], *, path: str | os.PathLike = "checkpoint") -> CheckpointInfo:
    """Size, n_styles and domain from `opts` (`stylegan_size`, else from `dataset_type`)."""
    opts = ckpt.get("opts") or {}
    if not isinstance(opts, dict):
        opts = {}
    dataset = str(opts.get("dataset_type") or "")
    domain = dataset.split("_")[0] if dataset else ""
    size = opts.get("stylegan_size")
    if size is None:
        if dataset.startswith("ffhq"):
            size = 1024
        elif dataset.startswith("cars"):
            size = 512
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
        domain = {1024: "ffhq", 512: "cars"}.get(size, "church")
    encoder_type = str(opts.get("encoder_type") or "Encoder4Editing")
    if encoder_type != "Encoder4Editing":
        raise E4EError(
            f"{path}: encoder_type is {encoder_type!r}; only e4e checkpoints (Encoder4Editing) are supported"
        )
    start_avg = opts.get("start_from_latent_avg")
    return CheckpointInfo(
        size=size,
        n_styles=2 * int(math.log2(size)) - 2,
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


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], *, prefix: str, path: str | os.PathLike) -> None:
    """Strict load with `assign=True` (no copy): a readable error names missing/unexpected/misshapen keys."""
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
        raise E4EError(f"checkpoint {path} does not fit the e4e architecture: " + "; ".join(problems))
    for k, v in tensors.items():
        if v.dtype != expected[k].dtype and v.is_floating_point():
            tensors[k] = v.to(expected[k].dtype)
    module.load_state_dict(tensors, strict=True, assign=True)


def _few(prefix: str, keys: list[str], n: int = 4) -> str:
    shown = ", ".join(prefix + k for k in keys[:n])
    return shown + (" ..." if len(keys) > n else "")
