"""Face alignment: parity with the reference fixtures, real photos, several faces, no face, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error, run_e4e
from e4e_cli.alignment import (
    LANDMARKS_FILENAME,
    AlignedFace,
    FaceAligner,
    align_photo,
    face_quad,
    find_landmarks_model,
    gaussian_filter_hw,
    parse_face_choice,
    write_aligned,
)
from e4e_cli.errors import E4EError
from e4e_cli.images import load_image

skdata = pytest.importorskip("skimage.data")

# Measured on the 2-core build machine (see the report of issue 3): both fixture photos
# align identically to the reference (mean 0, max 0) in the default and the exact mode.
PARITY_MEAN, PARITY_MAX = 0.5, 8


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    """Test photos built from scikit-image's astronaut (one face) and coffee (no face)."""
    d = tmp_path_factory.mktemp("photos")
    astro = Image.fromarray(skdata.astronaut())
    out = {"dir": d, "astro_img": astro}
    astro.save(d / "astronaut.png")
    astro.save(d / "astronaut.jpg", quality=95)
    out["astronaut_png"] = d / "astronaut.png"
    out["astronaut_jpg"] = d / "astronaut.jpg"

    # Stored rotated 90 degrees counter-clockwise with EXIF orientation 6 ("rotate 90 CW to view").
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = astro.transpose(Image.Transpose.ROTATE_90)
    rotated.save(d / "rotated.png", exif=exif.tobytes())
    rotated.save(d / "rotated.jpg", exif=exif.tobytes(), quality=95)
    out["rotated_png"] = d / "rotated.png"
    out["rotated_jpg"] = d / "rotated.jpg"

    # Two faces side by side: the astronaut's head and a smaller mirrored copy.
    head = astro.crop((90, 0, 350, 260))
    two = Image.new("RGB", (640, 300), (90, 90, 100))
    two.paste(head, (10, 20))
    two.paste(head.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((220, 220), Image.Resampling.BICUBIC), (380, 50))
    two.save(d / "two_faces.png")
    out["two_faces"] = d / "two_faces.png"

    Image.fromarray(skdata.coffee()).save(d / "coffee.jpg", quality=90)
    out["coffee"] = d / "coffee.jpg"
    ramp = np.tile(np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None], (200, 1, 3))
    Image.fromarray(ramp).save(d / "gradient.png")
    out["gradient"] = d / "gradient.png"
    return out


def _diff(a, b) -> tuple:
    d = np.abs(np.asarray(a).astype(np.int16) - np.asarray(b).astype(np.int16))
    return float(d.mean()), int(d.max())


