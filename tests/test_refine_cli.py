"""`e4e invert --refine hyperstyle` and `e4e edit` on its results, end to end through the command
line, on the synthetic cars 512 HyperStyle checkpoint (every layer tuned, ToRGB included), and
the one-line errors for bad input. The numbers are checked against the reference's outputs."""
from __future__ import annotations

import base64
import io
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
    for args, needle in ((("--refine-steps", "3"), "need --refine hyperstyle"), (("--refine", "ptx"), "unknown --refine"),
                         (("--refine", "hyperstyle", "--delta-scale", "0.5"), "--delta-scale"),
                         (("--refine", "hyperstyle", "--offsets-precision", "int8"), "--offsets-precision")):
        proc = run_e4e("invert", PHOTO, *args, "--out", tmp_path / "o")
        assert proc.returncode == 2, args  # usage errors
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


@pytest.fixture(scope="module")
def page(refined, case_checkpoint):
    """The page's model, and a HyperStyle of its own for the tests' independent decodes."""
    from e4e_cli.model import E4E
    from e4e_cli.refine import HyperStyle

    model = E4E.from_checkpoint(case_checkpoint(CASE), device="cpu", precision="fp32")
    return model, HyperStyle.from_files(refined["hs"], refined["we"], device="cpu", precision="fp32")


