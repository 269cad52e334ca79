"""One face followed through a clip, and its crop smoothed over time as STIT does.

Per frame the FFHQ crop (`alignment.face_quad` from dlib's 68 landmarks) is a centre c and
two half-axes x (across) and y (down): corners c - x - y, c - x + y, c + x + y, c + x - y
(top-left, bottom-left, bottom-right, top-right). STIT ("Stitch it in Time", Tzaban et al.
2022) smooths c with a Gaussian of sigma 1.0 frame and x, y with sigma 3.0 before cropping,
so the crop does not jitter with the landmarks. Here the smoothing runs within each run of
consecutive frames that have the face, never across a gap (a face that leaves and comes back
elsewhere is not dragged there); the ends of a run are padded with their nearest value.

Tracking: the first frame with faces picks one (the largest, or face N counted left to right);
later frames are searched near the previous crop first and the whole frame only when that
finds nothing, both on copies reduced so that a face of the previous crop's size is about 100 px
wide (detection stays cheap, also through long stretches without the face); the detection
nearest the previous crop is kept when it is close enough, else the frame has no face.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from .alignment import face_quad, parse_face_choice

if TYPE_CHECKING:  # pragma: no cover
    from .alignment import FaceAligner

DEFAULT_CENTER_SIGMA = 1.0  # frames (STIT's --center_sigma)
DEFAULT_AXES_SIGMA = 3.0  # frames (STIT's --xy_sigma)
DETECT_FACE_PX = 100  # the face's width in the reduced copy the detector sees near the previous crop


@dataclass
class Sighting:
    """The face in one frame: its raw quad [4,2] (frame pixels, pixel centres) or why not."""

    quad: Optional[np.ndarray]
    reason: Optional[str] = None
    rect: Optional[tuple] = None


def quad_to_cxy(quad: np.ndarray) -> np.ndarray:
    """[4,2] corners (tl, bl, br, tr) -> [3,2]: centre c, half-axis x (across), half-axis y (down)."""
    q = np.asarray(quad, dtype=np.float64)
    c = q.mean(axis=0)
    x = (q[2] + q[3] - q[0] - q[1]) / 4.0
    y = (q[1] + q[2] - q[0] - q[3]) / 4.0
    return np.stack([c, x, y])


def cxy_to_quad(cxy: np.ndarray) -> np.ndarray:
    c, x, y = np.asarray(cxy, dtype=np.float64)
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def _smooth_run(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian over axis 0 (frames), ends padded with the nearest value; sigma 0: as it is."""
    if sigma <= 0 or len(values) < 2:
        return values
    radius = int(4.0 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.concatenate([np.repeat(values[:1], radius, 0), values, np.repeat(values[-1:], radius, 0)])
    out = np.zeros_like(values)
    for j, w in enumerate(k):
        out += w * padded[j : j + len(values)]
    return out


def smooth_rows(values: np.ndarray, rows: Sequence[int], run: tuple[int, int], sigma: float) -> np.ndarray:
    """Rows `rows` of `values` [T,...] smoothed over time within `run` [a, b) exactly as
    `_smooth_run(values[a:b])` would give them, reading only the rows within 4 sigma of each
    (`values` may be a memory-mapped file: a long clip is never loaded whole). [len(rows),...]"""
    a, b = run
    rows = np.asarray(rows, dtype=np.int64)
    if sigma <= 0 or b - a < 2:
        return np.asarray(values[rows], dtype=np.float64)
    radius = int(4.0 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    lo, hi = max(a, int(rows.min()) - radius), min(b, int(rows.max()) + radius + 1)
    window = np.asarray(values[lo:hi], dtype=np.float64)
    out = np.zeros((len(rows),) + window.shape[1:])
    for j, w in enumerate(k):  # nearest-value padding at the run's ends: indices clipped into the run
        out += w * window[np.clip(rows + j - radius, a, b - 1) - lo]
    return out


def runs(present: Sequence[bool]) -> list[tuple[int, int]]:
    """[start, stop) of each run of consecutive True."""
    out, start = [], None
    for i, p in enumerate(list(present) + [False]):
        if p and start is None:
            start = i
        elif not p and start is not None:
            out.append((start, i))
            start = None
    return out


def smooth_quads(quads: Sequence[Optional[np.ndarray]], *, center_sigma: float = DEFAULT_CENTER_SIGMA,
                 axes_sigma: float = DEFAULT_AXES_SIGMA) -> list[Optional[np.ndarray]]:
    """The crops smoothed over time within each run of frames that have the face (None stays None)."""
    out: list = [None] * len(quads)
    for a, b in runs([q is not None for q in quads]):
        cxy = np.stack([quad_to_cxy(q) for q in quads[a:b]])  # [n,3,2]
        c = _smooth_run(cxy[:, 0], center_sigma)
        xy = _smooth_run(cxy[:, 1:].reshape(b - a, 4), axes_sigma).reshape(b - a, 2, 2)
        for i in range(b - a):
            out[a + i] = cxy_to_quad(np.concatenate([c[i : i + 1], xy[i]]))
    return out


class FaceTracker:
    """Follows one face from frame to frame (see the module's docstring)."""

    def __init__(self, aligner: "FaceAligner", *, face="largest"):
        choice = parse_face_choice(face)
        if choice == "all":
            from .errors import USAGE, E4EError

            raise E4EError("--face all is for photos: a video edit follows one face (largest or a number)",
                           exit_code=USAGE)
        self.aligner = aligner
        self.choice = choice
        self.last: Optional[np.ndarray] = None  # last raw quad seen
        self.asked_face_missing = False

    def _reduced(self, rgb: np.ndarray, box: tuple) -> list:
        """Detector rectangles (frame pixels) in `box` (x0, y0, x1, y1) of the frame, on a copy
        reduced so that a face of the previous crop's size is about DETECT_FACE_PX wide."""
        from PIL import Image

        x0, y0, x1, y1 = box
        if x1 - x0 < 16 or y1 - y0 < 16:
            return []
        region = rgb[y0:y1, x0:x1]
        face_px = np.hypot(*quad_to_cxy(self.last)[1]) * 2 / 2.2  # the detector's box: about the quad's side / 2.2
        scale = min(1.0, DETECT_FACE_PX / max(face_px, 1.0))
        if scale < 0.95:
            size = (max(16, int(round((x1 - x0) * scale))), max(16, int(round((y1 - y0) * scale))))
            region = np.asarray(Image.fromarray(region).resize(size, Image.Resampling.BILINEAR))
            sx, sy = (x1 - x0) / size[0], (y1 - y0) / size[1]
        else:
            sx = sy = 1.0
        rects = self.aligner.detect(region, exact=True)
        return [(int(round(l * sx)) + x0, int(round(t * sy)) + y0, int(round(r * sx)) + x0, int(round(b * sy)) + y0)
                for l, t, r, b in rects]

    def _near(self, rgb: np.ndarray) -> list:
        """Rectangles near the previous crop, else anywhere in the frame (both on reduced copies)."""
        h, w = rgb.shape[:2]
        cxy = quad_to_cxy(self.last)
        half = 1.6 * max(np.hypot(*cxy[1]), np.hypot(*cxy[2]))
        near = (max(0, int(cxy[0][0] - half)), max(0, int(cxy[0][1] - half)),
                min(w, int(cxy[0][0] + half) + 1), min(h, int(cxy[0][1] + half) + 1))
        return self._reduced(rgb, near) or self._reduced(rgb, (0, 0, w, h))

    def see(self, rgb: np.ndarray) -> Sighting:
        """Find the tracked face in one upright RGB frame [H,W,3] uint8."""
        rects = self._near(rgb) if self.last is not None else self.aligner.detect(rgb)
        if not rects:
            return Sighting(None, "no face detected")
        if self.last is None:
            order = sorted(rects, key=lambda r: (r[0] + r[2], r[1] + r[3]))  # left to right, as for photos
            if self.choice == "largest":
                rect = max(order, key=lambda r: (r[2] - r[0]) * (r[3] - r[1]))
            elif self.choice < len(order):
                rect = order[self.choice]
            else:
                self.asked_face_missing = True
                return Sighting(None, f"face {self.choice} asked for, {len(order)} found")
        else:
            c = quad_to_cxy(self.last)[0]
            rect = min(rects, key=lambda r: np.hypot((r[0] + r[2]) / 2 - c[0], (r[1] + r[3]) / 2 - c[1]))
            side = np.hypot(*quad_to_cxy(self.last)[1]) * 2
            if np.hypot((rect[0] + rect[2]) / 2 - c[0], (rect[1] + rect[3]) / 2 - c[1]) > 0.75 * side:
                return Sighting(None, "only other faces detected")
        lm = self.aligner.landmarks(rgb, rect)
        quad, _ = face_quad(lm)
        self.last = quad
        return Sighting(quad, None, tuple(int(v) for v in rect))


def crop_face(rgb: np.ndarray, quad: np.ndarray, size: int):
    """The square `quad` [4,2] of a frame [H,W,3] warped to size x size (PIL RGB): the frame is
    padded by reflection where the quad reaches past it, and shrunk by a whole factor first when
    the face is over twice `size` (as the photo alignment does, against aliasing)."""
    from PIL import Image

    q = np.asarray(quad, dtype=np.float64)
    h, w = rgb.shape[:2]
    lo, hi = np.floor(q.min(axis=0)).astype(int) - 2, np.ceil(q.max(axis=0)).astype(int) + 2
    pads = (max(0, -lo[1]), max(0, hi[1] - h + 1)), (max(0, -lo[0]), max(0, hi[0] - w + 1))
    x0, y0 = max(0, lo[0]), max(0, lo[1])
    x1, y1 = min(w, hi[0] + 1), min(h, hi[1] + 1)
    part = rgb[y0:y1, x0:x1]
    if any(p for pair in pads for p in pair):
        part = np.pad(part, (*pads, (0, 0)), mode="symmetric")
    q = q - [x0 - pads[1][0], y0 - pads[0][0]]
    img = Image.fromarray(np.ascontiguousarray(part))
    side = float(np.hypot(*(q[3] - q[0])))
    factor = int(np.floor(side / size * 0.5))
    if factor > 1:
        img = img.resize((max(1, round(img.width / factor)), max(1, round(img.height / factor))),
                         Image.Resampling.LANCZOS)
        q = (q + 0.5) * [img.width / part.shape[1], img.height / part.shape[0]] - 0.5
    return img.transform((size, size), Image.Transform.QUAD, tuple((q + 0.5).flatten()), Image.Resampling.BILINEAR)
