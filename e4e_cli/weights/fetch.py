"""Every downloadable asset in one registry, and a downloader that never lies about it.

The registry (`ASSETS`) names each file the tool can use: its size, its SHA-256 and the
places to fetch it from, best first. `download_assets()` streams a file into
`<file>.part` in the weights folder, resumes with an HTTP `Range` request after a dropped
connection, retries with back-off, then tries the next source; the size and SHA-256 are
checked *before* the file is renamed to its final name, so a corrupt or half-downloaded
file never sits where the rest of the tool looks for weights.

Other modules only need `require_asset(name)` (or `checkpoint_path(domain)`), which
returns the path of a present file or raises `MissingWeightsError` naming the command to
run. `requests` and `tqdm` are imported only when something is downloaded, so importing
this module is cheap.
"""
from __future__ import annotations

import bz2
import contextlib
import hashlib
import html.parser
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

from ..digests import remember as remember_digest
from ..digests import sha256_file
from ..errors import E4EError, MissingWeightsError
from ..fsutil import looks_like_html, sniff_head

__all__ = [
    "Asset",
    "Compressed",
    "ASSETS",
    "GROUPS",
    "DEFAULT_GROUPS",
    "DOMAIN_CHECKPOINTS",
    "Result",
    "AssetStatus",
    "default_weights_dir",
    "resolve_weights_dir",
    "asset_path",
    "require_asset",
    "checkpoint_path",
    "expand_names",
    "known_names",
    "download_assets",
    "raise_on_failures",
    "list_assets",
    "human_size",
    "sha256_file",
]

CHUNK = 256 * 1024  # bytes per read/write while streaming
HTML_SNIFF = 512  # bytes looked at to recognise an HTML page

# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compressed:
    """How a file travels when it is not stored as-is (dlib's landmarks come as .bz2)."""

    filename: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Asset:
    """One file the tool can use. `urls` are tried in order; `compressed` describes the
    wire form when the file is downloaded compressed (then `urls` are the wire URLs)."""

    name: str
    filename: str
    size: int
    sha256: str
    urls: Tuple[str, ...]
    group: str
    description: str
    licence: str
    compressed: Optional[Compressed] = None
    domain: Optional[str] = None  # the StyleGAN2 domain the file belongs to, if any

    @property
    def wire_filename(self) -> str:
        return self.compressed.filename if self.compressed else self.filename

    @property
    def wire_size(self) -> int:
        return self.compressed.size if self.compressed else self.size

    @property
    def wire_sha256(self) -> str:
        return self.compressed.sha256 if self.compressed else self.sha256


_HF = "https://huggingface.co/public-data/e4e/resolve/main/"
_GDRIVE = "https://drive.google.com/uc?export=download&id="
_GH_RAW = "https://raw.githubusercontent.com/omertov/encoder4editing/main/editings/"
_LANDMARKS_BZ2 = "shape_predictor_68_face_landmarks.dat.bz2"

_E4E_LICENCE = (
    "e4e code MIT; the checkpoint embeds NVIDIA's StyleGAN2 generator "
    "(Nvidia Source Code License-NC): non-commercial use"
)
_DIRECTIONS_LICENCE = "MIT (omertov/encoder4editing)"


def _checkpoint(name: str, size: int, sha256: str, drive_id: str, description: str) -> Asset:
    filename = f"e4e_{name}_encode.pt"
    return Asset(
        name=name,
        filename=filename,
        size=size,
        sha256=sha256,
        urls=(_HF + filename, _GDRIVE + drive_id),
        group=name,
        description=description,
        licence=_E4E_LICENCE,
        domain=name,
    )


def _direction(name: str, folder: str, size: int, sha256: str, domain: str, description: str) -> Asset:
    filename = f"{name}.pt"
    return Asset(
        name=name,
        filename=filename,
        size=size,
        sha256=sha256,
        urls=(f"{_GH_RAW}{folder}/{filename}",),
        group="directions",
        description=description,
        licence=_DIRECTIONS_LICENCE,
        domain=domain,
    )


