"""The downloader: streams an asset into `<file>.part`, resumes, verifies, then renames.

`download_assets()` streams each file into `<file>.part` in the weights folder, resumes with an
HTTP `Range` request after a dropped connection, retries with back-off, then tries the next
source; the size and SHA-256 are checked *before* the file is renamed to its final name, so a
corrupt or half-downloaded file never sits where the rest of the tool looks for weights.
`requests` is imported only when something is downloaded, so importing this module is cheap.
What can be downloaded is `registry.py`; where it goes is `locate.py`.
"""
from __future__ import annotations

import bz2
import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from ..digests import remember as remember_digest
from ..digests import sha256_file
from ..errors import E4EError
from ..fsutil import looks_like_html
from .. import progress as bars
from .locate import resolve_weights_dir
from .stream import CHUNK, UNREACHABLE, Partial, SourceFailed, Unreachable, failure_kind, fetch_into, short_reason
from .registry import HTML_SNIFF, Asset, expand_names, get_asset, human_size

__all__ = ["Result", "download_assets", "raise_on_failures"]
# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


@contextlib.contextmanager
def _folder_lock(folder: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Serialise downloads into one folder across processes (two runs must not write the
    same `.part`). Best effort: where locking is unsupported, run unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another e4e download into {folder} to finish ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass
class Result:
    """What happened to one asset. `status`: present, downloaded, imported or failed."""

    name: str
    filename: str
    path: Path
    status: str
    source: Optional[str] = None
    error: Optional[str] = None
    hint: Optional[str] = None
    requests: int = 0  # HTTP requests made for this asset

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def raise_on_failures(results: Sequence[Result]) -> None:
    """Raise one `E4EError` with one line per failed asset (what went wrong, what to try)."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return
    lines = [f"{r.name} ({r.filename}): {r.error}" + (f"; {r.hint}" if r.hint else "") for r in failed]
    if len(lines) == 1:
        raise E4EError(lines[0])
    # one line in all: each asset's reason, the shared hint once
    hints = list(dict.fromkeys(r.hint for r in failed if r.hint))
    reasons = "; ".join(f"{r.name} ({r.error})" for r in failed)
    offline = " (offline?)" if any("offline?" in (r.error or "") for r in failed) and "offline?" not in reasons else ""
    first = reasons.find("(offline?)")
    if first >= 0:  # say it once
        cut = first + len("(offline?)")
        reasons = reasons[:cut] + reasons[cut:].replace(" (offline?)", "")
    raise E4EError(f"{len(failed)} of {len(results)} downloads failed{offline}: {reasons}"
                   + (f"; {' / '.join(hints)}" if hints else ""))


def _make_bar(total: int, initial: int, desc: str, enabled: bool):
    return bars.bar(total=total, initial=initial, desc=desc, unit="B", scale_bytes=True, leave=True, wanted=enabled)


# --------------------------------------------------------------------------------------
# One asset
# --------------------------------------------------------------------------------------


def _sources(asset: Asset, base_url: Optional[str]) -> List[str]:
    if base_url:
        return [base_url.rstrip("/") + "/" + asset.wire_filename]
    return list(asset.urls)


def _decompress(asset: Asset, wire_path: Path, folder: Path, progress: bool, remove_wire: bool = True) -> None:
    """Stream-decompress the verified wire file into `<file>.part`, verify, rename."""
    target = folder / asset.filename
    part_path = folder / (asset.filename + ".part")
    hasher = hashlib.sha256()
    written = 0
    bar = _make_bar(asset.compressed.size, 0, f"unpacking {asset.filename}", progress)
    try:
        with open(wire_path, "rb") as src, open(part_path, "wb") as dst:
            dec = bz2.BZ2Decompressor()

            def emit(out: bytes) -> None:
                nonlocal written
                if written + len(out) > asset.size:
                    raise SourceFailed(f"{wire_path.name} unpacks to more than {asset.size} bytes")
                dst.write(out)
                hasher.update(out)
                written += len(out)

            for data in iter(lambda: src.read(CHUNK), b""):
                bar.update(len(data))
                while True:
                    if dec.eof:  # end of one bz2 stream; a multi-stream file goes on
                        data = dec.unused_data + data
                        if not data:
                            break
                        dec = bz2.BZ2Decompressor()
                    if not data and dec.needs_input:
                        break
                    emit(dec.decompress(data, max_length=8 * CHUNK))
                    data = b""
            if not dec.eof:
                raise SourceFailed(f"{wire_path.name} is truncated")
            dst.flush()
            os.fsync(dst.fileno())
        if written != asset.size or hasher.hexdigest() != asset.sha256:
            raise SourceFailed(f"{wire_path.name} unpacks to a file with the wrong size or SHA-256")
        os.replace(part_path, target)
        _fsync_dir(folder)
    except (OSError, EOFError, ValueError) as exc:
        with contextlib.suppress(OSError):
            part_path.unlink()
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise SourceFailed(f"cannot unpack {wire_path.name}: {short_reason(exc)}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            part_path.unlink()
        raise
    finally:
        bar.close()
    if remove_wire:
        with contextlib.suppress(OSError):
            wire_path.unlink()


def _import_local(asset: Asset, from_dir: Path, folder: Path, progress: bool) -> Tuple[Optional[str], Optional[str]]:
    """Copy a verified local file into `folder`. Returns (source path, None) on success,
    (None, reason) when the folder has no good copy."""
    candidates = [(from_dir / asset.filename, False)]
    if asset.compressed:
        candidates.append((from_dir / asset.compressed.filename, True))
    reasons: List[str] = []
    for src, wire in candidates:
        if not src.is_file():
            continue
        size = asset.wire_size if wire else asset.size
        sha = asset.wire_sha256 if wire else asset.sha256
        dest_name = asset.wire_filename if wire else asset.filename
        actual = src.stat().st_size
        if actual != size:
            reasons.append(f"{src} has {actual} bytes, expected {size}")
            continue
        if wire:
            # verify the .bz2 where it is, then unpack it straight into the weights folder
            if sha256_file(src) != sha:
                reasons.append(f"{src} has the wrong SHA-256 (not the released file)")
                continue
            _decompress(asset, src, folder, progress, remove_wire=False)
            return str(src), None
        part_path = folder / (dest_name + ".import.part")  # not the resumable download's .part
        hasher = hashlib.sha256()
        try:
            with open(src, "rb") as fi, open(part_path, "wb") as fo:
                for chunk in iter(lambda: fi.read(CHUNK), b""):
                    fo.write(chunk)
                    hasher.update(chunk)
                fo.flush()
                os.fsync(fo.fileno())
            if hasher.hexdigest() != sha:
                part_path.unlink()
                reasons.append(f"{src} has the wrong SHA-256 (not the released file)")
                continue
            os.replace(part_path, folder / dest_name)
        except BaseException:
            with contextlib.suppress(OSError):
                part_path.unlink()
            raise
        _fsync_dir(folder)
        return str(src), None
    if not reasons:
        names = asset.filename + (f" or {asset.compressed.filename}" if asset.compressed else "")
        reasons.append(f"{names} not found in {from_dir}")
    return None, "; ".join(reasons)


def _download_one(
    asset: Asset,
    folder: Path,
    *,
    base_url: Optional[str],
    from_dir: Optional[Path],
    verify: bool,
    progress: bool,
    retries: int,
    backoff: float,
    timeout: float,
    session,
    log: Callable[[str], None],
    dead_hosts: Optional[Dict[str, str]] = None,
) -> Result:
    final = folder / asset.filename
    dead_hosts = {} if dead_hosts is None else dead_hosts
    result = Result(asset.name, asset.filename, final, "failed")

    # 1. already there?
    if final.is_file() and not asset.sha256:  # unpublished hash: nothing to check it against
        result.status, result.source = "present", "unverified"
        return result
    if final.is_file():
        actual = final.stat().st_size
        if actual == asset.size:
            if not verify:
                result.status = "present"
                return result
            if sha256_file(final) == asset.sha256:
                result.status = "present"
                result.source = "verified"
                return result
            log(f"{asset.filename}: SHA-256 mismatch, fetching it again")
        else:
            log(f"{asset.filename}: has {actual} bytes, expected {asset.size}; fetching it again")

    # 2. a local folder?
    if from_dir is not None:
        try:
            src, reason = _import_local(asset, from_dir, folder, progress)
        except SourceFailed as exc:
            src, reason = None, str(exc)
        if src:
            result.status, result.source = "imported", src
            return result
        if not base_url:
            result.error = reason
            result.hint = "copy the released file into that folder, or use --base-url URL (a mirror)"
            return result
        log(f"{asset.filename}: {reason}; trying {base_url}")

    # 3. the network
    if not asset.sha256:
        return _download_unverified(asset, folder, final, result, base_url=base_url, session=session,
                                    timeout=timeout, progress=progress, log=log, dead_hosts=dead_hosts)
    wire_final = folder / asset.wire_filename
    if asset.compressed and wire_final.is_file() and wire_final.stat().st_size == asset.wire_size \
            and sha256_file(wire_final) == asset.wire_sha256:
        try:
            _decompress(asset, wire_final, folder, progress)
        except SourceFailed as exc:
            result.error = str(exc)
            result.hint = "delete it and run the command again"
            return result
        result.status, result.source = "downloaded", str(wire_final)
        return result

    part = Partial(folder / (asset.wire_filename + ".part"), asset.wire_size)
    failures: List[str] = []
    counter = [0]
    bar = bars.silent()  # replaced by a real bar once a source answers
    ok_url: Optional[str] = None
    try:
        for url in _sources(asset, base_url):
            if _host(url) in dead_hosts:
                failures.append(f"{_host(url)}: {dead_hosts[_host(url)]}")
                continue
            note = f" (resuming at {human_size(part.size)})" if part.size else ""
            log(f"downloading {asset.wire_filename} ({human_size(asset.wire_size)}) from {_host(url)}{note}")
            bar = _make_bar(asset.wire_size, part.size, asset.wire_filename, progress)
            try:
                fetch_into(
                    part, url, sha256=asset.wire_sha256, session=session, retries=retries,
                    backoff=backoff, timeout=timeout, bar=bar, counter=counter,
                )
            except Unreachable as exc:
                dead_hosts[_host(url)] = str(exc)
                failures.append(f"{_host(url)}: {exc}")
                continue
            except SourceFailed as exc:
                failures.append(f"{_host(url)}: {exc}")
                continue
            finally:
                bar.close()
            part.finish()
            ok_url = url
            break
    finally:
        bar.close()
        part.close()
        result.requests = counter[0]
        if ok_url is None:
            with contextlib.suppress(OSError):
                if part.path.stat().st_size == 0:
                    part.path.unlink()

    if ok_url is None:
        result.error = "; ".join(failures) or "no source to download from"
        kept = part.path.is_file()
        if base_url:
            result.hint = (f"check that {base_url.rstrip('/')}/{asset.wire_filename} is reachable "
                           "and serves the released file")
        else:
            result.hint = "run the command again to retry, or use --base-url URL (a mirror) or --from DIR (a copy)"
        if kept:
            result.hint += f" ({human_size(part.path.stat().st_size)} kept in {part.path.name}, resumed next time)"
        return result

    if asset.compressed:
        os.replace(part.path, wire_final)
        try:
            _decompress(asset, wire_final, folder, progress)
        except SourceFailed as exc:
            result.error = str(exc)
            result.hint = "run the command again"
            return result
    else:
        os.replace(part.path, final)
    _fsync_dir(folder)
    result.status, result.source = "downloaded", ok_url
    return result


def _download_unverified(asset: Asset, folder: Path, final: Path, result: Result, *, base_url, session, timeout,
                         progress: bool, log, dead_hosts: Dict[str, str]) -> Result:
    """A file whose publisher gives no size or hash: streamed into `<file>.part` (no resume: no
    size to resume against), refused if it is an HTML page, renamed when complete."""
    import requests

    part = folder / (asset.filename + ".part")
    failures: List[str] = []
    for url in _sources(asset, base_url):
        host = _host(url)
        if host in dead_hosts:
            failures.append(f"{host}: {dead_hosts[host]}")
            continue
        log(f"downloading {asset.filename} from {host} (no published hash: not verified)")
        bar = _make_bar(0, 0, asset.filename, progress)
        result.requests += 1
        try:
            with session.get(url, stream=True, timeout=(timeout, timeout)) as resp, open(part, "wb") as fh:
                if resp.status_code != 200:
                    raise SourceFailed(f"HTTP {resp.status_code}")
                first = True
                for chunk in resp.iter_content(chunk_size=CHUNK):
                    if first and ("text/html" in (resp.headers.get("Content-Type") or "").lower()
                                  or looks_like_html(chunk[:HTML_SNIFF])):
                        raise SourceFailed("got an HTML page instead of the file")
                    first = False
                    fh.write(chunk)
                    bar.update(len(chunk))
                fh.flush()
                os.fsync(fh.fileno())
            if part.stat().st_size == 0:
                raise SourceFailed("empty file")
            os.replace(part, final)
            result.status, result.source = "downloaded", url + " (unverified)"
            return result
        except requests.exceptions.ConnectionError as exc:
            kind = failure_kind(exc)
            if kind in UNREACHABLE:
                dead_hosts[host] = kind
            failures.append(f"{host}: {kind}")
        except requests.exceptions.RequestException as exc:
            failures.append(f"{host}: {failure_kind(exc)}")
        except SourceFailed as exc:
            failures.append(f"{host}: {exc}")
        finally:
            bar.close()
            with contextlib.suppress(OSError):
                part.unlink()
    result.error = "; ".join(failures) or "no source to download from"
    result.hint = "fetch it yourself and copy it into the weights folder, or use --from DIR"
    return result


def download_assets(
    names: Optional[Iterable[str]] = None,
    *,
    weights_dir: Optional[os.PathLike | str] = None,
    base_url: Optional[str] = None,
    from_dir: Optional[os.PathLike | str] = None,
    verify: bool = False,
    progress: bool = True,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 30,
    session=None,
    log: Optional[Callable[[str], None]] = None,
) -> List[Result]:
    """Fetch the named assets (groups or asset names; None = ffhq + directions) into the
    weights folder. Never raises for a failed download: each `Result` says what happened;
    pass the list to `raise_on_failures()` to turn failures into one `E4EError`."""
    from ..fsutil import ensure_dir

    asset_names = expand_names(names)
    folder = ensure_dir(resolve_weights_dir(weights_dir))
    src_dir = Path(from_dir).expanduser() if from_dir is not None else None
    if src_dir is not None and not src_dir.is_dir():
        raise E4EError(f"--from folder {src_dir} does not exist")
    say = log or (lambda msg: None)
    enabled = bars.enabled(progress)

    own_session = session is None
    if own_session:
        import requests

        session = requests.Session()
        session.headers["User-Agent"] = "e4e-cli (python-requests)"
    results: List[Result] = []
    dead_hosts: Dict[str, str] = {}  # host -> why: unreachable hosts are tried once per run
    try:
        with _folder_lock(folder, say):
            for name in asset_names:
                asset = get_asset(name)
                try:
                    res = _download_one(
                        asset, folder, base_url=base_url, from_dir=src_dir, verify=verify,
                        progress=enabled, retries=retries, backoff=backoff, timeout=timeout,
                        session=session, log=say, dead_hosts=dead_hosts,
                    )
                except OSError as exc:
                    res = Result(asset.name, asset.filename, folder / asset.filename, "failed",
                                 error=f"cannot write in {folder}: {exc.strerror or exc}",
                                 hint="free some disk space or choose another --weights-dir")
                if asset.sha256 and (res.status in ("downloaded", "imported") or res.source == "verified"):
                    remember_digest(res.path, asset.sha256)  # checked against the registry just now
                results.append(res)
    finally:
        if own_session:
            session.close()
    return results
