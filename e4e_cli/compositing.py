"""Paste a generated (inverted or edited) face back into a photo: the maths, on images in memory.

The alignment (`alignment.py`) cuts the face out of the photo with PIL's QUAD warp: the
aligned square's continuous coordinates (s, t) in [0, 1]^2 come from the photo point

    P(s, t) = Q_tl + s (Q_tr - Q_tl) + t (Q_bl - Q_tl) + s t (Q_br - Q_bl - Q_tr + Q_tl)

where Q = quad + 0.5 (the sidecar stores pixel-centre coordinates, PIL works in pixel-edge
coordinates). The FFHQ quad is a parallelogram (c +- x +- y, scaled by the same factors on
both axes when the photo was shrunk), so the last term vanishes and the map is affine:
its inverse is exact. `paste_face` warps the generated square back with that inverse,
only over the quad's bounding box (a 4000x3000 photo costs no more than its face), and
blends it in with a feathered mask built in the aligned frame (convex hull of the 68
landmarks grown up over the forehead, or a soft ellipse) that fades to exactly zero before
the square's border. Pixels where the mask is zero are copied from the photo unchanged, so
everything away from the face is bit-identical to the input.

With ``color_match=True`` the generated face's per-channel mean and standard deviation are
matched to the photo's in the seam band (where the mask is between 5% and 95%), and the
correction is kept only when it lowers the mean difference between the two there.

`jobs/pasteback.py` applies it to the folders of `e4e invert` and `e4e edit`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Tuple

from .errors import E4EError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

#: Gaussian sigma of the mask's soft edge, as a fraction of the aligned square's side
#: (0.02 = 20 px on a 1024 face, ~8 px for a face 400 px wide in the photo).
DEFAULT_FEATHER = 0.02
#: The mask is built at this resolution in the aligned frame, then warped like the face.
MASK_RESOLUTION = 512
#: Width (fraction of the square) over which the mask fades to zero before the square's edge.
BORDER_FADE = 0.05
#: Mask values below this are treated as zero (the photo pixel is kept as it is).
MASK_EPS = 1.0 / 1024
MASK_KINDS = ("hull", "ellipse")


# --------------------------------------------------------------------------------------
# Geometry


def face_frame(quad) -> Tuple["np.ndarray", "np.ndarray"]:
    """(origin [2], A [2,2]) with photo point = origin + A @ (s, t) for (s, t) in the
    aligned square's unit coordinates; continuous pixel-edge coordinates of the photo.

    A least-squares affine fit of the four corners: exact for the parallelogram quads the
    alignment produces, the best affine approximation of any other quad.
    """
    import numpy as np

    q = np.asarray(quad, dtype=np.float64)
    if q.shape != (4, 2) or not np.isfinite(q).all():
        raise E4EError(f"invalid alignment quad (expected 4 finite corners, got shape {list(q.shape)})")
    q = q + 0.5
    st = np.array([[0, 0], [0, 1], [1, 1], [1, 0]], dtype=np.float64)  # tl, bl, br, tr
    design = np.concatenate([np.ones((4, 1)), st], axis=1)
    coef, *_ = np.linalg.lstsq(design, q, rcond=None)  # [3, 2]
    origin = coef[0]
    a = coef[1:].T  # columns: d/ds, d/dt
    side = math.sqrt(abs(np.linalg.det(a)))
    if not side > 1e-3:
        raise E4EError("invalid alignment quad: its corners do not span an area")
    return origin, a


def _to_frame(points, origin, a) -> "np.ndarray":
    """Photo pixel-centre coordinates [N,2] -> aligned unit coordinates [N,2]."""
    import numpy as np

    p = np.asarray(points, dtype=np.float64).reshape(-1, 2) + 0.5
    return np.linalg.solve(a, (p - origin).T).T


# --------------------------------------------------------------------------------------
# The mask (built in the aligned frame)


def _convex_hull(points: "np.ndarray") -> "np.ndarray":
    """Counter-clockwise convex hull (monotone chain) of [N,2] points."""
    import numpy as np

    pts = sorted(set(map(tuple, np.asarray(points, dtype=np.float64).tolist())))
    if len(pts) < 3:
        return np.asarray(pts, dtype=np.float64)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1], dtype=np.float64)


def _hull_polygon(lm: "np.ndarray", grow: float) -> "np.ndarray":
    """The face region from 68 landmarks (aligned unit coordinates): their convex hull plus
    the eyebrows lifted over the forehead, every vertex pushed out by `grow`."""
    import numpy as np

    eye_avg = (lm[36:42].mean(axis=0) + lm[42:48].mean(axis=0)) / 2
    mouth_avg = (lm[48] + lm[54]) / 2
    e2m = mouth_avg - eye_avg
    dist = float(np.hypot(*e2m))
    up = -e2m / dist if dist > 1e-9 else np.array([0.0, -1.0])
    brows = lm[17:27]
    forehead = brows + up * (0.65 * dist)
    # the temples: the jaw's top points lifted a little, so the hull reaches the hairline at the sides
    temples = lm[[0, 16]] + up * (0.35 * dist)
    hull = _convex_hull(np.concatenate([lm, forehead, temples]))
    centre = hull.mean(axis=0)
    vec = hull - centre
    norm = np.maximum(np.hypot(vec[:, 0], vec[:, 1]), 1e-9)[:, None]
    return hull + vec / norm * grow


def _ellipse_polygon(lm: Optional["np.ndarray"], n: int = 96) -> "np.ndarray":
    """A face ellipse: around the landmarks (with forehead) when given, else FFHQ's usual face."""
    import numpy as np

    if lm is not None:
        poly = _hull_polygon(lm, 0.0)
        lo, hi = poly.min(axis=0), poly.max(axis=0)
        centre = (lo + hi) / 2
        axes = (hi - lo) / 2 * 1.08
    else:  # where faces sit in an FFHQ-aligned square
        centre = np.array([0.5, 0.58])
        axes = np.array([0.30, 0.38])
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([centre[0] + axes[0] * np.cos(ang), centre[1] + axes[1] * np.sin(ang)], axis=1)


