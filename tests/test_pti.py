"""Issue 32: pivotal tuning (`e4e invert --refine pti`), on the synthetic church 256 checkpoint.

The tuning loop against numbers kept from the reference (tests/fixtures/pti, see its README),
the early stop, the difference file (exact reload, another base, truncation), the CLI's options
and bad inputs, `--pti-steps 0` = plain e4e, and an edit at strength 0 = inversion.png.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, run_e4e

FIXTURE = Path(__file__).parent / "fixtures" / "pti"
FP32 = ("--device", "cpu", "--precision", "fp32")


@pytest.fixture(scope="module")
def church_model(church):
    from e4e_cli.model import E4E

    return E4E.from_checkpoint(church, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def church_target(parity_dir):
    from e4e_cli.model import preprocess_images

    return preprocess_images([Image.open(Path(parity_dir) / "images" / "church_img.jpg")], (256, 256))


def test_tuning_matches_the_reference(church_model, church_target, lpips_dir):
    """Two steps on the reference's pivot: the losses of every forward, the parameters after them."""
    from e4e_cli.pti import PTISettings, tune_generator
    from e4e_cli.train.lossnets import load_lpips

    ref = np.load(FIXTURE / "church256_ref.npz")
    stats = json.loads((FIXTURE / "church256_ref.json").read_text())["delta_stats_2_values"]
    gen = copy.deepcopy(church_model.generator).float()
    before = {k: v.detach().clone() for k, v in gen.named_parameters()}
    log = tune_generator(gen, torch.from_numpy(ref["pivot"])[None], church_target, load_lpips(weights_dir=lpips_dir),
                         settings=PTISettings(steps=2))
    assert log.steps == 2 and not log.stopped_early
    np.testing.assert_allclose(np.array(log.losses), ref["losses_2"], rtol=1e-5, atol=1e-6)
    # more steps, lower loss on the fixture photo (the reference's first step: 3.43 -> 1.05)
    assert log.losses[1][2] < 0.5 * log.losses[0][2]
    params = dict(gen.named_parameters())
    for name in ref.files:
        if name.startswith("delta_2/"):
            k = name[len("delta_2/"):]
            got = (params[k].detach() - before[k]).reshape(-1)[:256].numpy()
            np.testing.assert_allclose(got, ref[name], atol=2e-6, err_msg=k)
    for k, (_, abs_sum, norm, numel) in stats.items():
        d = (params[k].detach() - before[k]).double()
        assert d.numel() == numel, k
        assert abs(float(d.norm()) - norm) <= 1e-4 * max(norm, 1e-6) + 1e-7, k
        assert abs(float(d.abs().sum()) - abs_sum) <= 1e-4 * max(abs_sum, 1e-6) + 1e-7, k
    # the reference's mapping network never moves (no gradient from a W+ code)
    assert all(bool((params[k] == before[k]).all()) for k in params if k.startswith("style."))


def test_early_stop_fires_when_the_threshold_is_high(church_model, church_target, lpips_dir):
    from e4e_cli.pti import PTISettings, tune_generator
    from e4e_cli.train.lossnets import load_lpips

    ref = np.load(FIXTURE / "church256_ref.npz")
    gen = copy.deepcopy(church_model.generator).float()
    before = {k: v.detach().clone() for k, v in gen.named_parameters()}
    log = tune_generator(gen, torch.from_numpy(ref["pivot"])[None], church_target, load_lpips(weights_dir=lpips_dir),
                         settings=PTISettings(steps=3, lpips_stop=0.6))
    assert log.stopped_early and log.steps == 0 and len(log.losses) == 1
    assert all(bool((p == before[k]).all()) for k, p in gen.named_parameters())


def _small_diff(model):
    """A made-up difference on a few parameters of `model`'s generator (float16 values)."""
    from e4e_cli.pti import tuned_parameters

    params = tuned_parameters(model.generator)
    rng = np.random.RandomState(0)
    return {k: (rng.randn(*params[k].shape) * 1e-3).astype(np.float16)
            for k in ("conv1.conv.weight", "to_rgbs.5.bias", "convs.3.noise.weight")}


