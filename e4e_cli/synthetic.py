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


#: the released HyperStyle checkpoints' tuned layers (make_hyperstyle.py's default)
HYPERSTYLE_RELEASE_LAYERS = "0,2,3,5,6,8,9,11,12,14,15,17,18,20,21,23,24"


def synthetic_hyperstyle(size: int = 1024, seed: int = 1, domain: str = "ffhq",
                         layers_to_tune: str = HYPERSTYLE_RELEASE_LAYERS, *,
                         log: Optional[Callable[[str], None]] = None) -> tuple[Path, Path]:
    """Paths of a cached synthetic HyperStyle checkpoint and its W-encoder (released layout,
    parity/hyperstyle/make_hyperstyle.py), built first if missing (temporary names, then rename).

    About 1.5 GB each at 1024/512 (the shared hypernet), so they are written once per cache.
    """
    tag = ("rel" if layers_to_tune == HYPERSTYLE_RELEASE_LAYERS
           else "all" if layers_to_tune == "" else "L" + layers_to_tune.replace(",", "-"))
    hs = cache_dir() / f"hyperstyle_{domain}_{size}_s{seed}_{tag}.pt"
    we = cache_dir() / f"hyperstyle_wencoder_{domain}_{size}_s{seed}.pt"
    if hs.is_file() and we.is_file():
        return hs, we
    maker = parity_dir() / "hyperstyle" / "make_hyperstyle.py"
    if not maker.is_file():
        raise E4EError(f"no synthetic HyperStyle checkpoint at {hs} and no {maker} to build one (set E4E_PARITY_DIR)")
    hs.parent.mkdir(parents=True, exist_ok=True)
    if log:
        log(f"building the synthetic HyperStyle {domain} {size} checkpoints {hs}, {we} ...")
    hs_tmp, we_tmp = hs.with_suffix(f".{os.getpid()}.part"), we.with_suffix(f".{os.getpid()}.part")
    try:
        subprocess.run([sys.executable, str(maker), "--size", str(size), "--seed", str(seed), "--domain", domain,
                        "--layers-to-tune", layers_to_tune, str(hs_tmp), str(we_tmp)], check=True)
        os.replace(we_tmp, we)  # the W-encoder first: a present hs file means both are complete
        os.replace(hs_tmp, hs)
    finally:
        for p in (hs_tmp, we_tmp):
            p.unlink(missing_ok=True)
    return hs, we
