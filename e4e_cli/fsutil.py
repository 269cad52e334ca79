"""Atomic file writes: a reader never sees a half-written file under its final name.

Everything the tool writes goes to a temporary name in the destination folder first and
is renamed into place only when complete, so Ctrl-C or a crash leaves either the old file
or the new one, never a truncated one.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

from .errors import E4EError


def read_umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux:
    /proc/self/status). Setting it to read it back, the only other way, races with threads
    that create files meanwhile (the UI's workers), so that fallback sets 022, not 0."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = read_umask()  # once, at import


def unique_names(bases: Sequence[str], *, sep: str = "_") -> list[str]:
    """Output names for inputs whose natural names are `bases`: unique for any input, also when
    compared case-insensitively (macOS and Windows folders), and each base kept as it is wherever
    it is free. A repeated base gets the first free `<base><sep>N` (N = 2, 3, ...), never one
    that another input's own base already holds: photo.jpg, photo.png, photo_2.jpg ->
    photo, photo_3, photo_2."""
    own = {}
    for b in bases:
        own.setdefault(b.casefold(), b)
    taken: set[str] = set()
    names = []
    for b in bases:
        key = b.casefold()
        if key not in taken and own.get(key) is not None:
            own[key] = None  # the first input with this base keeps it
            name = b
        else:
            n = 2
            while f"{b}{sep}{n}".casefold() in taken or f"{b}{sep}{n}".casefold() in own:
                n += 1
            name = f"{b}{sep}{n}"
        taken.add(name.casefold())
        names.append(name)
    return names


WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
MAX_NAME_BYTES = 150  # room for the suffixes edits add (`_<direction>_<strength>.json`) within 255 bytes


def safe_name(text: str, default: str) -> str:
    """A file or folder name made from an input's name that stays where it is put: characters
    other than letters, digits and `. + - _` become `_`; spaces and dots around it go (no `.`, `..`
    or hidden names; Windows drops trailing ones); a name left empty is `default`, a device name
    of Windows (con, nul, ...) gets `_`, and a long one is cut to 150 UTF-8 bytes."""
    name = re.sub(r"[^\w.+-]", "_", str(text).strip()).strip(".") or default
    head, dot, rest = name.partition(".")
    if head.casefold() in WINDOWS_RESERVED:
        name = f"{head}_{dot}{rest}"
    while len(name.encode("utf-8")) > MAX_NAME_BYTES:
        name = name[:-1]
    return name.rstrip(".") or default


def child_path(folder: str | os.PathLike, name: str) -> Path:
    """`folder / name` after checking that it is a direct child of `folder` (never `folder` itself
    or a place outside it, whatever `name` is): the last guard of every output named after an input."""
    base = Path(folder)
    path = base / name
    if name in ("", ".", "..") or Path(name).name != name or os.sep in name or (os.altsep and os.altsep in name):
        raise E4EError(f"output name {name!r} would leave {base}: this is a bug (set E4E_DEBUG=1)")
    return path


def looks_like_html(head: bytes) -> bool:
    """True when the first bytes of a file are a web page (a failed download saved under a binary's name)."""
    h = head.lstrip()[:512].lower()
    return h.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in h


def sniff_head(path: str | os.PathLike, n: int = 1024) -> tuple[str, bytes | str]:
    """Look at the first `n` bytes of a weights file: ("ok", head), or (problem, detail) with
    problem "missing", "folder", "unreadable" (detail: the OS's reason), "empty" or "html" (a web
    page saved by a failed download). Callers word the problem for their context."""
    p = Path(path)
    if not p.exists():
        return "missing", ""
    if p.is_dir():
        return "folder", ""
    try:
        with open(p, "rb") as fh:
            head = fh.read(n)
    except OSError as exc:
        return "unreadable", str(exc.strerror or exc)
    if not head:
        return "empty", ""
    if looks_like_html(head):
        return "html", head
    return "ok", head


def read_head(path: str | os.PathLike, *, what: str, hint: str, n: int = 1024) -> bytes:
    """The first `n` bytes of a weights file, or a one-line E4EError naming `what` it should be:
    missing, a folder, unreadable, empty, or a web page saved by a failed download (then `hint`)."""
    p = Path(path)
    problem, detail = sniff_head(p, n)
    if problem == "ok":
        return detail
    raise E4EError({
        "missing": f"{what} {p} not found",
        "folder": f"{what} {p} is a folder, not a file",
        "unreadable": f"cannot read {what} {p}: {detail}",
        "empty": f"{what} {p} is empty: {hint}",
        "html": f"{what} {p} is an HTML page, not a {what} (a quota or login page saved by a failed download): {hint}",
    }[problem])


def cache_dir() -> Path:
    """The user cache folder for derived data (digests, W statistics): `$E4E_CACHE_DIR`, else
    `$XDG_CACHE_HOME/e4e`, else `~/.cache/e4e`."""
    from . import settings

    return settings.cache_dir() or settings.xdg_cache_home() / "e4e"


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents) or fail with a one-line reason."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise E4EError(f"output path {p} is a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise E4EError(f"cannot create folder {p}: {exc.strerror or exc}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise E4EError(f"folder {p} is not writable")
    return p


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; rename it to `path` only if the block succeeds."""
    dest = Path(path)
    ensure_dir(dest.parent if str(dest.parent) else ".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise E4EError(f"cannot write in {dest.parent}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give outputs the usual permissions
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, writer: Callable[[IO], None], mode: str = "wb") -> Path:
    """Call `writer(fh)` on a temporary file and rename it to `path` when it returns."""
    with atomic_open(path, mode) as fh:
        writer(fh)
    return Path(path)


def atomic_save_image(image, path: str | os.PathLike, **save_kwargs) -> Path:
    """Save a PIL image atomically; the format follows the suffix of `path`."""
    dest = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".webp": "WEBP"}.get(
        dest.suffix.lower(), "PNG"
    )
    return atomic_write(dest, lambda fh: image.save(fh, format=fmt, **save_kwargs))


def slug(text: str) -> str:
    """A label as a file-name part: runs of other characters than letters, digits, + and - become '-'."""
    return re.sub(r"[^\w+-]+", "-", text).strip("-") or "edit"
