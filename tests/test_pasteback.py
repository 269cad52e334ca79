"""Paste-back (`e4e_cli.jobs.pasteback`): the generated face goes back into the original photo.

Real photos (skimage's astronaut and the parity sample photo), the real aligner, and a
synthetic "generated face": the aligned face itself upscaled to 1024 (so that the photo's
landmarks stay put and a round trip can be measured) or a colour-shifted copy of it (so
that "the face was replaced, and only the face" is visible pixel by pixel).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PARITY, run_e4e
from e4e_cli.errors import E4EError
from e4e_cli.compositing import paste_face, paste_face_info
from e4e_cli.jobs.pasteback import NO_ALIGNMENT, paste_back_edits, paste_back_inversions

dlib = pytest.importorskip("dlib")
skdata = pytest.importorskip("skimage.data")

from e4e_cli.alignment import align_photo  # noqa: E402
from e4e_cli.images import load_image  # noqa: E402

SHIFT = np.array([60, -45, 35])  # what the "generated" face adds to the aligned one
PARITY_PHOTO = PARITY / "images" / "input_img.jpg"

# Measured on these photos and set a little above (gray levels, 0..255).
ROUNDTRIP_MEAN = 4.0  # re-aligning the pasted photo vs the generated face (measured 1.4-3.1)
SAME_QUAD_CORE = 2.5  # warping the paste back with the same quad, inside the inner face (measured 1.3-1.8)


# --------------------------------------------------------------------------------------
# helpers


def generated(face: Image.Image, shift: bool) -> Image.Image:
    """A 1024 "generated face": the aligned face upscaled, optionally colour-shifted."""
    big = face.resize((1024, 1024), Image.Resampling.LANCZOS)
    if not shift:
        return big
    return Image.fromarray(np.clip(np.asarray(big, np.int16) + SHIFT, 0, 255).astype(np.uint8))


def unit_coords(quad, width: int, height: int) -> np.ndarray:
    """(s, t) in the aligned square's unit coordinates of every photo pixel centre [H, W, 2]."""
    q = np.asarray(quad, np.float64)
    a = np.stack([q[3] - q[0], q[1] - q[0]], axis=1)
    ys, xs = np.mgrid[0:height, 0:width]
    p = np.stack([xs, ys], axis=-1).reshape(-1, 2) - q[0]
    return np.linalg.solve(a, p.T).T.reshape(height, width, 2)


def changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return (np.asarray(a, np.int16) != np.asarray(b, np.int16)).any(axis=-1)


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def inner_face(lm, width: int, height: int, shrink: float = 0.9, points=slice(17, 68)) -> np.ndarray:
    """Pixels inside the hull of the inner-face landmarks (brows, eyes, nose, mouth), shrunk 10%."""
    from PIL import ImageDraw

    pts = np.asarray(lm, np.float64)[points]
    c = pts.mean(axis=0)
    pts = c + (pts - c) * shrink
    from scipy.spatial import ConvexHull

    hull = pts[ConvexHull(pts).vertices]
    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in hull.tolist()], fill=1)
    return np.asarray(img, bool)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    """name -> path: the astronaut (PNG), the parity sample photo, and variants of the astronaut."""
    d = tmp_path_factory.mktemp("photos")
    astro = Image.fromarray(skdata.astronaut())
    out = {"astronaut": d / "astronaut.png"}
    astro.save(out["astronaut"])
    if PARITY_PHOTO.is_file():
        out["parity"] = PARITY_PHOTO
    # rotated by 20 degrees (counter-clockwise), canvas expanded
    out["rotated"] = d / "rotated.png"
    astro.rotate(20, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(128, 128, 128)).save(out["rotated"])
    # off-centre: a bigger canvas, the astronaut at an offset
    canvas = Image.new("RGB", (1500, 1100), (90, 110, 100))
    canvas.paste(astro, OFFSET)
    out["offset"] = d / "offset.png"
    canvas.save(out["offset"])
    # the face near the photo's top-left corner: its crop square sticks out of the photo
    corner = Image.new("RGB", (700, 560), (90, 110, 100))
    corner.paste(astro, CORNER_OFFSET)
    out["corner"] = d / "corner.png"
    corner.save(out["corner"])
    # EXIF-rotated JPEG: stored sideways, orientation 6 says "turn 90 degrees clockwise to view"
    exif = Image.Exif()
    exif[0x0112] = 6
    out["exif"] = d / "exif.jpg"
    astro.transpose(Image.Transpose.ROTATE_90).save(out["exif"], quality=95, exif=exif.tobytes())
    return out


