"""The robust photo loader: every colour mode, EXIF orientation, and every way a file can be bad."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from e4e_cli.errors import E4EError
from e4e_cli.images import (
    INFO_FORMAT,
    INFO_MODE,
    INFO_ORIENTATION,
    MAX_PIXELS,
    detection_pixels,
    exif_orientation,
    load_image,
    pil_to_uint8,
)

W, H = 40, 30


def _rgb_pattern(w: int = W, h: int = H) -> np.ndarray:
    """Distinct corners: red top-left, green top-right, blue bottom-left, white bottom-right."""
    a = np.full((h, w, 3), 128, np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2 :] = (0, 255, 0)
    a[h // 2 :, : w // 2] = (0, 0, 255)
    a[h // 2 :, w // 2 :] = (255, 255, 255)
    return a


def _check_rgb(img: Image.Image, size=(W, H)) -> np.ndarray:
    assert img.mode == "RGB"
    assert img.size == size
    arr = pil_to_uint8(img)
    assert arr.dtype == np.uint8 and arr.shape == (size[1], size[0], 3) and arr.flags["C_CONTIGUOUS"]
    return arr


def _save(tmp_path: Path, name: str, img: Image.Image, **kw) -> Path:
    p = tmp_path / name
    img.save(p, **kw)
    return p


# --------------------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------------------


def test_rgb_jpeg_and_png(tmp_path):
    src = Image.fromarray(_rgb_pattern())
    opts = {"a.jpg": {"quality": 95}, "a.webp": {"lossless": True}}
    for name in ("a.png", "a.jpg", "a.bmp", "a.tif", "a.webp"):
        img = load_image(_save(tmp_path, name, src, **opts.get(name, {})))
        arr = _check_rgb(img)
        assert np.abs(arr.astype(int) - _rgb_pattern()).mean() < 8
    png = load_image(tmp_path / "a.png")
    assert np.array_equal(pil_to_uint8(png), _rgb_pattern())
    assert png.info[INFO_FORMAT] == "PNG" and png.info[INFO_MODE] == "RGB" and png.info[INFO_ORIENTATION] == 1


@pytest.mark.parametrize("mode", ["L", "1", "P"])
def test_gray_bilevel_palette(tmp_path, mode):
    src = Image.fromarray(_rgb_pattern()).convert(mode)
    img = load_image(_save(tmp_path, f"m.{'png'}", src))
    arr = _check_rgb(img)
    expect = np.asarray(src.convert("RGB"))
    assert np.array_equal(arr, expect)
    if mode != "P":
        assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


def test_rgba_is_composited_on_white(tmp_path):
    a = np.zeros((H, W, 4), np.uint8)
    a[..., 0] = 200  # red-ish
    a[:, : W // 2, 3] = 0  # left half fully transparent
    a[:, W // 2 :, 3] = 255  # right half opaque
    a[0, -1, 3] = 128  # one half-transparent pixel
    img = load_image(_save(tmp_path, "rgba.png", Image.fromarray(a, "RGBA")))
    arr = _check_rgb(img)
    assert (arr[:, : W // 2] == 255).all()  # transparent -> white
    assert tuple(arr[H // 2, -2]) == (200, 0, 0)
    assert 220 <= arr[0, -1, 0] <= 230 and 120 <= arr[0, -1, 1] <= 135  # blended


def test_la_and_pa_and_palette_transparency(tmp_path):
    la = np.zeros((H, W, 2), np.uint8)
    la[..., 0] = 50
    la[:, W // 2 :, 1] = 255
    img = load_image(_save(tmp_path, "la.png", Image.fromarray(la, "LA")))
    arr = _check_rgb(img)
    assert (arr[:, : W // 2] == 255).all() and (arr[:, W // 2 :] == 50).all()

    pal = Image.new("P", (W, H), 0)
    pal.putpalette([10, 20, 30] + [200, 100, 50] * 255)
    pal.paste(1, (0, 0, W // 2, H))
    p = tmp_path / "pt.png"
    pal.save(p, transparency=0)  # index 0 transparent
    arr = _check_rgb(load_image(p))
    assert tuple(arr[0, 0]) == (200, 100, 50) and tuple(arr[0, -1]) == (255, 255, 255)

    pa = pal.convert("PA")
    alpha = Image.new("L", (W, H), 255)
    alpha.paste(0, (W // 2, 0, W, H))
    pa.putalpha(alpha)
    assert pa.mode == "PA"
    arr = _check_rgb(load_image(_save(tmp_path, "pa.webp", pa.convert("RGBA"), lossless=True)))
    assert tuple(arr[0, -1]) == (255, 255, 255)
    # A PA-mode image handed over in memory goes through the same conversion.
    from e4e_cli.images import _to_rgb8

    assert tuple(np.asarray(_to_rgb8(pa, ""))[0, -1]) == (255, 255, 255)

    gif = _save(tmp_path, "t.gif", pal, transparency=0)
    arr = _check_rgb(load_image(gif))
    assert tuple(arr[0, -1]) == (255, 255, 255) and tuple(arr[0, 0]) == (200, 100, 50)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.zeros((H, W), np.uint16)
    ramp[0, :4] = [0, 257, 32768, 65535]
    ramp[1:, :] = 40000
    p = tmp_path / "g16.png"
    Image.fromarray(ramp).save(p)
    assert Image.open(p).mode in ("I;16", "I")
    arr = _check_rgb(load_image(p))
    assert list(arr[0, :4, 0]) == [0, 1, 128, 255]
    assert arr[5, 5, 0] == round(40000 / 257)
    assert load_image(p).info[INFO_MODE] in ("I;16", "I")


def test_32bit_and_float_tiff(tmp_path):
    i32 = np.zeros((H, W), np.int32)
    i32[:, W // 2 :] = 65535
    arr = _check_rgb(load_image(_save(tmp_path, "i32.tif", Image.fromarray(i32, "I"))))
    assert arr[0, 0, 0] == 0 and arr[0, -1, 0] == 255
    f = np.zeros((H, W), np.float32)
    f[:, W // 2 :] = 1.0
    f[0, 0] = 0.5
    arr = _check_rgb(load_image(_save(tmp_path, "f.tif", Image.fromarray(f, "F"))))
    assert arr[0, -1, 0] == 255 and arr[0, 0, 0] == 128 and arr[1, 0, 0] == 0


def test_cmyk_jpeg(tmp_path):
    src = Image.fromarray(_rgb_pattern()).convert("CMYK")
    p = _save(tmp_path, "cmyk.jpg", src, quality=95)
    assert Image.open(p).mode == "CMYK"
    img = load_image(p)
    arr = _check_rgb(img)
    assert img.info[INFO_MODE] == "CMYK"
    assert np.abs(arr.astype(int) - np.asarray(src.convert("RGB")).astype(int)).mean() < 6
    # The detector sees Pillow's decoding for a CMYK JPEG.
    assert np.array_equal(detection_pixels(p, img), arr)


def test_multiframe_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (W, H), c) for c in ((255, 0, 0), (0, 255, 0))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    arr = _check_rgb(load_image(p))
    assert tuple(arr[3, 3]) == (255, 0, 0)


# --------------------------------------------------------------------------------------
# EXIF orientation
# --------------------------------------------------------------------------------------

# How to store an upright image so that orientation tag N displays it upright again.
_STORE_FOR = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_exif_orientation_is_honoured(tmp_path, orientation, fmt):
    upright = Image.fromarray(_rgb_pattern())
    op = _STORE_FOR[orientation]
    stored = upright.transpose(op) if op is not None else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / f"o{orientation}.{fmt}"
    stored.save(p, exif=exif.tobytes(), **({"quality": 95} if fmt == "jpg" else {}))
    img = load_image(p)
    arr = _check_rgb(img)
    assert exif_orientation(img) == orientation
    tol = 40 if fmt == "jpg" else 0
    for (y, x), colour in {
        (2, 2): (255, 0, 0),
        (2, W - 3): (0, 255, 0),
        (H - 3, 2): (0, 0, 255),
        (H - 3, W - 3): (255, 255, 255),
    }.items():
        assert np.abs(arr[y, x].astype(int) - colour).max() <= tol, (orientation, (y, x), arr[y, x])
    # Same as Pillow's own ImageOps.exif_transpose.
    from PIL import ImageOps

    with Image.open(p) as raw:
        assert np.array_equal(arr, np.asarray(ImageOps.exif_transpose(raw).convert("RGB")))
    pix = detection_pixels(p, img)
    assert pix.shape == arr.shape and np.abs(pix.astype(int) - arr).mean() < 3


def test_broken_exif_is_ignored(tmp_path):
    p = _save(tmp_path, "x.jpg", Image.fromarray(_rgb_pattern()))
    data = p.read_bytes()
    # An APP1 "Exif" segment full of garbage right after SOI.
    junk = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08\xff\xff" + b"\x07" * 40
    seg = b"\xff\xe1" + struct.pack(">H", len(junk) + 2) + junk
    p.write_bytes(data[:2] + seg + data[2:])
    img = load_image(p)
    _check_rgb(img)
    assert exif_orientation(img) == 1


# --------------------------------------------------------------------------------------
# Detection pixels
# --------------------------------------------------------------------------------------


def test_detection_pixels_uses_dlib_decoding_for_plain_jpeg(tmp_path):
    dlib = pytest.importorskip("dlib")
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    p = _save(tmp_path, "n.jpg", Image.fromarray(noisy), quality=70)
    img = load_image(p)
    pix = detection_pixels(p, img)
    assert np.array_equal(pix, dlib.load_rgb_image(str(p)))
    # For a PNG both decoders agree and Pillow's pixels are used.
    q = _save(tmp_path, "n.png", Image.fromarray(noisy))
    assert np.array_equal(detection_pixels(q, load_image(q)), noisy)
    # An image that did not come from load_image: the file is sniffed.
    assert np.array_equal(detection_pixels(p, Image.open(p).convert("RGB")), pix)


# --------------------------------------------------------------------------------------
# Bad inputs: one-line E4EError naming the file
# --------------------------------------------------------------------------------------


def _assert_refused(path: Path, *needles: str, **kw) -> str:
    with pytest.raises(E4EError) as info:
        load_image(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    for n in needles:
        assert n.lower() in msg.lower(), msg
    return msg


def test_missing_file_and_folder(tmp_path):
    _assert_refused(tmp_path / "nope.jpg", "no such file")
    _assert_refused(tmp_path, "folder")


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n" * 10)
    _assert_refused(p, "not an image")
    e = tmp_path / "empty.png"
    e.write_bytes(b"")
    _assert_refused(e, "not an image")


def test_truncated_jpeg_and_png(tmp_path):
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    for name in ("t.jpg", "t.png"):
        full = io.BytesIO()
        img.save(full, format="JPEG" if name.endswith("jpg") else "PNG")
        p = tmp_path / name
        p.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
        _assert_refused(p, "truncated")


def test_corrupt_png_data(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_rgb_pattern()).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    idat = data.find(b"IDAT")
    for i in range(idat + 8, idat + 30):
        data[i] ^= 0x5A
    p = tmp_path / "bad.png"
    p.write_bytes(bytes(data))
    _assert_refused(p)


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG with a valid IHDR claiming w x h and a tiny IDAT: a decompression-bomb shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_decompression_bombs_refused_before_decoding(tmp_path):
    big = tmp_path / "bomb.png"
    big.write_bytes(_png_header_only(11_000, 10_000))  # 110 Mpx: above our limit, below Pillow's
    msg = _assert_refused(big, "megapixel", "decompression bomb")
    assert "110" in msg
    huge = tmp_path / "bomb2.png"
    huge.write_bytes(_png_header_only(50_000, 50_000))  # Pillow's own error
    _assert_refused(huge, "decompression bomb")
    # The limit is a parameter.
    ok = _save(tmp_path, "small.png", Image.fromarray(_rgb_pattern()))
    _assert_refused(ok, "megapixel", max_pixels=100)
    assert MAX_PIXELS == 100_000_000


# --------------------------------------------------------------------------------------
# Fuzz: garbage never escapes as anything but E4EError, and never hangs
# --------------------------------------------------------------------------------------

_HEADERS = [
    b"",
    b"\xff\xd8\xff\xe0",  # JPEG
    b"\xff\xd8\xff\xdb",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"P6\n",
    b"P5\n4 4\n65535\n",
]


@st.composite
def _garbage_files(draw) -> bytes:
    kind = draw(st.sampled_from(["raw", "header", "png_ihdr", "gif_lsd", "mutated"]))
    tail = draw(st.binary(min_size=0, max_size=600))
    if kind == "raw":
        return tail
    if kind == "header":
        return draw(st.sampled_from(_HEADERS)) + tail
    if kind == "png_ihdr":
        w = draw(st.integers(0, 70_000))
        h = draw(st.integers(0, 70_000))
        depth = draw(st.sampled_from([1, 2, 4, 8, 16, 3, 0]))
        ctype = draw(st.sampled_from([0, 2, 3, 4, 6, 1, 7]))
        body = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, draw(st.integers(0, 1)))
        crc = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
        return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + body + crc + tail
    if kind == "gif_lsd":
        w = draw(st.integers(0, 65535))
        h = draw(st.integers(0, 65535))
        return b"GIF89a" + struct.pack("<HH", w, h) + tail
    # mutate a real small image
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF"]))
    buf = io.BytesIO()
    Image.fromarray(_rgb_pattern(16, 12)).save(buf, format=fmt)
    data = bytearray(buf.getvalue())
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[:cut])


@settings(
    max_examples=200,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(data=_garbage_files(), suffix=st.sampled_from([".jpg", ".png", ".gif", ".bin"]))
def test_fuzz_garbage_only_raises_e4eerror(tmp_path, data, suffix):
    p = tmp_path / f"fuzz{suffix}"
    p.write_bytes(data)
    try:
        img = load_image(p)
    except E4EError as exc:
        msg = str(exc)
        assert "\n" not in msg and str(p) in msg
        return
    assert img.mode == "RGB" and img.size[0] > 0 and img.size[1] > 0
    assert pil_to_uint8(img).shape == (img.size[1], img.size[0], 3)
