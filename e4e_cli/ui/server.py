"""The local editing page's server: upload or pick, invert once, then decode-only previews.

State per session (an uploaded photo or a picked latent): the encoder's w0 and deltas (or the
codes), the photo and its alignment. A preview applies the delta scale and each slider's
direction with exactly the functions `e4e edit` uses (`pipeline.rescale_codes`,
`pipeline.resolve_direction(...).apply`, in slider order), decodes (a lock serialises the
model), and returns a small PNG. A request that a newer one of the same session has
overtaken before it reached the model is answered 409 without decoding, so dragging a
slider never queues stale work. Uploads are size-limited and read with the same checks as
any input; the latent picker lists only files under the folder given on the command line.
"""

import base64
import io
import json
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import E4EError

MAX_UPLOAD = 25 << 20  # bytes
PREVIEW_SIDE = 256
N_SEFA = 5
STATIC = Path(__file__).with_name("static")


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


def _png(image, max_side: Optional[int] = None) -> bytes:
    from PIL import Image

    if max_side and max(image.size) > max_side:
        s = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))), Image.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


class Editor:
    """The model, its directions and the sessions; no web code here (tests drive it directly)."""

    def __init__(self, model, *, weights_dir=None, latents_dir: Optional[Path] = None, synthetic: bool = False):
        from ..pipeline import resolve_direction

        self.model, self.synthetic = model, synthetic
        self.latents_dir = Path(latents_dir).resolve() if latents_dir else None
        self.lock = threading.Lock()
        self.sessions: dict[str, Session] = {}
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

    # ---- facts for the page ---------------------------------------------------------------

    def info(self) -> dict:
        return {"domain": self.model.domain, "size": self.model.size, "synthetic": self.synthetic,
                "paste_back": self.model.domain == "ffhq",
                "directions": [{"id": k, "label": spec, "min": lo, "max": hi} for k, (spec, d, lo, hi) in self.directions.items()],
                "latents": self.list_latents()}

    def list_latents(self) -> list[str]:
        if self.latents_dir is None or not self.latents_dir.is_dir():
            return []
        return sorted(str(p.relative_to(self.latents_dir)) for p in self.latents_dir.rglob("latent.npy"))[:500]

    # ---- sessions ---------------------------------------------------------------------------

    def _new(self, s: Session) -> str:
        sid = uuid.uuid4().hex
        self.sessions[sid] = s
        while len(self.sessions) > 32:  # forget the oldest
            self.sessions.pop(next(iter(self.sessions)))
        return sid

    def upload(self, data: bytes, filename: str = "photo") -> dict:
        """Check, (align,) invert once; returns session id and the aligned face and inversion as PNG data URLs."""
        import torch

        from ..images import load_image

        if len(data) > MAX_UPLOAD:
            raise E4EError(f"the file is {len(data) >> 20} MB; the limit is {MAX_UPLOAD >> 20} MB")
        if not data:
            raise E4EError("the file is empty")
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
                                name=Path(filename).stem or "photo"))
        return {"session": sid, "aligned": _data_url(_png(aligned, PREVIEW_SIDE)),
                "inversion": _data_url(_png(inversion, PREVIEW_SIDE))}

    def pick_latent(self, rel: str) -> dict:
        import torch

        from ..pipeline import load_latent_file

        if self.latents_dir is None:
            raise E4EError("no latent folder was given (e4e ui --latents DIR)")
        path = (self.latents_dir / rel).resolve()
        if self.latents_dir not in path.parents or path.name != "latent.npy" or not path.is_file():
            raise E4EError("not a latent.npy inside the latent folder")
        arr = load_latent_file(path)
        if arr.shape[0] != self.model.n_styles:
            raise E4EError(f"that latent has {arr.shape[0]} layers; this checkpoint needs {self.model.n_styles}")
        codes = torch.from_numpy(arr)[None].to(self.model.device)
        base = codes[:, :1] + (self.model.latent_avg - self.model.latent_avg[:1])[None]
        with self.lock, torch.inference_mode():
            inversion = self.model.to_pil(self.model.decode(codes))[0]
        sid = self._new(Session(codes=codes, w0_codes=base, name=path.parent.name))
        return {"session": sid, "aligned": None, "inversion": _data_url(_png(inversion, PREVIEW_SIDE))}

    # ---- edits --------------------------------------------------------------------------------

    def edited_codes(self, s: Session, strengths: dict, delta_scale: float):
        """The delta scale first (as `e4e edit --delta-scale`), then each slider's direction in the
        page's order, with `e4e edit`'s functions: [1,n,512]."""
        from ..pipeline import check_delta_scale, rescale_codes

        codes = s.codes
        a = check_delta_scale(float(delta_scale))
        if a != 1.0:
            codes = rescale_codes(codes, self.model.latent_avg, from_scale=1.0, to_scale=a)
        for key, value in strengths.items():
            if key not in self.directions:
                raise E4EError(f"unknown direction {key!r}")
            v = float(value)
            if v != 0.0:
                codes = self.directions[key][1].apply(codes, v)
        return codes

    def session(self, sid: str) -> Session:
        s = self.sessions.get(sid)
        if s is None:
            raise E4EError("this photo is no longer loaded: upload it again")
        return s

    def render(self, sid: str, strengths: dict, delta_scale: float, paste_back: bool, *, seq: Optional[int] = None,
               full: bool = False):
        """(PIL image, codes); None when a newer preview of this session has overtaken `seq`."""
        import torch

        s = self.session(sid)
        if seq is not None:
            with s.lock:
                s.seq = max(s.seq, seq)
        codes = self.edited_codes(s, strengths, delta_scale)
        if seq is not None and seq < s.seq:  # overtaken already: do not even wait for the model
            return None
        with self.lock:
            if seq is not None and seq < s.seq:  # overtaken while waiting
                return None
            with torch.inference_mode():
                image = self.model.to_pil(self.model.decode(codes))[0]
        if paste_back and s.alignment is not None and s.photo is not None:
            from ..pasteback import paste_face

            image = paste_face(s.photo, image, np.asarray(s.alignment["quad"]),
                               landmarks=np.asarray(s.alignment.get("landmarks")) if s.alignment.get("landmarks") else None)
        return image, codes