OFFSET = (820, 430)
CORNER_OFFSET = (-150, -40)


@pytest.fixture(scope="module")
def aligned(photos) -> dict:
    """name -> (upright photo, AlignedFace)."""
    return {name: (load_image(p), align_photo(p)[0]) for name, p in photos.items()}


def _names(*names):
    return [n for n in names if n != "parity" or PARITY_PHOTO.is_file()]


# --------------------------------------------------------------------------------------
# the face is replaced, and nothing else


@pytest.mark.parametrize("name", _names("astronaut", "parity", "rotated", "offset", "corner", "exif"))
def test_outside_unchanged_inside_replaced(aligned, name):
    photo, face = aligned[name]
    out = paste_face(photo, generated(face.image, shift=True), face.quad, landmarks=face.landmarks)
    assert out.size == photo.size and out.mode == "RGB"
    w, h = photo.size
    diff = changed(photo, out)
    st = unit_coords(face.quad, w, h)
    # outside the crop square (dilated by 2 px) nothing changes, bit for bit
    q = np.asarray(face.quad)
    ys, xs = np.mgrid[0:h, 0:w]
    in_box = ((xs >= q[:, 0].min() - 2) & (xs <= q[:, 0].max() + 2) & (ys >= q[:, 1].min() - 2) & (ys <= q[:, 1].max() + 2))
    assert not diff[~in_box].any()
    # inside the square, the background beside and above the face is untouched too (the
    # square's left and top 10%, right 5%; at the bottom, where the chin nearly touches the
    # square's edge, the mask fades out over the neck and reaches zero at the edge)
    s, t = st[..., 0], st[..., 1]
    band = (s < 0.10) | (s > 0.95) | (t < 0.10) | (t > 0.997)
    assert not diff[band].any()
    # and so is everything far from the face's landmarks (more than 30% of the square's side)
    from scipy.ndimage import distance_transform_edt

    side = float(np.hypot(*(q[3] - q[0])))
    hull = inner_face(face.landmarks, w, h, shrink=1.0, points=slice(0, 68))
    far = distance_transform_edt(~hull) > 0.3 * side
    assert far.sum() > 0.1 * w * h
    assert not diff[far].any()
    np.testing.assert_array_equal(np.asarray(out)[~diff], np.asarray(photo)[~diff])
    # the mask follows the face: it changes well under the square's area
    assert diff.sum() < 0.55 * side * side
    # inside the face the generated (shifted) face replaced the photo
    core = inner_face(face.landmarks, w, h)
    assert core.sum() > 500
    d = np.asarray(out, np.float64)[core] - np.asarray(photo, np.float64)[core]
    mean = d.mean(axis=0)
    assert mean[0] > 0.6 * SHIFT[0] and mean[1] < 0.6 * SHIFT[1] and mean[2] > 0.6 * SHIFT[2], mean
    assert diff[core].mean() > 0.99


