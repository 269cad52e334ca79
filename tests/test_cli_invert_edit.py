"""`e4e invert` and `e4e edit` through the installed CLI, against the parity fixtures."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CASES, assert_one_line_error, run_e4e

pytestmark = pytest.mark.slow


def fixture_uint8(image: np.ndarray) -> np.ndarray:
    x = np.clip((image.astype(np.float32) + 1) / 2, 0, 1) * 255
    return np.rint(x).astype(np.uint8)[0].transpose(1, 2, 0)


@pytest.fixture(scope="module")
def models(case_checkpoint):
    from e4e_cli.model import E4E

    return {name: E4E.from_checkpoint(case_checkpoint(name), device="cpu", precision="fp32")
            for name in ("ffhq_1024_s1", "cars_512_s2")}


@pytest.fixture(scope="module")
def inverted(parity_dir, case_checkpoint, tmp_path_factory):
    """Each parity case inverted once through the CLI: name -> (spec, npz, out folder)."""
    out = {}
    for name, (size, seed, domain) in CASES.items():
        spec = json.loads((parity_dir / "cases" / f"{name}.json").read_text())
        folder = tmp_path_factory.mktemp(name)
        proc = run_e4e("invert", parity_dir / spec["image"], "--domain", domain, "--checkpoint",
                       case_checkpoint(name), "--out", folder, "--device", "cpu", "--precision", "fp32")
        assert proc.returncode == 0, proc.stderr
        out[name] = (spec, np.load(parity_dir / "cases" / f"{name}.npz"), folder / Path(spec["image"]).stem)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_invert_reproduces_fixture(inverted, name):
    spec, data, folder = inverted[name]
    codes = np.load(folder / "latent.npy")
    assert codes.dtype == np.float32 and codes.shape == data["codes"].shape[1:]
    assert np.abs(codes - data["codes"][0]).max() <= 1e-4  # SPEC's tolerance for codes
    img = np.asarray(Image.open(folder / "inversion.png").convert("RGB"), dtype=np.float32)
    ref = fixture_uint8(data["image"]).astype(np.float32)
    assert img.shape == ref.shape
    diff = np.abs(img - ref)
    # 8-bit images: rounding at the level boundaries (and the 1024 fixture's float16 storage)
    # moves a few pixels by one level; measured mean <= 0.01, max 1
    assert diff.mean() <= 0.05 and diff.max() <= 2, (diff.mean(), diff.max())
    import torch

    pt = torch.load(folder / "latent.pt", weights_only=True)
    assert tuple(pt.shape) == (1, *codes.shape)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["delta_scale"] == 1.0 and meta["n_styles"] == codes.shape[0]
    assert (folder / "aligned.png").exists() == bool(spec["align"])
    summary = json.loads((folder.parent / "summary.json").read_text())
    assert summary["counts"]["ok"] == 1 and summary["items"][0]["status"] == "ok"


@pytest.mark.parametrize("name", ["ffhq_1024_s1", "cars_512_s2"])
def test_every_fixture_edit(inverted, models, name, parity_dir, case_checkpoint, tmp_path):
    spec, data, folder = inverted[name]
    for e in spec["edits"]:
        out = tmp_path / e["name"]
        if e["kind"] == "interfacegan":
            args = ["--direction", parity_dir / e["file"], "--strength", str(e["factor"])]
        else:
            args = ["--direction", f"ganspace:{e['pca_idx']}:{e['start']}:{e['end']}", "--pca", parity_dir / e["file"],
                    "--strength", str(e["strength"])]
        proc = run_e4e("edit", folder / "latent.npy", *args, "--checkpoint", case_checkpoint(name), "--out", out, "--device", "cpu", "--precision", "fp32")
        assert proc.returncode == 0, proc.stderr
        npys = sorted(out.glob("*.npy"))
        pngs = sorted(out.glob("*.png"))
        assert len(npys) == 1 and len(pngs) == 1, list(out.iterdir())
        edited = np.load(npys[0])
        assert np.abs(edited - data[f"edit/{e['name']}/codes"][0]).max() <= 1e-4, e["name"]
        # the edited image: the written latent decodes (float32, reference path) to the fixture's
        # pooled image within SPEC's 1e-4 relative L2, and the PNG is that image in 8 bit
        # (the fixture holds pooled floats, so the PNG is compared with our own decode)
        with torch.inference_mode():
            image = models[name].decode(torch.from_numpy(edited)[None], impl="ref")
        pooled = torch.nn.functional.adaptive_avg_pool2d(image, (256, 256))
        want = torch.from_numpy(data[f"edit/{e['name']}/image_pool256"]).float()
        assert float((pooled - want).norm() / want.norm()) <= 1e-4, e["name"]
        png = np.asarray(Image.open(pngs[0]).convert("RGB"), dtype=np.float32)
        diff = np.abs(png - models[name].to_uint8(image)[0].astype(np.float32))
        assert diff.mean() <= 0.05 and diff.max() <= 2, (e["name"], diff.mean(), diff.max())


@pytest.fixture()
def weights(tmp_path, parity_dir, case_checkpoint):
    """A weights folder with the (synthetic) ffhq checkpoint and the real direction files."""
    w = tmp_path / "weights"
    w.mkdir()
    (w / "e4e_ffhq_encode.pt").symlink_to(case_checkpoint("ffhq_1024_s1"))
    for f in ("age.pt", "smile.pt", "pose.pt", "ffhq_pca.pt"):
        shutil.copy(parity_dir / "directions" / f, w / f)
    return w


def test_invert_then_edit_as_typed(tmp_path, weights, parity_dir):
    """The design's flow, literally: `e4e invert photo.jpg` then `e4e edit --direction smile --strength 3`."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(parity_dir / "images" / "input_img.jpg", work / "photo.jpg")
    env = {"E4E_WEIGHTS_DIR": str(weights)}
    inv = run_e4e("invert", "photo.jpg", cwd=work, env=env)
    assert inv.returncode == 0, inv.stderr
    assert (work / "e4e-out" / "photo" / "latent.npy").is_file()
    ed = run_e4e("edit", "--direction", "smile", "--strength", "3", cwd=work, env=env)
    assert ed.returncode == 0, ed.stderr
    edits = work / "e4e-out" / "edits"
    # the edit, its record of what made it, and the run's summary
    assert sorted(p.name for p in edits.iterdir()) == ["photo_smile_+3.json", "photo_smile_+3.npy", "photo_smile_+3.png",
                                                       "summary.json"]
    codes = np.load(work / "e4e-out" / "photo" / "latent.npy")
    smile = np.load(edits / "photo_smile_+3.npy")
    import torch

    d = torch.load(weights / "smile.pt", weights_only=True).numpy()
    np.testing.assert_allclose(smile, codes + 3 * d, atol=1e-5)
    # a second invert skips the finished photo
    again = run_e4e("invert", "photo.jpg", cwd=work, env=env)
    assert again.returncode == 0 and "already done" in again.stdout


