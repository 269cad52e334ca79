"""The local editing page's server: upload or pick, invert once, then decode-only previews.

State per session (an uploaded photo or a picked latent): the encoder's w0 and deltas (or the
codes), the photo and its alignment. A preview applies the delta scale and each slider's
direction with exactly the functions `e4e edit` uses (`editing.rescale_codes`,
`editing.resolve_direction(...).apply`, in slider order), decodes (a lock serialises the
model), and returns a PNG. Previews are progressive (issue 25): while a slider moves the page
asks for `size: "preview"`, the synthesis stopped after its 256 block (`E4E.decode(size=256)`,
exactly the full decode's partial sum at 256, a fraction of the work), and when it rests for
`"full"`, the full-resolution decode. A request that a newer one of the same session has
overtaken is answered 409: without decoding when that happened before it reached the model,
and at the next block boundary when it happened during the decode (`should_stop`), so a slider
moved again never waits for a stale full decode to finish. Uploads are size-limited and read
with the same checks as any input; the latent picker lists only files under the folder given
on the command line.

Any web page the user visits can reach 127.0.0.1, so `Guard` sits in front of the app: it
refuses a Host that is not this server's address (DNS rebinding), a state-changing request
from another origin, and any request without the per-launch token (URL, cookie or header);
it also cuts a request body off at its limit while it streams in.
"""

import base64
import contextlib
import hmac
import io
import ipaddress
import json
import re
import secrets
import tempfile
import threading
import unicodedata
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np

from ..errors import USAGE, E4EError

MAX_UPLOAD = 25 << 20  # bytes of the photo
MAX_UPLOAD_BODY = MAX_UPLOAD + (64 << 10)  # the multipart request around it
MAX_JSON_BODY = 1 << 20  # every other request
MAX_PREPARES = 2  # uploads / latent picks read, aligned and inverted at once; more get "busy"
MAX_SESSIONS = 32
PREVIEW_SIDE = 256  # the early-exit preview's resolution, and the thumbnails' side
PASTE_SIDES = {"preview": 2 * PREVIEW_SIDE, "full": 1024}  # the photo's longest side when a face is pasted back for display
N_SEFA = 5
STATIC = Path(__file__).with_name("static")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~-]{16,}")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")  # own direction files offered as sliders


class Busy(E4EError):
    """Too many photos are being prepared at once: answered 503, the page says try again."""

    http_status = 503


class TooLarge(E4EError):
    """A request or file over its limit: answered 413."""

    http_status = 413


@dataclass
class Session:
    codes: "object"  # [1,n,512] at delta scale 1 (latent_avg included)
    w0_codes: "object"  # [1,n,512] at delta scale 0
    photo: Optional["object"] = None  # PIL, upright
    aligned: Optional["object"] = None
    alignment: Optional[dict] = None
    seq: int = 0
    name: str = "photo"
    lock: threading.Lock = field(default_factory=threading.Lock)
    shrunk: dict = field(default_factory=dict)  # longest side -> (photo, quad, landmarks) for display paste-backs
    refined: Optional[tuple] = None  # HyperStyle: (codes [1,n,512], {layer: offsets}), once refined


def _png(image, max_side: Optional[int] = None, *, fast: bool = False) -> bytes:
    """PNG bytes; `fast`: zlib level 1 (a 1024 image in ~0.07 s instead of ~0.3 s, 15% larger:
    the page's previews travel over loopback, where bytes are cheap and time is not)."""
    from PIL import Image

    if max_side and max(image.size) > max_side:
        s = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))), Image.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1 if fast else 6)
    return buf.getvalue()


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