def test_ellipse_mask_and_feather(aligned):
    photo, face = aligned["astronaut"]
    gen = generated(face.image, shift=True)
    hull = changed(photo, paste_face(photo, gen, face.quad, landmarks=face.landmarks))
    ell = changed(photo, paste_face(photo, gen, face.quad, mask="ellipse"))
    sharp = changed(photo, paste_face(photo, gen, face.quad, landmarks=face.landmarks, feather=0.005))
    core = inner_face(face.landmarks, *photo.size)
    for m in (hull, ell, sharp):
        assert m[core].all()
    assert iou(hull, ell) > 0.6
    assert sharp.sum() < hull.sum()  # a smaller feather touches fewer pixels
    with pytest.raises(E4EError, match="mask"):
        paste_face(photo, gen, face.quad, mask="square")
    with pytest.raises(E4EError, match="feather"):
        paste_face(photo, gen, face.quad, feather=-1)


def test_soft_edge_has_no_seam(aligned):
    """The blend ramps over several pixels: pasting a flat face into a flat photo, no two
    neighbouring pixels differ by more than a fifth of the colour difference (a hard-edged
    paste would jump by all of it), even on this small face (the square is ~185 px)."""
    photo, face = aligned["astronaut"]
    flat_photo = Image.new("RGB", photo.size, (80, 80, 80))
    flat_face = Image.new("RGB", (1024, 1024), (180, 180, 180))
    out = np.asarray(paste_face(flat_photo, flat_face, face.quad, landmarks=face.landmarks), np.float64)[..., 0]
    assert out.max() == 180 and out.min() == 80  # fully on in the face, off outside
    step = max(np.abs(np.diff(out, axis=0)).max(), np.abs(np.diff(out, axis=1)).max())
    assert step <= 20, step


# --------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("name", _names("astronaut", "parity", "rotated", "offset", "exif"))
def test_roundtrip_realign(aligned, name, tmp_path):
    """Aligning the pasted photo again gives back the generated face."""
    photo, face = aligned[name]
    gen = generated(face.image, shift=False)
    out = paste_face(photo, gen, face.quad, landmarks=face.landmarks)
    path = tmp_path / "pasted.png"
    out.save(path)
    again = align_photo(path)[0]
    want = np.asarray(gen.resize((256, 256), Image.Resampling.LANCZOS), np.float64)
    err = np.abs(np.asarray(again.image, np.float64) - want).mean()
    assert err <= ROUNDTRIP_MEAN, err
    side = float(np.hypot(*(face.quad[3] - face.quad[0])))
    assert np.abs(again.quad - face.quad).max() < 0.01 * side


@pytest.mark.parametrize("name", _names("astronaut", "parity", "rotated", "corner"))
def test_roundtrip_same_quad(aligned, name):
    """Warping the pasted photo with the alignment's own QUAD transform gives back the
    (colour-shifted) generated face wherever the mask is fully on: the inverse warp is exact."""
    photo, face = aligned[name]
    gen = generated(face.image, shift=True)
    out = paste_face(photo, gen, face.quad, landmarks=face.landmarks)
    back = out.transform((256, 256), Image.Transform.QUAD, (np.asarray(face.quad) + 0.5).flatten(),
                         Image.Resampling.BILINEAR)
    want = np.asarray(gen.resize((256, 256), Image.Resampling.LANCZOS), np.float64)
    core = inner_face(_to_aligned(face.landmarks, face.quad), 256, 256)
    err = np.abs(np.asarray(back, np.float64) - want)[core].mean()
    assert err <= SAME_QUAD_CORE, err


def _to_aligned(lm, quad, size=256):
    q = np.asarray(quad, np.float64)
    a = np.stack([q[3] - q[0], q[1] - q[0]], axis=1)
    return np.linalg.solve(a, (np.asarray(lm) - q[0]).T).T * size


# --------------------------------------------------------------------------------------
# the face lands in the right place


def _upright_change(aligned):
    photo, face = aligned["astronaut"]
    return changed(photo, paste_face(photo, generated(face.image, shift=True), face.quad, landmarks=face.landmarks))


