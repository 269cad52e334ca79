"""Identify files by their content: SHA-256, computed once per file version and remembered.

Outputs record which checkpoint made them, and resumable jobs compare those records, so a
checkpoint must be named by its content: two `e4e train` runs both write `step_N.pt` of
the same size, and `cp -p`, `rsync -a`, `tar x` and `touch -r` copy modification times.
Hashing a 1.2 GB checkpoint takes seconds, so the digest is cached in the user cache
folder (`fsutil.cache_dir`), keyed by (device, inode, size, mtime_ns, ctime_ns). The ctime
cannot be set by those tools (any write, rename or chmod moves it to now), so a file replaced
under the same name, size and mtime gets a new key and is hashed again. A verified download already knows
its digest and stores it with `remember`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Optional

from .errors import E4EError
from .fsutil import atomic_write, cache_dir

CHUNK = 1 << 20
MAX_ENTRIES = 512  # the cache forgets its oldest entries beyond this
_LOCK = threading.Lock()


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (no caching)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_file() -> Path:
    return cache_dir() / "digests.json"


def _key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _load() -> dict:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(cache_file().read_text())
        if isinstance(data, dict):
            return data
    return {}


def _store(entries: dict) -> None:
    """Write the cache atomically; a read-only or full disk only costs a re-hash next time."""
    keep = dict(list(entries.items())[-MAX_ENTRIES:])
    with contextlib.suppress(OSError, E4EError):
        atomic_write(cache_file(), lambda fh: fh.write(json.dumps(keep).encode()))


def content_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of `path`'s content, from the cache when this exact file version was hashed
    before. Raises E4EError when the file cannot be read."""
    p = Path(path)
    try:
        st = p.stat()
        with _LOCK:
            cached = _load().get(_key(st))
        if isinstance(cached, str) and len(cached) == 64:
            return cached
        digest = sha256_file(p)
        after = p.stat()
    except OSError as exc:
        raise E4EError(f"cannot read {p}: {exc.strerror or exc}") from None
    if _key(after) == _key(st):  # not changed while it was read
        remember(p, digest, st=after)
    return digest


def remember(path: str | os.PathLike, digest: str, *, st: Optional[os.stat_result] = None) -> None:
    """Record that the file now at `path` has SHA-256 `digest` (e.g. just verified)."""
    try:
        st = st or Path(path).stat()
    except OSError:
        return
    with _LOCK:
        entries = _load()
        entries.pop(_key(st), None)
        entries[_key(st)] = digest
        _store(entries)