_REGISTRY: Tuple[Asset, ...] = (
    _checkpoint(
        "ffhq", 1201649680, "2ace1d9a8c05c10a399bcd500b8dda118f759ff1aac89dbdab7435f2136a0999",
        "1cUv_reLE6k3604or78EranS7XzuVMWeO", "e4e encoder + StyleGAN2 generator, FFHQ faces (1024 px)",
    ),
    _checkpoint(
        "cars", 1077493298, "f1743d4a9fe701643916062d7c40a4ec3d5daaa153de1ef941285d3ed3758330",
        "17faPqBce2m1AQeLCLHUVXaDfxMRU2QcV", "e4e encoder + StyleGAN2 generator, Stanford Cars (512 px)",
    ),
    _checkpoint(
        "horse", 959033364, "bfcd7ac19571fab277d933d3133a1249d89f49ba948cfcc399ea271201f5c95f",
        "1TkLLnuX86B_BMo2ocYD0kX9kWh53rUVX", "e4e encoder + StyleGAN2 generator, LSUN horses (256 px)",
    ),
    _checkpoint(
        "church", 959033364, "590f00e84b6461ba05467f7b0c705972f0ed729f4e399d3e21bfdb1b781e1c93",
        "1-L0ZdnQLwtdy6-A_Ccgq5uNJGTqE7qBa", "e4e encoder + StyleGAN2 generator, LSUN churches (256 px)",
    ),
    _direction(
        "age", "interfacegan_directions", 2808,
        "50074516b1629707d89b5e43d6b8abd1792212fa3b961a87a11323d6a5222ae0", "ffhq",
        "InterFaceGAN direction: age (FFHQ)",
    ),
    _direction(
        "smile", "interfacegan_directions", 2808,
        "817a7e732b59dee9eba862bec8bd7e8373568443bc9f9731a21cf9b0356f0653", "ffhq",
        "InterFaceGAN direction: smile (FFHQ)",
    ),
    _direction(
        "pose", "interfacegan_directions", 37624,
        "736e0eacc8488fa0b020a2e7bd256b957284c364191dfea693705e5d06d43e7d", "ffhq",
        "InterFaceGAN direction: head pose (FFHQ)",
    ),
    _direction(
        "ffhq_pca", "ganspace_pca", 167562,
        "4d7f9df1c96180d9026b9cb8d04753579fbf385f321a9d0e263641601c5e5d36", "ffhq",
        "GANSpace PCA components (FFHQ)",
    ),
    _direction(
        "cars_pca", "ganspace_pca", 167562,
        "a5c3bae61ecd85de077fbbf103f5f30cf4b7676fe23a8508166eaf2ce73c8392", "cars",
        "GANSpace PCA components (cars)",
    ),
    Asset(
        name="landmarks",
        filename="shape_predictor_68_face_landmarks.dat",
        size=99693937,
        sha256="fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
        urls=(
            "http://dlib.net/files/" + _LANDMARKS_BZ2,
            "https://github.com/davisking/dlib-models/raw/master/" + _LANDMARKS_BZ2,
        ),
        group="landmarks",
        description="dlib 68-point face landmark model (used by `e4e align`)",
        licence="dlib model trained on iBUG 300-W, whose licence excludes commercial use",
        compressed=Compressed(
            filename=_LANDMARKS_BZ2,
            size=64040097,
            sha256="7d6637b8f34ddb0c1363e09a4628acb34314019ec3566fd66b80c04dda6980f5",
        ),
    ),
)

# Loss networks for `e4e train` (issue 14). AlexNet's SHA-256 starts with the 8 digits in
# torchvision's file name; LPIPS's linear layers are the file the `lpips` package ships. IR-SE50
# and MoCo-v2 have no published size or hash: size 0 / sha256 "" mark them unverified, downloaded
# as they come (never as an HTML page) and listed as such (see _download_unverified).
_REGISTRY = _REGISTRY + (
    Asset(name="lpips_alexnet", filename="alexnet-owt-7be5be79.pth", size=244408911,
          sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
          urls=("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",), group="lpips",
          description="AlexNet ImageNet features (torchvision), the backbone of the LPIPS loss",
          licence="BSD-3-Clause (torchvision)"),
    Asset(name="lpips_alex", filename="lpips_alex_v0.1.pth", size=6009,
          sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
          urls=("https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/alex.pth",),
          group="lpips", description="LPIPS v0.1 linear layers on AlexNet features",
          licence="BSD-2-Clause (richzhang/PerceptualSimilarity)"),
    Asset(name="ir_se50", filename="model_ir_se50.pth", size=0, sha256="",
          urls=(_GDRIVE + "1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn",), group="ir_se50",
          description="ArcFace IR-SE50 face recognition (identity loss for faces; encoder initialisation)",
          licence="MIT (TreB1eN/InsightFace_Pytorch)"),
    Asset(name="moco", filename="moco_v2_800ep_pretrain.pth.tar", size=0, sha256="",
          urls=("https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar",),
          group="moco", description="MoCo-v2 ResNet-50 (identity-like loss for cars, horses, churches)",
          licence="CC-BY-NC 4.0 (facebookresearch/moco): non-commercial use"),
)