def _warp(photo: Image.Image, quad: np.ndarray, size: int = 256) -> Image.Image:
    return photo.transform((size, size), Image.Transform.QUAD, (quad + 0.5).flatten(), Image.Resampling.BILINEAR)


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def _gaussian_by_formula(img: np.ndarray, sigma: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(img, [sigma, sigma, 0]) written out from its definition:
    kernel exp(-x^2 / 2 sigma^2) on |x| <= int(4 sigma + 0.5), normalised; borders
    reflected about the pixel edge (d c b a | a b c d | d c b a); rows first, the
    intermediate stored in the input's dtype."""
    r = int(4.0 * sigma + 0.5)
    x = np.arange(-r, r + 1)
    k = np.exp(-0.5 * x * x / sigma**2)
    k /= k.sum()

    def reflect(i: int, n: int) -> int:
        period = 2 * n
        i %= period
        return i if i < n else period - 1 - i

    h, w = img.shape[:2]
    rows = np.array([[reflect(y + o, h) for o in x] for y in range(h)])
    cols = np.array([[reflect(c + o, w) for o in x] for c in range(w)])
    tmp = np.einsum("k,ykwc->ywc", k, img.astype(np.float64)[rows]).astype(img.dtype)
    return np.einsum("k,ywkc->ywc", k, tmp.astype(np.float64)[:, cols]).astype(img.dtype)


@pytest.mark.parametrize("shape,sigma", [((37, 53, 3), 2.3), ((20, 9, 3), 4.1), ((64, 300, 3), 0.7), ((300, 7, 3), 11.0)])
def test_gaussian_filter_matches_scipy_definition(shape, sigma):
    rng = np.random.default_rng(3)
    img = (rng.random(shape) * 255).astype(np.float32)
    ours = gaussian_filter_hw(img, sigma)
    assert ours.dtype == np.float32 and ours.shape == img.shape
    np.testing.assert_allclose(ours, _gaussian_by_formula(img, sigma), rtol=0, atol=1e-4)
    # A constant image stays constant (weights sum to 1, reflection keeps values).
    const = np.full(shape, 77.0, np.float32)
    np.testing.assert_allclose(gaussian_filter_hw(const, sigma), const, atol=1e-4)


def test_face_quad_geometry():
    lm = np.zeros((68, 2))
    lm[36:42] = (100.0, 100.0)
    lm[42:48] = (160.0, 100.0)
    lm[48] = (110.0, 170.0)
    lm[54] = (150.0, 170.0)
    quad, qsize = face_quad(lm)
    # eye_to_eye = (60, 0), eye_to_mouth = (0, 70): x = (60, 0) normalised * max(120, 126)
    assert qsize == pytest.approx(2 * 126.0)
    c = np.array([130.0, 107.0])
    np.testing.assert_allclose(quad, [c + (-126, -126), c + (-126, 126), c + (126, 126), c + (126, -126)])


def test_parse_face_choice():
    assert parse_face_choice("largest") == "largest"
    assert parse_face_choice(" ALL ") == "all"
    assert parse_face_choice("2") == 2 and parse_face_choice(0) == 0
    for bad in ("-1", "first", "1.5", "", -3, True):
        with pytest.raises(E4EError):
            parse_face_choice(bad)


def test_find_landmarks_model(tmp_path, monkeypatch):
    packaged = find_landmarks_model(weights_dir=tmp_path)
    assert packaged.name == LANDMARKS_FILENAME and packaged.is_file()
    assert "face_recognition_models" in str(packaged)
    # The weights folder wins over the packaged file, an explicit path over both.
    (tmp_path / LANDMARKS_FILENAME).write_bytes(b"x")
    assert find_landmarks_model(weights_dir=tmp_path) == tmp_path / LANDMARKS_FILENAME
    explicit = tmp_path / "mine.dat"
    explicit.write_bytes(b"x")
    assert find_landmarks_model(explicit, weights_dir=tmp_path) == explicit
    with pytest.raises(E4EError, match="does not exist"):
        find_landmarks_model(tmp_path / "missing.dat")
    # Nothing anywhere: a clear message.
    import e4e_cli.alignment as alignment

    monkeypatch.setattr(alignment, "_packaged_landmarks_model", lambda: None)
    with pytest.raises(E4EError, match="not found") as info:
        find_landmarks_model(weights_dir=tmp_path / "empty")
    assert "\n" not in str(info.value)
    # A file that is not a dlib model.
    with pytest.raises(E4EError, match="cannot be loaded"):
        FaceAligner(landmarks=explicit)


# --------------------------------------------------------------------------------------
# Parity with the reference fixtures
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("exact", [False, True])
def test_parity_fixture_photo(parity_dir, aligner, exact):
    expected = np.load(parity_dir / "cases" / "ffhq_1024_s1.npz")["aligned"]
    (res,) = align_photo(parity_dir / "images" / "input_img.jpg", aligner=aligner, exact=exact)
    assert res.image.size == (256, 256) and res.image.mode == "RGB"
    mean, mx = _diff(res.image, expected)
    assert mean <= PARITY_MEAN and mx <= PARITY_MAX, (mean, mx)
    assert res.n_faces == 1 and res.photo_size == (1024, 1024)


@pytest.fixture(scope="module")
def large_results(parity_dir, aligner):
    path = parity_dir / "images" / "large_photo.jpg"
    fast = align_photo(path, aligner=aligner)[0]
    exact = align_photo(path, aligner=aligner, exact=True)[0]
    return fast, exact


def test_parity_large_photo_exact(parity_dir, large_results):
    expected = np.load(parity_dir / "cases" / "align_large_photo.npz")["aligned"]
    mean, mx = _diff(large_results[1].image, expected)
    assert mean <= PARITY_MEAN and mx <= PARITY_MAX, (mean, mx)


def test_large_photo_fast_mode(parity_dir, large_results):
    # The fast mode detects on a reduced copy; it traces each detection back to dlib's
    # window on the full-size pyramid, so it matches the reference too (measured: 0/0).
    expected = np.load(parity_dir / "cases" / "align_large_photo.npz")["aligned"]
    fast, exact = large_results
    mean, mx = _diff(fast.image, expected)
    assert mean <= PARITY_MEAN and mx <= PARITY_MAX, (mean, mx)
    assert fast.rect == exact.rect
    assert fast.photo_size == (4000, 3000)


def test_quad_maps_back_to_the_photo(parity_dir, aligner, large_results):
    """Warping the full-size photo with the returned quad gives the aligned face: the quad
    is right in original pixel coordinates despite the shrink, crop and pad steps."""
    small = parity_dir / "images" / "input_img.jpg"
    (res,) = align_photo(small, aligner=aligner)
    warped = _warp(load_image(small), res.quad)
    mean, _ = _diff(warped, res.image)
    assert mean < 3.0, mean  # measured 1.2 (the pad/blur fill vs black outside the photo)
    inner_mean, _ = _diff(np.asarray(warped)[40:216, 40:216], np.asarray(res.image)[40:216, 40:216])
    assert inner_mean < 0.5, inner_mean

    large = parity_dir / "images" / "large_photo.jpg"
    fast = large_results[0]
    mean, _ = _diff(_warp(load_image(large), fast.quad), fast.image)
    assert mean < 3.0, mean  # measured 0.8 (bilinear on the full photo vs Lanczos shrink)
    # Landmarks are in photo coordinates: the eyes lie inside the quad's top half.
    eyes = fast.landmarks[36:48].mean(axis=0)
    assert fast.quad[:, 0].min() < eyes[0] < fast.quad[:, 0].max()
    assert fast.quad[:, 1].min() < eyes[1] < fast.quad[:, 1].mean()


# --------------------------------------------------------------------------------------
# Real photos: astronaut, EXIF rotation, two faces, no face
# --------------------------------------------------------------------------------------


def test_astronaut_aligns(aligner, photos):
    (res,) = align_photo(photos["astronaut_png"], aligner=aligner)
    assert isinstance(res, AlignedFace)
    assert res.image.size == (256, 256)
    # dlib's HOG detector also reports a weak false face on the suit; 'largest' picks the
    # real one (rect around the head at x 175..265, y 76..166).
    left, top, right, bottom = res.rect
    assert 150 < left < 200 and 50 < top < 100 and right - left > 70
    eyes = res.landmarks[36:48].mean(axis=0)
    assert 190 < eyes[0] < 250 and 90 < eyes[1] < 140
    # The eyes of the aligned face are level and where FFHQ puts them.
    a = np.asarray(res.image.convert("L"), np.float32)
    assert a.std() > 20
    # The JPEG copy (quality 95) moves the landmarks by about a pixel: measured mean 3.1.
    (jpg,) = align_photo(photos["astronaut_jpg"], aligner=aligner)
    assert _diff(jpg.image, res.image)[0] < 6.0


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_exif_rotated_copy(aligner, photos, fmt):
    (plain,) = align_photo(photos[f"astronaut_{fmt}"], aligner=aligner)
    (rot,) = align_photo(photos[f"rotated_{fmt}"], aligner=aligner)
    assert rot.photo_size == (512, 512) and rot.exif_orientation == 6
    mean, _ = _diff(rot.image, plain.image)
    if fmt == "png":  # same pixels after EXIF transpose: identical result
        assert mean == 0.0
        np.testing.assert_allclose(rot.quad, plain.quad, atol=1e-9)
    else:  # JPEG compression of the rotated blocks differs: measured mean 3.7
        assert mean < 6.0, mean
        np.testing.assert_allclose(rot.quad, plain.quad, atol=3.0)
    # The quad is in upright coordinates: warping the upright photo reproduces the face.
    upright = load_image(photos[f"rotated_{fmt}"])
    assert _diff(_warp(upright, rot.quad), rot.image)[0] < 3.0
    # ... and maps to the stored (rotated) pixels by the inverse of the EXIF rotation:
    # upright (x, y) is stored (y, W-1-x) for orientation 6 stored with ROTATE_90.
    stored = Image.open(photos[f"rotated_{fmt}"]).convert("RGB")
    w = upright.size[0]
    q_stored = np.stack([rot.quad[:, 1], (w - 1) - rot.quad[:, 0]], axis=1)
    assert _diff(_warp(stored, q_stored), rot.image)[0] < 3.0


def test_two_faces(aligner, photos):
    path = photos["two_faces"]
    (largest,) = align_photo(path, aligner=aligner)
    assert largest.n_faces == 2 and largest.face_index == 0  # the left one is bigger
    both = align_photo(path, aligner=aligner, face="all")
    assert [r.face_index for r in both] == [0, 1] and all(r.n_faces == 2 for r in both)
    centres = [(r.rect[0] + r.rect[2]) / 2 for r in both]
    assert centres[0] < 320 < centres[1]  # numbered left to right
    (second,) = align_photo(path, aligner=aligner, face=1)
    assert second.rect == both[1].rect and second.face_index == 1
    assert _diff(second.image, both[1].image)[0] == 0.0
    assert _diff(both[0].image, largest.image)[0] == 0.0
    # The two aligned faces are mirror images of each other (up to the resize).
    assert _diff(both[0].image, both[1].image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))[0] < 12
    with pytest.raises(E4EError, match="only 2 faces") as info:
        align_photo(path, aligner=aligner, face=2)
    assert str(path) in str(info.value)


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_fast_detection_agrees_with_full_size_detection(aligner, photos):
    """Above 1024 px the detector runs on a pyramid-reduced copy and traces each window
    back to the full-size pyramid. The big face comes out identical to the full-size
    (reference) detection; the small weak one (score 0.66) lands one pyramid level off,
    a near tie that only the exact mode reproduces."""
    two = Image.open(photos["two_faces"]).resize((1600, 750), Image.Resampling.BICUBIC)
    pixels = np.asarray(two)
    assert aligner.pyramid_levels(1600, 750) == 3
    fast = sorted(aligner.detect(pixels))
    full = sorted(aligner.detect(pixels, exact=True))
    assert len(fast) == len(full) == 2
    assert fast[0] == full[0]
    assert all(_iou(a, b) > 0.5 for a, b in zip(fast, full)), (fast, full)


