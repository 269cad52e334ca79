"""One vocabulary for devices and precisions, for inference and training alike.

Devices: `auto` (cuda, then mps, then cpu), `cpu`, `cuda`, `cuda:N`, `mps`; under torchrun a bare
`cuda` means this process's own GPU (LOCAL_RANK). Precisions: `fp32`, `bf16`, `fp16` (and their
long names), or `auto`: the fastest precision the device computes natively. Inference defaults
to `auto` on the command line; training defaults to `fp32` (its recipe's numbers).
"""
from __future__ import annotations

import torch

from .errors import E4EError
from .nn.runtime import native_bf16

PRECISIONS = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
              "fp16": torch.float16, "float16": torch.float16}


def resolve_device(device: str | torch.device = "auto", *, local_rank: int | None = None) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an unavailable explicit choice is an E4EError.
    `local_rank` (torchrun's LOCAL_RANK): a bare cuda, or auto on a CUDA machine, means cuda:local_rank."""
    name = str(device)
    if local_rank is not None and name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise E4EError("--device cuda was asked for, but no CUDA GPU is available (use --device cpu or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise E4EError("--device mps was asked for, but Apple's MPS backend is not available (use --device cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise E4EError(f"unknown device {name!r} (use auto, cpu, cuda or mps)") from None


def resolve_precision(precision: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> float32 (the library's default: the reference's numbers). "auto" (the CLI's
    default) -> the fastest precision this device computes natively: bfloat16 on CPUs with
    AVX512-BF16/AMX (see `runtime.native_bf16`) and on CUDA GPUs that have it (float16 on older
    ones), float32 elsewhere (AVX2-only CPUs, where bfloat16 would be emulated, and MPS)."""
    if precision is None:
        return torch.float32
    if isinstance(precision, str) and precision.lower() == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and native_bf16():
            return torch.bfloat16
        return torch.float32
    if isinstance(precision, torch.dtype):
        return precision
    try:
        return PRECISIONS[str(precision).lower()]
    except KeyError:
        raise E4EError(f"unknown precision {precision!r} (use fp32, bf16 or fp16)") from None
