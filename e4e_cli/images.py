"""Robust photo loading shared by every command.

`load_image(path)` turns whatever a user points the tool at into an 8-bit RGB PIL image:

- EXIF orientation is applied (a phone photo shot in portrait comes out upright);
- grayscale, bilevel, palette, CMYK and YCbCr files are converted to RGB;
- transparent images (RGBA, LA, PA, palette or grayscale with a transparent colour) are
  composited onto white;
- 16-bit and 32-bit grayscale (PNG ``I;16``/``I``, TIFF, float) is scaled to 8 bit instead
  of being clipped the way ``Image.convert`` does;
- only the first frame of an animated/multi-page file is used.

Everything a user can get wrong is refused with an `E4EError` whose message is one line
that starts with the file name: a missing file, a folder, a file that is not an image, a
truncated or corrupt file (the image is fully decoded, so truncation is caught here and not
halfway through a later step) and decompression bombs (the pixel count is checked from the
header before anything is decoded).

`detection_pixels(path, image)` returns the pixels a face detector should see: the
reference alignment gives dlib the pixels decoded by dlib's own libjpeg, which differ from
Pillow's by up to ~15 levels on a JPEG; landmarks (and so the aligned face) only match the
reference when the detector sees the same decoding.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Union

from .errors import E4EError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

PathLike = Union[str, "os.PathLike[str]"]

#: Largest image (in pixels) the loader decodes: 100 megapixels is larger than any camera
#: photo people edit, and a crafted file that claims more is treated as a decompression bomb.
MAX_PIXELS = 100_000_000

#: File extensions treated as images when a folder is given on the command line.
IMAGE_SUFFIXES = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga",
)

# Facts about the source file, stored in the returned image's `info` dict (Pillow keeps
# `info` on copies), so that later steps can tell how the pixels were obtained.
INFO_FORMAT = "e4e_source_format"  # "JPEG", "PNG", ...
INFO_MODE = "e4e_source_mode"  # the file's own mode before conversion ("RGB", "CMYK", "I;16", ...)
INFO_ORIENTATION = "e4e_exif_orientation"  # the EXIF orientation that was applied (1 = none)

_EXIF_ORIENTATION_TAG = 0x0112
_JPEG_MAGIC = b"\xff\xd8\xff"


def _fail(path: Path, reason: str) -> E4EError:
    # One line, starting with the file name.
    reason = " ".join(str(reason).split())
    return E4EError(f"{path}: {reason}")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 160:
        text = text[:157] + "..."
    return text or type(exc).__name__


def load_image(path: PathLike, *, max_pixels: int = MAX_PIXELS) -> "Image.Image":
    """Load `path` as an upright 8-bit RGB image, or raise a one-line `E4EError`.

    The returned image's ``info`` holds the source format, its original mode and the EXIF
    orientation that was applied (keys `INFO_FORMAT`, `INFO_MODE`, `INFO_ORIENTATION`), and
    the file's ICC profile (``icc_profile``) when it describes RGB pixels.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise _fail(p, "no such file")
    if p.is_dir():
        raise _fail(p, "is a folder, not an image file")
    if not p.is_file():
        raise _fail(p, "is not a regular file")

    with warnings.catch_warnings():
        # Pillow's own bomb warning starts at ~89 Mpx; we apply our own limit below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            im = Image.open(p)
        except Image.DecompressionBombError as exc:
            raise _fail(p, f"refused: {_reason(exc)}") from None
        except UnidentifiedImageError:
            raise _fail(p, "not an image file (unknown or unsupported format)") from None
        except PermissionError:
            raise _fail(p, "permission denied") from None
        except IsADirectoryError:
            raise _fail(p, "is a folder, not an image file") from None
        except OSError as exc:
            if exc.errno is not None:  # a system error: permissions, I/O, ...
                raise _fail(p, f"cannot read the file: {exc.strerror or _reason(exc)}") from None
            raise _fail(p, f"cannot read the image header, the file is truncated or corrupt ({_reason(exc)})") from None
        except MemoryError:
            raise _fail(p, "not enough memory to read the image header") from None
        except Exception as exc:  # Pillow plugins raise odd types on crafted headers
            raise _fail(p, f"corrupt image header ({_reason(exc)})") from None

        with im:
            fmt = im.format or ""
            try:
                w, h = im.size
            except Exception as exc:
                raise _fail(p, f"corrupt image header ({_reason(exc)})") from None
            if w <= 0 or h <= 0:
                raise _fail(p, f"image has no pixels ({w}x{h})")
            if w * h > max_pixels:
                raise _fail(
                    p,
                    f"refused: {w}x{h} is {w * h / 1e6:.0f} megapixels, above the "
                    f"{max_pixels / 1e6:.0f}-megapixel limit (possible decompression bomb)",
                )
            try:
                im.load()  # full decode: truncation and corrupt data surface here
            except Image.DecompressionBombError as exc:
                raise _fail(p, f"refused: {_reason(exc)}") from None
            except MemoryError:
                raise _fail(p, "not enough memory to decode the image") from None
            except Exception as exc:
                raise _fail(p, f"cannot decode the image, the file is truncated or corrupt ({_reason(exc)})") from None
            source_mode = im.mode
            icc = im.info.get("icc_profile") if source_mode in ("RGB", "RGBA", "RGBX", "P", "PA") else None
            orientation = _read_orientation(im)
            try:
                rgb = _to_rgb8(im, fmt)
                rgb = _apply_orientation(rgb, orientation)
            except E4EError:
                raise
            except MemoryError:
                raise _fail(p, "not enough memory to convert the image") from None
            except Exception as exc:
                raise _fail(p, f"cannot convert the image to RGB ({_reason(exc)})") from None

    rgb.info = {INFO_FORMAT: fmt, INFO_MODE: source_mode, INFO_ORIENTATION: orientation}
    if icc:  # an RGB colour profile still describes the converted pixels
        rgb.info["icc_profile"] = icc
    return rgb