@pytest.mark.parametrize("name", ["coffee", "gradient"])
def test_no_face(aligner, photos, name):
    with pytest.raises(E4EError) as info:
        align_photo(photos[name], aligner=aligner)
    msg = str(info.value)
    assert msg == f"no face found in {photos[name]}"


def test_tiny_and_unreadable(aligner, tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4)).save(tiny)
    with pytest.raises(E4EError, match="too small") as info:
        align_photo(tiny, aligner=aligner)
    assert str(tiny) in str(info.value)
    bad = tmp_path / "bad.jpg"
    bad.write_text("hello")
    with pytest.raises(E4EError, match="not an image"):
        align_photo(bad, aligner=aligner)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA"])
def test_other_modes_align(aligner, photos, tmp_path, mode):
    img = photos["astro_img"].convert(mode)
    p = tmp_path / ("a.jpg" if mode in ("L", "CMYK") else "a.png")
    img.save(p)
    (res,) = align_photo(p, aligner=aligner)
    assert res.image.mode == "RGB" and res.image.size == (256, 256)
    assert 150 < res.rect[0] < 200


def test_output_size_and_bad_size(aligner, photos):
    (res,) = align_photo(photos["astronaut_png"], aligner=aligner, output_size=128)
    assert res.image.size == (128, 128) and res.output_size == 128
    with pytest.raises(E4EError):
        align_photo(photos["astronaut_png"], aligner=aligner, output_size=4)


