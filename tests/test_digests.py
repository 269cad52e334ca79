"""Files are identified by content: `digests.content_sha256` and its cache (issue 21)."""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from e4e_cli import digests
from e4e_cli.errors import E4EError


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("E4E_CACHE_DIR", str(tmp_path / "cache"))


def test_digest_is_cached_per_file_version(tmp_path, monkeypatch):
    f = tmp_path / "step_100.pt"
    f.write_bytes(b"A" * 4096)
    assert digests.content_sha256(f) == hashlib.sha256(b"A" * 4096).hexdigest()
    assert digests.cache_file().is_file()
    calls = []
    monkeypatch.setattr(digests, "sha256_file", lambda p: calls.append(p) or "x" * 64)
    assert digests.content_sha256(f) == hashlib.sha256(b"A" * 4096).hexdigest()
    assert calls == [], "the second look is answered from the cache"


def test_same_size_and_mtime_other_content_is_hashed_again(tmp_path):
    f = tmp_path / "step_100.pt"
    f.write_bytes(b"A" * 4096)
    st = f.stat()
    first = digests.content_sha256(f)
    time.sleep(0.01)
    tmp = tmp_path / "incoming"
    tmp.write_bytes(b"B" * 4096)
    os.replace(tmp, f)  # another run's file under the same name and size ...
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... with the old mtime (cp -p, rsync -a, touch -r)
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    second = digests.content_sha256(f)
    assert second == hashlib.sha256(b"B" * 4096).hexdigest() != first


def test_rewritten_in_place_with_old_mtime_is_hashed_again(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"A" * 100)
    st = f.stat()
    digests.content_sha256(f)
    time.sleep(0.01)
    with open(f, "r+b") as fh:  # same inode, same size
        fh.write(b"B")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert digests.content_sha256(f) == hashlib.sha256(b"B" + b"A" * 99).hexdigest()


def test_remember_and_unreadable(tmp_path, monkeypatch):
    f = tmp_path / "verified.pt"
    f.write_bytes(b"released")
    digests.remember(f, "d" * 64)  # what a verified download knows
    monkeypatch.setattr(digests, "sha256_file", lambda p: pytest.fail("must not hash again"))
    assert digests.content_sha256(f) == "d" * 64
    with pytest.raises(E4EError, match="cannot read"):
        digests.content_sha256(tmp_path / "missing.pt")


def test_unwritable_cache_costs_only_a_rehash(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("E4E_CACHE_DIR", str(blocker / "sub"))  # a folder under a file: cannot be made
    f = tmp_path / "w.pt"
    f.write_bytes(b"abc")
    assert digests.content_sha256(f) == hashlib.sha256(b"abc").hexdigest()
