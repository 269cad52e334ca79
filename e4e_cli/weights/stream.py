"""Streaming one URL into a partial file: resume with Range, follow Google Drive's confirm page,
refuse HTML where a binary file was expected, and name a failure in a few words.

`fetch.py` drives it (sources, retries, verification, renaming); nothing here knows the registry.
"""
from __future__ import annotations

import contextlib
import hashlib
import html.parser
import os
import re
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

from ..fsutil import looks_like_html
from .registry import HTML_SNIFF

CHUNK = 256 * 1024  # bytes per read/write while streaming


class SourceFailed(Exception):
    """This source cannot deliver the file; try the next one."""


class Unreachable(SourceFailed):
    """The host cannot be resolved or refuses connections: not transient, so no retries, and the
    host is skipped for the rest of the run (offline, a name that does not exist)."""


class Partial:
    """`<file>.part`: appended to while its SHA-256 is computed on the fly."""

    def __init__(self, path: Path, expected_size: int):
        self.path = path
        self.expected = expected_size
        self.hasher = hashlib.sha256()
        self.size = 0
        self.fh = open(path, "a+b")
        self.fh.seek(0)
        existing = os.fstat(self.fh.fileno()).st_size
        if existing > expected_size:
            self.reset()
        else:
            for chunk in iter(lambda: self.fh.read(CHUNK), b""):
                self.hasher.update(chunk)
                self.size += len(chunk)
        self.resumed_from = self.size

    def reset(self) -> None:
        self.fh.seek(0)
        self.fh.truncate()
        self.hasher = hashlib.sha256()
        self.size = 0
        self.resumed_from = 0

    def write(self, chunk: bytes) -> None:
        self.fh.write(chunk)
        self.hasher.update(chunk)
        self.size += len(chunk)

    def finish(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()


class _FormParser(html.parser.HTMLParser):
    """Collect `<form action=...>` elements with their `<input name=... value=...>`s."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: List[Tuple[str, Dict[str, str]]] = []
        self._current: Optional[Tuple[str, Dict[str, str]]] = None

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._current = (a.get("action", ""), {})
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and a.get("name"):
            self._current[1][a["name"]] = a.get("value", "")

    def handle_endtag(self, tag):
        if tag == "form":
            self._current = None


def is_drive_url(url: str) -> bool:
    """A Google Drive download link: by host, or by the `uc?...id=` shape of the link
    (which also lets a local test server play Drive)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host == "drive.google.com" or host.endswith(".drive.google.com") or host == "drive.usercontent.google.com":
        return True
    query = parse_qs(parts.query)
    return parts.path.rstrip("/").endswith("/uc") and "id" in query


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    for k, v in params.items():
        query[k] = [v]
    return urlunsplit(parts._replace(query=urlencode(query, doseq=True)))


def _drive_confirm_url(page: str, page_url: str, cookies: Dict[str, str]) -> Optional[str]:
    """The URL that Drive's "can't scan this file for viruses" page would submit, or None
    when the page is not a confirmation page (quota exceeded, login, file removed)."""
    parser = _FormParser()
    with contextlib.suppress(Exception):
        parser.feed(page)
        parser.close()
    for action, fields in parser.forms:
        if "confirm" in fields or ("id" in fields and "export" in fields):
            target = urljoin(page_url, action or page_url)
            query = urlencode(fields)
            sep = "&" if urlsplit(target).query else "?"
            return target + (sep + query if query else "")
    m = re.search(r"confirm=([0-9A-Za-z_\-]+)", page)
    if m:
        extra = {"confirm": m.group(1)}
        u = re.search(r"uuid=([0-9A-Za-z_\-]+)", page)
        if u:
            extra["uuid"] = u.group(1)
        return _with_query(page_url, **extra)
    for key, value in cookies.items():
        if key.startswith("download_warning"):
            return _with_query(page_url, confirm=value)
    lower = page.lower()
    if "quota" in lower or "too many users" in lower or "accounts.google.com" in lower:
        return None
    return _with_query(page_url, confirm="t")


_PERMANENT_STATUS = {400, 401, 403, 404, 405, 410, 451}


def _content_total(resp) -> Optional[int]:
    """Total size announced by the server (Content-Range total, or Content-Length of a 200)."""
    if (resp.headers.get("Content-Encoding") or "identity").lower() not in ("identity", ""):
        return None
    if resp.status_code == 206:
        m = re.match(r"\s*bytes\s+\d+-\d+/(\d+)", resp.headers.get("Content-Range", ""))
        return int(m.group(1)) if m else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def fetch_into(
    part: Partial,
    url: str,
    *,
    sha256: str,
    session,
    retries: int,
    backoff: float,
    timeout: float,
    bar,
    counter: List[int],
) -> None:
    """Download `url` into `part` until it holds the whole verified file; raise
    `SourceFailed` when this source cannot deliver it."""
    import requests

    drive = is_drive_url(url)
    confirmations = 0
    attempt = 0  # consecutive attempts that made no progress
    restarted_for_hash = False
    while True:
        if part.size == part.expected:
            if part.hasher.hexdigest() == sha256:
                return
            resumed = part.resumed_from > 0
            part.reset()
            bar.reset(total=part.expected)
            if resumed and not restarted_for_hash:
                # the bytes kept from an earlier run may be the bad ones: one fresh try
                restarted_for_hash = True
                continue
            raise SourceFailed("SHA-256 mismatch after download (corrupt or different file)")

        offset = part.size
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        got = 0
        transient: Optional[str] = None
        try:
            counter[0] += 1
            with session.get(url, headers=headers, stream=True, timeout=(timeout, timeout)) as resp:
                status = resp.status_code
                if status == 416 and offset:
                    part.reset()  # our partial file does not fit this server's file
                    bar.reset(total=part.expected)
                    continue
                if status in _PERMANENT_STATUS or (400 <= status < 500 and status not in (408, 429)):
                    raise SourceFailed(f"HTTP {status}{(' ' + resp.reason) if resp.reason else ''}")
                if status >= 500 or status in (408, 429):
                    transient = f"HTTP {status}"
                    raise _Transient()
                if status not in (200, 206):
                    raise SourceFailed(f"unexpected HTTP {status}")

                ctype = (resp.headers.get("Content-Type") or "").lower()
                chunks = resp.iter_content(chunk_size=CHUNK)
                first = b""
                if "text/html" not in ctype:
                    first = next(chunks, b"")
                is_html = "text/html" in ctype or (
                    (status == 200 or offset == 0) and looks_like_html(first[:HTML_SNIFF])
                )
                if is_html:
                    if drive:
                        page = (first + b"".join(_take(chunks, 1 << 20))).decode("utf-8", "replace")
                        nxt = _drive_confirm_url(page, resp.url, dict(resp.cookies)) if confirmations < 2 else None
                        if nxt:
                            confirmations += 1
                            url = nxt
                            continue
                        raise SourceFailed(
                            "Google Drive sent an HTML page instead of the file (download quota exceeded?)"
                        )
                    raise SourceFailed("got an HTML page instead of the file (quota exceeded or login page?)")

                if status == 206:
                    m = re.match(r"\s*bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != offset:
                        if not offset:
                            raise SourceFailed("the server answered a plain request with a partial range")
                        # an answer for another range: start over with a plain request
                        part.reset()
                        bar.reset(total=part.expected)
                        continue
                elif offset:
                    # the server ignored Range and sends the whole file: start from zero
                    part.reset()
                    bar.reset(total=part.expected)
                    offset = 0

                total = _content_total(resp)
                if total is not None and total != part.expected:
                    raise SourceFailed(
                        f"the server's file has {total} bytes, expected {part.expected} (a different file?)"
                    )

                for chunk in _chain(first, chunks):
                    if not chunk:
                        continue
                    if part.size + len(chunk) > part.expected:
                        part.reset()
                        bar.reset(total=part.expected)
                        raise SourceFailed(f"the server sent more than the expected {part.expected} bytes")
                    part.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            if part.size < part.expected:
                transient = f"connection closed after {part.size} of {part.expected} bytes"
                raise _Transient()
        except _Transient:
            pass
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema, requests.exceptions.TooManyRedirects) as exc:
            raise SourceFailed(f"{type(exc).__name__}: {short_reason(exc)}") from None
        except requests.exceptions.ConnectionError as exc:
            kind = failure_kind(exc)
            if kind in UNREACHABLE:
                raise Unreachable(kind) from None
            transient = f"{kind} after {part.size} of {part.expected} bytes"
        except requests.exceptions.RequestException as exc:
            transient = f"{failure_kind(exc)} after {part.size} of {part.expected} bytes"
        if transient is None:
            continue  # complete: verified at the top of the loop
        attempt = 0 if got else attempt + 1
        if attempt > retries:
            raise SourceFailed(f"{transient} (gave up after {retries} retries)")
        if backoff > 0 and attempt:
            time.sleep(min(backoff * (2 ** (attempt - 1)), 60.0))


class _Transient(Exception):
    pass


def _take(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    seen = 0
    for chunk in chunks:
        yield chunk
        seen += len(chunk)
        if seen >= limit:
            return


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


UNREACHABLE = ("cannot resolve host (offline?)", "connection refused")


def failure_kind(exc: BaseException) -> str:
    import requests

    if isinstance(exc, requests.exceptions.Timeout):
        return "timed out"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection dropped"
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc)
        if ("Name or service not known" in text or "Failed to resolve" in text or "NameResolution" in text
                or "Temporary failure in name resolution" in text or "nodename nor servname" in text):
            return "cannot resolve host (offline?)"
        if "Connection refused" in text:
            return "connection refused"
        return "connection failed"
    return type(exc).__name__


def short_reason(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