def test_write_aligned(aligner, photos, tmp_path):
    (res,) = align_photo(photos["astronaut_png"], aligner=aligner)
    png, js = write_aligned(res, tmp_path / "out", "astro", multi=False)
    assert png == tmp_path / "out" / "astro.png" and js == tmp_path / "out" / "astro.json"
    assert Image.open(png).size == (256, 256)
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(res.image))
    data = json.loads(js.read_text())
    for key in ("source", "photo_size", "quad", "landmarks", "rect", "face_index", "n_faces", "output_size", "exif_orientation"):
        assert key in data, key
    assert data["photo_size"] == [512, 512] and data["output_size"] == 256
    assert np.allclose(data["quad"], res.quad) and len(data["landmarks"]) == 68
    assert Path(data["source"]) == photos["astronaut_png"].resolve()
    assert not list((tmp_path / "out").glob("*.part"))
    both = align_photo(photos["two_faces"], aligner=aligner, face="all")
    names = sorted(write_aligned(r, tmp_path / "out", "two", multi=True)[0].name for r in both)
    assert names == ["two_face0.png", "two_face1.png"]


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def test_cli_align_batch(photos, tmp_path):
    out = tmp_path / "aligned"
    proc = run_e4e("align", photos["coffee"], photos["astronaut_png"], "--out", out, timeout=300)
    # The good photo is done even though the first one has no face; exit 1 for the failure.
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (out / "astronaut.png").is_file() and (out / "astronaut.json").is_file()
    assert Image.open(out / "astronaut.png").size == (256, 256)
    assert not (out / "coffee.png").exists()
    assert_one_line_error(proc, "coffee.jpg", "no face")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("e4e: error:")]
    assert len(errors) == 1 and errors[0] == f"e4e: error: {photos['coffee']}: no face found"
    # dlib also reports a weak false face on the astronaut's suit; the largest is aligned.
    assert "faces found, aligned the largest" in proc.stdout and "aligned 1 of 2" in proc.stdout