def _pixels(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"), dtype=int)


def _thumbnail(model, images) -> np.ndarray:
    """What the page shows of a decode as its inversion: the PREVIEW_SIDE PNG."""
    from e4e_cli.ui.previews import PREVIEW_SIDE, data_url, png

    return _pixels(data_url(png(model.to_pil(images)[0], PREVIEW_SIDE)))


def test_ui_refines_an_upload_and_opens_a_refined_latent(refined, page):
    """What the page shows and keeps, against decodes computed here from the files on disk and
    from a refinement of the same photo by another HyperStyle instance."""
    from e4e_cli.images import load_image
    from e4e_cli.ui.editor import Editor

    model, hs = page
    plain = Editor(model, synthetic=True)
    assert plain.info()["refine"] is False
    ed = Editor(model, synthetic=True, latents_dir=refined["dir"].parent, refiner_files=(refined["hs"], refined["we"]))
    assert ed.info()["refine"] is True

    # an invert --refine result opens refined: latent.npy's code with weight_offsets.npz
    opened = ed.pick_latent("car_img/latent.npy")
    assert opened["refined"] is True
    code = torch.from_numpy(np.load(refined["dir"] / "latent.npy"))[None]
    offsets, _ = load_offsets(refined["dir"] / "weight_offsets.npz")
    want = hs.decode(code, offsets=offsets)
    assert np.array_equal(_pixels(opened["inversion"]), _thumbnail(model, want))
    img, _ = ed.render(opened["session"], {}, 1.0, False, refined=True)
    assert np.array_equal(np.asarray(img), np.asarray(model.to_pil(want)[0]))
    unrefined, _ = ed.render(opened["session"], {}, 1.0, False, refined=False)  # the same code without offsets
    assert np.abs(np.asarray(unrefined, dtype=int) - np.asarray(img, dtype=int)).mean() > 5

    # an upload: e4e first, refined on request (one step here), then edits decode with the offsets
    up = ed.upload(PHOTO.read_bytes(), "car.jpg")
    with pytest.raises(Exception, match="not refined yet"):
        ed.render(up["session"], {}, 1.0, False, refined=True)
    out = ed.refine(up["session"], steps=1)
    r = hs.refine([load_image(PHOTO)], steps=1)
    mine = {k: v.half().float() for k, v in r.offsets_of(0).items()}  # the page keeps them at float16 precision
    s = ed.session(up["session"])
    assert float((s.refined[0] - r.codes).abs().max()) <= 1e-5, "the session keeps the refined code"
    assert sorted(s.refined[1]) == sorted(mine) and all(torch.equal(s.refined[1][k], mine[k]) for k in mine)
    assert out["refined"] is True
    shown, want = _pixels(out["inversion"]), _thumbnail(model, hs.decode(r.codes, offsets=mine))
    assert np.abs(shown - want).max() <= 2 and np.abs(shown - want).mean() < 0.05, "the refine answer is the refined decode"
    key = next(iter(ed.directions))
    img, codes = ed.render(up["session"], {key: 2.0}, 1.0, False, refined=True)
    edited = ed.directions[key][1].apply(r.codes, 2.0)
    assert float((codes - edited).abs().max()) <= 1e-5
    want = np.asarray(model.to_pil(hs.decode(edited, offsets=mine))[0], dtype=int)
    assert np.abs(np.asarray(img, dtype=int) - want).max() <= 1


def test_ui_refined_download_is_the_edited_code_with_the_offsets(refined, page, tmp_path):
    """In refined mode the page's latent download is one .npz: the edited code, the session's
    offsets and the refine record; decoded here it is the page's image. Plain mode stays .npy."""
    from e4e_cli.refine import load_refined_latent
    from e4e_cli.ui.editor import Editor

    model, hs = page
    ed = Editor(model, synthetic=True, latents_dir=refined["dir"].parent, refiner_files=(refined["hs"], refined["we"]))
    opened = ed.pick_latent("car_img/latent.npy")["session"]
    up = ed.upload(PHOTO.read_bytes(), "car.jpg")["session"]
    ed.refine(up, steps=1)
    key = next(iter(ed.directions))
    for sid, steps in ((up, 1), (opened, 5)):
        s = ed.session(sid)
        data, name = ed.latent_file(sid, {key: 2.0}, 1.0, refined=True)
        assert name == f"{s.name}_edit_refined.npz"
        (tmp_path / name).write_bytes(data)
        code, meta = load_refined_latent(tmp_path / name)
        edited = ed.directions[key][1].apply(s.refined[0], 2.0)
        assert np.array_equal(code, edited[0].numpy())
        offsets, _ = load_offsets(tmp_path / name, generator=hs.decoder.generator)
        assert sorted(offsets) == sorted(s.refined[1]) and all(torch.equal(offsets[k], s.refined[1][k]) for k in offsets)
        assert {k: meta[k] for k in ("method", "refiner_sha256", "steps", "layers", "size", "domain")} == {
            "method": "hyperstyle", "refiner_sha256": hs.sha256(), "steps": steps, "layers": list(hs.layers),
            "size": 512, "domain": "cars"}
        assert meta["refiner"] == str(refined["hs"].resolve()) and meta["w_encoder"] == str(refined["we"].resolve())
        img, _ = ed.render(sid, {key: 2.0}, 1.0, False, refined=True)
        want = model.to_pil(hs.decode(torch.from_numpy(code)[None], offsets=offsets))[0]
        assert np.array_equal(np.asarray(img), np.asarray(want))
    data, name = ed.latent_file(up, {key: 2.0}, 1.0)
    assert name == "car_edit.npy"
    plain = ed.directions[key][1].apply(ed.session(up).codes, 2.0)[0].numpy()
    assert np.array_equal(np.load(io.BytesIO(data)), plain)


def test_ui_refuses_a_refined_latent_of_another_refiner(refined, page, tmp_path):
    """Offsets belong to the generator of the refiner that made them: a latent whose record names
    another refiner's SHA-256 is refused in one line, and without a refiner the page says how to
    get one; neither opens a session."""
    from e4e_cli.errors import E4EError
    from e4e_cli.ui.editor import Editor

    model, _ = page
    d = tmp_path / "latents" / "car_img"
    shutil.copytree(refined["dir"], d)
    meta = json.loads((d / "meta.json").read_text())
    meta["refine"]["refiner_sha256"] = "0" * 64
    (d / "meta.json").write_text(json.dumps(meta))
    ed = Editor(model, synthetic=True, latents_dir=d.parent, refiner_files=(refined["hs"], refined["we"]))
    with pytest.raises(E4EError, match="^that latent was refined with another HyperStyle checkpoint than this page's refiner$"):
        ed.pick_latent("car_img/latent.npy")
    bare = Editor(model, synthetic=True, latents_dir=refined["dir"].parent)
    with pytest.raises(E4EError, match="e4e download-weights hyperstyle_cars"):
        bare.pick_latent("car_img/latent.npy")
    assert len(ed.sessions) == len(bare.sessions) == 0


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