def test_sweep_strip_and_gif(tmp_path, weights, parity_dir, case_checkpoint):
    data = np.load(parity_dir / "cases" / "ffhq_1024_s1.npz")
    lat = tmp_path / "face.npy"
    np.save(lat, data["codes"][0])
    out = tmp_path / "sweep"
    proc = run_e4e("edit", lat, "--direction", "age", "--sweep", "-2:2:3", "--out", out,
                   env={"E4E_WEIGHTS_DIR": str(weights)}, )
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert "face_age_sweep.gif" in names and "face_age_sweep.png" in names
    assert len([n for n in names if n.endswith(".npy")]) == 3
    gif = Image.open(out / "face_age_sweep.gif")
    assert gif.n_frames == 4  # 3 frames forwards, 1 back
    strip = Image.open(out / "face_age_sweep.png")
    assert strip.size == (3 * 256, 256)


def test_batch_with_bad_files(tmp_path, parity_dir, case_checkpoint):
    good = tmp_path / "in"
    good.mkdir()
    shutil.copy(parity_dir / "images" / "church_img.jpg", good / "a.jpg")
    (good / "b.jpg").write_text("not a picture")
    shutil.copy(parity_dir / "images" / "church_img.jpg", good / "c.jpg")
    out = tmp_path / "out"
    proc = run_e4e("invert", good, tmp_path / "missing.png", "--domain", "church", "--checkpoint",
                   case_checkpoint("church_256_s3"), "--out", out, "--batch-size", "2")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "b.jpg" in proc.stderr and "missing.png" in proc.stderr
    assert (out / "a" / "latent.npy").is_file() and (out / "c" / "inversion.png").is_file()
    assert not (out / "b").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"ok": 2, "skipped": 0, "failed": 2}
    status = {Path(i["input"]).name: i["status"] for i in summary["items"]}
    assert status == {"a.jpg": "ok", "b.jpg": "failed", "c.jpg": "ok", "missing.png": "failed"}
    assert not list(out.rglob("*.part")), "no temporary files left behind"


