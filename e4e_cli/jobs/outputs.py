"""What every job writes: atomic JSON/NumPy/PyTorch files, output names, summary.json, strips and GIFs.

Every file is written to a temporary name and renamed (`fsutil.atomic_write`), so an
interrupted run never leaves a half-written output under its final name.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import settings
from ..errors import USAGE, E4EError
from ..fsutil import atomic_save_image, atomic_write, safe_name, unique_names
from ..images import IMAGE_SUFFIXES

LATENT_SUFFIXES = (".npy", ".pt")
DEFAULT_OUT = Path("e4e-out")


def read_meta(folder: Optional[Path]) -> Optional[dict]:
    """An invert result folder's meta.json as a dict; None when there is none or it is unreadable."""
    if folder is None:
        return None
    try:
        meta = json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def refine_record(folder: Optional[Path]) -> Optional[dict]:
    """The HyperStyle record (meta.json "refine") of an invert result folder; None for a plain
    e4e inversion (or no readable meta.json)."""
    rec = (read_meta(folder) or {}).get("refine")
    return rec if isinstance(rec, dict) else None


def write_json(path: Path, data) -> Path:
    text = json.dumps(data, indent=2, default=str) + "\n"
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_npy(path: Path, array: np.ndarray) -> Path:
    return atomic_write(path, lambda fh: np.save(fh, np.ascontiguousarray(array), allow_pickle=False))


def write_pt(path: Path, tensor) -> Path:
    import torch

    buf = io.BytesIO()
    torch.save(tensor.detach().cpu().contiguous(), buf)
    return atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def expand_inputs(inputs: Sequence[Path], suffixes=IMAGE_SUFFIXES) -> list[Path]:
    """Files as given; folders expanded to their files with `suffixes` (sorted). Missing paths are
    kept so that they get reported per item."""
    out: list[Path] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in suffixes and not q.name.startswith("."))
            if not found:
                raise E4EError(f"folder {p} holds no {'/'.join(sorted(s.lstrip('.') for s in suffixes))} files")
            out.extend(found)
        else:
            out.append(p)
    return out


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output folder names: each file's stem made safe (`fsutil.safe_name`: `..`, `.`, a hidden or
    a blank name never leaves OUT), unique for any set of inputs (`fsutil.unique_names`), so two
    inputs never share a folder."""
    return unique_names([safe_name(Path(p).stem, "image") for p in paths])


def unique_names_of(names: Sequence[str]) -> list[str]:
    """`unique_stems` for names that are already stems (a latent's folder, a photo's result)."""
    return unique_names([safe_name(n, "image") for n in names])


def fmt_strength(s: float) -> str:
    """A strength as a file-name part: +3, -1p5; up to 10 significant digits, so two strengths
    of one run never share a name (`:g`'s 6 digits made +1 of both 1 and 1.000001)."""
    return f"{s:+.10g}".replace(".", "p")


@dataclass
class ItemResult:
    input: str
    status: str  # "ok" | "skipped" | "failed"
    outdir: Optional[str] = None
    error: Optional[str] = None
    files: dict = field(default_factory=dict)


def item_error(exc: BaseException) -> str:
    """One line for a failed item of a batch. An E4EError is the user's problem and says so; anything
    else is a bug or the system's (out of memory, a full disk) and is named with its type, so the
    batch goes on and summary.json records it (E4E_DEBUG=1 re-raises it with its traceback)."""
    if isinstance(exc, E4EError):
        return str(exc)
    if settings.debug():
        raise exc
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if getattr(exc, "filename", None) else "")
    return f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"


def write_summary(out: Path, results: Sequence[ItemResult], model, opts, *, left: Optional[Sequence[str]] = None) -> Path:
    """OUT/summary.json: every input with its status; `left` (the inputs not reached when a run was
    interrupted) marks the run `interrupted` and lists them, so a rerun is known to be needed."""
    data = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "checkpoint": getattr(model, "path", None),
        "domain": model.domain,
        "delta_scale": getattr(opts, "delta_scale", 1.0),
        "counts": {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")},
        "items": [r.__dict__ for r in results],
    }
    if left is not None:
        data.update(interrupted=True, left=list(left))
    return write_json(Path(out) / "summary.json", data)


def check_domain_fits(domain: Optional[str], model) -> None:
    """An explicit --domain must describe the model's images: a 512 px domain (wild, cars) is not
    put on a 256 px generator's output, where it would decide nothing but a wrong record (exit 2).
    Faces are the exception: a face model of another size still wants its photos aligned."""
    from .. import domains

    d = domains.DOMAINS.get(domain) if domain else None
    if d is not None and d.size != model.size and not d.aligned_faces:
        raise E4EError(f"--domain {domain} is for {d.size} px generators, but {Path(str(model.path or 'the model')).name} "
                       f"makes {model.size} px images: leave --domain out, or give a {domain} checkpoint",
                       exit_code=USAGE)


def checkpoint_identity(model) -> dict:
    """Which checkpoint made an output: its content's SHA-256 (with its file name, for people), so
    two files of the same name, size and mtime are never taken for one (`digests` hashes each file
    version once); its domain and size for an in-memory model."""
    from ..digests import content_sha256

    path = getattr(model, "path", None)
    if path and Path(path).is_file():
        return {"file": Path(path).name, "sha256": content_sha256(path), "domain": model.domain}
    return {"domain": model.domain, "size": model.size}


def strength_label(s: float) -> str:
    """A strength as a strip shows it: +1.5, -3, +0."""
    return f"{s:+.4g}"


def label_corner(image, text: str):
    """A copy of `image` with `text` in a dark box at its bottom-left corner (a strip's strengths)."""
    from PIL import ImageDraw, ImageFont

    size = max(10, image.height // 12)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 5)
    w, h = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
    top = out.height - h
    draw.rectangle((0, top, w, out.height), fill=(0, 0, 0))
    draw.text((pad - x0, top + pad - y0), text, fill=(255, 255, 255), font=font)
    return out


def save_strip(frames, path: Path, height: int = 256, labels: Optional[Sequence[str]] = None) -> Path:
    """Frames side by side, each scaled to `height` pixels; `labels` (e.g. the strengths) drawn in
    each frame's bottom-left corner."""
    from PIL import Image

    scaled = [f.resize((max(1, round(f.width * height / f.height)), height), Image.LANCZOS) for f in frames]
    if labels is not None:
        scaled = [label_corner(f, t) for f, t in zip(scaled, labels)]
    strip = Image.new("RGB", (sum(f.width for f in scaled), height))
    x = 0
    for f in scaled:
        strip.paste(f, (x, 0))
        x += f.width
    return atomic_save_image(strip, path)


def save_gif(frames, path: Path, max_side: int = 512, ms: int = 120) -> Path:
    """An animated GIF that plays the sweep forwards and back."""
    from PIL import Image

    scale = min(1.0, max_side / max(frames[0].size))
    size = (max(1, round(frames[0].width * scale)), max(1, round(frames[0].height * scale)))
    small = [f.resize(size, Image.LANCZOS) for f in frames]
    seq = small + small[-2:0:-1]
    return atomic_write(path, lambda fh: seq[0].save(fh, format="GIF", save_all=True, append_images=seq[1:], duration=ms, loop=0))
