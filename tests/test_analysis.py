"""Closeness to W: delta scale, latent reports, W statistics, Mahalanobis distance, LEC,
SeFa directions, image metrics and `e4e evaluate`, with real numbers on the synthetic
church 256 checkpoint (fast) and real test images from scikit-image."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_e4e

from e4e_cli import analysis, metrics
from e4e_cli.editing import sefa_directions
from e4e_cli.model import E4E

CASE = "church_256_s3"
W_SAMPLES = 2000  # the CLI uses 10,000; fewer keep the tests fast


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """W statistics go to a temporary cache folder, never the user's."""
    d = tmp_path_factory.mktemp("e4e-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("E4E_CACHE_DIR", str(d))
        yield d


@pytest.fixture(scope="module")
def church(parity_dir, case_checkpoint, cache_dir):
    """(model, encoder input, EncoderOutput, fixture npz) for the church parity case."""
    spec = json.loads((parity_dir / "cases" / f"{CASE}.json").read_text())
    model = E4E.from_checkpoint(case_checkpoint(CASE), device="cpu")
    image = Image.open(parity_dir / spec["image"]).convert("RGB")
    x = model.preprocess([image])
    parts = model.encode_parts(x)
    return model, x, parts, np.load(parity_dir / "cases" / f"{CASE}.npz")


# --------------------------------------------------------------------------------------
# delta scale


def test_delta_scale_zero_is_the_same_w_on_every_layer(church):
    model, _, parts, _ = church
    avg = model.latent_avg
    assert torch.equal(avg, avg[:1].expand_as(avg))  # synthetic checkpoints: one latent_avg for every layer
    codes = parts.codes(0.0)[0]
    w = codes - avg  # [n,512]: w0 on every layer
    assert torch.allclose(w, w[:1].expand_as(w), atol=1e-6, rtol=0)
    assert torch.allclose(w[0], parts.w0[0], atol=1e-6)
    assert float(w.var(dim=0).mean()) < 1e-12


def test_delta_scale_one_reproduces_the_fixture_and_scales_linearly(church):
    _, x, parts, data = church
    assert np.abs(x.numpy() - data["input"]).max() <= 1e-6
    c1 = parts.codes(1.0).numpy()
    assert np.abs(c1 - data["codes"]).max() <= 1e-4
    c0, c_half, c2 = parts.codes(0.0), parts.codes(0.5), parts.codes(2.0)
    assert torch.allclose(c_half, (c0 + parts.codes(1.0)) / 2, atol=1e-5)
    assert torch.allclose(c2 - c0, 2 * (parts.codes(1.0) - c0), atol=1e-5)


# --------------------------------------------------------------------------------------
# W statistics and Mahalanobis distance


def test_w_statistics_are_the_sample_moments_and_cached_on_disk(church, tmp_path, monkeypatch):
    model = church[0]
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("E4E_CACHE_DIR", str(cache_dir))
    analysis._WSTATS_MEMORY.clear()
    mean, cov = analysis.w_statistics(model, n=W_SAMPLES, seed=0)
    w = model.sample_w(W_SAMPLES, seed=0).double().numpy()
    assert mean.shape == (512,) and cov.shape == (512, 512)
    assert np.allclose(mean, w.mean(0), atol=1e-9)
    assert np.allclose(cov, np.cov(w, rowvar=False), atol=1e-12)
    files = list((cache_dir / "wstats").glob("*.npz"))
    assert len(files) == 1 and files[0].stat().st_size > 512 * 512 * 8
    # a fresh process (empty memory cache) reads the file instead of sampling again
    analysis._WSTATS_MEMORY.clear()
    with np.load(files[0]) as z:
        assert int(z["n"]) == W_SAMPLES
    model_sample = model.sample_w
    model.sample_w = lambda *a, **k: pytest.fail("W statistics were recomputed instead of read from the cache")
    try:
        mean2, cov2 = analysis.w_statistics(model, n=W_SAMPLES, seed=0)
    finally:
        model.sample_w = model_sample
    assert np.array_equal(mean, mean2) and np.array_equal(cov, cov2)
    analysis.w_statistics(model, n=W_SAMPLES // 2, seed=0)  # another n: another cache entry
    assert len(list((cache_dir / "wstats").glob("*.npz"))) == 2


def test_mahalanobis_matches_the_formula_is_zero_at_the_mean_and_grows():
    rng = np.random.default_rng(0)
    d = 512
    a = rng.normal(size=(d, 64))
    cov = a @ a.T / 64 + 0.05 * np.eye(d)  # low-rank plus a floor, like W
    mean = rng.normal(size=d)
    v = rng.normal(size=d)
    lam = analysis.regulariser(cov)
    assert lam == pytest.approx(1e-3 * np.trace(cov) / d + 1e-6)
    expected = math.sqrt(v @ np.linalg.solve(cov + lam * np.eye(d), v))
    ts = np.array([0.0, 0.5, 1.0, 2.0, 4.0])
    dist = analysis.mahalanobis(mean + ts[:, None] * v, mean, cov)
    assert dist.shape == (5,)
    assert dist[0] == 0.0
    assert np.allclose(dist, ts * expected, rtol=1e-8)
    assert np.all(np.diff(dist) > 0)
    # batch shape [2,3,512] -> [2,3]; torch input works too
    codes = torch.from_numpy(mean + rng.normal(size=(2, 3, d)))
    assert analysis.mahalanobis(codes, mean, cov).shape == (2, 3)


def test_mahalanobis_on_the_checkpoint_statistics(church):
    model = church[0]
    mean, cov = analysis.w_statistics(model, n=W_SAMPLES)
    # the synthetic mapping network collapses W to (nearly) one point: the regulariser keeps it finite
    direction = np.ones(512) / math.sqrt(512)
    dist = analysis.mahalanobis(mean + np.array([0.0, 0.1, 0.2])[:, None] * direction, mean, cov)
    assert dist[0] == 0.0 and 0 < dist[1] < dist[2] and np.isfinite(dist).all()
    assert dist[2] == pytest.approx(2 * dist[1], rel=1e-6)


# --------------------------------------------------------------------------------------
# latent report


def test_report_delta_norms_are_norms_of_codes_minus_scale0_codes(church, tmp_path):
    model, _, parts, _ = church
    a = 0.7
    stats = analysis.w_statistics(model, n=W_SAMPLES)
    rep = analysis.latent_report(model, parts.w0[0], parts.deltas[0], a, stats=stats)
    codes, codes0 = parts.codes(a)[0].double(), parts.codes(0.0)[0].double()
    expected = (codes - codes0).norm(dim=-1).numpy()
    assert rep["n_styles"] == model.n_styles == len(rep["delta_norm"]) == 14
    assert rep["delta_norm"][0] == 0.0
    assert np.allclose(rep["delta_norm"], expected, rtol=1e-5, atol=1e-6)
    assert np.allclose(np.array(rep["delta_norm"][1:]), a * parts.deltas[0].double().norm(dim=-1).numpy(), rtol=1e-5)
    assert rep["mean_delta_norm"] == pytest.approx(expected.mean(), rel=1e-5)
    assert rep["layer_variance"] == pytest.approx(float(codes.var(dim=0, unbiased=False).mean()), rel=1e-5)
    assert rep["layer_variance"] > 0 and rep["layer_variance_scale0"] < 1e-12
    assert np.allclose(rep["w_distance"], analysis.mahalanobis(codes.numpy(), *stats), rtol=1e-6)
    # at scale 0 every layer is the same vector, so the same distance; layer 0 never moves
    d0 = rep["w_distance_scale0"]
    assert np.allclose(d0, d0[0], rtol=1e-9) and rep["w_distance"][0] == pytest.approx(d0[0], rel=1e-9)
    # scale 0 report: no deltas at all
    rep0 = analysis.latent_report(model, parts.w0[0], parts.deltas[0], 0.0, stats=stats)
    assert max(rep0["delta_norm"]) < 1e-6 and np.allclose(rep0["w_distance"], d0)

    files = analysis.write_report(tmp_path / "r", rep)
    assert set(files) == {"report", "report_chart"}
    assert json.loads((tmp_path / "r" / "report.json").read_text()) == rep
    with Image.open(tmp_path / "r" / "report.png") as im:
        assert im.format == "PNG" and im.width >= 600 and im.height >= 400
        assert len(im.convert("RGB").getcolors(1 << 20)) > 10  # something was drawn
    assert not list((tmp_path / "r").glob(".*part"))


# --------------------------------------------------------------------------------------
# SeFa and LEC


@pytest.mark.parametrize("layers", [list(range(14)), [0, 1, 2, 3], [9]])
def test_sefa_directions_are_unit_and_orthogonal(church, layers):
    model = church[0]
    dirs, vals = sefa_directions(model.generator, layers)
    assert dirs.shape == (512, 512) and vals.shape == (512,)
    gram = (dirs.double() @ dirs.double().T).numpy()
    assert np.abs(gram - np.eye(512)).max() < 1e-4
    assert np.all(np.diff(vals.numpy()) <= 1e-4)  # decreasing eigenvalues


def test_sefa_directions_satisfy_the_eigen_relation(church):
    """SeFa from its definition: the k-th direction d is a unit eigenvector of A^T A, where A stacks
    the chosen layers' modulation weights [in,512] with unit rows, and its eigenvalue d^T A^T A d is
    the k-th largest (the largest also found by power iteration, independently of eigh)."""
    model = church[0]
    layers = [0, 1, 2, 3]
    rows = []
    for conv, idx in model.generator.layers():
        if idx in layers:
            w = conv.modulation.weight.detach().double()  # [in,512]
            rows.append(w / w.norm(dim=1, keepdim=True))
    a = torch.cat(rows)
    m = a.T @ a  # [512,512]
    dirs, vals = sefa_directions(model.generator, layers)
    for k in range(5):
        d = dirs[k].double()
        lam = float(d @ m @ d)
        assert float((m @ d - lam * d).norm()) <= 1e-4 * float(m.norm())
        assert lam == pytest.approx(float(vals[k]), rel=1e-4)
    v = torch.ones(512, dtype=torch.float64)
    for _ in range(500):
        v = m @ v
        v = v / v.norm()
    assert float(v @ m @ v) == pytest.approx(float(vals[0]), rel=1e-3)
    assert abs(float(v @ dirs[0].double())) == pytest.approx(1.0, abs=1e-3)


def test_mapping_network_matches_the_spec_by_hand(church, case_checkpoint):
    """SPEC's mapping from the checkpoint's raw tensors with plain ops: pixel norm, then 8 x
    [x @ (W * 0.01 / sqrt(512)).T + b * 0.01 -> leaky_relu(0.2) * sqrt(2)]."""
    model = church[0]
    sd = torch.load(case_checkpoint(CASE), map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    z = torch.randn(6, 512, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = z / torch.sqrt((z * z).mean(dim=1, keepdim=True) + 1e-8)
    for i in range(1, 9):
        w = sd[f"decoder.style.{i}.weight"].double()
        b = sd[f"decoder.style.{i}.bias"].double()
        x = torch.nn.functional.leaky_relu(x @ (w * 0.01 / math.sqrt(512)).T + b * 0.01, 0.2) * math.sqrt(2)
    with torch.no_grad():
        got = model.generator.mapping(z.float()).double()
    assert float((got - x).abs().max() / x.abs().max()) < 1e-5


def test_lec_of_a_zero_strength_edit_is_zero(church):
    from e4e_cli.editing import resolve_direction

    model, x, parts, _ = church
    d = resolve_direction("sefa:0", model)
    res = analysis.lec(model, x, d, 0.0, delta_scale=1.0, parts=parts)
    assert res["edit_norm"] == 0.0
    assert res["lec_latent"] <= 1e-6 * res["code_norm"]
    assert res["lec_image_mse"] <= 1e-8 and res["lec_image_psnr"] > 60
    # the paper's form compares with the first inversion: what remains is the encoder's own re-inversion error
    assert res["drift_latent"] > 0
    assert res["lec_latent_paper"] == pytest.approx(res["drift_latent"], rel=1e-6)
    assert math.isfinite(res["lec_paper_image_psnr"])


def test_lec_of_a_nonzero_edit_matches_a_hand_computation(church):
    """LEC at strength 2 and delta scale 0.5, against the definition computed here with plain ops
    (codes by hand from w0/deltas/latent_avg, the round trip through 8-bit images by hand): a
    dropped term (the offset, the delta scale, the reference trip) changes the numbers."""
    model, x, parts, _ = church
    torch.manual_seed(0)
    d = torch.randn(1, 1, 512)
    d = d / d.norm()
    s, a = 2.0, 0.5
    res = analysis.lec(model, x, d, s, delta_scale=a, parts=parts)

    def codes_of(p):  # latent_avg + w0 + a * [0, deltas]
        zero = torch.zeros_like(p.deltas[:, :1])
        return p.latent_avg[None] + p.w0[:, None] + a * torch.cat([zero, p.deltas], dim=1)

    def round_trip(codes):  # decode, 8 bit, back into the encoder like a photo
        img = model.decode(codes)
        u8 = (((img + 1) / 2).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        again = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255.0
        return codes_of(model.encode_parts((again - 0.5) / 0.5))

    with torch.inference_mode():
        w = codes_of(parts)
        offset = s * d.expand_as(w)
        ref = round_trip(w)
        back = round_trip(w + offset) - offset
    mean_l2 = lambda u, v: float((u.double() - v.double()).norm(dim=-1).mean())  # noqa: E731
    assert res["edit_norm"] == pytest.approx(s, rel=1e-5)
    assert res["lec_latent"] == pytest.approx(mean_l2(back, ref), rel=1e-4, abs=1e-5)
    assert res["lec_latent_paper"] == pytest.approx(mean_l2(back, w), rel=1e-4, abs=1e-5)
    assert res["drift_latent"] == pytest.approx(mean_l2(ref, w), rel=1e-4, abs=1e-5)
    # the three are different numbers, so each assertion checks its own term
    assert res["lec_latent"] > 0 and abs(res["lec_latent"] - res["drift_latent"]) > 1e-3
    assert abs(mean_l2(back + offset, ref) - res["lec_latent"]) > 1e-3  # without "- offset" it would differ


def test_lec_of_a_tensor_direction_matches_the_direction_object(church):
    from e4e_cli.editing import resolve_direction

    model, x, parts, _ = church
    d = resolve_direction("sefa:0", model)
    vec, _ = sefa_directions(model.generator, range(model.n_styles))
    codes = parts.codes(0.0)
    assert torch.allclose(d.apply(codes, 2.0), codes + 2.0 * vec[0], atol=1e-6)
    with pytest.raises(Exception, match="one image"):
        analysis.lec(model, torch.cat([x, x]), vec[0], 1.0)


# --------------------------------------------------------------------------------------
# metrics against scikit-image


@pytest.fixture(scope="module")
def test_images():
    skdata = pytest.importorskip("skimage.data")
    from skimage.filters import gaussian

    ref = skdata.astronaut()  # 512x512x3 uint8
    rng = np.random.default_rng(1)
    noisy = np.clip(ref + rng.normal(0, 12, ref.shape), 0, 255).astype(np.uint8)
    blurred = np.rint(gaussian(ref, sigma=1.5, channel_axis=-1) * 255).astype(np.uint8)
    return ref, {"noisy": noisy, "blurred": blurred}


@pytest.mark.parametrize("kind", ["noisy", "blurred"])
def test_psnr_ssim_mse_agree_with_scikit_image(test_images, kind):
    from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

    ref, others = test_images
    other = others[kind]
    assert metrics.psnr(ref, other) == pytest.approx(peak_signal_noise_ratio(ref, other, data_range=255), abs=1e-3)
    assert metrics.mse(ref, other) == pytest.approx(mean_squared_error(ref / 255.0, other / 255.0), rel=1e-9)
    sk = structural_similarity(ref / 255.0, other / 255.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False, data_range=1.0)
    ours = metrics.ssim(ref, other)
    assert ours == pytest.approx(sk, abs=1e-2)
    assert abs(ours - sk) < 1e-6  # same definition: in fact identical
    assert 0.2 < ours < 0.99


def test_metrics_on_a_grey_image_and_edge_cases(test_images):
    from skimage import data
    from skimage.metrics import structural_similarity

    cam = data.camera()
    noisy = np.clip(cam.astype(int) + 20 * (np.arange(cam.size).reshape(cam.shape) % 3 - 1), 0, 255).astype(np.uint8)
    sk = structural_similarity(cam / 255.0, noisy / 255.0, gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False, data_range=1.0)
    assert metrics.ssim(cam, noisy) == pytest.approx(sk, abs=1e-6)
    ref = test_images[0]
    assert metrics.psnr(ref, ref) == math.inf and metrics.mse(ref, ref) == 0.0
    assert metrics.ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim(Image.fromarray(ref), ref) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(Exception, match="different shapes"):
        metrics.mse(ref, ref[:10])


def test_lpips_is_reported_as_not_available_without_local_weights():
    ok, reason = metrics.lpips_status()
    if ok:
        pytest.skip("LPIPS and its weights are installed here")
    assert reason == metrics.LPIPS_NA == "n/a (LPIPS weights not present)"
    assert metrics.lpips_distance(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)) is None


# --------------------------------------------------------------------------------------
# through the CLI


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_cli_invert_report(church, parity_dir, case_checkpoint, cache_dir, tmp_path):
    data = church[3]
    proc = run_e4e("invert", parity_dir / "images" / "church_img.jpg", "--domain", "church", "--checkpoint",
                   case_checkpoint(CASE), "--device", "cpu", "--precision", "fp32", "--delta-scale", "0.5", "--report", "--out", tmp_path,
                   env={"E4E_CACHE_DIR": str(cache_dir)})
    assert proc.returncode == 0, proc.stderr
    d = tmp_path / "church_img"
    rep = json.loads((d / "report.json").read_text())
    with Image.open(d / "report.png") as im:
        assert im.format == "PNG"
    assert rep["delta_scale"] == 0.5 == json.loads((d / "meta.json").read_text())["delta_scale"]
    codes = np.load(d / "latent.npy").astype(np.float64)
    fixture = data["codes"][0].astype(np.float64)
    # latent_avg is the same on every layer here, so delta_i = code_i - code_0
    assert np.allclose(rep["delta_norm"], np.linalg.norm(codes - codes[:1], axis=1), rtol=1e-4, atol=1e-5)
    assert np.allclose(rep["delta_norm"], 0.5 * np.linalg.norm(fixture - fixture[:1], axis=1), rtol=1e-4, atol=1e-5)
    assert rep["layer_variance"] == pytest.approx(codes.var(axis=0).mean(), rel=1e-4)
    assert rep["w_stats"]["samples"] == 10_000
    assert all(a >= 0 and math.isfinite(a) for a in rep["w_distance"])


@pytest.mark.slow
def test_cli_evaluate_church(church, parity_dir, case_checkpoint, cache_dir, tmp_path):
    model, x, parts, _ = church
    out = tmp_path / "evaluate"
    proc = run_e4e("evaluate", parity_dir / "images" / "church_img.jpg", "--domain", "church", "--checkpoint",
                   case_checkpoint(CASE), "--device", "cpu", "--direction", "sefa:0", "--strength", "2",
                   "--delta-scales", "0,1", "--out", out, env={"E4E_CACHE_DIR": str(cache_dir)})
    assert proc.returncode == 0, proc.stderr
    assert "LEC" in proc.stdout and "n/a" in proc.stdout
    rows = _read_csv(out / "results.csv")
    assert [float(r["delta_scale"]) for r in rows] == [0.0, 1.0]
    for r in rows:
        assert r["image"].endswith("church_img.jpg") and r["direction"] == "sefa:0" and float(r["strength"]) == 2
        assert 0 < float(r["psnr"]) < 60 and -1 <= float(r["ssim"]) <= 1 and 0 < float(r["mse"]) < 1
        assert r["lpips"] == "n/a" or 0 <= float(r["lpips"]) < 2
        assert float(r["edit_norm"]) == pytest.approx(2.0, rel=1e-5)  # unit SeFa direction on every layer
        assert 0 < float(r["lec_latent"]) < 100 and float(r["drift_latent"]) > 0
        assert float(r["lec_latent_paper"]) > 0 and 0 < float(r["lec_image_mse"]) < 1
    r0, r1 = rows
    assert float(r0["delta_norm"]) == 0 and float(r0["layer_variance"]) == 0
    assert float(r1["delta_norm"]) == pytest.approx(
        float((parts.codes(1.0) - parts.codes(0.0)).double().norm(dim=-1).mean()), rel=1e-4)
    # distortion at scale 1 equals what the library computes for the same views
    inv = model.to_uint8(analysis.reencode_input(model, model.decode(parts.codes(1.0))))[0]
    assert float(r1["psnr"]) == pytest.approx(metrics.psnr(model.to_uint8(x)[0], inv), rel=1e-5)
    assert float(r1["ssim"]) == pytest.approx(metrics.ssim(model.to_uint8(x)[0], inv), rel=1e-5)
    curve = _read_csv(out / "curve.csv")
    assert len(curve) == 2 and all(c["n_images"] == "1" for c in curve)
    for c, r in zip(curve, rows):  # one image: the means are its numbers
        for k in ("psnr", "ssim", "lec_latent", "w_distance"):
            assert float(c[k]) == pytest.approx(float(r[k]), rel=1e-5)
    with Image.open(out / "curve.png") as im:
        assert im.format == "PNG" and im.width >= 600


def test_cli_evaluate_rejects_bad_scales(case_checkpoint, tmp_path):
    from conftest import assert_one_line_error

    proc = run_e4e("evaluate", tmp_path / "x.png", "--domain", "church", "--checkpoint", case_checkpoint(CASE),
                   "--delta-scales", "0,abc", "--device", "cpu", "--out", tmp_path / "o")
    assert_one_line_error(proc, "--delta-scales")