def _read_orientation(im: "Image.Image") -> int:
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # garbage EXIF must not make a photo unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def _apply_orientation(im: "Image.Image", orientation: int) -> "Image.Image":
    """Make the image upright, like `ImageOps.exif_transpose`, from a known orientation."""
    from PIL import Image

    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return im.transpose(method) if method is not None else im


def _to_rgb8(im: "Image.Image", fmt: str) -> "Image.Image":
    """Convert any Pillow mode to 8-bit RGB (alpha composited onto white)."""
    import numpy as np
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F") or mode.startswith("I;"):
        gray = _high_depth_to_uint8(np.asarray(im), mode, fmt)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")
    transparent = "transparency" in im.info and mode in ("1", "L", "P", "RGB", "I")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or transparent or (mode == "P" and im.palette and im.palette.mode == "RGBA"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in ("1", "L", "P", "CMYK", "YCbCr", "RGBX", "HSV"):
        return im.convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms

        lab = ImageCms.createProfile("LAB")
        srgb = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(im, lab, srgb, outputMode="RGB")
    return im.convert("RGB")  # anything else Pillow knows how to convert


def _high_depth_to_uint8(arr: "np.ndarray", mode: str, fmt: str) -> "np.ndarray":
    """Scale 16/32-bit integer or float grayscale to 0..255 (rounded, not clipped)."""
    import numpy as np

    if arr.ndim != 2:
        arr = arr.reshape(arr.shape[0], arr.shape[1], -1)[:, :, 0]
    if mode == "F":
        a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        hi = float(a.max()) if a.size else 0.0
        lo = float(a.min()) if a.size else 0.0
        if lo >= 0.0 and hi <= 1.0:
            a = a * 255.0  # 0..1 floats
        elif lo < 0.0 or hi > 255.0:
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    a = arr.astype(np.int64)
    if mode.startswith("I;16") or fmt == "PNG":
        full = 65535  # PNG 16-bit gray comes as "I" in old Pillow versions
    else:
        hi = int(a.max()) if a.size else 0
        lo = int(a.min()) if a.size else 0
        if lo >= 0 and hi <= 255:
            full = 255
        elif lo >= 0 and hi <= 65535:
            full = 65535
        else:  # 32-bit data of unknown range: stretch
            a = a - lo
            full = max(hi - lo, 1)
    a = np.clip(a, 0, full)
    return ((a * 255 + full // 2) // full).astype(np.uint8)


def pil_to_uint8(img: "Image.Image") -> "np.ndarray":
    """A C-contiguous uint8 array [H, W, 3] of an image (converted to RGB if needed)."""
    import numpy as np

    if img.mode != "RGB":
        img = _to_rgb8(img, "")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _is_jpeg_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(3) == _JPEG_MAGIC
    except OSError:
        return False


def detection_pixels(path: PathLike, image: "Image.Image") -> "np.ndarray":
    """The uint8 RGB array [H, W, 3] that the face detector and landmark predictor should see.

    For an upright RGB or grayscale JPEG this is dlib's own decoding of the file (what the
    reference implementation feeds dlib), so landmarks match the reference exactly. In every
    other case (EXIF-rotated, CMYK, PNG and other formats, a dlib failure or a size
    mismatch) it is the Pillow-decoded `image`. The warp always uses Pillow's pixels.
    """
    import numpy as np

    pil = pil_to_uint8(image)
    info = getattr(image, "info", {}) or {}
    p = Path(path)
    if INFO_FORMAT in info:
        is_jpeg = info.get(INFO_FORMAT) == "JPEG"
        orientation = info.get(INFO_ORIENTATION, 1)
        mode = info.get(INFO_MODE, "RGB")
    else:  # an image that did not come from load_image: sniff the file
        is_jpeg = _is_jpeg_file(p)
        orientation, mode = _sniff_orientation_mode(p)
    if not (is_jpeg and orientation == 1 and mode in ("RGB", "L")):
        return pil
    try:
        import dlib

        arr = dlib.load_rgb_image(str(p))
    except Exception:
        return pil
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.shape != pil.shape:
        return pil
    # Guard against a decoder that got the colours wrong (e.g. an unusual colour transform):
    # two correct JPEG decoders differ by a fraction of a level on photos (~13 on pure
    # noise, where chroma upsampling differs), a wrong colour transform by far more.
    step = max(1, int(max(arr.shape[:2]) // 256))
    sample_diff = np.abs(arr[::step, ::step].astype(np.int16) - pil[::step, ::step].astype(np.int16)).mean()
    if sample_diff > 30.0:
        return pil
    return np.ascontiguousarray(arr)


def _sniff_orientation_mode(path: Path) -> tuple[int, str]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return _read_orientation(im), im.mode
    except Exception:
        return 0, ""


def exif_orientation(image: "Image.Image") -> int:
    """The EXIF orientation `load_image` applied to `image` (1 when none or unknown)."""
    info = getattr(image, "info", {}) or {}
    try:
        return int(info.get(INFO_ORIENTATION, 1))
    except (TypeError, ValueError):
        return 1


def is_image_file(path: PathLike) -> bool:
    """Whether a folder entry looks like an image by its extension (for folder inputs)."""
    p = Path(path)
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