def face_mask(landmarks_frame: Optional["np.ndarray"] = None, *, kind: str = "hull",
              feather: float = DEFAULT_FEATHER, size: int = MASK_RESOLUTION) -> "np.ndarray":
    """Soft face mask [size, size] float32 in [0, 1] in the aligned frame.

    `landmarks_frame`: the 68 landmarks in aligned unit coordinates (None: a default ellipse).
    The mask is exactly 0 on a band along the square's border, so that a pasted face never
    shows the square's edge.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    if kind not in MASK_KINDS:
        raise E4EError(f"unknown paste-back mask {kind!r}: use {' or '.join(MASK_KINDS)}")
    feather = float(feather)
    if not (math.isfinite(feather) and 0 <= feather <= 0.2):
        raise E4EError(f"paste-back feather must be between 0 and 0.2 (a fraction of the face square), got {feather!r}")
    lm = None
    if landmarks_frame is not None:
        lm = np.asarray(landmarks_frame, dtype=np.float64)
        if lm.shape != (68, 2) or not np.isfinite(lm).all():
            lm = None
    if kind == "hull" and lm is not None:
        poly = _hull_polygon(lm, grow=1.5 * feather)
    else:
        poly = _ellipse_polygon(lm)
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in (poly * size).tolist()], fill=255)
    mask = np.asarray(canvas, dtype=np.float32) / 255.0
    sigma = feather * size
    if sigma > 0.3:  # separable Gaussian as two matrix products (fast, exact; the border is 0 anyway)
        idx = np.arange(size, dtype=np.float32)
        k = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / np.float32(sigma)) ** 2)
        k[k < 1e-7] = 0.0
        k /= k.sum(axis=1, keepdims=True)
        mask = k @ mask @ k.T
    # fade to exactly zero before the border (smoothstep of the distance to the nearest edge)
    c = (np.arange(size, dtype=np.float64) + 0.5) / size
    d = np.minimum(c, 1.0 - c)
    margin = 2.0 / size
    u = np.clip((d - margin) / BORDER_FADE, 0.0, 1.0)
    fade = (u * u * (3 - 2 * u)).astype(np.float32)
    mask = mask * fade[:, None] * fade[None, :]
    mask[mask < MASK_EPS] = 0.0
    return np.clip(mask, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------
# Pasting


@dataclass
class PasteInfo:
    """What `paste_face_info` did: the photo box it touched, how many pixels changed, and
    the seam band's mean absolute face-vs-photo difference (gray levels) before and after
    colour matching."""

    box: Tuple[int, int, int, int]  # left, top, right, bottom (exclusive) in the photo
    changed_pixels: int
    seam_before: Optional[float] = None
    seam_after: Optional[float] = None
    color_matched: bool = False


def _affine_data(origin, a, box_origin, scale_xy) -> tuple:
    """PIL AFFINE data mapping crop continuous coords -> source image continuous coords,
    for a source whose unit square spans `scale_xy` pixels."""
    import numpy as np

    m = np.diag(np.asarray(scale_xy, dtype=np.float64)) @ np.linalg.inv(a)
    off = m @ (np.asarray(box_origin, dtype=np.float64) - origin)
    return (m[0, 0], m[0, 1], off[0], m[1, 0], m[1, 1], off[1])


def _match_colors(face: "np.ndarray", photo: "np.ndarray", ring: "np.ndarray") -> Tuple[Optional["np.ndarray"], float, float]:
    """Per-channel mean/std transfer of `face` to `photo` statistics over `ring`.
    Returns (corrected face or None when it does not help, seam before, seam after)."""
    import numpy as np

    f = face[ring].astype(np.float64)
    p = photo[ring].astype(np.float64)
    before = float(np.abs(f - p).mean())
    mf, mp = f.mean(axis=0), p.mean(axis=0)
    sf, sp = f.std(axis=0), p.std(axis=0)
    gain = np.clip(sp / np.maximum(sf, 1e-3), 0.67, 1.5)
    corrected_ring = (f - mf) * gain + mp
    after = float(np.abs(np.clip(corrected_ring, 0, 255) - p).mean())
    if not after < before:
        return None, before, before
    corrected = (face.astype(np.float32) - mf.astype(np.float32)) * gain.astype(np.float32) + mp.astype(np.float32)
    return np.clip(corrected, 0, 255), before, after


def paste_face_info(photo: "Image.Image", face: "Image.Image", quad, *, landmarks=None, mask: str = "hull",
                    feather: float = DEFAULT_FEATHER, color_match: bool = False) -> Tuple["Image.Image", PasteInfo]:
    """`paste_face`, also returning a `PasteInfo` (touched box, seam numbers)."""
    import numpy as np
    from PIL import Image

    if photo.mode != "RGB":
        photo = photo.convert("RGB")
    if face.mode != "RGB":
        face = face.convert("RGB")
    origin, a = face_frame(quad)
    lm_frame = _to_frame(landmarks, origin, a) if landmarks is not None else None
    mask_sq = face_mask(lm_frame, kind=mask, feather=feather)

    W, H = photo.size
    corners = origin + np.array([[0, 0], [0, 1], [1, 1], [1, 0]], dtype=np.float64) @ a.T
    x0 = max(0, int(math.floor(corners[:, 0].min())) - 1)
    y0 = max(0, int(math.floor(corners[:, 1].min())) - 1)
    x1 = min(W, int(math.ceil(corners[:, 0].max())) + 1)
    y1 = min(H, int(math.ceil(corners[:, 1].max())) + 1)
    out = photo.copy()
    if x1 <= x0 or y1 <= y0:  # the face square lies outside the photo
        return out, PasteInfo((0, 0, 0, 0), 0)
    cw, ch = x1 - x0, y1 - y0

    # Generated face -> photo resolution: shrink with a proper low-pass first when the face
    # covers fewer photo pixels than it has (bicubic alone would alias), then warp.
    side_x = float(np.hypot(*a[:, 0]))
    side_y = float(np.hypot(*a[:, 1]))
    fw, fh = face.size
    if fw > 1.25 * side_x or fh > 1.25 * side_y:
        face = face.resize((max(8, min(fw, math.ceil(side_x))), max(8, min(fh, math.ceil(side_y)))),
                           Image.Resampling.LANCZOS)
        fw, fh = face.size
    face_crop = face.transform((cw, ch), Image.Transform.AFFINE, _affine_data(origin, a, (x0, y0), (fw, fh)),
                               Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))
    m_img = Image.fromarray(mask_sq, "F")
    n = mask_sq.shape[0]
    m_crop = m_img.transform((cw, ch), Image.Transform.AFFINE, _affine_data(origin, a, (x0, y0), (n, n)),
                             Image.Resampling.BILINEAR, fillcolor=0.0)
    m = np.clip(np.asarray(m_crop, dtype=np.float32), 0.0, 1.0)
    m[m < MASK_EPS] = 0.0
    inside = m > 0
    info = PasteInfo((x0, y0, x1, y1), int(inside.sum()))
    if not inside.any():
        return out, info

    p = np.asarray(photo.crop((x0, y0, x1, y1)), dtype=np.float32)
    f = np.asarray(face_crop, dtype=np.float32)
    ring = (m > 0.05) & (m < 0.95)
    if ring.sum() >= 16:
        if color_match:
            corrected, before, after = _match_colors(f, p, ring)
            info.seam_before, info.seam_after = before, after
            if corrected is not None:
                f = corrected
                info.color_matched = True
        else:
            info.seam_before = info.seam_after = float(np.abs(f[ring] - p[ring]).mean())
    blended = p[inside] + m[inside][:, None] * (f[inside] - p[inside])
    res = np.asarray(photo.crop((x0, y0, x1, y1)), dtype=np.uint8).copy()
    res[inside] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    out.paste(Image.fromarray(res, "RGB"), (x0, y0))
    return out, info


def paste_face(photo: "Image.Image", face: "Image.Image", quad, *, landmarks=None, mask: str = "hull",
               feather: float = DEFAULT_FEATHER, color_match: bool = False) -> "Image.Image":
    """Warp `face` (a generated aligned square, any size) back into `photo` (upright RGB)
    where the alignment `quad` took it from, and blend it in with a feathered face mask.

    quad: [4,2] corners in photo pixel coordinates (pixel centres), in the order the aligned
    square's top-left, bottom-left, bottom-right, top-right come from (`alignment.json`).
    landmarks: the 68 photo landmarks, for the hull mask (without them the mask is an ellipse).
    mask: "hull" (landmark hull lifted over the forehead) or "ellipse".
    feather: sigma of the soft edge as a fraction of the face square's side.
    color_match: match the face's colour statistics to the photo's in the seam band (kept
    only when that lowers the difference there).

    Returns a new image of the photo's size; pixels outside the mask are the photo's own.
    """
    return paste_face_info(photo, face, quad, landmarks=landmarks, mask=mask, feather=feather,
                           color_match=color_match)[0]
