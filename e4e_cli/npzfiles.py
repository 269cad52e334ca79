"""What an `.npz` file declares before it is read: each member's shape and dtype, from its `.npy`
header alone.

An npz member may be deflated, and `np.load(...)[name]` inflates it whole: a file of a few
kilobytes can declare gigabytes. Readers of files a user hands us (weight offsets, refined
latents, dataset shards, direction files) look at `layout()` first and refuse a member whose
declared size is not what the generator or the index expects (`check()`), in one E4EError line,
before a byte of it is inflated.
"""
from __future__ import annotations

import contextlib
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import E4EError


@dataclass(frozen=True)
class Member:
    shape: tuple
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def layout(path: str | Path) -> dict[str, Member]:
    """{member name (no .npy): Member} read from the headers only. Raises zipfile.BadZipFile,
    ValueError or OSError for a file that is not an npz of plain arrays (callers word them)."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                raise ValueError(f"member {info.filename!r} is not an array")
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            if dtype.hasobject:
                raise ValueError(f"member {info.filename[:-4]!r} holds Python objects")
            out[info.filename[:-4]] = Member(tuple(int(n) for n in shape), dtype)
    return out


def check(path: str | Path, members: dict[str, Member], name: str, *, shapes: Sequence[tuple],
          kinds: str = "f", max_itemsize: Optional[int] = None, max_bytes: int = 1 << 30, what: str = "file") -> Member:
    """Member `name` of `members` (a `layout`) has one of `shapes` (None in a shape: any size
    there, as long as the member stays under `max_bytes`) and a dtype kind in `kinds`; else one
    E4EError line naming the file. Returns the member."""
    m = members.get(name)
    if m is None:
        raise E4EError(f"{what} {path} has no {name!r} array")
    fits = any(len(s) == len(m.shape) and all(w is None or w == n for w, n in zip(s, m.shape)) for s in shapes)
    if not fits or m.dtype.kind not in kinds or (max_itemsize and m.dtype.itemsize > max_itemsize) \
            or m.nbytes > max_bytes:
        want = " or ".join("[" + ",".join("*" if n is None else str(n) for n in s) + "]" for s in shapes)
        raise E4EError(f"{what} {path}: its {name!r} array declares {list(m.shape)} of {m.dtype} ({m.nbytes:,} bytes), "
                       f"not {want}: not a file this can read")
    return m


@contextlib.contextmanager
def read_errors(path: str | Path, *, what: str, advice: str):
    """Reading a user's npz inside this block: a missing file, or what a truncated or foreign one
    raises (bad zip, bad header, missing member, bad JSON record), becomes one E4EError line
    naming `what` and `advice`; E4EErrors pass through as they are."""
    try:
        yield
    except E4EError:
        raise
    except FileNotFoundError:
        raise E4EError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as exc:  # json's errors are ValueErrors
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise E4EError(f"{what} {path} is truncated or corrupt ({first}): {advice}") from None
