"""`e4e directions fit / pca / show` (issue 24): directions made from labels (InterFaceGAN),
from a generator's W (GANSpace) and their strip images, at tiny scale on the CPU.

Every fixture is built here: synthetic W-like codes with a planted direction, tiny StyleGAN2
generators (rosinality layout) and a tiny e4e checkpoint (narrow encoder) for photos.
"""
from __future__ import annotations

import json
import pickle
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import conftest
from conftest import RunsCode
from e4e_cli import editing
from e4e_cli.boundaries import CovarianceStream, fit_boundary, project_out
from e4e_cli.cli.app import main
from e4e_cli.jobs import sampled
from e4e_cli.model import E4E
from e4e_cli.train.generators import save_rosinality_checkpoint


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run `e4e ARGS` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(result, *needles):
    code, out, err = result
    assert code != 0, (out, err)
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("e4e: error:"), err
    assert "Traceback" not in out + err
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("E4E_NO_PROGRESS", "1")
    monkeypatch.setenv("E4E_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.delenv("E4E_DEBUG", raising=False)


# ---------------------------------------------------------------------------------- fit maths


def planted(n, noise, seed=0, dim=512):
    """W-like codes (offset, spread 0.4) and labels from the sign of their projection on a
    unit vector p plus Gaussian noise of std `noise` (the projection's std is 1)."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(dim)
    p /= np.linalg.norm(p)
    z = rng.standard_normal((n, dim))
    codes = (0.4 * z + 0.1).astype(np.float32)
    labels = ((z @ p + noise * rng.standard_normal(n)) > 0).astype(np.float64)
    return codes, labels, p


def test_fit_recovers_a_planted_direction():
    # measured (LinearSVC C=1, seeds 0-4): 0.953-0.963 for 4000 codes with noise 0.2; 0.997-0.998
    # for 10000 without noise; each fit takes 1-3 s on 2 cores
    x, y, p = planted(4000, 0.2, seed=1)
    t = time.time()
    b = fit_boundary(x, y)
    cos_noisy, t_noisy = float(b.normal @ p), time.time() - t
    assert cos_noisy > 0.95, cos_noisy
    assert b.n_positive + b.n_negative == 4000 and b.n_validation == pytest.approx(1200, abs=2)
    assert 0.8 < b.validation_accuracy < 1.0  # the noise caps it
    x, y, p = planted(10000, 0.0, seed=2)
    t = time.time()
    b = fit_boundary(x, y)
    cos_clean, t_clean = float(b.normal @ p), time.time() - t
    assert cos_clean > 0.985, cos_clean
    print(f"planted: cos {cos_noisy:.4f} (4000, noise 0.2, {t_noisy:.1f} s), {cos_clean:.4f} (10000, clean, {t_clean:.1f} s)")


def test_real_valued_labels_use_the_top_and_bottom_ratio():
    x, _, p = planted(2000, 0.0, seed=3)
    scores = (x - 0.1) @ p / 0.4  # a score, not a class
    b = fit_boundary(x, scores, ratio=0.1)
    assert (b.label_kind, b.n_positive, b.n_negative) == ("real", 200, 200)
    assert b.threshold["positive_min"] >= np.sort(scores)[-200] and b.threshold["negative_max"] <= np.sort(scores)[199]
    assert float(b.normal @ p) > 0.85  # 400 codes in 512-d: measured 0.889


def test_project_out_is_orthogonal_and_follows_the_formula():
    rng = np.random.default_rng(0)
    n = rng.standard_normal(512)
    n /= np.linalg.norm(n)
    c = np.stack([rng.standard_normal(512), n + rng.standard_normal(512)])
    out = project_out(n, c)
    assert np.abs(c @ out).max() <= 1e-6 * np.linalg.norm(c, axis=1).max()
    q, _ = np.linalg.qr(c.T)
    want = n - q @ (q.T @ n)
    np.testing.assert_allclose(out, want / np.linalg.norm(want), atol=1e-12)
    with pytest.raises(Exception, match="span of the conditions"):
        project_out(n, n[None])


# ---------------------------------------------------------------------------------- fit CLI


def write_latents(folder: Path, codes: np.ndarray, labels: np.ndarray, csv_name="labels.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["path,label"]
    for i, (c, lab) in enumerate(zip(codes, labels)):
        np.save(folder / f"{i:05d}.npy", c)
        rows.append(f"{i:05d}.npy,{lab:g}")
    (folder / csv_name).write_text("\n".join(rows) + "\n")
    return folder / csv_name


def test_fit_cli_with_conditions(tmp_path, capsys):
    """CSV of 800 W+ latents ([4,512], the same code on each layer plus noise): the direction
    lands in the weights folder's directions/; with --condition it is orthogonal to each
    condition and its cosine with the planted direction is the projection formula's."""
    x, y, p = planted(800, 0.0, seed=4)
    wplus = x[:, None, :] + 0.01 * np.random.default_rng(5).standard_normal((800, 4, 512)).astype(np.float32)
    labels = write_latents(tmp_path / "lat", wplus, y)
    code, out, err = cli(capsys, "directions", "fit", labels, "--name", "plain")
    assert code == 0, err
    d = tmp_path / "weights" / "directions"
    n = np.load(d / "plain.npy")
    assert n.shape == (512,) and n.dtype == np.float32 and abs(np.linalg.norm(n) - 1) < 1e-6
    assert float(n @ p) > 0.7  # 800 codes in 512-d: measured 0.77
    rec = json.loads((d / "plain.json").read_text())
    val = rec["counts"]["validation"]
    assert val == pytest.approx(240, abs=2) and rec["accuracy"]["validation"] > 0.7  # a 30% held-out split
    assert rec["counts"] == {"codes": 800, "positive": int(y.sum()), "negative": int(800 - y.sum()),
                             "train": 800 - val, "validation": val}
    assert rec["layers"] == [0, 1, 2, 3] and rec["label_kind"] == "binary" and len(rec["data_sha256"]) == 64
    assert "validation accuracy" in out and str(d / "plain.npy") in out
    # usable as `e4e edit --direction plain.npy`: the loader edit uses takes it
    assert editing.load_direction(d / "plain.npy", n_styles=4).shape == (1, 1, 512)

    rng = np.random.default_rng(6)
    c1 = (0.6 * p + rng.standard_normal(512) / np.sqrt(512)).astype(np.float32)  # correlated with the attribute
    c2 = rng.standard_normal((4, 512)).astype(np.float32)  # a per-layer direction, as pose.pt
    np.save(tmp_path / "c1.npy", c1)
    torch.save(torch.from_numpy(c2)[None], tmp_path / "c2.pt")
    code, out, err = cli(capsys, "directions", "fit", labels, "--name", "cond", "--condition", tmp_path / "c1.npy",
                         "--condition", tmp_path / "c2.pt")
    assert code == 0, err
    m = np.load(d / "cond.npy").astype(np.float64)
    conds = np.stack([c1, c2.mean(axis=0)]).astype(np.float64)
    cos_c = np.abs(conds @ m) / np.linalg.norm(conds, axis=1)
    assert cos_c.max() <= 1e-6, cos_c
    q, _ = np.linalg.qr(conds.T)
    nn_ = n.astype(np.float64)
    proj = nn_ - q @ (q.T @ nn_)
    want = float(proj @ p / np.linalg.norm(proj))
    assert abs(float(m @ p) - want) <= 1e-5, (float(m @ p), want)
    rec = json.loads((d / "cond.json").read_text())
    assert [Path(c["file"]).name for c in rec["conditions"]] == ["c1.npy", "c2.pt"]
    print(f"conditions: |cos| <= {cos_c.max():.1e}; cos with planted {float(m @ p):.5f} vs formula {want:.5f}")


def test_fit_layers_and_folders(tmp_path, capsys):
    """--positive/--negative folders of W+ latents and invert folders; --layers 1-2 fits on those
    layers' mean and writes [n,512] with zeros elsewhere; an existing NAME is refused."""
    rng = np.random.default_rng(7)
    p = rng.standard_normal(512)
    p /= np.linalg.norm(p)
    for sign, name in ((1, "pos"), (-1, "neg")):
        f = tmp_path / name
        f.mkdir()
        for i in range(30):
            code = rng.standard_normal((4, 512)).astype(np.float32) * 0.3
            code[1:3] += sign * 0.5 * p.astype(np.float32)  # the attribute lives on layers 1-2
            if i < 3:  # an `e4e invert` output folder
                (f / f"inv{i}").mkdir()
                np.save(f / f"inv{i}" / "latent.npy", code)
                (f / f"inv{i}" / "meta.json").write_text(json.dumps({"checkpoint": "/x/e4e_church_encode.pt", "domain": "church"}))
            else:
                np.save(f / f"{i}.npy", code)
    out = tmp_path / "dirs"
    res = cli(capsys, "directions", "fit", "--positive", tmp_path / "pos", "--negative", tmp_path / "neg",
              "--name", "mid.npy", "--layers", "1-2", "--out", out)
    assert res[0] == 0, res[2]
    d = np.load(out / "mid.npy")
    assert d.shape == (4, 512) and not d[[0, 3]].any() and abs(np.linalg.norm(d[1]) - 1) < 1e-6
    assert np.array_equal(d[1], d[2]) and float(d[1] @ p) > 0.5  # 60 codes: measured 0.59
    assert rec_accuracy(out / "mid.json") == 1.0
    rec = json.loads((out / "mid.json").read_text())
    assert rec["layers"] == [1, 2] and rec["checkpoint"] == ["e4e_church_encode.pt (church)"]
    assert editing.load_direction(out / "mid.npy", n_styles=4).shape == (1, 4, 512)
    before = (out / "mid.npy").read_bytes()
    one_line_error(cli(capsys, "directions", "fit", "--positive", tmp_path / "pos", "--negative", tmp_path / "neg",
                       "--name", "mid", "--out", out), "already exists", "--overwrite")
    assert (out / "mid.npy").read_bytes() == before
    res = cli(capsys, "directions", "fit", "--positive", tmp_path / "pos", "--negative", tmp_path / "neg",
              "--name", "mid", "--out", out, "--overwrite")
    assert res[0] == 0 and np.load(out / "mid.npy").shape == (512,)
    assert sorted(x.name for x in out.iterdir()) == ["mid.json", "mid.npy"]  # no temporary left behind


def test_fit_bad_input_is_one_line(tmp_path, capsys):
    x, y, _ = planted(40, 0.0, seed=8)
    good = write_latents(tmp_path / "lat", x, y)
    out = tmp_path / "out"

    def fit(labels, *extra):
        return cli(capsys, "directions", "fit", labels, "--name", "d", "--out", out, *extra)

    one_class = tmp_path / "lat" / "one.csv"
    one_class.write_text("".join(f"{i:05d}.npy,1\n" for i in range(40)))
    one_line_error(fit(one_class), "two classes")
    missing = tmp_path / "lat" / "missing.csv"
    missing.write_text(good.read_text() + "nowhere.npy,1\n")
    one_line_error(fit(missing), "nowhere.npy", "not found", "line 42")
    words = tmp_path / "lat" / "words.csv"
    words.write_text("00000.npy,smiling\n00001.npy,0\n")
    one_line_error(fit(words), "'smiling' is not a number", "line 1")
    np.save(tmp_path / "lat" / "wplus.npy", np.zeros((4, 512), np.float32))
    mixed = tmp_path / "lat" / "mixed.csv"
    mixed.write_text(good.read_text() + "wplus.npy,0\n")
    one_line_error(fit(mixed), "different shapes", "[512]", "[4, 512]")
    few = tmp_path / "lat" / "few.csv"
    few.write_text("".join(f"{i:05d}.npy,{i % 2}\n" for i in range(6)))
    one_line_error(fit(few), "too few samples", "3 positive")
    np.save(tmp_path / "bad_cond.npy", np.zeros((3, 100), np.float32))
    one_line_error(fit(good, "--condition", tmp_path / "bad_cond.npy"), "condition", "[3, 100]")
    one_line_error(fit(good, "--condition", tmp_path / "nope.npy"), "condition", "not found")
    one_line_error(cli(capsys, "directions", "fit", "--name", "d"), "LABELS", "--positive")
    one_line_error(fit(good, "--layers", "0-2"), "--layers", "W codes")
    one_line_error(cli(capsys, "directions", "fit", good, "--name", "../up"), "--name")
    assert not out.exists(), "nothing may be written for bad input"
    assert cli(capsys, "directions", "fit", good, "--name", "d", "--out", out)[0] == 0


def rec_accuracy(path: Path) -> float:
    return json.loads(path.read_text())["accuracy"]["train"]


def tiny_e4e_checkpoint(path: Path) -> Path:
    """An e4e checkpoint in the released layout with a narrow encoder and a 16 px generator (16-d styles)."""
    from e4e_cli.nn.networks import Encoder4Editing

    torch.manual_seed(0)
    widths, units, ch = (8, 8, 16, 16), (1, 1, 1, 1), {4: 16, 8: 8, 16: 8}
    g = conftest.tiny_generator(16, style_dim=16, channels=ch)
    enc = Encoder4Editing(n_styles=g.n_styles, widths=widths, units=units, style_dim=16, input_size=32).eval()
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    sd.update({f"decoder.{k}": v for k, v in g.state_dict().items()})
    opts = {"encoder_type": "Encoder4Editing", "dataset_type": "church_encode", "stylegan_size": 16,
            "encoder_widths": list(widths), "encoder_units": list(units), "input_size": 32, "style_dim": 16,
            "n_mlp": 2, "generator_channels": {str(k): v for k, v in ch.items()}, "start_from_latent_avg": True}
    torch.save({"state_dict": sd, "latent_avg": g.mean_latent(1000)[None].repeat(g.n_styles, 1), "opts": opts}, path)
    return path


def test_fit_inverts_photos_first(tmp_path, capsys):
    """Photos in the folders are inverted with the checkpoint (as `e4e invert`), their inversions
    kept in --invert-out (one folder per photo, named by its content) and reused; an inversion there
    whose record names another photo is refused."""
    ckpt = tiny_e4e_checkpoint(tmp_path / "tiny.pt")
    rng = np.random.default_rng(9)
    for name, base in (("bright", 200), ("dark", 40)):
        (tmp_path / name).mkdir()
        for i in range(6):
            a = np.clip(base + 30 * rng.standard_normal((32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(tmp_path / name / f"{name}{i}.png")
    args = ["directions", "fit", "--positive", tmp_path / "bright", "--negative", tmp_path / "dark", "--name", "light",
            "--checkpoint", ckpt, "--domain", "church", "--device", "cpu", "--precision", "fp32",
            "--invert-out", tmp_path / "inv", "--out", tmp_path / "dirs"]
    res = cli(capsys, *args)
    assert res[0] == 0, res[2]
    assert np.load(tmp_path / "dirs" / "light.npy").shape == (16,)
    assert len(list((tmp_path / "inv").glob("*/latent.npy"))) == 12
    rec = json.loads((tmp_path / "dirs" / "light.json").read_text())
    assert rec["checkpoint"] == ["tiny.pt (church)"] and rec["counts"]["codes"] == 12
    first = rec["data_sha256"]
    res = cli(capsys, *args, "--overwrite")  # the inversions are reused: same codes
    assert res[0] == 0 and json.loads((tmp_path / "dirs" / "light.json").read_text())["data_sha256"] == first
    meta = next((tmp_path / "inv").glob("bright0-*/meta.json"))
    m = json.loads(meta.read_text())
    meta.write_text(json.dumps({**m, "made_with": {**m["made_with"], "source_sha256": "0" * 64}}))
    one_line_error(cli(capsys, *args, "--overwrite"), "bright0", "another photo")


# ---------------------------------------------------------------------------------- pca


def tiny_generator_file(path: Path, *, style_dim=512, size=16, seed=3, scale_mapping=None) -> tuple[Path, object]:
    """A rosinality-layout generator file. `scale_mapping` multiplies the mapping weights (the
    synthetic checkpoints' raw randn weights times lr_mul 0.01 map every z to nearly one w)."""
    g = conftest.tiny_generator(size, seed=seed, style_dim=style_dim, channels={4: 16, 8: 8, 16: 8, 32: 8})
    if scale_mapping is not None:
        with torch.no_grad():
            for lin in list(g.style)[1:]:
                lin.weight.copy_(torch.randn_like(lin.weight) * scale_mapping)
    save_rosinality_checkpoint(path, generator=g, latent_avg=g.mean_latent(2000))
    return path, g


def numpy_pca(g, n, seed, k):
    """Independent PCA of the same seeded samples: numpy SVD of the centred w, signs by jobs' convention."""
    with torch.inference_mode():
        w = torch.cat([g.mapping(z) for z in sampled.z_blocks(n, g.style_dim, seed)]).double().numpy()
    mean = w.mean(axis=0)
    _, s, vt = np.linalg.svd(w - mean, full_matrices=False)
    comp = vt[:k]
    comp *= np.sign(comp[np.arange(k), np.abs(comp).argmax(axis=1)])[:, None]
    return comp, s[:k] / np.sqrt(n - 1), mean


def test_pca_matches_an_independent_svd_and_ganspace_edits_agree(tmp_path, capsys):
    gpath, g = tiny_generator_file(tmp_path / "g.pt", scale_mapping=100.0)  # the synthetic checkpoints' randn, x100
    n, k = 3000, 10
    out = tmp_path / "mine_pca.pt"
    t = time.time()
    res = cli(capsys, "directions", "pca", "--generator", gpath, "--samples", n, "--components", k, "--seed", 5,
              "--out", out, "--device", "cpu")
    elapsed = time.time() - t
    assert res[0] == 0, res[2]
    mine = torch.load(out, weights_only=True)
    assert set(mine) == {"comp", "mean", "std"}
    assert mine["comp"].shape == (k, 1, 512) and mine["mean"].shape == (1, 512) and mine["std"].shape == (k,)
    comp, std, mean = numpy_pca(g, n, 5, k)
    assert float(std[-1]) > 0.05  # W has a spread (without the x100: 2e-4)
    diff = np.abs(mine["comp"][:, 0].double().numpy() - comp).max()
    assert diff <= 1e-4, diff
    np.testing.assert_allclose(mine["std"].numpy(), std, rtol=1e-5)
    np.testing.assert_allclose(mine["mean"][0].numpy(), mean, atol=1e-5)
    # a released-format file made by hand from the SVD: `ganspace:C:S:E` edits agree
    hand = tmp_path / "hand_pca.pt"
    torch.save({"comp": torch.from_numpy(comp).float()[:, None], "mean": torch.from_numpy(mean).float()[None],
                "std": torch.from_numpy(std).float()}, hand)
    from e4e_cli.editing import resolve_direction

    model = SimpleNamespace(domain="church", n_styles=g.n_styles, generator=g)
    codes = g.mapping(torch.randn(3, 512))[:, None].repeat(1, g.n_styles, 1).detach()
    for c, s, e, strength in ((0, 0, 3, 2.0), (3, 2, 6, -1.5), (k - 1, 0, g.n_styles, 4.0)):
        a = resolve_direction(f"ganspace:{c}:{s}:{e}", model, pca_file=out).apply(codes, strength)
        b = resolve_direction(f"ganspace:{c}:{s}:{e}", model, pca_file=hand).apply(codes, strength)
        assert float((a - b).abs().max()) <= 1e-4
        assert float((a - codes).abs().max()) > 1e-2  # it did edit
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["samples"] == n and rec["seed"] == 5 and rec["generator"]["layout"] == "rosinality"
    print(f"pca: max |comp - svd| {diff:.1e} ({n} samples, {elapsed:.1f} s)")


def test_pca_is_deterministic_with_its_seed_and_refuses_bad_generators(tmp_path, capsys):
    gpath, _ = tiny_generator_file(tmp_path / "g.pt", style_dim=32)
    outs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        outs.append(tmp_path / f"{name}.pt")
        assert cli(capsys, "directions", "pca", "--generator", gpath, "--samples", 25000, "--components", 4, "--seed",
                   seed, "--out", outs[-1], "--device", "cpu")[0] == 0
    a, b, c = (torch.load(p, weights_only=True) for p in outs)
    assert all(torch.equal(a[k], b[k]) for k in a)  # 25000 = 3 blocks: the split does not matter
    assert not torch.equal(a["mean"], c["mean"])
    one_line_error(cli(capsys, "directions", "pca", "--generator", gpath, "--samples", 100, "--out", outs[0]),
                   "already exists")
    html = tmp_path / "g.html.pt"
    html.write_text("<!DOCTYPE html><html><body>quota exceeded</body></html>")
    one_line_error(cli(capsys, "directions", "pca", "--generator", html, "--out", tmp_path / "h.pt"), "HTML")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": RunsCode(marker)}))
    one_line_error(cli(capsys, "directions", "pca", "--generator", evil, "--out", tmp_path / "e.pt"), "refusing to load")
    assert not marker.exists(), "the pickle's code ran"
    one_line_error(cli(capsys, "directions", "pca", "--generator", gpath, "--components", 33, "--samples", 100,
                       "--out", tmp_path / "k.pt"), "--components", "1..32")
    one_line_error(cli(capsys, "directions", "pca", "--generator", gpath, "--out", tmp_path / "x.npy"), ".pt")
    flat, _ = tiny_generator_file(tmp_path / "flat.pt", style_dim=32, scale_mapping=1.0)  # as the synthetic checkpoints
    code, _, err = cli(capsys, "directions", "pca", "--generator", flat, "--samples", 500, "--components", 2,
                       "--out", tmp_path / "flat_pca.pt", "--device", "cpu")
    assert code == 0 and "e4e: note:" in err and "nearly the same w" in err, err
    assert not (tmp_path / "h.pt").exists() and not (tmp_path / "e.pt").exists() and not (tmp_path / "k.pt").exists()


def test_covariance_stream_merges_uneven_batches_exactly():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 6)) @ rng.standard_normal((6, 6)) + 5.0
    s = CovarianceStream(6)
    for a, b in ((0, 1), (1, 300), (300, 301), (301, 1000)):
        s.update(x[a:b])
    np.testing.assert_allclose(s.scatter / (s.n - 1), np.cov(x.T), atol=1e-10)
    np.testing.assert_allclose(s.mean, x.mean(axis=0), atol=1e-12)


# ---------------------------------------------------------------------------------- show, list, ui


def test_show_writes_a_seeded_strip(tmp_path, capsys):
    gpath, g = tiny_generator_file(tmp_path / "g.pt", size=32)
    d = tmp_path / "weights" / "directions"
    d.mkdir(parents=True)
    vec = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    np.save(d / "look.npy", vec / np.linalg.norm(vec))

    def show(out, *extra):
        return cli(capsys, "directions", "show", "look", "--generator", gpath, "--samples", 2, "--sweep", "-4:4:3",
                   "--out", out, "--device", "cpu", "--precision", "fp32", *extra)

    assert show(tmp_path / "a.png")[0] == 0
    assert show(tmp_path / "b.png")[0] == 0
    assert show(tmp_path / "c.png", "--seed", "1")[0] == 0
    a, b, c = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in "abc")
    assert a.shape == (2 * 32, 3 * 32, 3)  # rows: samples; columns: strengths; 32 px tiles
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a[:, :32], a[:, 64:])  # the direction changes the picture
    # the middle column (strength 0) is the unedited sample, decoded as `show` documents
    z = next(sampled.z_blocks(2, 512, 0))
    with torch.inference_mode():
        w = g.mapping(z)
        avg = torch.load(gpath, weights_only=True)["latent_avg"]
        w = avg + 0.7 * (w - avg)
        img = E4E.to_uint8(g.synthesize(w[:, None].repeat(1, g.n_styles, 1)))
    # decoded by the fast paths, as every decode of the tool (the reference modules took 16-19 s a strip)
    assert np.abs(a[32:, 32:64].astype(int) - img[1].astype(int)).max() <= 4
    assert np.abs(a[:16, 32:64].astype(int) - img[0][:16].astype(int)).max() <= 4  # above the first row's label
    assert (a[28:32, 32:36] < 30).all() and not (img[0][28:32, :4] < 30).all()  # the strength, in a dark box
    # given latents instead of samples; a 16 px tile
    lat = tmp_path / "lat.npy"
    np.save(lat, np.repeat(w[:1].numpy(), g.n_styles, axis=0))
    res = cli(capsys, "directions", "show", d / "look.npy", "--generator", gpath, "--latent", lat, "--tile", 16,
              "--out", tmp_path / "l.png", "--device", "cpu")
    assert res[0] == 0, res[2]
    assert Image.open(tmp_path / "l.png").size == (5 * 16, 16)
    one_line_error(show(tmp_path / "a.png"), "already exists")
    one_line_error(cli(capsys, "directions", "show", "nothing-here", "--generator", gpath, "--out", tmp_path / "n.png"),
                   "unknown direction")


