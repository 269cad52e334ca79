"""Training images: a folder split into train and held-out parts, read as the recipe wants.

The split is by a hash of each file's path relative to the folder (stable when files are added).
Batches are drawn from a seeded permutation per epoch and the random flips from a seed per
(step, sample), so the same step sees the same images whatever the number of processes, and
a resumed run continues exactly.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import E4EError
from ..images import IMAGE_SUFFIXES, load_image


def list_images(folder) -> list[Path]:
    root = Path(folder)
    if not root.exists():
        raise E4EError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise E4EError(f"{root} is not a folder of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise E4EError(f"image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES[:5])}, ...)")
    return files


def readable(files: Sequence[Path], *, warn=None) -> list[Path]:
    """The files PIL can open as images; others are skipped with a warning."""
    from PIL import Image

    good = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.verify()
            good.append(f)
        except Exception as exc:  # noqa: BLE001
            if warn:
                warn(f"skipping {f}: not a readable image ({type(exc).__name__})")
    if not good:
        raise E4EError(f"none of the {len(files)} files in the image folder is a readable image")
    return good


def split(files: Sequence[Path], root, val_fraction: float) -> tuple[list[Path], list[Path]]:
    """(train, held-out) by a hash of each path relative to `root`; at least one of each when possible."""
    def bucket(p: Path) -> float:
        h = hashlib.sha1(str(Path(p).relative_to(root)).encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    val = [p for p in files if bucket(p) < val_fraction]
    train = [p for p in files if bucket(p) >= val_fraction]
    if not val and val_fraction > 0 and len(files) > 1:
        val, train = [train[-1]], train[:-1]
    if not train:
        train = list(files)
    return train, val


def to_tensor(image, size_hw: tuple[int, int]) -> torch.Tensor:
    """PIL image -> [3,H,W] in [-1,1] (bilinear resize, as the inference preprocessing)."""
    from PIL import Image

    h, w = size_hw
    if image.size != (w, h):
        image = image.resize((w, h), Image.BILINEAR)
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).sub(0.5).div(0.5)


class Batches:
    """Global batches of encoder inputs: batch(step) -> ([B,3,H,W], indices)."""

    def __init__(self, files: Sequence[Path], *, batch_size: int, size_hw: tuple[int, int], seed: int, flip: bool):
        self.files, self.batch_size, self.size_hw, self.seed, self.flip = list(files), batch_size, size_hw, seed, flip
        self._cache: dict[int, torch.Tensor] = {}

    def indices(self, step: int) -> list[int]:
        n, b = len(self.files), self.batch_size
        out = []
        for j in range(step * b, step * b + b):
            epoch, pos = divmod(j, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
            out.append(int(perm[pos]))
        return out

    def image(self, i: int) -> torch.Tensor:
        if i not in self._cache:
            try:
                self._cache[i] = to_tensor(load_image(self.files[i]), self.size_hw)
            except E4EError:
                raise
            if len(self._cache) > 4096:
                self._cache.pop(next(iter(self._cache)))
        return self._cache[i]

    def batch(self, step: int, *, rows: slice = slice(None)) -> torch.Tensor:
        idx = self.indices(step)[rows]
        flips = torch.rand(self.batch_size, generator=torch.Generator().manual_seed(self.seed * 7_919 + step))[rows]
        xs = []
        for i, f in zip(idx, flips):
            x = self.image(i)
            xs.append(torch.flip(x, dims=[2]) if (self.flip and f < 0.5) else x)
        return torch.stack(xs)