def test_rotated_photo_lands_on_the_face(aligned):
    photo, face = aligned["rotated"]
    diff = changed(photo, paste_face(photo, generated(face.image, shift=True), face.quad, landmarks=face.landmarks))
    # where the upright paste changed pixels, rotated the same way the photo was
    want = np.asarray(Image.fromarray(_upright_change(aligned).astype(np.uint8) * 255)
                      .rotate(20, resample=Image.Resampling.NEAREST, expand=True)) > 127
    assert want.shape == diff.shape
    assert iou(diff, want) > 0.85
    assert np.abs(centroid(diff) - centroid(want)).max() < 4
    # and back in the upright frame, the pasted (unshifted) face matches the original photo
    out = paste_face(photo, generated(face.image, shift=False), face.quad, landmarks=face.landmarks)
    up = out.rotate(-20, resample=Image.Resampling.BICUBIC, expand=True)
    up_orig = photo.rotate(-20, resample=Image.Resampling.BICUBIC, expand=True)
    region = np.asarray(Image.fromarray(diff.astype(np.uint8) * 255)
                        .rotate(-20, resample=Image.Resampling.NEAREST, expand=True)) > 127
    err = np.abs(np.asarray(up, np.float64) - np.asarray(up_orig, np.float64))[region].mean()
    assert err < 6, err


def test_off_centre_face_lands_on_the_face(aligned):
    photo, face = aligned["offset"]
    diff = changed(photo, paste_face(photo, generated(face.image, shift=True), face.quad, landmarks=face.landmarks))
    upright = _upright_change(aligned)
    want = np.zeros_like(diff)
    x, y = OFFSET
    want[y : y + upright.shape[0], x : x + upright.shape[1]] = upright
    assert iou(diff, want) > 0.9
    assert np.abs(centroid(diff) - centroid(want)).max() < 3


def test_face_at_the_border(aligned):
    """The crop square sticks out of the photo (the aligner padded it): the paste is clipped
    to the photo and still lands on the face."""
    photo, face = aligned["corner"]
    q = np.asarray(face.quad)
    assert q[:, 0].min() < 0 or q[:, 1].min() < 0  # the case this test is about
    out, info = paste_face_info(photo, generated(face.image, shift=True), face.quad, landmarks=face.landmarks)
    diff = changed(photo, out)
    assert info.box[0] == 0 or info.box[1] == 0
    upright = _upright_change(aligned)
    x, y = CORNER_OFFSET
    want = np.zeros_like(diff)
    src = upright[-y:, -x:][: diff.shape[0], : diff.shape[1]]
    want[: src.shape[0], : src.shape[1]] = src
    assert iou(diff, want) > 0.85


def test_exif_rotated_jpeg_lands_on_the_face(aligned):
    photo, face = aligned["exif"]
    assert face.exif_orientation == 6
    assert photo.size == (512, 512)
    diff = changed(photo, paste_face(photo, generated(face.image, shift=True), face.quad, landmarks=face.landmarks))
    want = _upright_change(aligned)  # the upright PNG of the same photo
    assert iou(diff, want) > 0.85
    assert np.abs(centroid(diff) - centroid(want)).max() < 3


# --------------------------------------------------------------------------------------
# colour matching


def test_color_match_reduces_the_seam(aligned):
    photo, face = aligned["astronaut"]
    gen = generated(face.image, shift=True)
    plain, info0 = paste_face_info(photo, gen, face.quad, landmarks=face.landmarks)
    matched, info1 = paste_face_info(photo, gen, face.quad, landmarks=face.landmarks, color_match=True)
    assert not info0.color_matched and info1.color_matched
    assert info1.seam_after < 0.5 * info1.seam_before
    assert info0.seam_before == pytest.approx(info1.seam_before, rel=1e-6)
    core = inner_face(face.landmarks, *photo.size)
    err_plain = np.abs(np.asarray(plain, np.float64) - np.asarray(photo, np.float64))[core].mean()
    err_matched = np.abs(np.asarray(matched, np.float64) - np.asarray(photo, np.float64))[core].mean()
    assert err_matched < 0.5 * err_plain  # the colour cast is (mostly) gone
    # the unshifted face has (almost) no seam to reduce: matching never makes it worse
    _, info2 = paste_face_info(photo, generated(face.image, shift=False), face.quad, landmarks=face.landmarks,
                               color_match=True)
    assert info2.seam_after <= info2.seam_before < 6