#: file-level name -> asset
ASSETS: Dict[str, Asset] = {a.name: a for a in _REGISTRY}

#: name accepted on the command line -> asset names, in download order
GROUPS: Dict[str, List[str]] = {
    "ffhq": ["ffhq"],
    "cars": ["cars"],
    "horse": ["horse"],
    "church": ["church"],
    "directions": ["age", "smile", "pose", "ffhq_pca", "cars_pca"],
    "landmarks": ["landmarks"],
    "lpips": ["lpips_alexnet", "lpips_alex"],
    "ir_se50": ["ir_se50"],
    "moco": ["moco"],
    "train": ["lpips_alexnet", "lpips_alex", "ir_se50", "moco"],
    "all": [a.name for a in _REGISTRY],
}

#: what `e4e download-weights` fetches with no name: what face editing needs
DEFAULT_GROUPS: Tuple[str, ...] = ("ffhq", "directions")

#: StyleGAN2 domain -> the asset holding its e4e checkpoint
DOMAIN_CHECKPOINTS: Dict[str, str] = {"ffhq": "ffhq", "cars": "cars", "horse": "horse", "church": "church"}


def known_names() -> List[str]:
    """Group names first, then file-level names that are not also group names."""
    names = list(GROUPS)
    names += [n for n in ASSETS if n not in GROUPS]
    return names


def expand_names(names: Optional[Iterable[str]]) -> List[str]:
    """Turn command-line names (groups, asset names or file names) into asset names.

    No name means `DEFAULT_GROUPS`. Unknown names raise one `E4EError` listing them all.
    """
    wanted = [n.strip() for n in (names or ()) if n and n.strip()]
    if not wanted:
        wanted = list(DEFAULT_GROUPS)
    by_file = {a.filename.lower(): a.name for a in ASSETS.values()}
    by_file.update({a.wire_filename.lower(): a.name for a in ASSETS.values()})
    out: List[str] = []
    unknown: List[str] = []
    for raw in wanted:
        key = raw.lower()
        if key in GROUPS:
            members = GROUPS[key]
        elif key in ASSETS:
            members = [key]
        elif key in by_file:
            members = [by_file[key]]
        else:
            unknown.append(raw)
            continue
        out.extend(m for m in members if m not in out)
    if unknown:
        raise E4EError(
            f"unknown weights name{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
            f"choose from {', '.join(known_names())}"
        )
    return out