def test_no_weights_says_which_download(tmp_path, parity_dir):
    proc = run_e4e("invert", parity_dir / "images" / "car_img.jpg", "--domain", "cars",
                   env={"E4E_WEIGHTS_DIR": str(tmp_path / "empty")})
    assert proc.returncode == 3
    assert_one_line_error(proc, "e4e download-weights cars")


def test_edit_errors_are_one_line(tmp_path, weights, parity_dir):
    data = np.load(parity_dir / "cases" / "ffhq_1024_s1.npz")
    lat = tmp_path / "face.npy"
    np.save(lat, data["codes"][0])
    env = {"E4E_WEIGHTS_DIR": str(weights)}
    bad_dir = tmp_path / "bad.npy"
    np.save(bad_dir, np.zeros((7, 512), np.float32))
    cases = [
        (["--direction", "frown"], "unknown direction"),
        (["--direction", "smile", "--strength", "nan"], "finite"),
        (["--direction", "smile", "--strength", "inf"], "finite"),
        (["--direction", str(bad_dir)], "shape"),
        (["--direction", "smile", "--sweep", "1:2"], "--sweep"),
        (["--direction", "ganspace:54:7"], "ganspace:COMPONENT:START:END"),
        (["--direction", "ganspace:99:0:1", "--strength", "1"], "out of range"),
    ]
    for args, needle in cases:
        proc = run_e4e("edit", lat, *args, "--out", tmp_path / "o", env=env)
        assert_one_line_error(proc, needle)
    # the error for an unknown preset lists the known ones
    proc = run_e4e("edit", lat, "--direction", "frown", env=env)
    assert "smile" in proc.stderr and "ganspace:eye_openness" in proc.stderr


def test_edit_preview_size_writes_the_early_exit_images_apart(tmp_path, models, parity_dir, case_checkpoint):
    """`e4e edit --preview-size 256` (issue 25): each image is the decoder stopped after its 256
    block, exactly the library's `decode(size=256)` in 8 bit; the outputs sit in OUT/preview-256/
    with records that say so, apart from full-size results; the latents are the same edit."""
    from e4e_cli.editing import resolve_direction

    data = np.load(parity_dir / "cases" / "ffhq_1024_s1.npz")
    lat = tmp_path / "face.npy"
    np.save(lat, data["codes"][0])
    out = tmp_path / "edits"
    proc = run_e4e("edit", lat, "--direction", "sefa:0", "--sweep", "-2:2:2", "--preview-size", "256", "--checkpoint",
                   case_checkpoint("ffhq_1024_s1"), "--device", "cpu", "--precision", "fp32", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "preview-256" in proc.stdout
    preview = out / "preview-256"
    assert sorted(p.name for p in out.iterdir()) == ["preview-256"]
    model = models["ffhq_1024_s1"]
    direction = resolve_direction("sefa:0", model)
    for s in (-2, 2):
        base = preview / f"face_sefa-0_{s:+d}"
        png = np.asarray(Image.open(base.with_suffix(".png")).convert("RGB"))
        with torch.inference_mode():
            want = model.to_uint8(model.decode(direction.apply(torch.from_numpy(data["codes"][0])[None], s), size=256))[0]
        assert png.shape == (256, 256, 3) and np.array_equal(png, want), s
        assert json.loads(base.with_suffix(".json").read_text())["preview_size"] == 256
    assert Image.open(preview / "face_sefa-0_sweep.png").size == (2 * 256, 256)


def test_edit_preview_size_errors_are_one_line(tmp_path, parity_dir, case_checkpoint):
    lat = tmp_path / "church.npy"
    np.save(lat, np.zeros((14, 512), np.float32))
    for bad in ("100", "2"):
        proc = run_e4e("edit", lat, "--direction", "sefa:0", "--strength", "1", "--preview-size", bad, "--out", tmp_path / "o")
        assert_one_line_error(proc, "--preview-size", "power of two", code=2)
    proc = run_e4e("edit", lat, "--direction", "sefa:0", "--strength", "1", "--preview-size", "512", "--checkpoint",
                   case_checkpoint("church_256_s3"), "--out", tmp_path / "o")
    assert_one_line_error(proc, "--preview-size 512", "256 px", code=2)
    assert not (tmp_path / "o").exists()