class Editor:
    """The model, its directions and the sessions; no web code here (tests drive it directly)."""

    def __init__(self, model, *, weights_dir=None, latents_dir: Optional[Path] = None, synthetic: bool = False,
                 directions_dir: Optional[Path] = None, refiner_files: Optional[tuple] = None):
        from ..editing import resolve_direction

        self.model, self.synthetic = model, synthetic
        self.refiner_files = refiner_files  # (HyperStyle checkpoint, W-encoder): the page's "refine" switch
        self._refiner = None
        self.latents_dir = Path(latents_dir).resolve() if latents_dir else None
        self.lock = threading.Lock()  # the model: one encode or decode at a time
        self.sessions: dict[str, Session] = {}  # insertion order = age; guarded by sessions_lock
        self.sessions_lock = threading.Lock()
        self.prepares = threading.BoundedSemaphore(MAX_PREPARES)
        self.directions = {}
        from .. import editing

        specs = [n for n, p in editing.PRESETS.items() if p.domain == model.domain]
        specs += [f"sefa:{k}" for k in range(N_SEFA)]
        for spec in specs:
            try:
                d = resolve_direction(spec, model, weights_dir=weights_dir)
            except E4EError:
                continue  # its file is not downloaded
            lo, hi = (-5.0, 5.0) if d.kind != "ganspace" else (-30.0, 30.0)
            self.directions[spec.replace(":", "-")] = (spec, d, lo, hi)
        self._add_own_directions(weights_dir, directions_dir)

    def _add_own_directions(self, weights_dir, directions_dir: Optional[Path]) -> None:
        """A slider for each direction file in the weights folder's directions/ and in
        `directions_dir` (`e4e ui --directions DIR`) that fits this checkpoint. Only plainly named
        files (SAFE_NAME) are offered: the name becomes the slider's id and label on the page."""
        from ..editing import resolve_direction
        from ..jobs.directions import user_directions

        for path in user_directions(weights_dir, directions_dir):
            if not SAFE_NAME.fullmatch(path.stem):
                continue
            key = f"file-{path.stem}"
            if key in self.directions:
                continue  # the weights folder's file wins over a namesake in --directions
            try:
                d = resolve_direction(str(path), self.model)
            except E4EError:
                continue  # made for another checkpoint (other layers) or unreadable
            self.directions[key] = (path.stem, d, -5.0, 5.0)

    # ---- facts for the page ---------------------------------------------------------------

    def info(self) -> dict:
        return {"domain": self.model.domain, "size": self.model.size, "synthetic": self.synthetic,
                "preview_size": self.preview_size("preview"),
                "paste_back": self.model.domain == "ffhq", "refine": self.refiner_files is not None,
                "directions": [{"id": k, "label": spec, "min": lo, "max": hi} for k, (spec, d, lo, hi) in self.directions.items()],
                "latents": self.list_latents()}

    def list_latents(self) -> list[str]:
        if self.latents_dir is None or not self.latents_dir.is_dir():
            return []
        found = (p for p in self.latents_dir.rglob("latent.npy") if self._inside_latents(p))
        return sorted(str(p.relative_to(self.latents_dir)) for p in found)[:500]

    def _inside_latents(self, path: Path) -> bool:
        """After resolving `..` and symlinks: a latent.npy file under the --latents folder."""
        real = path.resolve()
        return self.latents_dir in real.parents and real.name == "latent.npy" and real.is_file()

    # ---- sessions ---------------------------------------------------------------------------

    def _new(self, s: Session) -> str:
        sid = uuid.uuid4().hex
        with self.sessions_lock:  # uploads finish in worker threads
            self.sessions[sid] = s
            while len(self.sessions) > MAX_SESSIONS:  # forget the oldest
                self.sessions.pop(next(iter(self.sessions)))
        return sid

    @contextlib.contextmanager
    def _preparing(self):
        """At most MAX_PREPARES photos are read, aligned and inverted at once (each holds a photo
        and its decoded pixels in memory); one more is told to try again instead of queueing."""
        if not self.prepares.acquire(blocking=False):
            raise Busy("the server is busy preparing other photos: try again in a moment")
        try:
            yield
        finally:
            self.prepares.release()

    def upload(self, data: bytes, filename: str = "photo") -> dict:
        """Check, (align,) invert once; returns session id and the aligned face and inversion as PNG data URLs."""
        if len(data) > MAX_UPLOAD:
            raise TooLarge(f"the file is over the {MAX_UPLOAD >> 20} MB limit")
        if not data:
            raise E4EError("the file is empty")
        with self._preparing():
            return self._upload(data, filename)

    def _upload(self, data: bytes, filename: str) -> dict:
        import torch

        from ..images import load_image

        suffix = Path(filename).suffix.lower() or ".img"
        with tempfile.TemporaryDirectory(prefix="e4e-ui-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            photo = load_image(path)  # E4EError for a text file, a bomb, a truncated image
            aligned, alignment = photo, None
            if self.model.domain == "ffhq":
                from ..alignment import align_photo

                face = align_photo(path)[0]
                aligned, alignment = face.image, face.to_json()
        with self.lock, torch.inference_mode():
            parts = self.model.encode_parts([aligned])
            codes, w0 = parts.codes(1.0), parts.codes(0.0)
            inversion = self.model.to_pil(self.model.decode(codes))[0]
        sid = self._new(Session(codes=codes, w0_codes=w0, photo=photo, aligned=aligned, alignment=alignment,
                                name=(Path(filename).stem or "photo")[:100]))
        return {"session": sid, "aligned": _data_url(_png(aligned, PREVIEW_SIDE)),
                "inversion": _data_url(_png(inversion, PREVIEW_SIDE))}

    def pick_latent(self, rel: str) -> dict:
        if self.latents_dir is None:
            raise E4EError("no latent folder was given (e4e ui --latents DIR)")
        path = (self.latents_dir / rel).resolve()  # once: what is checked is what is read
        if not self._inside_latents(path):  # `..` and symlinks that lead out
            raise E4EError("not a latent.npy inside the latent folder")
        with self._preparing():
            return self._pick_latent(path)

    def _pick_latent(self, path: Path) -> dict:
        import torch

        from ..editing import load_latent_file

        arr = load_latent_file(path)
        if arr.shape[0] != self.model.n_styles:
            raise E4EError(f"that latent has {arr.shape[0]} layers; this checkpoint needs {self.model.n_styles}")
        codes = torch.from_numpy(arr)[None].to(self.model.device)
        base = codes[:, :1] + (self.model.latent_avg - self.model.latent_avg[:1])[None]
        refined = self._refined_latent(path, codes)
        with self.lock, torch.inference_mode():
            if refined is None:
                inversion = self.model.to_pil(self.model.decode(codes))[0]
            else:  # a HyperStyle invert: its code and offsets, decoded by the refiner's generator
                inversion = self.model.to_pil(self.refiner().decode(codes, offsets=refined[1]))[0]
        sid = self._new(Session(codes=codes, w0_codes=base, name=path.parent.name, refined=refined))
        return {"session": sid, "aligned": None, "inversion": _data_url(_png(inversion, PREVIEW_SIDE)),
                "refined": refined is not None}

    # ---- HyperStyle refinement ------------------------------------------------------------------

    def refiner(self):
        """The HyperStyle model (loaded at the first refine: about 1.5 GB, memory-mapped)."""
        if self.refiner_files is None:
            raise E4EError(f"no HyperStyle refiner: run `e4e download-weights hyperstyle_{self.model.domain}` "
                           "or start e4e ui with --refiner FILE --w-encoder FILE")
        if self._refiner is None:
            from ..refine import HyperStyle

            hs = HyperStyle.from_files(*self.refiner_files, device=str(self.model.device), precision=self.model.precision)
            if hs.domain != self.model.domain or hs.size != self.model.size:
                raise E4EError(f"the refiner is a {hs.domain} {hs.size} px checkpoint; this page edits {self.model.domain} "
                               f"{self.model.size} px")
            self._refiner = hs
        return self._refiner

    def _refined_latent(self, path: Path, codes) -> Optional[tuple]:
        """(codes, offsets) of a `e4e invert --refine hyperstyle` result (None for a plain one); the
        offsets must come from this page's refiner (their generator)."""
        from ..jobs.outputs import refine_record
        from ..refine import load_offsets

        rec = refine_record(path.parent)
        if rec is None:
            return None
        hs = self.refiner()
        if hs.sha256() != rec.get("refiner_sha256"):
            raise E4EError("that latent was refined with another HyperStyle checkpoint than this page's refiner")
        offsets, _ = load_offsets(path.parent / "weight_offsets.npz", generator=hs.decoder.generator)
        return codes, offsets

    def refine(self, sid: str, *, steps: Optional[int] = None) -> dict:
        """Refine the session's photo with HyperStyle (once; the code and offsets stay with the
        session): the refined reconstruction as a PNG data URL."""
        import torch

        s = self.session(sid)
        if s.refined is None:
            if s.aligned is None:
                raise E4EError("refining needs the photo: upload it (a plain latent picked from the folder has none)")
            with self._preparing():
                hs = self.refiner()
                with self.lock, torch.inference_mode():
                    r = hs.refine([s.aligned], steps=steps)
                s.refined = (r.codes, r.offsets_of(0))
            image = self.model.to_pil(r.image)[0]  # the last step's decode is the refined reconstruction
        else:  # asked again: decode what the session keeps
            with self.lock, torch.inference_mode():
                image = self.model.to_pil(self.refiner().decode(s.refined[0], offsets=s.refined[1]))[0]
        return {"session": sid, "inversion": _data_url(_png(image, PREVIEW_SIDE)), "refined": True}

    # ---- edits --------------------------------------------------------------------------------

    def edited_codes(self, s: Session, strengths: dict, delta_scale: float, *, refined: bool = False):
        """The delta scale first (as `e4e edit --delta-scale`), then each slider's direction in the
        page's order, with `e4e edit`'s functions: [1,n,512]. `refined`: from the HyperStyle code
        (one W vector on every row: the delta scale has nothing to scale)."""
        from ..editing import check_delta_scale, rescale_codes

        if refined and s.refined is None:
            raise E4EError("this photo is not refined yet: switch refine on first")
        codes = s.refined[0] if refined else s.codes
        a = check_delta_scale(float(delta_scale))
        if a != 1.0 and not refined:
            codes = rescale_codes(codes, self.model.latent_avg, from_scale=1.0, to_scale=a)
        for key, value in strengths.items():
            if key not in self.directions:
                raise E4EError(f"unknown direction {key!r}")
            v = float(value)
            if v != 0.0:
                codes = self.directions[key][1].apply(codes, v)
        return codes

    def session(self, sid: str) -> Session:
        with self.sessions_lock:
            s = self.sessions.get(sid)
        if s is None:
            raise E4EError("this photo is no longer loaded: upload it again")
        return s

    def preview_size(self, kind: str) -> Optional[int]:
        """The decode's resolution for a page request: "preview" stops the synthesis after the
        PREVIEW_SIDE block (None when the model is no larger: its full decode is the preview);
        "full" (and the downloads) decode everything (None)."""
        if kind not in PASTE_SIDES:
            raise E4EError(f"size must be 'preview' or 'full', got {str(kind)[:20]!r}")
        return PREVIEW_SIDE if kind == "preview" and self.model.size > PREVIEW_SIDE else None

    def render(self, sid: str, strengths: dict, delta_scale: float, paste_back: bool, *, seq: Optional[int] = None,
               size: Optional[int] = None, paste_side: Optional[int] = None, refined: bool = False):
        """(PIL image, codes); None when a newer request of this session has overtaken `seq`:
        before the decode, while it waited for the model, or during it (the decode stops at the
        next block boundary). `size`: the early-exit preview's resolution (None: full).
        `paste_side`: paste back into the photo shrunk to this longest side (None: as it is)."""
        import torch

        from ..errors import Cancelled

        s = self.session(sid)
        if seq is not None:
            with s.lock:
                s.seq = max(s.seq, seq)
        codes = self.edited_codes(s, strengths, delta_scale, refined=refined)
        decoder, offsets = (self.refiner().decoder, s.refined[1]) if refined else (self.model, None)
        stale = None if seq is None else (lambda: seq < s.seq)
        if stale is not None and stale():  # overtaken already: do not even wait for the model
            return None
        with self.lock:  # one decode at a time: a newer one waits here while the stale one stops
            if stale is not None and stale():  # overtaken while waiting
                return None
            try:
                with torch.inference_mode():
                    image = self.model.to_pil(decoder.decode(codes, size=size, should_stop=stale, offsets=offsets))[0]
            except Cancelled:
                return None
        if stale is not None and stale():  # no paste-back or PNG for an answer nobody will show
            return None
        if paste_back and s.alignment is not None and s.photo is not None:
            image = self._paste(s, image, paste_side)
        return image, codes

    @staticmethod
    def _paste(s: Session, face, side: Optional[int]):
        """`face` pasted back into the session's photo, or into a copy shrunk to `side` px (kept
        per side; quad and landmarks scaled with it): for display, a 4000 px photo need not be
        warped and blended at full size (the download pastes into the photo as it is)."""
        from ..compositing import paste_face

        photo, quad = s.photo, np.asarray(s.alignment["quad"], dtype=np.float64)
        marks = s.alignment.get("landmarks")
        marks = np.asarray(marks, dtype=np.float64) if marks else None
        if side is not None and max(photo.size) > side:
            if side not in s.shrunk:
                from PIL import Image

                k = side / max(photo.size)
                small = photo.resize((max(1, round(photo.width * k)), max(1, round(photo.height * k))), Image.LANCZOS)
                scale = np.array([small.width / photo.width, small.height / photo.height])
                to_small = (lambda p: None if p is None else (p + 0.5) * scale - 0.5)  # pixel centres
                s.shrunk[side] = (small, to_small(quad), to_small(marks))
            photo, quad, marks = s.shrunk[side]
        return paste_face(photo, face, quad, landmarks=marks)


def attachment(filename: str) -> str:
    """A Content-Disposition for any name: HTTP headers are latin-1, so the real name goes in
    RFC 5987's UTF-8 `filename*` and an ASCII look-alike in `filename` for old clients."""
    stem, dot, suffix = filename.rpartition(".") if "." in filename else (filename, "", "")
    plain = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    plain = re.sub(r"[^A-Za-z0-9._-]+", "_", plain).strip("._") or "download"
    suffix = re.sub(r"[^A-Za-z0-9]", "", suffix)
    fallback = plain + (dot + suffix if suffix else "")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


# ---- who may talk to the server ---------------------------------------------------------------


def new_token() -> str:
    return secrets.token_urlsafe(32)


def check_token(token: str) -> str:
    """A token given with --token: it goes in a URL and a cookie as is, and a short one could be
    guessed by a web page that tries many (each try is a request to 127.0.0.1)."""
    if token == "":
        raise E4EError("--token '' would turn the token off and let any web page use the server; e4e ui always "
                       "needs a token (leave --token out for a random one)", exit_code=USAGE)
    if not TOKEN_CHARS.fullmatch(token):
        raise E4EError("--token must be at least 16 characters of A-Z a-z 0-9 . _ ~ - "
                       "(leave it out for a random one)", exit_code=USAGE)
    return token


def url_host(host: str) -> str:
    """The host as it appears in a URL and a Host header: IPv6 in brackets, lower case."""
    host = host.strip().lower()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def page_url(host: str, port: int, token: str) -> str:
    """The address to open; a wildcard listen address is opened as 127.0.0.1."""
    name = "127.0.0.1" if host.strip() in ("", "0.0.0.0", "::") else url_host(host)
    return f"http://{name}:{port}/?token={quote(token, safe='')}"


def _split_host(value: str) -> tuple[str, Optional[int]]:
    """'127.0.0.1:7860' -> ('127.0.0.1', 7860); '[::1]:80' -> ('[::1]', 80); no port -> 80."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value.partition("]")
        name += bracket
    else:
        name, colon, rest = value.partition(":")
        rest = colon + rest
    if not rest:
        return name, 80
    if rest.startswith(":") and rest[1:].isdigit() and len(rest) <= 6:
        return name, int(rest[1:])
    return name, None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name[1:-1] if name.startswith("[") else name)
    except ValueError:
        return False
    return True


class Guard:
    """ASGI middleware that decides who may use the page, before the app sees a request.

    - Host must be this server's address and port: 127.0.0.1, localhost, [::1] or the --host
      given (listening on 0.0.0.0 / ::, any IP address). A DNS-rebinding page reaches the
      server under its own domain name and is refused here.
    - A request other than GET / HEAD must carry the page's own Origin (or, without Origin, a
      Referer on the page's origin): browsers send a cross-origin multipart POST without asking.
    - Every request needs the launch token: `?token=` (the URL the CLI prints; the answer sets
      an HttpOnly SameSite=Strict cookie so the page's own requests carry it),
      `Authorization: token ...` or the cookie; compared in constant time.
    - The request body is counted while it streams in (with or without Content-Length) and cut
      off with 413 at its limit; a Content-Length over the limit is refused before reading.
    """

    SAFE_METHODS = ("GET", "HEAD")

    def __init__(self, app, *, token: str, host: str, port: int):
        self.app, self.port = app, port
        self.token = check_token(token).encode()
        self.cookie = f"e4e_ui_{port}"  # cookies ignore the port: two servers must not share one
        self.names = set(LOOPBACK_NAMES) | {url_host(host)}
        self.any_ip = host.strip() in ("", "0.0.0.0", "::")

    # -- the checks, each None when fine or the refusal's text --

    def host_problem(self, host: str) -> Optional[str]:
        name, port = _split_host(host)
        if port == self.port and (name in self.names or (self.any_ip and _is_ip(name))):
            return None
        return f"refused: Host {host[:100]!r} is not this server's address; open the address e4e ui printed"

    @staticmethod
    def origin_problem(method: str, host: str, origin: Optional[str], referer: Optional[str]) -> Optional[str]:
        if method in Guard.SAFE_METHODS:
            return None
        own = f"http://{host.strip().lower()}"
        if origin is not None:
            return None if origin.strip().lower() == own else f"refused: a {method} from another web page ({origin[:100]})"
        if referer is not None:
            parts = urlsplit(referer.strip())
            if f"{parts.scheme}://{parts.netloc}".lower() == own:
                return None
            return f"refused: a {method} from another web page"
        return f"refused: a {method} without Origin or Referer (send Origin: {own})"

    def token_source(self, query: str, headers: dict) -> Optional[str]:
        """Where a valid token came from ('query', 'header', 'cookie'), or None."""
        offered = []
        offered += [("query", t) for t in parse_qs(query).get("token", [])]
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "token":
            offered.append(("header", value.strip()))
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.cookie:
                offered.append(("cookie", value))
        found = None
        for source, value in offered:  # every candidate is compared: no early exit
            if hmac.compare_digest(value.encode("utf-8", "replace"), self.token) and found is None:
                found = source
        return found

    @staticmethod
    def body_limit(path: str) -> tuple[int, str]:
        if path == "/api/upload":
            return MAX_UPLOAD_BODY, f"the upload is over the {MAX_UPLOAD >> 20} MB limit"
        return MAX_JSON_BODY, f"the request is over the {MAX_JSON_BODY >> 20} MB limit"

    # -- ASGI --

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # no websockets here
            return await send({"type": "websocket.close", "code": 1008})
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        method = scope["method"]
        problem = self.host_problem(host) or self.origin_problem(method, host, headers.get("origin"), headers.get("referer"))
        source = None
        if problem is None:
            source = self.token_source(scope.get("query_string", b"").decode("latin-1"), headers)
            if source is None:
                problem = "refused: no valid token; open the address e4e ui printed (it ends in ?token=...)"
        if problem is not None:
            return await _answer(send, 403, problem.encode(), "text/plain; charset=utf-8")

        limit, too_large = self.body_limit(scope["path"])
        length = headers.get("content-length", "").strip()
        if length and (not length.isdigit() or int(length) > limit):
            return await _answer(send, 413, json.dumps({"error": too_large}).encode(), "application/json")

        extra = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                 (b"referrer-policy", b"same-origin")]
        if source == "query":  # the CLI's URL: from now on the browser sends the cookie
            extra.append((b"set-cookie", f"{self.cookie}={self.token.decode()}; HttpOnly; SameSite=Strict; Path=/".encode()))
        state = {"read": 0, "over": False, "started": False}

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > limit:
                    state["over"] = True
                    raise _BodyOverLimit()
            return message

        async def guarded_send(message):
            if state["over"] and not state["started"]:  # the app's answer to a cut-off body: the 413 replaces it
                return
            if message["type"] == "http.response.start":
                state["started"] = True
                message = dict(message, headers=list(message.get("headers", [])) + extra)
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await _answer(send, 413, json.dumps({"error": too_large}).encode(), "application/json")


class _BodyOverLimit(Exception):
    """Raised out of `receive` to stop the app reading a body over its limit."""


async def _answer(send, status: int, body: bytes, content_type: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(editor: Editor, *, token: str, host: str, port: int):
    """The page and its API behind `Guard` (Host, Origin, token, body size)."""
    from fastapi import FastAPI, File, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    app = FastAPI(title="e4e", docs_url=None, redoc_url=None, openapi_url=None)

    def fail(exc: Exception):
        msg = str(exc) if isinstance(exc, E4EError) else f"internal error: {type(exc).__name__}: {exc}"
        return JSONResponse({"error": " ".join(msg.split())}, status_code=getattr(exc, "http_status", 400))

    @app.get("/", response_class=HTMLResponse)
    def page():
        return (STATIC / "index.html").read_text()

    @app.get("/api/info")
    def info():
        return editor.info()

    @app.post("/api/upload")
    async def upload(file: UploadFile = File(...)):
        import anyio

        data = await file.read(MAX_UPLOAD + 1)  # Guard has cut the body off at MAX_UPLOAD_BODY
        try:
            return await anyio.to_thread.run_sync(editor.upload, data, file.filename or "photo")
        except Exception as exc:  # noqa: BLE001  (a message on the page, never a dead server)
            return fail(exc)

    @app.post("/api/latent")
    def latent(body: dict):
        try:
            return editor.pick_latent(str(body.get("path", "")))
        except Exception as exc:  # noqa: BLE001
            return fail(exc)

    @app.post("/api/preview")
    def preview(body: dict):
        """The edit at the preview resolution (`size: "preview"`) or in full (`"full"`, the
        default), as a PNG data URL with its `kind` and pixel `size`; 409 when overtaken. A
        preview is the decoder's own 256 px image, not resized (a paste-back: the photo at 512 px)."""
        try:
            kind = str(body.get("size", "full"))
            size = editor.preview_size(kind)
            out = editor.render(str(body["session"]), dict(body.get("strengths") or {}), float(body.get("delta_scale", 1.0)),
                                bool(body.get("paste_back")), seq=int(body.get("seq", 0)), size=size,
                                paste_side=PASTE_SIDES[kind], refined=bool(body.get("refined")))
        except Exception as exc:  # noqa: BLE001
            return fail(exc)
        if out is None:
            return JSONResponse({"superseded": True}, status_code=409)
        return {"image": _data_url(_png(out[0], fast=True)), "seq": body.get("seq", 0),
                "kind": "full" if size is None else "preview", "size": size or editor.model.size}

    @app.post("/api/refine")
    def refine(body: dict):
        """Refine the session's photo with HyperStyle (slow: W-encoder, 6 decodes, 5 hypernet passes)."""
        try:
            return editor.refine(str(body["session"]))
        except Exception as exc:  # noqa: BLE001
            return fail(exc)

    @app.get("/api/download/{kind}")
    def download(kind: str, session: str, strengths: str = "{}", delta_scale: float = 1.0, refined: bool = False):
        try:
            st = json.loads(strengths)
            s = editor.session(session)
            if kind == "latent":
                codes = editor.edited_codes(s, st, delta_scale, refined=refined)
                buf = io.BytesIO()
                np.save(buf, codes[0].detach().float().cpu().numpy().astype(np.float32))
                return Response(buf.getvalue(), media_type="application/octet-stream",
                                headers={"Content-Disposition": attachment(f"{s.name}_edit.npy")})
            if kind not in ("image", "photo"):
                raise E4EError(f"unknown download {kind!r}")
            image, _ = editor.render(session, st, delta_scale, kind == "photo", refined=refined)
            return Response(_png(image), media_type="image/png",
                            headers={"Content-Disposition": attachment(f"{s.name}_{kind}.png")})
        except Exception as exc:  # noqa: BLE001
            return fail(exc)

    return Guard(app, token=token, host=host, port=port)


def port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