def _get_asset(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise E4EError(f"unknown weights name {name!r}: choose from {', '.join(known_names())}") from None


# --------------------------------------------------------------------------------------
# Where weights live
# --------------------------------------------------------------------------------------


def _source_checkout_weights() -> Optional[Path]:
    root = Path(__file__).resolve().parent.parent
    if (root / "setup.cfg").is_file() and (root / "weights").is_dir():
        return root / "weights"
    return None


def default_weights_dir() -> Path:
    """`$E4E_WEIGHTS_DIR`; else `weights/` of a source checkout; else the user cache folder."""
    env = os.environ.get("E4E_WEIGHTS_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    checkout = _source_checkout_weights()
    if checkout is not None:
        return checkout
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "e4e"


def resolve_weights_dir(override: Optional[os.PathLike | str] = None) -> Path:
    """`override` (e.g. `--weights-dir`) if given, else `default_weights_dir()`."""
    if override is not None and str(override) != "":
        return Path(override).expanduser()
    return default_weights_dir()


def asset_path(name: str, weights_dir: Optional[os.PathLike | str] = None) -> Path:
    """Where asset `name` lives (present or not)."""
    return resolve_weights_dir(weights_dir) / _get_asset(name).filename


def _download_hint(asset: Asset) -> str:
    return f"run `e4e download-weights {asset.group}`"


def require_asset(name: str, weights_dir: Optional[os.PathLike | str] = None) -> Path:
    """Path of asset `name` if it is present, else `MissingWeightsError` naming the fix.

    Only existence is checked (plus a cheap check that the file is not an empty file or
    an HTML page saved by a failed download): tests and advanced users may put other
    checkpoints under the same name. `e4e download-weights --verify` checks hashes.
    """
    asset = _get_asset(name)
    folder = resolve_weights_dir(weights_dir)
    path = folder / asset.filename
    kind = "checkpoint" if asset.name in DOMAIN_CHECKPOINTS.values() else "file"
    alt = " (or pass --checkpoint PATH)" if kind == "checkpoint" else ""
    not_found = f"{kind} {asset.filename} not found in {folder}: {_download_hint(asset)}{alt}"
    if not path.is_file():  # missing, a folder, or not a regular file
        raise MissingWeightsError(not_found)
    problem, detail = sniff_head(path, HTML_SNIFF)
    if problem == "ok":
        return path
    raise MissingWeightsError({
        "missing": not_found,  # changed since the check above
        "folder": not_found,
        "unreadable": f"cannot read {path}: {detail}",
        "empty": f"{path} is empty: {_download_hint(asset)}{alt}",
        "html": f"{path} is an HTML page, not the {kind} (a failed download?): delete it and {_download_hint(asset)}",
    }[problem])


def checkpoint_path(domain: str, weights_dir: Optional[os.PathLike | str] = None) -> Path:
    """The e4e checkpoint of `domain` (ffhq, cars, horse, church), or MissingWeightsError."""
    try:
        name = DOMAIN_CHECKPOINTS[domain]
    except KeyError:
        raise E4EError(f"unknown domain {domain!r}: choose from {', '.join(DOMAIN_CHECKPOINTS)}") from None
    return require_asset(name, weights_dir)


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def human_size(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover




def _progress_enabled(progress: bool) -> bool:
    return progress and os.environ.get("E4E_NO_PROGRESS", "") in ("", "0")


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


# --------------------------------------------------------------------------------------
# Streaming into a partial file
# --------------------------------------------------------------------------------------


class _SourceFailed(Exception):
    """This source cannot deliver the file; try the next one."""


class _Unreachable(_SourceFailed):
    """The host cannot be resolved or refuses connections: not transient, so no retries, and the
    host is skipped for the rest of the run (offline, a name that does not exist)."""


class _Partial:
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


def _is_drive_url(url: str) -> bool:
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


def _fetch_into(
    part: _Partial,
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
    `_SourceFailed` when this source cannot deliver it."""
    import requests

    drive = _is_drive_url(url)
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
            raise _SourceFailed("SHA-256 mismatch after download (corrupt or different file)")

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
                    raise _SourceFailed(f"HTTP {status}{(' ' + resp.reason) if resp.reason else ''}")
                if status >= 500 or status in (408, 429):
                    transient = f"HTTP {status}"
                    raise _Transient()
                if status not in (200, 206):
                    raise _SourceFailed(f"unexpected HTTP {status}")

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
                        raise _SourceFailed(
                            "Google Drive sent an HTML page instead of the file (download quota exceeded?)"
                        )
                    raise _SourceFailed("got an HTML page instead of the file (quota exceeded or login page?)")

                if status == 206:
                    m = re.match(r"\s*bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != offset:
                        if not offset:
                            raise _SourceFailed("the server answered a plain request with a partial range")
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
                    raise _SourceFailed(
                        f"the server's file has {total} bytes, expected {part.expected} (a different file?)"
                    )

                for chunk in _chain(first, chunks):
                    if not chunk:
                        continue
                    if part.size + len(chunk) > part.expected:
                        part.reset()
                        bar.reset(total=part.expected)
                        raise _SourceFailed(f"the server sent more than the expected {part.expected} bytes")
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
            raise _SourceFailed(f"{type(exc).__name__}: {_short(exc)}") from None
        except requests.exceptions.ConnectionError as exc:
            kind = _kind(exc)
            if kind in _UNREACHABLE:
                raise _Unreachable(kind) from None
            transient = f"{kind} after {part.size} of {part.expected} bytes"
        except requests.exceptions.RequestException as exc:
            transient = f"{_kind(exc)} after {part.size} of {part.expected} bytes"
        if transient is None:
            continue  # complete: verified at the top of the loop
        attempt = 0 if got else attempt + 1
        if attempt > retries:
            raise _SourceFailed(f"{transient} (gave up after {retries} retries)")
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


_UNREACHABLE = ("cannot resolve host (offline?)", "connection refused")


def _kind(exc: BaseException) -> str:
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


def _short(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _make_bar(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
        file=sys.stderr, leave=True, dynamic_ncols=True,
    )


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def reset(self, total: Optional[int] = None) -> None:
        pass

    def close(self) -> None:
        pass


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
                    raise _SourceFailed(f"{wire_path.name} unpacks to more than {asset.size} bytes")
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
                raise _SourceFailed(f"{wire_path.name} is truncated")
            dst.flush()
            os.fsync(dst.fileno())
        if written != asset.size or hasher.hexdigest() != asset.sha256:
            raise _SourceFailed(f"{wire_path.name} unpacks to a file with the wrong size or SHA-256")
        os.replace(part_path, target)
        _fsync_dir(folder)
    except (OSError, EOFError, ValueError) as exc:
        with contextlib.suppress(OSError):
            part_path.unlink()
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise _SourceFailed(f"cannot unpack {wire_path.name}: {_short(exc)}") from None
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
        except _SourceFailed as exc:
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
        except _SourceFailed as exc:
            result.error = str(exc)
            result.hint = "delete it and run the command again"
            return result
        result.status, result.source = "downloaded", str(wire_final)
        return result

    part = _Partial(folder / (asset.wire_filename + ".part"), asset.wire_size)
    failures: List[str] = []
    counter = [0]
    bar = _NoBar()
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
                _fetch_into(
                    part, url, sha256=asset.wire_sha256, session=session, retries=retries,
                    backoff=backoff, timeout=timeout, bar=bar, counter=counter,
                )
            except _Unreachable as exc:
                dead_hosts[_host(url)] = str(exc)
                failures.append(f"{_host(url)}: {exc}")
                continue
            except _SourceFailed as exc:
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
        except _SourceFailed as exc:
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
                    raise _SourceFailed(f"HTTP {resp.status_code}")
                first = True
                for chunk in resp.iter_content(chunk_size=CHUNK):
                    if first and ("text/html" in (resp.headers.get("Content-Type") or "").lower()
                                  or looks_like_html(chunk[:HTML_SNIFF])):
                        raise _SourceFailed("got an HTML page instead of the file")
                    first = False
                    fh.write(chunk)
                    bar.update(len(chunk))
                fh.flush()
                os.fsync(fh.fileno())
            if part.stat().st_size == 0:
                raise _SourceFailed("empty file")
            os.replace(part, final)
            result.status, result.source = "downloaded", url + " (unverified)"
            return result
        except requests.exceptions.ConnectionError as exc:
            kind = _kind(exc)
            if kind in _UNREACHABLE:
                dead_hosts[host] = kind
            failures.append(f"{host}: {kind}")
        except requests.exceptions.RequestException as exc:
            failures.append(f"{host}: {_kind(exc)}")
        except _SourceFailed as exc:
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
    enabled = _progress_enabled(progress)

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
                asset = _get_asset(name)
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


# --------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------


@dataclass
class AssetStatus:
    name: str
    group: str
    filename: str
    size: int
    state: str  # present, missing, wrong size (N bytes), partial (N%), hash mismatch
    path: Path
    description: str
    licence: str = field(default="")

    @property
    def present(self) -> bool:
        return self.state.startswith("present")


def list_assets(weights_dir: Optional[os.PathLike | str] = None, *, verify: bool = False) -> List[AssetStatus]:
    """One row per registered asset: is it in the weights folder, with the right size?"""
    folder = resolve_weights_dir(weights_dir)
    rows: List[AssetStatus] = []
    for asset in ASSETS.values():
        path = folder / asset.filename
        if path.is_file() and not asset.sha256:
            state = "present (unverified: no published hash)"
        elif path.is_file():
            actual = path.stat().st_size
            if actual != asset.size:
                state = f"wrong size ({human_size(actual)})"
            elif verify:
                state = "present, verified" if sha256_file(path) == asset.sha256 else "hash mismatch"
            else:
                state = "present"
        else:
            part = folder / (asset.wire_filename + ".part")
            if part.is_file():
                pct = 100.0 * part.stat().st_size / max(asset.wire_size, 1)
                state = f"missing (partial {pct:.0f}%)"
            else:
                state = "missing"
        rows.append(AssetStatus(asset.name, asset.group, asset.filename, asset.size, state, path,
                                asset.description, asset.licence))
    return rows
