"""`e4e invert --refine hyperstyle` and `e4e edit` on its results, end to end through the command
line, on the synthetic cars 512 HyperStyle checkpoint (every layer tuned, ToRGB included), and
the one-line errors for bad input. The numbers are checked against the reference's outputs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PARITY, assert_one_line_error, hyperstyle_checkpoints, run_e4e
from e4e_cli.refine import load_offsets, save_offsets

CASE = "cars_512_s2"
PHOTO = PARITY / "images" / "car_img.jpg"
FP32 = ("--device", "cpu", "--precision", "fp32")


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    """One refined invert and one GANSpace edit of it, shared by the tests below."""
    hs, we = hyperstyle_checkpoints(CASE)
    tmp = tmp_path_factory.mktemp("refine")
    out = tmp / "out"
    proc = run_e4e("invert", PHOTO, "--refine", "hyperstyle", "--refiner", hs, "--w-encoder", we, "--out", out, *FP32)
    assert proc.returncode == 0, proc.stderr
    edits = tmp / "edits"
    proc = run_e4e("edit", out / "car_img" / "latent.npy", "-d", "ganspace:0:0:5", "--pca",
                   PARITY / "directions" / "cars_pca.pt", "-s", "2", "--out", edits, *FP32)
    assert proc.returncode == 0, proc.stderr
    return {"hs": hs, "we": we, "dir": out / "car_img", "edits": edits, "tmp": tmp}


def _case():
    return np.load(PARITY / "hyperstyle" / "cases" / f"{CASE}.npz")


def test_refined_invert_writes_the_reference_image_code_and_compact_offsets(refined):
    d, data = refined["dir"], _case()
    png = np.asarray(Image.open(d / "inversion.png").convert("RGB")).astype(int)
    want = data["image_uint8"].astype(int)  # truncated by the reference; we round: at most 1 level apart
    assert png.shape == want.shape == (384, 512, 3)
    assert np.abs(png - want).max() <= 2
    codes = np.load(d / "latent.npy")
    assert codes.shape == (16, 512) and np.abs(codes - data["codes"][0]).max() <= 1e-4
    meta = json.loads((d / "meta.json").read_text())
    assert meta["refine"]["steps"] == 5 and meta["refine"]["layers"] == list(range(23))
    assert meta["refine"]["offsets_bytes"] == (d / "weight_offsets.npz").stat().st_size
    offsets, rec = load_offsets(d / "weight_offsets.npz")
    assert rec["refiner_sha256"] == meta["refine"]["refiner_sha256"] and rec["precision"] == "fp16"
    with np.load(d / "weight_offsets.npz", allow_pickle=False) as z:
        assert z["layer_21"].shape == (64, 64) and z["layer_22"].shape == (3, 64)  # compact: per (out, in) pair
        assert z["layer_03"].shape == (512, 512, 3, 3) and z["layer_03"].dtype == np.float16
    full = torch.from_numpy(data["delta/21"][0])
    assert float((offsets[21].expand(full.shape) - full).abs().max()) <= 1e-3  # float16 storage


def test_edit_of_a_refined_latent_keeps_its_offsets(refined):
    data = _case()
    png = np.asarray(Image.open(refined["edits"] / "car_img_ganspace-0-0-5_+2.png").convert("RGB"))
    x = torch.from_numpy(png.astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, (192, 256))
    want = torch.from_numpy(data["edit/viewpoint_1/y_hat"]).clamp(-1, 1)
    err = float((pooled - want).norm() / want.norm())
    # measured 0.0073, almost all of it from the synthetic generator's saturated pixels (the PNG is
    # clipped before pooling, the reference pooled without clipping); float16 offsets add 4e-5, and
    # decoding without the offsets gives 0.18
    assert err <= 0.015, err
    rec = json.loads((refined["edits"] / "car_img_ganspace-0-0-5_+2.json").read_text())
    assert rec["offsets_sha256"] and rec["checkpoint"]["file"] == refined["hs"].name


def test_edit_refuses_offsets_that_do_not_fit_or_are_truncated(refined, tmp_path):
    d = tmp_path / "car_img"
    shutil.copytree(refined["dir"], d)
    offsets, rec = load_offsets(d / "weight_offsets.npz")
    offsets[21] = torch.zeros(32, 64, 1, 1)  # another generator's layer
    rec = {k: v for k, v in rec.items() if k not in ("format", "precision", "layers")}
    save_offsets(d / "weight_offsets.npz", offsets, meta=rec)
    proc = run_e4e("edit", d / "latent.npy", "-d", "ganspace:0:0:5", "--pca", PARITY / "directions" / "cars_pca.pt",
                   "-s", "1", "--out", tmp_path / "e1", *FP32)
    assert proc.returncode == 1
    assert_one_line_error(proc, "does not fit this generator", "layer 21")
    data = (refined["dir"] / "weight_offsets.npz").read_bytes()
    (d / "weight_offsets.npz").write_bytes(data[: len(data) // 2])
    proc = run_e4e("edit", d / "latent.npy", "-d", "ganspace:0:0:5", "--pca", PARITY / "directions" / "cars_pca.pt",
                   "-s", "1", "--out", tmp_path / "e2", *FP32)
    assert proc.returncode == 1
    assert_one_line_error(proc, "truncated or corrupt")
    assert not (tmp_path / "e2" / "car_img_ganspace-0-0-5_+1.png").exists()


def test_refine_bad_input_is_one_line(refined, tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    proc = run_e4e("invert", PHOTO, "--refine", "hyperstyle", "--domain", "cars", "--weights-dir", empty,
                   "--out", tmp_path / "o")
    assert proc.returncode == 3
    assert_one_line_error(proc, "e4e download-weights hyperstyle_cars")
    proc = run_e4e("invert", PHOTO, "--refine", "hyperstyle", "--domain", "ffhq", "--refiner", refined["hs"],
                   "--w-encoder", refined["we"], "--out", tmp_path / "o", *FP32)
    assert proc.returncode == 1
    assert_one_line_error(proc, "cars", "--domain ffhq")
    for args, needle in ((("--refine-steps", "3"), "need --refine hyperstyle"), (("--refine", "pti"), "unknown --refine"),
                         (("--refine", "hyperstyle", "--delta-scale", "0.5"), "--delta-scale"),
                         (("--refine", "hyperstyle", "--offsets-precision", "int8"), "--offsets-precision")):
        proc = run_e4e("invert", PHOTO, *args, "--out", tmp_path / "o")
        assert proc.returncode == 1, args
        assert_one_line_error(proc, needle)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("latent.npy"))


def test_a_refined_and_a_plain_result_are_never_mixed(refined, tmp_path, case_checkpoint):
    """Inverting into a folder that holds a refined result without --refine: the item fails
    instead of being skipped as done."""
    out = tmp_path / "out"
    shutil.copytree(refined["dir"], out / "car_img")
    proc = run_e4e("invert", PHOTO, "--checkpoint", case_checkpoint("cars_512_s2"), "--out", out, *FP32)
    assert proc.returncode == 1
    assert "HyperStyle-refined inversion" in proc.stderr
    assert (out / "car_img" / "weight_offsets.npz").is_file()


# ---- e4e ui: the refine switch (the Editor without HTTP; the routes are thin wrappers) ----------


def test_ui_refines_an_upload_and_opens_a_refined_latent(refined, case_checkpoint):
    from e4e_cli.model import E4E
    from e4e_cli.refine import HyperStyle, load_offsets
    from e4e_cli.ui.server import Editor

    model = E4E.from_checkpoint(case_checkpoint(CASE), device="cpu", precision="fp32")
    plain = Editor(model, synthetic=True)
    assert plain.info()["refine"] is False
    ed = Editor(model, synthetic=True, latents_dir=refined["dir"].parent, refiner_files=(refined["hs"], refined["we"]))
    assert ed.info()["refine"] is True
    hs = HyperStyle.from_files(refined["hs"], refined["we"], device="cpu", precision="fp32")

    # an invert --refine result opens refined: its code and offsets, the refiner's generator
    opened = ed.pick_latent("car_img/latent.npy")
    assert opened["refined"] is True
    s = ed.session(opened["session"])
    img, codes = ed.render(opened["session"], {}, 1.0, False, refined=True)
    offsets, _ = load_offsets(refined["dir"] / "weight_offsets.npz")
    want = model.to_pil(hs.decode(codes, offsets=offsets))[0]
    assert np.array_equal(np.asarray(img), np.asarray(want))
    unrefined, _ = ed.render(opened["session"], {}, 1.0, False, refined=False)  # the same code without offsets
    assert np.abs(np.asarray(unrefined, dtype=int) - np.asarray(img, dtype=int)).mean() > 5
    assert s.refined is not None

    # an upload: e4e first, refined on request (one step here), then edits decode with the offsets
    up = ed.upload(PHOTO.read_bytes(), "car.jpg")
    with pytest.raises(Exception, match="not refined yet"):
        ed.render(up["session"], {}, 1.0, False, refined=True)
    out = ed.refine(up["session"], steps=1)
    assert out["refined"] is True and out["inversion"].startswith("data:image/png")
    key = next(iter(ed.directions))
    img, codes = ed.render(up["session"], {key: 2.0}, 1.0, False, refined=True)
    r = ed.session(up["session"]).refined
    assert torch.equal(codes, ed.directions[key][1].apply(r[0], 2.0))
    want = model.to_pil(hs.decode(codes, offsets=r[1]))[0]
    assert np.array_equal(np.asarray(img), np.asarray(want))


def test_edit_with_another_generator_keeps_the_offsets(refined, tmp_path, case_checkpoint):
    """Domain adaptation: the refined code and offsets decoded by a fine-tuned generator of the
    same architecture (here the refiner's own, its last blocks changed, saved in rosinality's
    layout); another architecture is refused in one line."""
    from e4e_cli.refine import HyperStyle, load_offsets
    from e4e_cli.train.generators import save_rosinality_checkpoint

    hs = HyperStyle.from_files(refined["hs"], refined["we"], device="cpu", precision="fp32")
    g = hs.decoder.generator
    with torch.no_grad():
        g.to_rgbs[-1].conv.weight.mul_(-1.0)  # a "fine-tuned" generator: its colours turned around
    toon = save_rosinality_checkpoint(tmp_path / "toon.pt", generator=g, latent_avg=hs.decoder.latent_avg[0])
    args = ("-d", "ganspace:0:0:5", "--pca", PARITY / "directions" / "cars_pca.pt", "-s", "2", *FP32)
    proc = run_e4e("edit", refined["dir"] / "latent.npy", *args, "--generator", toon, "--out", tmp_path / "toon")
    assert proc.returncode == 0, proc.stderr
    got = np.asarray(Image.open(tmp_path / "toon" / "car_img_ganspace-0-0-5_+2.png").convert("RGB"))
    codes = torch.from_numpy(np.load(tmp_path / "toon" / "car_img_ganspace-0-0-5_+2.npy"))[None]
    offsets, _ = load_offsets(refined["dir"] / "weight_offsets.npz")
    want = np.asarray(hs.to_pil(hs.decode(codes, offsets=offsets))[0])  # g is the changed generator
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    plain = np.asarray(Image.open(refined["edits"] / "car_img_ganspace-0-0-5_+2.png").convert("RGB"))
    assert np.abs(got.astype(int) - plain.astype(int)).mean() > 5
    rec = json.loads((tmp_path / "toon" / "car_img_ganspace-0-0-5_+2.json").read_text())
    assert rec["generator"]["file"] == "toon.pt"
    proc = run_e4e("edit", refined["dir"] / "latent.npy", *args, "--generator", case_checkpoint("church_256_s3"),
                   "--out", tmp_path / "other")
    assert proc.returncode == 1
    assert_one_line_error(proc, "256")


def test_delta_scale_leaves_a_refined_code_as_it_is(refined, tmp_path):
    """A HyperStyle code is one W vector on every row: it records no delta scale and `--delta-scale`
    changes nothing (it used to fail on the missing record)."""
    proc = run_e4e("edit", refined["dir"] / "latent.npy", "-d", "ganspace:0:0:5", "--pca",
                   PARITY / "directions" / "cars_pca.pt", "-s", "2", "--delta-scale", "0.5", "--out", tmp_path, *FP32)
    assert proc.returncode == 0, proc.stderr
    name = "car_img_ganspace-0-0-5_+2"
    assert np.array_equal(np.load(tmp_path / f"{name}.npy"), np.load(refined["edits"] / f"{name}.npy"))
    got = np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB"), dtype=int)
    want = np.asarray(Image.open(refined["edits"] / f"{name}.png").convert("RGB"), dtype=int)
    assert np.abs(got - want).max() <= 1
