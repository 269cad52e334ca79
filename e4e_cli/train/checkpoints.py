"""Checkpoints of `e4e train` on disk: saving, finding the latest, loading one to resume.

Every file is a checkpoint `e4e invert --checkpoint` (and the reference code) loads:
`state_dict` with `encoder.*` and `decoder.*`, `latent_avg` [n_styles,512] and `opts`
(`encoder_type: Encoder4Editing`, `dataset_type`, `stylegan_size`, ...). The key `train_state`
(ignored by loaders, as released files' `optimizer` is) holds what `--resume` needs: step,
optimizers, discriminator, pools and random states. Files are written to a temporary name and
renamed (`checkpoints/step_0001234.pt`); only the last `keep_last` are kept. The layout itself is
`checkpoint.released_payload` (the writer) and `checkpoint.infer_info`/`Architecture` (the reader).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch

from ..errors import E4EError
from ..fsutil import atomic_write, ensure_dir

STEP_FILE = re.compile(r"step_(\d+)\.pt$")


def save(run_dir, step: int, payload: dict, *, keep_last: int) -> Path:
    folder = ensure_dir(Path(run_dir) / "checkpoints")
    path = folder / f"step_{step:07d}.pt"
    atomic_write(path, lambda fh: torch.save(payload, fh))
    olds = sorted(folder.glob("step_*.pt"), key=lambda p: int(STEP_FILE.search(p.name).group(1)))
    for old in olds[: max(0, len(olds) - max(1, keep_last))]:
        old.unlink(missing_ok=True)
    return path


def latest(run_dir) -> Optional[Path]:
    folder = Path(run_dir) / "checkpoints"
    files = [p for p in folder.glob("step_*.pt") if STEP_FILE.search(p.name)] if folder.is_dir() else []
    return max(files, key=lambda p: int(STEP_FILE.search(p.name).group(1))) if files else None


def load_for_resume(run_dir) -> dict:
    path = latest(run_dir)
    if path is None:
        raise E4EError(f"nothing to resume in {run_dir}: no checkpoints/step_*.pt")
    from ..checkpoint import read_checkpoint

    obj = read_checkpoint(path, mmap=False)
    if "train_state" not in obj:
        raise E4EError(f"{path} has no training state (not written by e4e train)")
    return obj
