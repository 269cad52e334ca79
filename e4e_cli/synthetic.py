"""Synthetic checkpoints in the released format, for tests, the benchmark and the demo.

The real weights cannot be downloaded on the build machines; the parity folder
(`../shared/parity` beside the checkout, or `$E4E_PARITY_DIR`) holds `make_checkpoint.py`,
which writes a deterministic checkpoint with every key, shape and dtype of a released one.
`synthetic_checkpoint` builds one once and caches it (`$E4E_TEST_CACHE`, else
`.cache/test-checkpoints/` in the checkout).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from . import settings
from .errors import E4EError

ROOT = Path(__file__).resolve().parents[1]


def parity_dir() -> Path:
    return settings.parity_dir(ROOT.parent / "shared" / "parity")


def parity_available() -> bool:
    p = parity_dir()
    return (p / "SPEC.md").is_file() and (p / "make_checkpoint.py").is_file()


def cache_dir() -> Path:
    return settings.test_cache(ROOT / ".cache" / "test-checkpoints")


def synthetic_checkpoint(size: int = 1024, seed: int = 1, domain: str = "ffhq", *,
                         log: Optional[Callable[[str], None]] = None) -> Path:
    """Path of the cached synthetic checkpoint, built first if missing (temporary name, then rename)."""
    out = cache_dir() / f"e4e_{domain}_{size}_s{seed}.pt"
    if out.is_file():
        return out
    maker = parity_dir() / "make_checkpoint.py"
    if not maker.is_file():
        raise E4EError(f"no synthetic checkpoint at {out} and no {maker} to build one (set E4E_PARITY_DIR)")
    out.parent.mkdir(parents=True, exist_ok=True)
    if log:
        log(f"building the synthetic {domain} {size} checkpoint {out} ...")
    tmp = out.with_suffix(".part")
    subprocess.run([sys.executable, str(maker), "--size", str(size), "--seed", str(seed), "--domain", domain, str(tmp)],
                   check=True)
    os.replace(tmp, out)
    return out