# --------------------------------------------------------------------------------------
# invert folders -> full photos (the library glue of --paste-back)


def _fake_invert_dir(root: Path, stem: str, photo_path: Path, face, gen: Image.Image) -> Path:
    d = root / stem
    d.mkdir(parents=True)
    (d / "alignment.json").write_text(json.dumps(dict(face.to_json(), source=str(photo_path))))
    (d / "meta.json").write_text(json.dumps({"source": str(photo_path), "domain": "ffhq"}))
    gen.save(d / "inversion.png")
    face.image.save(d / "aligned.png")
    (root / "summary.json").write_text(json.dumps({"counts": {"ok": 1, "skipped": 0, "failed": 0},
                                                   "items": [{"input": str(photo_path), "status": "ok"}]}))
    return d


def test_paste_back_inversions_exif_jpeg(aligned, photos, tmp_path):
    from e4e_cli.jobs.outputs import ItemResult

    photo, face = aligned["exif"]
    d = _fake_invert_dir(tmp_path, "exif", photos["exif"], face, generated(face.image, shift=True))
    r = ItemResult(str(photos["exif"]), "ok", outdir=str(d), files={})
    paste_back_inversions([r])
    assert r.status == "ok", r.error
    full = Path(r.files["inversion_full"])
    assert full == d / "exif_inversion_full.jpg"
    with Image.open(full) as im:
        assert im.format == "JPEG" and im.size == photo.size
        assert im.getexif().get(0x0112) in (None, 1)  # written upright
        got = im.convert("RGB")
    diff = (np.abs(np.asarray(got, np.int16) - np.asarray(photo, np.int16)).max(axis=-1) > 20)
    assert iou(diff, _upright_change(aligned)) > 0.6  # JPEG noise aside, the same place
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["items"][0]["files"]["inversion_full"] == str(full)
    assert not list(tmp_path.rglob("*.part"))


def test_paste_back_inversions_reports_missing_alignment(tmp_path):
    from e4e_cli.jobs.outputs import ItemResult

    d = tmp_path / "car"
    d.mkdir()
    (d / "inversion.png").write_bytes(b"")
    r = ItemResult("car.jpg", "ok", outdir=str(d), files={})
    skipped = ItemResult("bad.jpg", "failed", error="no face found in bad.jpg")
    paste_back_inversions([r, skipped])
    assert r.status == "failed" and "alignment" in r.error and "\n" not in r.error
    assert skipped.error == "no face found in bad.jpg"


def test_paste_back_edits_names_and_sweep(aligned, photos, tmp_path):
    from e4e_cli.jobs.edit import Source

    photo, face = aligned["astronaut"]
    d = _fake_invert_dir(tmp_path / "inv", "astronaut", photos["astronaut"], face, generated(face.image, shift=False))
    out = tmp_path / "edits"
    out.mkdir()
    src = Source("astronaut", np.zeros((18, 512), np.float32), str(d / "latent.npy"), d)
    frames = [generated(face.image, shift=s) for s in (False, True, False)]
    files = paste_back_edits(src, "astronaut", "smile", [-1.5, 0.0, 3.0], frames, out, sweep=True)
    names = sorted(Path(p).name for p in files.values())
    assert names == ["astronaut_smile_+0_full.png", "astronaut_smile_+3_full.png", "astronaut_smile_-1p5_full.png",
                     "astronaut_smile_sweep_full.gif"]
    for p in files.values():
        assert Path(p).parent == out
    full = Image.open(out / "astronaut_smile_+0_full.png").convert("RGB")
    assert full.size == photo.size
    assert changed(photo, full).sum() > 1000
    gif = Image.open(out / "astronaut_smile_sweep_full.gif")
    assert gif.n_frames == 4 and max(gif.size) <= 768  # forwards and back
    # a bare latent (no invert folder) cannot be pasted back: one line that says why
    with pytest.raises(E4EError) as exc:
        paste_back_edits(Source("x", src.codes, "x.npy", None), "x", "smile", [1.0], frames[:1], out)
    assert str(exc.value) == NO_ALIGNMENT


