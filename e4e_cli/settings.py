"""Every `E4E_*` environment variable, read in this one place.

Each is read when asked for (not cached at import), so a test or a long-lived process sees the
value of the moment. docs/troubleshooting.md's "Settings" table lists the same names.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def _text(name: str) -> str:
    return os.environ.get(name, "").strip()


def _flag(name: str, default: bool) -> bool:
    """'' -> default; '0' -> off; anything else -> on."""
    value = _text(name)
    return default if value == "" else value != "0"


def _tristate(name: str) -> Optional[bool]:
    """'' -> None (decide by the machine); '0' -> False; anything else -> True."""
    value = _text(name)
    return None if value == "" else value != "0"


# --- the command line -------------------------------------------------------------------------

def debug() -> bool:
    """E4E_DEBUG=1: tracebacks instead of one-line errors."""
    return _flag("E4E_DEBUG", False)


def progress_bars() -> bool:
    """E4E_NO_PROGRESS=1 turns every progress bar off."""
    return not _flag("E4E_NO_PROGRESS", False)


def fast_exit() -> bool:
    """E4E_FAST_EXIT=0: let the interpreter tear itself down at the end of a command (slower;
    for profilers and coverage tools that write their data at exit)."""
    return _flag("E4E_FAST_EXIT", True)


# --- folders ----------------------------------------------------------------------------------

def weights_dir() -> Optional[Path]:
    """E4E_WEIGHTS_DIR: where weights live (None: the default folder)."""
    value = _text("E4E_WEIGHTS_DIR")
    return Path(value).expanduser() if value else None


def cache_dir() -> Optional[Path]:
    """E4E_CACHE_DIR: the cache folder (None: $XDG_CACHE_HOME/e4e or ~/.cache/e4e)."""
    value = _text("E4E_CACHE_DIR")
    return Path(value).expanduser() if value else None


def xdg_cache_home() -> Path:
    value = _text("XDG_CACHE_HOME")
    return Path(value).expanduser() if value else Path.home() / ".cache"


# --- the machine ------------------------------------------------------------------------------

def num_threads() -> str:
    """E4E_NUM_THREADS: intra-op threads ('' : one per physical core)."""
    return _text("E4E_NUM_THREADS")


def heap_reuse() -> bool:
    """E4E_HEAP_REUSE=0: leave glibc's allocator thresholds as they are."""
    return _flag("E4E_HEAP_REUSE", True)


def heap_trim() -> bool:
    """E4E_HEAP_TRIM=0: do not give freed heap pages back after a batch."""
    return _flag("E4E_HEAP_TRIM", True)


def native_bf16() -> Optional[bool]:
    """E4E_NATIVE_BF16=0|1 overrides the CPU-flag check for native bfloat16."""
    return _tristate("E4E_NATIVE_BF16")


def matrix_engine() -> Optional[bool]:
    """E4E_MATRIX_ENGINE=0|1 overrides the check for a matrix engine (AMX/SME)."""
    return _tristate("E4E_MATRIX_ENGINE")


def winograd() -> bool:
    """E4E_WINOGRAD=0 turns Winograd 3x3 convolutions off."""
    return _flag("E4E_WINOGRAD", True)


def compile_on_cuda() -> bool:
    """E4E_COMPILE=1: torch.compile the fast paths on CUDA."""
    return _flag("E4E_COMPILE", False)


# --- test and benchmark support (synthetic weights) --------------------------------------------

def parity_dir(default: Path) -> Path:
    """E4E_PARITY_DIR: the shared parity fixtures (default ../shared/parity beside the checkout)."""
    value = _text("E4E_PARITY_DIR")
    return Path(value) if value else default


def test_cache(default: Path) -> Path:
    """E4E_TEST_CACHE: where synthetic checkpoints are written once and reused."""
    value = _text("E4E_TEST_CACHE")
    return Path(value) if value else default


# --- e4e ui -----------------------------------------------------------------------------------

def ui_token() -> Optional[str]:
    """E4E_UI_TOKEN: the page's secret (None: not set; '' is kept so that it can be refused)."""
    return os.environ.get("E4E_UI_TOKEN")
