"""What whoever runs the fast paths owns: their options (`FastOptions`) and their derived tensors
(`Plans`), plus the batch-invariance helpers both fast paths use.

Nothing here is global: `E4E` keeps one `FastOptions` and one `Plans` and passes them to
`fast_encoder.encode` / `fast_generator.synthesize`, so two models (or two threads) with other
options never see each other's choices. Memoised facts about the machine (is NNPACK usable,
does oneDNN fuse conv + leaky ReLU) stay module caches in ops.py and runtime.py.
"""
from __future__ import annotations

import dataclasses
import threading
import weakref
from typing import Callable, Optional

import torch

from . import ops

# Up-sampling layers in weight mode (see fast_generator): "transpose", "polyphase", or "auto"
# (polyphase in reduced precision where a matrix engine makes convolutions cheap).
FAST_UP_MODES = ("auto", "transpose", "polyphase")
# "auto": weight mode where the weights are smaller than one image's input activations;
# "activation" / "weight": every layer in that mode (tests use these to cover both).
FAST_MODES = ("auto", "activation", "weight")


@dataclasses.dataclass(frozen=True)
class FastOptions:
    """How the networks run; the defaults are what measured fastest (see fast_generator, ops).

    up_mode: FAST_UP_MODES; mode: FAST_MODES; conv3x3: the generator's 3x3 convolutions
    (ops.CONV3X3_IMPLS); fused_lrelu: oneDNN's fused conv + leaky ReLU (and the noise carried as
    input channels that needs it) where it works, False: never; winograd_min_channels,
    winograd_min_side: where conv3x3="auto" takes Winograd (None: by the CPU); fir_layout: the
    reference path's FIR layout (ops.FIR_LAYOUTS; "per_channel" is the reference
    implementation's way, for the benchmark).
    """

    up_mode: str = "auto"
    mode: str = "auto"
    conv3x3: str = "auto"
    fused_lrelu: bool = True
    winograd_min_channels: Optional[int] = None
    winograd_min_side: int = 64
    fir_layout: str = "depthwise"

    def __post_init__(self):
        for name, allowed in (("up_mode", FAST_UP_MODES), ("mode", FAST_MODES), ("conv3x3", ops.CONV3X3_IMPLS),
                              ("fir_layout", ops.FIR_LAYOUTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"FastOptions.{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def replace(self, **changes) -> "FastOptions":
        return dataclasses.replace(self, **changes)


class Plans:
    """The fast paths' derived tensors (folded BatchNorm, stacked styles, polyphase kernels, ...),
    per module and per key (device, dtypes and the options a plan depends on).

    Owned by the caller (E4E keeps one); modules are held weakly. Call `clear()` after changing
    a module's parameters in place. Safe to share between threads (a plan is built once).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._by_module: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, module: torch.nn.Module, key: tuple, build: Callable[[], object]):
        """The plan of `module` for `key`, built by `build()` the first time."""
        with self._lock:
            per = self._by_module.get(module)
            if per is None:
                per = self._by_module[module] = {}
            plan = per.get(key)
            if plan is None:
                plan = per[key] = build()
            return plan

    def of(self, module: torch.nn.Module) -> dict:
        """{key: plan} for `module` (a copy)."""
        with self._lock:
            return dict(self._by_module.get(module, {}))

    def clear(self, module: Optional[torch.nn.Module] = None) -> None:
        """Forget every plan (or only `module`'s)."""
        with self._lock:
            if module is None:
                self._by_module.clear()
            else:
                self._by_module.pop(module, None)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._by_module.values())


# --------------------------------------------------------------------------------------
# Batch invariance


def each(fn, x):
    """fn applied to each sample of x on its own, concatenated. Matrix products round differently
    for different row counts (MKL and oneDNN pick kernels by shape), so the fast paths run every
    product whose row count would depend on the batch size sample by sample: an image's result is
    then bitwise the same whatever batch it is in (the reference path does not promise that).
    That promise is the CPU's: on a GPU the batch runs as one (sample by sample, an H200 inverted
    about 55 images/s at any batch size, every kernel launched once per image), and cuDNN's and
    cuBLAS's results may then differ in the last bits between batch sizes."""
    if x.shape[0] == 1 or x.device.type != "cpu":
        return fn(x)
    return torch.cat([fn(x[i : i + 1]) for i in range(x.shape[0])])


# PyTorch picks a convolution's backend (and oneDNN its kernel) by shape, batch size included,
# so a batch and its samples alone can round differently. Below this many input pixels that was
# seen with the real model's shapes; the generator's activation-mode layers go sample by sample
# always (their activations are small: it costs little), see `each`.
TINY_PIXELS = 32


def per_sample_if_tiny(conv, x):
    if x.shape[0] == 1 or x.shape[2] * x.shape[3] > TINY_PIXELS or x.device.type != "cpu":
        return conv(x)
    return torch.cat([conv(x[i : i + 1]) for i in range(x.shape[0])])


def lowp(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)