def test_cli_align_all_faces_and_folder(photos, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(photos["two_faces"]).save(folder / "group.png")
    (folder / "readme.txt").write_text("not a photo")
    out = tmp_path / "out"
    proc = run_e4e("align", folder, "--out", out, "--face", "all", "--size", "128", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["group_face0.json", "group_face0.png", "group_face1.json", "group_face1.png"]
    assert Image.open(out / "group_face1.png").size == (128, 128)
    data = json.loads((out / "group_face1.json").read_text())
    assert data["face_index"] == 1 and data["n_faces"] == 2
    assert "2 faces found" in proc.stdout

    bad = run_e4e("align", photos["astronaut_png"], "--face", "leftmost", "--out", out, timeout=300)
    assert_one_line_error(bad, "--face", "leftmost")


# ---- the geometry, from SPEC's formulas written out here ----------------------------------


def _spec_quad(lm):
    """SPEC "Face alignment", term by term."""
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg, e2e = (eye_l + eye_r) / 2, eye_r - eye_l
    e2m = (lm[48] + lm[54]) / 2 - eye_avg
    x = e2e - np.array([-e2m[1], e2m[0]])  # flipud(e2m) * [-1, 1]
    x = x / np.linalg.norm(x) * max(np.linalg.norm(e2e) * 2.0, np.linalg.norm(e2m) * 1.8)
    y = np.array([-x[1], x[0]])
    c = eye_avg + 0.1 * e2m
    return np.array([c - x - y, c - x + y, c + x + y, c + x - y]), 2 * np.linalg.norm(x)


def test_face_near_the_border_pads_as_spec_says():
    """A face whose square sticks out of the photo's top-left: the quad, the margin and the pad
    amounts equal SPEC's formulas evaluated here; the pad branch runs; inside the photo the
    aligned image samples the photo where the quad says (a linear ramp, which bilinear
    resampling reproduces exactly)."""
    from e4e_cli import alignment

    w, h = 300, 240
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    ramp = np.stack([xs * 0.5, ys * 0.8, 100 + 0 * xs], axis=-1).astype(np.uint8)
    photo = Image.fromarray(ramp, "RGB")
    lm = np.zeros((68, 2))
    lm[36:42] = [30.0, 40.0]
    lm[42:48] = [70.0, 42.0]
    lm[48], lm[54] = [38.0, 95.0], [66.0, 96.0]

    quad, qsize = alignment.face_quad(lm)
    want_quad, want_qsize = _spec_quad(lm)
    np.testing.assert_allclose(quad, want_quad, rtol=0, atol=1e-9)
    assert qsize == pytest.approx(want_qsize, rel=1e-12)

    work = alignment._Working(photo, quad, qsize)
    work.shrink(256)
    assert work.image.size == (w, h), "a small face is not shrunk"
    margin = work.margin()
    assert margin == max(int(np.rint(0.1 * want_qsize)), 3)
    box = (np.floor(want_quad.min(0)), np.ceil(want_quad.max(0)))
    need = (max(margin - box[0][0], 0), max(margin - box[0][1], 0), max(box[1][0] - w + margin, 0), max(box[1][1] - h + margin, 0))
    work.crop(margin)  # the box reaches past the top-left: the crop keeps the photo's origin
    assert work.overhang(margin) == tuple(int(v) for v in need)
    assert max(need) > margin - 4, "this face must take the pad branch"

    aligned, photo_quad = alignment._transform(photo, lm, 256)
    np.testing.assert_allclose(photo_quad, want_quad, atol=1e-6)  # reported in the photo's coordinates
    # a pixel well inside the photo: the quad's centre maps to the output's centre
    centre = want_quad.mean(0)
    assert 0 < centre[0] < w - 1 and 0 < centre[1] < h - 1
    got = np.asarray(aligned, dtype=np.float64)[128, 128]
    exp = [centre[0] * 0.5, centre[1] * 0.8, 100]
    assert np.abs(got - exp).max() <= 2.0, (got, exp)
