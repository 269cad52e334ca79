"""Progress bars: the one place that decides whether a bar is shown and draws it (tqdm on stderr).

A bar is shown when the caller wants one and `E4E_NO_PROGRESS` is not set. Every kind of long
work uses `bar(...)`: images (unit "img"), downloads (unit "B", scaled), training steps (with a
postfix of the current losses).
"""
from __future__ import annotations

import sys
from typing import Iterable, Optional

from . import settings


def enabled(wanted: bool = True) -> bool:
    return bool(wanted) and settings.progress_bars()


class _Silent:
    """The bar's interface, drawing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def reset(self, total: Optional[int] = None) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def silent() -> _Silent:
    """A bar that draws nothing (a placeholder until the real one is known)."""
    return _Silent()


def bar(*, total: Optional[int], desc: str, unit: str = "img", wanted: bool = True, initial: int = 0,
        leave: bool = False, scale_bytes: bool = False):
    """A tqdm bar on stderr, or an object with the same `update/reset/set_postfix_str/close`."""
    if not enabled(wanted):
        return _Silent()
    from tqdm import tqdm

    extra = dict(unit_scale=True, unit_divisor=1024) if scale_bytes else {}
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, leave=leave,
                dynamic_ncols=True, **extra)


def iterate(items: Iterable, *, total: int, desc: str, unit: str = "img", wanted: bool = True) -> Iterable:
    """`items`, with a bar while they are consumed (none for a single item)."""
    if not enabled(wanted and total > 1):
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