def test_paste_back_edits_photo_changed_or_gone(aligned, photos, tmp_path):
    from e4e_cli.jobs.edit import Source

    photo, face = aligned["astronaut"]
    moved = tmp_path / "astro.png"
    shutil.copy(photos["astronaut"], moved)
    d = _fake_invert_dir(tmp_path / "inv", "astro", moved, face, face.image)
    src = Source("astro", np.zeros((18, 512), np.float32), str(d / "latent.npy"), d)
    Image.open(moved).resize((300, 300)).save(moved)
    with pytest.raises(E4EError, match="changed"):
        paste_back_edits(src, "astro", "age", [1.0], [face.image], tmp_path)
    moved.unlink()
    with pytest.raises(E4EError, match="gone"):
        paste_back_edits(src, "astro", "age", [1.0], [face.image], tmp_path)


def test_large_photo_is_only_touched_near_the_face(aligned):
    """A 4000x3000 photo: only the face box is worked on (fast), the rest is the photo's."""
    import time

    photo, face = aligned["astronaut"]
    big = Image.new("RGB", (4000, 3000), (30, 60, 90))
    big.paste(photo, (2500, 1800))
    quad = np.asarray(face.quad) + [2500, 1800]
    t = time.perf_counter()
    out, info = paste_face_info(big, generated(face.image, shift=True), quad, landmarks=np.asarray(face.landmarks) + [2500, 1800])
    elapsed = time.perf_counter() - t
    x0, y0, x1, y1 = info.box
    assert 2500 <= x0 + 2 and x1 <= 3012 and 1800 <= y0 + 2 and y1 <= 2312
    diff = changed(big, out)
    ys, xs = np.nonzero(diff)
    assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
    assert elapsed < 5.0


# --------------------------------------------------------------------------------------
# through the CLI


@pytest.mark.slow
def test_cli_invert_and_edit_paste_back(tmp_path, parity_dir, case_checkpoint):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "e4e_ffhq_encode.pt").symlink_to(case_checkpoint("ffhq_1024_s1"))
    shutil.copy(parity_dir / "directions" / "smile.pt", weights / "smile.pt")
    photo = tmp_path / "photo.jpg"
    shutil.copy(parity_dir / "images" / "input_img.jpg", photo)
    env = {"E4E_WEIGHTS_DIR": str(weights)}
    out = tmp_path / "out"
    inv = run_e4e("invert", photo, "--paste-back", "--out", out, env=env)
    assert inv.returncode == 0, inv.stderr
    size = Image.open(photo).size
    full = out / "photo" / "photo_inversion_full.jpg"
    assert full.is_file()
    assert Image.open(full).size == size
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"][0]["files"]["inversion_full"] == str(full)
    edits = tmp_path / "edits"
    ed = run_e4e("edit", out / "photo" / "latent.npy", "--direction", "smile", "--strength", "3", "--paste-back",
                 "--out", edits, env=env)
    assert ed.returncode == 0, ed.stderr
    edited = edits / "photo_smile_+3_full.jpg"
    assert edited.is_file() and Image.open(edited).size == size
    assert (edits / "photo_smile_+3.png").is_file()
    # a bare latent has no photo to paste into: a one-line error
    bare = tmp_path / "bare.npy"
    shutil.copy(out / "photo" / "latent.npy", bare)
    proc = run_e4e("edit", bare, "--direction", "smile", "--strength", "3", "--paste-back", "--out", edits, env=env)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "alignment" in proc.stderr