def test_difference_file_reloads_exactly_and_refuses_others(church_model, tmp_path):
    from e4e_cli.errors import E4EError
    from e4e_cli.pti import apply_diff, base_sha256, load_diff, save_diff

    diff = _small_diff(church_model)
    sha = base_sha256(church_model)
    path = save_diff(tmp_path / "tuned_generator.npz", diff, meta={"base_sha256": sha, "method": "pti"})
    got, meta = load_diff(path, generator=church_model.generator, base_sha256=sha)
    assert meta["base_sha256"] == sha and sorted(got) == sorted(diff)
    for k, v in diff.items():
        assert torch.equal(got[k], torch.from_numpy(v.astype(np.float32))), k
    tuned = apply_diff(church_model.generator, got)
    base = dict(church_model.generator.named_parameters())
    for k, p in tuned.named_parameters():
        want = base[k].detach() + got[k] if k in got else base[k].detach()
        assert torch.equal(p.detach(), want), k
    with zipfile_truncated(path, tmp_path / "cut.npz") as cut, pytest.raises(E4EError, match="truncated or corrupt"):
        load_diff(cut, generator=church_model.generator, base_sha256=sha)
    with pytest.raises(E4EError, match="another base generator"):
        load_diff(path, generator=church_model.generator, base_sha256="0" * 64)
    with pytest.raises(E4EError, match="no such file"):
        load_diff(tmp_path / "missing.npz")


class zipfile_truncated:
    """A copy of `src` cut to 60% of its bytes, as an interrupted copy leaves it."""

    def __init__(self, src, dst):
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: int(len(data) * 0.6)])
        self.dst = dst

    def __enter__(self):
        return self.dst

    def __exit__(self, *exc):
        return False


def test_settings_refuse_values_that_cannot_be_meant():
    from e4e_cli.errors import E4EError
    from e4e_cli.pti import PTISettings

    for bad in (dict(steps=-1), dict(steps=2.5), dict(lr=0.0), dict(lpips_stop=-0.1), dict(precision="fp8")):
        with pytest.raises(E4EError) as info:
            PTISettings(**bad).check()
        assert info.value.exit_code == 2


# ---------------------------------------------------------------------------------------------
# the command line


def test_pti_options_without_refine_pti_and_bad_steps(tmp_path):
    photo = tmp_path / "p.png"
    Image.new("RGB", (64, 64), (90, 120, 150)).save(photo)
    assert_one_line_error(run_e4e("invert", photo, "--pti-steps", "3", "--out", tmp_path / "o"), "need --refine pti", code=2)
    assert_one_line_error(run_e4e("invert", photo, "--refine", "pti", "--pti-steps", "-1", "--out", tmp_path / "o"),
                          "--pti-steps", code=2)
    assert_one_line_error(run_e4e("invert", photo, "--refine", "pti", "--pti-steps", "2.5", "--out", tmp_path / "o"),
                          "--pti-steps", code=2)
    assert not (tmp_path / "o").exists()


def test_missing_lpips_weights_exit_3(church, tmp_path):
    photo = tmp_path / "p.png"
    Image.new("RGB", (64, 64), (90, 120, 150)).save(photo)
    proc = run_e4e("invert", photo, "--refine", "pti", "--checkpoint", church, "--weights-dir", tmp_path / "empty",
                   "--out", tmp_path / "o", *FP32)
    assert_one_line_error(proc, "e4e download-weights lpips", code=3)


@pytest.fixture(scope="module")
def tuned_result(church, parity_dir, lpips_dir, tmp_path_factory):
    """`e4e invert church_img.jpg --refine pti --pti-steps 1`, and the photo's plain e4e."""
    tmp = tmp_path_factory.mktemp("pti-cli")
    photo = Path(parity_dir) / "images" / "church_img.jpg"
    proc = run_e4e("invert", photo, "--refine", "pti", "--pti-steps", "1", "--checkpoint", church,
                   "--weights-dir", lpips_dir, *FP32, "--out", tmp / "tuned")
    assert proc.returncode == 0, proc.stderr
    return {"tmp": tmp, "photo": photo, "dir": tmp / "tuned" / "church_img"}


@pytest.fixture(scope="module")
def plain(church_model, parity_dir):
    """Plain e4e of the church photo: (code [n,512], reconstruction uint8 [H,W,3])."""
    model = church_model
    codes = model.encode(model.preprocess([Image.open(Path(parity_dir) / "images" / "church_img.jpg")]))
    return codes[0].numpy(), model.to_uint8(model.decode(codes))[0].astype(int)


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_invert_writes_a_tuned_result(tuned_result, plain):
    d = tuned_result["dir"]
    meta = json.loads((d / "meta.json").read_text())
    rec = meta["refine"]
    assert rec["method"] == "pti" and rec["steps_run"] == 1 and rec["lr"] == 3e-4 and rec["lpips_stop"] == 0.06
    assert rec["base_sha256"] == meta["made_with"]["checkpoint"]["sha256"] and rec["precision"] == "fp16"
    with np.load(d / "tuned_generator.npz", allow_pickle=False) as z:
        assert all(z[k].dtype == np.float16 for k in z.files if k != "meta")
    code, image = plain
    assert np.array_equal(np.load(d / "latent.npy"), code)  # the pivot is the e4e code
    assert np.abs(_pixels(d / "inversion.png") - image).max() > 0  # and the tuned generator decodes it