def create_app(editor: Editor):
    from fastapi import FastAPI, File, Request, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    app = FastAPI(title="e4e", docs_url=None, redoc_url=None, openapi_url=None)

    def fail(exc: Exception, status: int = 400):
        msg = str(exc) if isinstance(exc, E4EError) else f"internal error: {type(exc).__name__}: {exc}"
        return JSONResponse({"error": " ".join(msg.split())}, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return (STATIC / "index.html").read_text()

    @app.get("/api/info")
    def info():
        return editor.info()

    @app.post("/api/upload")
    async def upload(request: Request, file: UploadFile = File(...)):
        size = int(request.headers.get("content-length") or 0)
        if size > MAX_UPLOAD + (1 << 16):
            return fail(E4EError(f"the file is over the {MAX_UPLOAD >> 20} MB limit"), 413)
        data = await file.read(MAX_UPLOAD + 1)
        import anyio

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
        try:
            out = editor.render(str(body["session"]), dict(body.get("strengths") or {}), float(body.get("delta_scale", 1.0)),
                                bool(body.get("paste_back")), seq=int(body.get("seq", 0)))
        except Exception as exc:  # noqa: BLE001
            return fail(exc)
        if out is None:
            return JSONResponse({"superseded": True}, status_code=409)
        return {"image": _data_url(_png(out[0], PREVIEW_SIDE * 2 if body.get("paste_back") else PREVIEW_SIDE)),
                "seq": body.get("seq", 0)}

    @app.get("/api/download/{kind}")
    def download(kind: str, session: str, strengths: str = "{}", delta_scale: float = 1.0):
        try:
            st = json.loads(strengths)
            s = editor.session(session)
            if kind == "latent":
                codes = editor.edited_codes(s, st, delta_scale)
                buf = io.BytesIO()
                np.save(buf, codes[0].detach().float().cpu().numpy().astype(np.float32))
                return Response(buf.getvalue(), media_type="application/octet-stream",
                                headers={"Content-Disposition": f'attachment; filename="{s.name}_edit.npy"'})
            if kind not in ("image", "photo"):
                raise E4EError(f"unknown download {kind!r}")
            image, _ = editor.render(session, st, delta_scale, kind == "photo")
            return Response(_png(image), media_type="image/png",
                            headers={"Content-Disposition": f'attachment; filename="{s.name}_{kind}.png"'})
        except Exception as exc:  # noqa: BLE001
            return fail(exc)

    return app


def port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