def test_list_shows_presets_and_own_directions(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    d = tmp_path / "weights" / "directions"
    d.mkdir(parents=True)
    np.save(d / "glasses.npy", np.ones(512, np.float32))
    for args in (["directions"], ["directions", "list"]):
        code, out, err = cli(capsys, *args)
        assert code == 0, err
        assert "age" in out and "ganspace:eye_openness" in out and "glasses" in out


def test_ui_offers_own_directions_that_fit(tmp_path):
    from e4e_cli.ui.server import Editor

    g = conftest.tiny_generator(32, style_dim=512, channels={4: 8, 8: 8, 16: 8, 32: 8})
    model = SimpleNamespace(domain="church", n_styles=g.n_styles, generator=g, size=32)
    own = tmp_path / "weights" / "directions"
    extra = tmp_path / "extra"
    own.mkdir(parents=True)
    extra.mkdir()
    np.save(own / "mine.npy", np.ones(512, np.float32))
    np.save(extra / "layered.npy", np.ones((g.n_styles, 512), np.float32))
    np.save(extra / "other_gen.npy", np.ones((18, 512), np.float32))  # another checkpoint's layers: no slider
    np.save(extra / "<img src=x onerror=alert(1)>.npy", np.ones(512, np.float32))  # never reaches the page
    ed = Editor(model, weights_dir=tmp_path / "weights", directions_dir=extra)
    ids = {d["id"]: d["label"] for d in ed.info()["directions"]}
    assert ids.get("file-mine") == "mine" and ids.get("file-layered") == "layered"
    assert not any("other_gen" in k or "<" in k or "<" in v for k, v in ids.items())
    codes = torch.zeros(1, g.n_styles, 512)
    s = SimpleNamespace(codes=codes)
    np.testing.assert_allclose(ed.edited_codes(s, {"file-mine": 2.0}, 1.0).numpy(), 2.0)