def test_zero_steps_equal_plain_e4e(church_model, lpips_dir, parity_dir, plain, tmp_path):
    from e4e_cli.pti import PTI, PTISettings
    from e4e_cli.train.lossnets import load_lpips

    pti = PTI(church_model, load_lpips(weights_dir=lpips_dir), PTISettings(steps=0))
    r = pti.refine(pti.preprocess([Image.open(Path(parity_dir) / "images" / "church_img.jpg")]))
    assert r.tuned[0].diff == {} and r.tuned[0].log.steps == 0
    assert np.array_equal(r.codes[0].numpy(), plain[0])
    assert np.array_equal(church_model.to_uint8(r.image)[0].astype(int), plain[1])


def test_edit_at_strength_zero_reproduces_the_inversion(tuned_result, tmp_path):
    d = tuned_result["dir"]
    np.save(tmp_path / "dir.npy", np.random.RandomState(0).randn(1, 512).astype(np.float32))
    proc = run_e4e("edit", d, "-d", tmp_path / "dir.npy", "-s", "0", "--out", tmp_path / "E", *FP32)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(_pixels(tmp_path / "E" / "church_img_dir_+0.png"), _pixels(d / "inversion.png"))


def test_ctrl_c_during_tuning_leaves_no_half_written_result(church, lpips_dir, tmp_path):
    import time

    from conftest import interrupt_e4e, noise_photo

    photo = noise_photo(tmp_path / "in" / "p0.png", seed=0)
    out = tmp_path / "out"
    t0 = time.time()
    proc = interrupt_e4e("invert", photo, "--refine", "pti", "--pti-steps", "350", "--checkpoint", church,
                         "--weights-dir", lpips_dir, "--out", out, *FP32, when=out)
    assert_one_line_error(proc, "interrupted", code=130)
    assert time.time() - t0 < 120
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert left == ["summary.json"], left
    assert json.loads((out / "summary.json").read_text())["interrupted"] is True


def test_evaluate_puts_pti_beside_e4e(church_model, lpips_dir, parity_dir):
    """`e4e evaluate --refine pti`'s rows: a pti row per image beside e4e's (0 steps: the same numbers)."""
    from e4e_cli.jobs.evaluate import Meters, evaluate_images, side_by_side
    from e4e_cli.pti import PTI, PTISettings
    from e4e_cli.train.lossnets import load_lpips

    pti = PTI(church_model, load_lpips(weights_dir=lpips_dir), PTISettings(steps=0))
    ev = evaluate_images([Path(parity_dir) / "images" / "church_img.jpg"], church_model, [1.0], align=False,
                         meters=Meters(), pti=pti)
    assert not ev.failures and [r["method"] for r in ev.rows] == ["e4e", "pti"]
    e4e, tuned = ev.rows
    assert tuned["refine_steps"] == 0 and tuned["seconds"] > 0 and tuned["mse"] == e4e["mse"]
    assert [m["method"] for m in side_by_side(ev.rows)] == ["e4e", "pti"] and len(ev.views[0]) == 4


def test_text_edit_of_a_tuned_result(tuned_result, church_model, tmp_path):
    """`e4e edit PTI_FOLDER --text T` (issue 33 on issue 32's results): decoded with the tuned
    generator, so alpha 0 gives back inversion.png and alpha 3 moves the image."""
    from clip_support import random_clip, tiny_vocab
    from e4e_cli.clip_text import Tokenizer

    d = tuned_result["dir"]
    weights = tmp_path / "weights"
    vocab = tiny_vocab(weights / "bpe_simple_vocab_16e6.txt.gz")
    random_clip(weights / "clip-vit-base-patch32.safetensors", vocab_size=Tokenizer(vocab).vocab_size, seed=1,
                width=64, layers=1, proj=32)
    c = church_model.generator.n_style_channels
    fs3 = np.random.RandomState(0).randn(c, 32).astype(np.float32)
    fs3 /= np.linalg.norm(fs3, axis=1, keepdims=True)
    np.savez(tmp_path / "rel.npz", fs3=fs3, std=np.full(c, 0.5, np.float32))
    proc = run_e4e("edit", d, "--text", "church with snow", "--relevance", tmp_path / "rel.npz", "--alpha", "0",
                   "--alpha", "3", "--beta", "0.2", "--weights-dir", weights, "--out", tmp_path / "E", *FP32)
    assert proc.returncode == 0, proc.stderr
    zero, three = (_pixels(p) for p in sorted((tmp_path / "E").glob("*_text_*_+[03].png")))
    assert np.array_equal(zero, _pixels(d / "inversion.png"))
    assert np.abs(three.astype(np.int16) - zero).mean() > 1.0
