"""The local editing page's routes: the page, its API and the downloads, behind `Guard`.

The routes are thin: they read a request's fields (each one checked: a missing or malformed
field is a plain answer, not a KeyError), run the `Editor` in a worker thread, and turn any
failure into one line for the page. An `E4EError` says what the user can fix; anything else is
an internal error, told to the page in plain words and logged on the server's terminal.
"""

import json
import math
import re
import sys
import unicodedata
from pathlib import Path
from urllib.parse import quote

from ..errors import E4EError
from .editor import Editor  # noqa: F401  (re-exported: tests and benchmarks build the page from here)
from .guard import Guard, check_token, new_token  # noqa: F401  (re-exported)
from .limits import MAX_UPLOAD
from .previews import PASTE_SIDES, data_url, png

STATIC = Path(__file__).with_name("static")
INTERNAL = "internal error: the server could not do this (the terminal running e4e ui says why)"


def attachment(filename: str) -> str:
    """A Content-Disposition for any name: HTTP headers are latin-1, so the real name goes in
    RFC 5987's UTF-8 `filename*` and an ASCII look-alike in `filename` for old clients."""
    stem, dot, suffix = filename.rpartition(".") if "." in filename else (filename, "", "")
    plain = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    plain = re.sub(r"[^A-Za-z0-9._-]+", "_", plain).strip("._") or "download"
    suffix = re.sub(r"[^A-Za-z0-9]", "", suffix)
    fallback = plain + (dot + suffix if suffix else "")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


# ---- a request's fields ----------------------------------------------------------------------


def json_object(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise E4EError("the request is not JSON") from None
    if not isinstance(body, dict):
        raise E4EError("the request must be a JSON object")
    return body


def text_field(fields, name: str, *, default=None) -> str:
    value = fields.get(name, default)
    if value is None:
        raise E4EError(f"the request has no {name!r}")
    if not isinstance(value, str):
        raise E4EError(f"the request's {name!r} must be text")
    return value


def number_field(fields, name: str, *, default: float) -> float:
    value = fields.get(name, default)
    try:
        x = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x):
        raise E4EError(f"the request's {name!r} must be a number")
    return x


def flag_field(fields, name: str) -> bool:
    value = fields.get(name, False)
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"))


def strengths_field(value) -> dict:
    """The sliders as {direction id: strength} (JSON text in a download's query)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = []  # refused below
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise E4EError("the request's 'strengths' must be an object of direction: number")
    return {str(k): number_field(value, k, default=0.0) for k in value}


# ---- the app ---------------------------------------------------------------------------------


def failure(exc: Exception, *, route: str):
    """One line for the page: an E4EError's own message; anything else a plain internal error,
    with its details on the server's terminal (a traceback only with E4E_DEBUG=1)."""
    from fastapi.responses import JSONResponse

    from .. import settings

    if isinstance(exc, E4EError):
        return JSONResponse({"error": " ".join(str(exc).split())[:500]}, status_code=getattr(exc, "http_status", 400))
    print(f"e4e ui: internal error in {route}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
    if settings.debug():
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__)
    return JSONResponse({"error": INTERNAL}, status_code=500)


def create_app(editor: Editor, *, token: str, host: str, port: int):
    """The page and its API behind `Guard` (Host, Origin, token, body size)."""
    import anyio
    from fastapi import FastAPI, File, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    app = FastAPI(title="e4e", docs_url=None, redoc_url=None, openapi_url=None)

    async def work(route: str, job):
        """`job()` in a worker thread (decodes take seconds): its answer, or a failure line."""
        try:
            return await anyio.to_thread.run_sync(job)
        except Exception as exc:  # noqa: BLE001  (a message on the page, never a dead server)
            return failure(exc, route=route)

    @app.exception_handler(RequestValidationError)
    async def malformed(request, exc):
        names = sorted({str(e.get("loc", ("?",))[-1]) for e in exc.errors()})
        return JSONResponse({"error": f"the request is missing or has a malformed {', '.join(names)[:100]}"},
                            status_code=400)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return (STATIC / "index.html").read_text()

    @app.get("/api/info")
    def info():
        return editor.info()

    @app.post("/api/upload")
    async def upload(file: UploadFile = File(...)):
        data = await file.read(MAX_UPLOAD + 1)  # Guard has cut the body off at MAX_UPLOAD_BODY
        return await work("upload", lambda: editor.upload(data, file.filename or "photo"))

    @app.post("/api/latent")
    async def latent(request: Request):
        raw = await request.body()  # outside `work`: a body over its limit is Guard's 413
        return await work("latent", lambda: editor.pick_latent(text_field(json_object(raw), "path")))

    @app.post("/api/preview")
    async def preview(request: Request):
        """The edit at the preview resolution (`size: "preview"`) or in full (`"full"`, the
        default), as a PNG data URL with its `kind` and pixel `size`; 409 when overtaken. A
        preview is the decoder's own 256 px image, not resized (a paste-back: the photo at 512 px)."""
        raw = await request.body()

        def job():
            body = json_object(raw)
            kind = text_field(body, "size", default="full")
            size = editor.preview_size(kind)
            seq = int(number_field(body, "seq", default=0))
            out = editor.render(text_field(body, "session"), strengths_field(body.get("strengths")),
                                number_field(body, "delta_scale", default=1.0), flag_field(body, "paste_back"),
                                seq=seq, size=size, paste_side=PASTE_SIDES[kind], refined=flag_field(body, "refined"),
                                text=body.get("text"))
            if out is None:
                return JSONResponse({"superseded": True}, status_code=409)
            return {"image": data_url(png(out[0], fast=True)), "seq": seq,
                    "kind": "full" if size is None else "preview", "size": size or editor.model.size}
        return await work("preview", job)

    @app.post("/api/refine")
    async def refine(request: Request):
        """Refine the session's photo with HyperStyle (slow: W-encoder, 6 decodes, 5 hypernet passes)."""
        raw = await request.body()
        return await work("refine", lambda: editor.refine(text_field(json_object(raw), "session")))

    @app.get("/api/download/{kind}")
    async def download(kind: str, request: Request):
        """The edited latent (plain `.npy`; refined, `.npz` with the offsets), the edited image, or
        the photo with the face pasted back, under the photo's own name."""
        q = request.query_params

        def job():
            sid, refined = text_field(q, "session"), flag_field(q, "refined")
            st, a = strengths_field(q.get("strengths")), number_field(q, "delta_scale", default=1.0)
            if kind == "latent":
                data, name = editor.latent_file(sid, st, a, refined=refined)
                return Response(data, media_type="application/octet-stream", headers={"Content-Disposition": attachment(name)})
            if kind not in ("image", "photo"):
                raise E4EError(f"unknown download {kind[:20]!r}")
            text = json_object(q.get("text").encode()) if q.get("text") else None  # the page's text edit
            image, _ = editor.render(sid, st, a, kind == "photo", refined=refined, text=text)
            return Response(png(image), media_type="image/png",
                            headers={"Content-Disposition": attachment(f"{editor.session(sid).name}_{kind}.png")})
        return await work("download", job)

    return Guard(app, token=token, host=host, port=port)
