"""Pivotal tuning of one generator on a whole clip (STIT, Tzaban et al. 2022): `e4e edit CLIP --tune N`.

The pivots are the frames' e4e codes (`latents.npy`), the targets the aligned crops of the same
frames at the generator's size (the photo path's preprocessing, `model.preprocess_images`). The
reference's facts (rotemtzaban/STIT, train.py and training/coaches/coach.py):

- a step is one pass over every frame in order, one frame at a time (batch 1), with an Adam
  update after each frame: N steps over F frames are N x F updates of one generator;
- Adam at lr 3e-5 (betas 0.9, 0.999), no learning-rate ramp;
- loss = 10 x L2 (mean squared error) + 1 x LPIPS (alex), on the whole crop at the generator's
  resolution; no early stop, no locality regularization (off in train.py), the generator's noise
  held fixed (noise_mode='const').

The tuned generator is stored once per clip as its difference from the base generator
(`pti.save_diff`: float16 npz, with the base checkpoint's SHA-256 and what it was made from), and
every frame of the edit is decoded with it (`pti.load_tuned` / `pti.tuned_decoder`).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import USAGE, E4EError
from .pti import DIFF_PRECISIONS, trainable

# rotemtzaban/STIT train.py's defaults
DEFAULT_STEPS = 300
DEFAULT_LR = 3e-5
L2_WEIGHT = 10.0
LPIPS_WEIGHT = 1.0
METHOD = "stit-clip-tuning"


@dataclass
class ClipTuneSettings:
    """`steps` passes over the clip's frames at Adam's `lr`; the difference stored in `precision`."""

    steps: int = DEFAULT_STEPS
    lr: float = DEFAULT_LR
    precision: str = "fp16"

    def check(self) -> "ClipTuneSettings":
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise E4EError(f"--tune must be a whole number of steps >= 0, got {self.steps!r}", exit_code=USAGE)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and np.isfinite(self.lr)):
            raise E4EError(f"--tune-lr must be > 0, got {self.lr}", exit_code=USAGE)
        if self.precision not in DIFF_PRECISIONS:
            raise E4EError(f"the tuned generator's precision must be one of {', '.join(DIFF_PRECISIONS)}, "
                           f"got {self.precision!r}", exit_code=USAGE)
        return self

    def record(self) -> dict:
        return {"method": METHOD, "steps": self.steps, "lr": self.lr, "l2_weight": L2_WEIGHT,
                "lpips_weight": LPIPS_WEIGHT, "lpips": "alex", "pivot": "e4e", "noise": "fixed", "locality": False,
                "early_stop": None, "batch": 1, "order": "frames in order, one update per frame",
                "precision": self.precision}


@dataclass
class ClipTuneLog:
    """`losses`: per step, the mean over the frames of (l2, lpips, total), each frame's measured
    just before its own update; `steps` the passes completed, `updates` the optimizer steps."""

    losses: list = field(default_factory=list)
    steps: int = 0
    updates: int = 0
    frames: int = 0
    seconds: float = 0.0

    def record(self) -> dict:
        def named(t):
            return None if t is None else dict(zip(("l2", "lpips", "total"), t))

        return {"steps_run": self.steps, "updates": self.updates, "frames": self.frames,
                "seconds": round(self.seconds, 3),
                "seconds_per_step": round(self.seconds / self.steps, 3) if self.steps else None,
                "first_loss": named(self.losses[0] if self.losses else None),
                "last_loss": named(self.losses[-1] if self.losses else None)}


def codes_sha256(codes: np.ndarray, frames: Sequence[int]) -> str:
    """The content hash of the pivots a tuning starts from: the frame indices and their codes (float32)."""
    h = hashlib.sha256()
    idx = np.asarray(list(frames), dtype=np.int64)
    h.update(idx.tobytes())
    h.update(np.ascontiguousarray(np.asarray(codes, dtype=np.float32)).tobytes())
    return h.hexdigest()


def tune_on_frames(generator, codes: torch.Tensor, targets, lpips, *, settings: ClipTuneSettings,
                   crop: Optional[tuple[int, int]] = None, impl: str = "ref",
                   on_frame: Optional[Callable[[int, int, tuple], None]] = None) -> ClipTuneLog:
    """Tune `generator` (float32, changed in place) so that each frame's code codes[f] [n,512]
    decodes to targets[f] [3,H,W] (in [-1,1]; rows `crop` of the decode when given). `targets`
    is a tensor [F,3,H,W] or any sequence of F such tensors (read one at a time, so a long clip
    need not be held as float32). `lpips(x, y)` -> [N]. `on_frame(step, frame, losses)` is
    called after each update."""
    settings.check()
    codes = torch.as_tensor(codes).detach().float().clone()  # a normal tensor even when made under inference_mode
    n = int(codes.shape[0])
    if len(targets) != n:
        raise ValueError(f"{n} codes and {len(targets)} targets")
    log = ClipTuneLog(frames=n)
    with trainable(generator) as params:
        opt = torch.optim.Adam(list(params.values()), lr=settings.lr, betas=(0.9, 0.999))
        device = next(iter(params.values())).device
        t0 = time.perf_counter()
        try:
            for step in range(settings.steps if n else 0):
                sums = np.zeros(3)
                for f in range(n):
                    target = torch.as_tensor(targets[f]).detach().float().to(device).clone()
                    if target.ndim == 3:
                        target = target[None]
                    with torch.enable_grad():
                        img = generator.synthesize(codes[f:f + 1].to(device), impl=impl)
                        if crop is not None:
                            img = img[:, :, crop[0]:crop[1], :]
                        l2 = F.mse_loss(img, target)
                        lp = lpips(img, target).mean()
                        loss = L2_WEIGHT * l2 + LPIPS_WEIGHT * lp
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                    opt.step()
                    log.updates += 1
                    vals = (l2.item(), lp.item(), loss.item())
                    sums += vals
                    if on_frame is not None:
                        on_frame(step, f, vals)
                log.losses.append(tuple(float(v) for v in sums / n))
                log.steps += 1
        finally:
            log.seconds = time.perf_counter() - t0
    return log
