"""Issue 30, section 8 (edit parts): `e4e edit PHOTO --refine hyperstyle` refines the photos it is
given, and `e4e edit FILE.npz` takes a refined latent in one file (the code, its offsets and their
record: `refine.save_offsets(latent=)`), decoded by the refiner its record names, with its own
offsets. On the synthetic cars 512 HyperStyle checkpoint, as tests/test_refine_cli.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PARITY, assert_one_line_error, hyperstyle_checkpoints, run_e4e
from e4e_cli.refine import load_offsets, save_offsets

CASE = "cars_512_s2"
PHOTO = PARITY / "images" / "car_img.jpg"
FP32 = ("--device", "cpu", "--precision", "fp32")
EDIT = ("-d", "ganspace:0:0:5", "--pca", PARITY / "directions" / "cars_pca.pt", "-s", "2")
OUTPUT = "ganspace-0-0-5_+2.png"


@pytest.fixture(scope="module")
def refined_edit(tmp_path_factory):
    """`e4e edit car_img.jpg --refine hyperstyle`: the photo refined into INV/, its edit in E1/."""
    hs, we = hyperstyle_checkpoints(CASE)
    tmp = tmp_path_factory.mktemp("edit-refined")
    proc = run_e4e("edit", PHOTO, "--refine", "hyperstyle", "--refiner", hs, "--w-encoder", we, *EDIT,
                   "--invert-out", tmp / "INV", "--out", tmp / "E1", *FP32)
    assert proc.returncode == 0, proc.stderr
    return {"hs": hs, "we": we, "tmp": tmp, "dir": tmp / "INV" / "car_img", "edits": tmp / "E1"}


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_edit_refines_the_photos_it_is_given(refined_edit):
    d = refined_edit["dir"]
    meta = json.loads((d / "meta.json").read_text())
    assert meta["refine"]["method"] == "hyperstyle" and (d / "weight_offsets.npz").is_file()
    assert meta["delta_scale"] is None and meta["made_with"]["refine"]["steps"] == 5
    rec = json.loads((refined_edit["edits"] / f"car_img_{OUTPUT[:-4]}.json").read_text())
    assert rec["offsets_sha256"] and rec["checkpoint"]["file"] == refined_edit["hs"].name
    # the edit is the reference's edit of the refined inversion (plain e4e, or no offsets, is far off)
    data = np.load(PARITY / "hyperstyle" / "cases" / f"{CASE}.npz")
    x = torch.from_numpy(_pixels(refined_edit["edits"] / f"car_img_{OUTPUT}").astype(np.float32)).permute(2, 0, 1)[None]
    pooled = torch.nn.functional.adaptive_avg_pool2d(x / 127.5 - 1, (192, 256))
    want = torch.from_numpy(data["edit/viewpoint_1/y_hat"]).clamp(-1, 1)
    assert float((pooled - want).norm() / want.norm()) <= 0.015


def _one_file(folder, path):
    """The page's refined download: the folder's code, offsets and record in one .npz."""
    offsets, rec = load_offsets(folder / "weight_offsets.npz")
    meta = {k: v for k, v in rec.items() if k not in ("format", "precision", "layers")}
    code = np.load(folder / "latent.npy")
    return save_offsets(path, offsets, meta=meta, precision=rec["precision"], latent=code)


def test_a_refined_latent_file_edits_as_its_folder(refined_edit, tmp_path):
    npz = _one_file(refined_edit["dir"], tmp_path / "car.npz")
    proc = run_e4e("edit", npz, refined_edit["dir"] / "latent.npy", *EDIT, "--out", tmp_path / "E2", *FP32)
    assert proc.returncode == 0, proc.stderr
    from_file = _pixels(tmp_path / "E2" / f"car_{OUTPUT}")
    assert np.array_equal(from_file, _pixels(tmp_path / "E2" / f"car_img_{OUTPUT}"))
    assert np.array_equal(from_file, _pixels(refined_edit["edits"] / f"car_img_{OUTPUT}"))  # the photo's edit
    rec = json.loads((tmp_path / "E2" / f"car_{OUTPUT[:-4]}.json").read_text())
    assert rec["source"] == str(npz) and rec["offsets_sha256"]
    # a rerun finds it done
    again = run_e4e("edit", npz, *EDIT, "--out", tmp_path / "E2", *FP32)
    assert again.returncode == 0 and "1 already done" in again.stdout, again.stdout + again.stderr


def test_a_refined_latent_file_is_checked_like_a_folder(refined_edit, tmp_path):
    npz = _one_file(refined_edit["dir"], tmp_path / "car.npz")
    proc = run_e4e("edit", npz, *EDIT, "--checkpoint", refined_edit["hs"], "--out", tmp_path / "E", *FP32)
    assert_one_line_error(proc, "--checkpoint", "HyperStyle", code=2)
    offsets, rec = load_offsets(npz)
    other = tmp_path / "other.npz"
    save_offsets(other, offsets, meta=dict({k: v for k, v in rec.items() if k not in ("format", "precision", "layers")},
                                           refiner_sha256="0" * 64, refiner="/nowhere/hs.pt"),
                 latent=np.load(refined_edit["dir"] / "latent.npy"))
    proc = run_e4e("edit", other, *EDIT, "--weights-dir", tmp_path / "empty", "--out", tmp_path / "E", *FP32)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and proc.stderr.count("e4e: error:") == 1, proc.stderr
    no_code = tmp_path / "offsets_only.npz"
    save_offsets(no_code, offsets, meta={k: v for k, v in rec.items() if k not in ("format", "precision", "layers", "latent")})
    proc = run_e4e("edit", no_code, *EDIT, "--out", tmp_path / "E", *FP32)
    assert_one_line_error(proc, "no latent code", code=1)
    assert not list((tmp_path / "E").glob("*.png")) if (tmp_path / "E").exists() else True
