"""Paste-back over output folders: `paste_back_inversions` and `paste_back_edits` are what ``e4e invert --paste-back`` and
``e4e edit --paste-back`` run: they read ``alignment.json`` and ``meta.json`` from the
invert folder, load the original photo (EXIF orientation applied, as when it was aligned)
and write ``*_full.png`` (``.jpg`` at quality 95 when the photo was a JPEG).
The compositing itself is `compositing.py`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

from .. import domains
from ..compositing import DEFAULT_FEATHER, paste_face
from ..errors import E4EError
from ..fsutil import atomic_save_image, slug
from .outputs import fmt_strength, save_gif, write_json

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: Longest side of the frames in the sweep GIF of full photos.
GIF_MAX_SIDE = 768

NO_ALIGNMENT = ("--paste-back needs the photo's alignment: edit a photo or a latent from "
                "`e4e invert`'s output folder")


# --------------------------------------------------------------------------------------
# Invert folders -> full photos


@dataclass
class _Context:
    photo: "Image.Image"
    photo_path: Path
    quad: list
    landmarks: Optional[list]
    is_jpeg: bool
    icc_profile: Optional[bytes]

    @property
    def suffix(self) -> str:
        return ".jpg" if self.is_jpeg else ".png"

    def save(self, image: "Image.Image", path: Path) -> Path:
        kwargs = {"quality": 95} if self.is_jpeg else {}
        if self.icc_profile:
            kwargs["icc_profile"] = self.icc_profile
        return atomic_save_image(image, path, **kwargs)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise E4EError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(data, dict):
        raise E4EError(f"{path} is not a JSON object")
    return data


def _load_context(invert_dir: Optional[Path], extra_sources: Sequence = ()) -> _Context:
    """The original photo and its alignment for an `e4e invert` output folder."""
    from ..images import INFO_FORMAT, load_image

    if invert_dir is not None and not (Path(invert_dir) / "alignment.json").is_file() \
            and (Path(invert_dir) / "meta.json").is_file():
        raise E4EError(not_aligned(Path(invert_dir)))
    if invert_dir is None or not (Path(invert_dir) / "alignment.json").is_file():
        raise E4EError(NO_ALIGNMENT)
    d = Path(invert_dir)
    align = _read_json(d / "alignment.json")
    quad = align.get("quad")
    if not isinstance(quad, list) or len(quad) != 4:
        raise E4EError(f"{d / 'alignment.json'} holds no crop quad: run `e4e invert` on the photo again")
    candidates = [Path(s) for s in extra_sources if s]
    if (d / "meta.json").is_file():
        src = _read_json(d / "meta.json").get("source")
        if src:
            candidates.append(Path(src))
    if align.get("source"):
        candidates.append(Path(align["source"]))
    # a relative source was relative to where `e4e invert` ran: usually the folder that holds OUT
    candidates += [d.parent.parent / c for c in candidates if not c.is_absolute()]
    photo_path = next((c for c in candidates if c.is_file()), None)
    if photo_path is None:
        named = candidates[0] if candidates else "the original photo"
        raise E4EError(f"--paste-back needs the original photo, but {named} is gone (moved or deleted?)")
    photo = load_image(photo_path)
    want = align.get("photo_size")
    if want and tuple(int(v) for v in want) != tuple(photo.size):
        raise E4EError(f"{photo_path} is {photo.size[0]}x{photo.size[1]} but was {want[0]}x{want[1]} when it was "
                       "aligned: the photo changed, run `e4e invert` on it again")
    icc = None
    try:
        from PIL import Image

        with Image.open(photo_path) as im:
            icc = im.info.get("icc_profile") or None
    except Exception:
        icc = None
    return _Context(photo=photo, photo_path=photo_path, quad=quad, landmarks=align.get("landmarks"),
                    is_jpeg=photo.info.get(INFO_FORMAT) == "JPEG", icc_profile=icc)


def not_aligned(d: Path) -> str:
    """Why an invert folder without alignment.json cannot be pasted back: what it holds instead."""
    domain = str((_read_json(d / "meta.json") if (d / "meta.json").is_file() else {}).get("domain") or "?")
    whole = "photos of that domain are inverted whole" if not domains.aligns_faces(domain) else "it was inverted with --no-align"
    return (f"--paste-back puts an aligned face back into its photo, but {d} holds a {domain} inversion of the whole "
            f"photo ({whole}): there is nothing to paste back")


def paste_context(invert_dir: Optional[Path]) -> _Context:
    """The photo and alignment an edit of the latent in `invert_dir` is pasted into; one E4EError
    line when there is none (checked before the edit writes anything)."""
    return _load_context(invert_dir)


def _paste_file(ctx: _Context, face: "Image.Image", **opts) -> "Image.Image":
    import numpy as np

    lm = ctx.landmarks
    if lm is not None:
        lm = np.asarray(lm, dtype=np.float64)
        if lm.shape != (68, 2):
            lm = None
    return paste_face(ctx.photo, face, ctx.quad, landmarks=lm, **opts)


def _open_rgb(path: Path) -> "Image.Image":
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as exc:
        raise E4EError(f"cannot read {path}: {' '.join(str(exc).split())[:160]}") from None


def paste_back_inversions(results: Iterable, *, mask: str = "hull", feather: float = DEFAULT_FEATHER,
                          color_match: bool = False) -> list:
    """Paste every finished inversion (`ItemResult`s of `invert_inputs`) into its photo:
    writes ``<outdir>/<stem>_inversion_full.png|.jpg`` and adds it to ``result.files`` under
    ``inversion_full``. An item whose photo cannot be pasted into (no alignment, photo gone)
    becomes ``failed`` with the reason; ``OUT/summary.json`` is updated to match.
    Returns the results."""
    results = list(results)
    touched: dict = {}
    for r in results:
        if r.status not in ("ok", "skipped") or not r.outdir:
            continue
        d = Path(r.outdir)
        try:
            if not (d / "alignment.json").is_file():
                raise E4EError(not_aligned(d) if (d / "meta.json").is_file() else
                               f"no alignment.json in {d}: --paste-back needs an aligned face "
                               "(--domain ffhq without --no-align)")
            ctx = _load_context(d, [r.input])
            inv = d / "inversion.png"
            if not inv.is_file():
                raise E4EError(f"{inv} is missing: run `e4e invert --overwrite` on the photo")
            full = _paste_file(ctx, _open_rgb(inv), mask=mask, feather=feather, color_match=color_match)
            path = ctx.save(full, d / f"{d.name}_inversion_full{ctx.suffix}")
            r.files["inversion_full"] = str(path)
        except E4EError as exc:
            r.status = "failed"
            r.error = f"inverted, but paste-back failed: {exc}"
        except OSError as exc:
            r.status = "failed"
            r.error = f"inverted, but paste-back failed: cannot write in {d}: {exc.strerror or exc}"
        touched.setdefault(d.parent, []).append(r)
    for out, items in touched.items():
        _update_summary(out / "summary.json", items)
    return results


def _update_summary(path: Path, items: list) -> None:
    """Bring the statuses and file lists of `items` in `summary.json` up to date (best effort)."""
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text())
        by_input = {r.input: r for r in items}
        for entry in data.get("items", []):
            r = by_input.get(entry.get("input"))
            if r is not None:
                entry.update(status=r.status, error=r.error, files=dict(r.files))
        counts = data.get("counts")
        if isinstance(counts, dict):
            for s in ("ok", "skipped", "failed"):
                counts[s] = sum(e.get("status") == s for e in data.get("items", []))
        write_json(path, data)
    except (OSError, ValueError, AttributeError, E4EError):
        pass


def paste_back_edits(src, name: str, label: str, strengths: Sequence[float], frames: Sequence["Image.Image"],
                     out: Path, sweep: bool = False, *, mask: str = "hull", feather: float = DEFAULT_FEATHER,
                     color_match: bool = False, context: Optional[_Context] = None) -> dict:
    """Paste each edited frame into the source's photo: ``out/<name>_<label>_<strength>_full.png|.jpg``
    (names as the edit outputs), and with `sweep` the GIF of the full photos
    ``out/<name>_<label>_sweep_full.gif``. Returns {file key: path}. Raises E4EError when the
    source has no alignment (a bare latent, a non-face domain) or its photo is gone."""
    from PIL import Image

    ctx = context or _load_context(getattr(src, "invert_dir", None))
    files: dict = {}
    small = []
    out = Path(out)
    for s, frame in zip(strengths, frames):
        full = _paste_file(ctx, frame, mask=mask, feather=feather, color_match=color_match)
        base = f"{name}_{slug(label)}_{fmt_strength(s)}_full"
        files[base] = str(ctx.save(full, out / f"{base}{ctx.suffix}"))
        if sweep:
            scale = min(1.0, GIF_MAX_SIDE / max(full.size))
            size = (max(1, round(full.width * scale)), max(1, round(full.height * scale)))
            small.append(full.resize(size, Image.Resampling.LANCZOS))
    if sweep and small:
        base = f"{name}_{slug(label)}_sweep_full"
        files[base + "_gif"] = str(save_gif(small, out / f"{base}.gif", max_side=GIF_MAX_SIDE))
    return files
