"""`e4e edit --text` (issue 33) on the synthetic church 256 checkpoint with a tiny random CLIP."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clip_support import random_clip, tiny_vocab
from conftest import assert_one_line_error, run_e4e
from e4e_cli.errors import E4EError

PROJ = 32


@pytest.fixture(scope="module")
def setup(church, tmp_path_factory):
    """(weights folder with the tiny CLIP, relevance .npz, latent .npy, the model)."""
    from e4e_cli import textedit
    from e4e_cli.model import E4E

    root = tmp_path_factory.mktemp("textedit")
    weights = root / "weights"
    vocab = tiny_vocab(weights / "bpe_simple_vocab_16e6.txt.gz")
    from e4e_cli.clip_text import Tokenizer

    random_clip(weights / "clip-vit-base-patch32.safetensors", vocab_size=Tokenizer(vocab).vocab_size, seed=1,
                width=64, layers=1, proj=PROJ)
    model = E4E.from_checkpoint(church, device="cpu")
    c = model.generator.n_style_channels
    rng = np.random.RandomState(0)
    fs3 = rng.randn(c, PROJ).astype(np.float32)
    fs3 /= np.linalg.norm(fs3, axis=1, keepdims=True)
    rel = root / "church_relevance.npz"
    np.savez(rel, fs3=fs3, std=np.full(c, 0.5, np.float32))
    lat = root / "church.npy"
    np.save(lat, model.sample_w(1, seed=2)[0].repeat(model.n_styles, 1).numpy())
    textedit._CLIPS.clear()
    return weights, rel, lat, model


def test_text_edit_through_the_cli(setup, tmp_path, church):
    weights, rel, lat, model = setup
    out = tmp_path / "out"
    proc = run_e4e("edit", lat, "--text", "church with snow", "--relevance", rel, "--checkpoint", church,
                   "--sweep", "-2:2:3", "--beta", "0.2", "--device", "cpu", "--out", out, "--weights-dir", weights)
    assert proc.returncode == 0, proc.stderr
    assert "the text 'church with snow'" in proc.stdout
    label = "text_church-with-snow"
    rec = json.loads((out / f"church_{label}_+2.json").read_text())
    d = rec["direction"]
    assert (d["text"], d["neutral"], d["beta"]) == ("church with snow", "a church", 0.2)
    assert 0 < d["channels_moved"] < model.generator.n_style_channels and rec["strength"] == 2.0
    assert d["clip"]["file"] == "clip-vit-base-patch32.safetensors" and len(d["relevance"]["sha256"]) == 64
    assert (out / f"church_{label}_sweep.gif").is_file()
    plain = model.to_pil(model.decode(torch.from_numpy(np.load(lat))))[0]
    zero = Image.open(out / f"church_{label}_+0.png")
    assert np.array_equal(np.asarray(zero), np.asarray(plain))  # α = 0 is the plain decode
    plus = np.asarray(Image.open(out / f"church_{label}_+2.png")).astype(int)
    assert np.abs(plus - np.asarray(plain).astype(int)).mean() > 1
    np.testing.assert_array_equal(np.load(out / f"church_{label}_+2.npy"), np.load(lat))  # W+ untouched


def test_bad_text_inputs(setup):
    from e4e_cli import textedit

    weights, rel, lat, model = setup
    kw = dict(relevance=rel, weights_dir=weights)
    with pytest.raises(E4EError, match="empty"):
        textedit.text_direction(model, text="   ", **kw)
    with pytest.raises(E4EError, match="at most 77"):
        textedit.text_direction(model, text="snow " * 80, **kw)
    with pytest.raises(E4EError, match="same CLIP embedding"):
        textedit.text_direction(model, text="a church", **kw)
    from e4e_cli.errors import MISSING_WEIGHTS

    with pytest.raises(E4EError, match="e4e download-weights clip") as exc:
        textedit.text_direction(model, text="church with snow", relevance=rel, weights_dir=weights.parent / "none")
    assert exc.value.exit_code == MISSING_WEIGHTS
    bad = rel.with_name("bad.npz")
    np.savez(bad, fs3=np.zeros((model.generator.n_style_channels + 5, PROJ), np.float32))
    with pytest.raises(E4EError, match="StyleSpace has"):
        textedit.text_direction(model, text="church with snow", relevance=bad, weights_dir=weights)


def test_text_edit_refusals_through_the_cli(setup, tmp_path, church):
    weights, rel, lat, _ = setup
    out = tmp_path / "out"
    proc = run_e4e("edit", lat, "--text", "church with snow", "--relevance", rel, "--checkpoint", church,
                   "--beta", "5", "--device", "cpu", "--out", out, "--weights-dir", weights)
    assert_one_line_error(proc, "moves no channel", "lower --beta", code=1)
    assert not list(out.glob("*.png"))  # no unchanged image written as an edit
    proc = run_e4e("edit", lat, "--direction", "sefa:0", "--alpha", "3")
    assert_one_line_error(proc, "--alpha needs --text", code=2)


def test_relevance_computes_and_resumes(setup, tmp_path):
    """`e4e directions relevance` on a few channels: rows of unit length for the computed channels,
    zeros elsewhere; a second run over more channels keeps the first run's rows and adds the rest."""
    from conftest import tiny_generator
    from e4e_cli.train.generators import save_rosinality_checkpoint

    weights = setup[0]
    g = tiny_generator(size=32, style_dim=16)
    gen = save_rosinality_checkpoint(tmp_path / "tiny_g.pt", generator=g, latent_avg=g.mean_latent(1000))
    out = tmp_path / "rel.npz"
    args = ["directions", "relevance", "--generator", gen, "--samples", "2", "--stats-samples", "2000",
            "--batch-size", "4", "--device", "cpu", "--out", out, "--weights-dir", weights]
    first = run_e4e(*args, "--channels", "0:2")
    assert first.returncode == 0, first.stderr
    assert "2 of" in first.stdout
    a = dict(np.load(out))
    assert a["computed"][:2].all() and not a["computed"][2:].any()
    np.testing.assert_allclose(np.linalg.norm(a["fs3"][:2], axis=1), 1, atol=1e-5)
    assert not a["fs3"][2:].any() and a["std"].shape == (g.n_style_channels,) and (a["std"] > 0).all()
    from e4e_cli.jobs import relevance
    from e4e_cli.jobs.sampled import GeneratorSource

    def again(**kw):  # the same job in this process (the CLI run above covers the command)
        job = dict(source=GeneratorSource(generator=gen, weights_dir=weights), out=out, samples=2, stats_samples=2000,
                   channels=(0, 4), batch=4, device="cpu", show_progress=False)
        return relevance.compute_relevance(relevance.RelevanceJob(**{**job, **kw}))

    _, info = again()
    b = dict(np.load(out))
    assert b["computed"][:4].all() and (info["computed"], info["computed_now"]) == (4, 2)
    np.testing.assert_array_equal(b["fs3"][:2], a["fs3"][:2])  # resumed, not recomputed
    with pytest.raises(E4EError, match="computed another way.*--overwrite"):  # other samples: never mixed in
        again(samples=3)


def test_directions_show_takes_text(setup, tmp_path):
    from conftest import tiny_generator
    from e4e_cli.jobs import sampled
    from e4e_cli.train.generators import save_rosinality_checkpoint

    weights = setup[0]
    g = tiny_generator(size=32, style_dim=16)
    gen = save_rosinality_checkpoint(tmp_path / "tiny_g.pt", generator=g, latent_avg=g.mean_latent(1000))
    rel = tmp_path / "rel.npz"
    np.savez(rel, fs3=np.random.RandomState(0).randn(g.n_style_channels, PROJ).astype(np.float32) / PROJ ** 0.5,
             std=np.ones(g.n_style_channels, np.float32))
    out = sampled.show_strip(sampled.ShowJob(
        direction="text:church with snow", source=sampled.GeneratorSource(generator=gen, weights_dir=weights),
        out=tmp_path / "strip.png", samples=1, strengths=[0.0, 3.0], tile=32, device="cpu",
        text={"relevance": rel, "beta": 0.2}))
    strip = np.asarray(Image.open(out)).astype(int)
    assert strip.shape[:2] == (32, 64)
    assert np.abs(strip[:, :32] - strip[:, 32:]).mean() > 1  # α = 3 moved the picture


def test_page_text_box(setup, tmp_path):
    """The editing page's text box and α slider: the editor renders the text edit with `e4e edit
    --text`'s function; α 0 is the plain image; a bad text is one error."""
    from e4e_cli.ui.editor import Editor
    from e4e_cli.ui.server import Editor as ServedEditor  # the page serves this editor

    assert ServedEditor is Editor
    weights, rel, lat, model = setup
    (tmp_path / "lat" / "church").mkdir(parents=True)
    np.save(tmp_path / "lat" / "church" / "latent.npy", np.load(lat))
    ed = Editor(model, weights_dir=weights, latents_dir=tmp_path / "lat", relevance=rel)
    assert ed.info()["text_edits"] is True
    assert Editor(model, weights_dir=tmp_path / "none").info()["text_edits"] is False
    sid = ed.pick_latent("church/latent.npy")["session"]
    plain, _ = ed.render(sid, {}, 1.0, False)
    same, _ = ed.render(sid, {}, 1.0, False, text={"target": "church with snow", "alpha": 0})
    moved, _ = ed.render(sid, {}, 1.0, False, text={"target": "church with snow", "alpha": 3, "beta": 0.2})
    assert np.array_equal(np.asarray(plain), np.asarray(same))
    assert np.abs(np.asarray(moved).astype(int) - np.asarray(plain).astype(int)).mean() > 1
    with pytest.raises(E4EError, match="moves no channel"):
        ed.render(sid, {}, 1.0, False, text={"target": "church with snow", "alpha": 3, "beta": 9})
    page = (Path(__file__).resolve().parents[1] / "e4e_cli" / "ui" / "static" / "index.html").read_text()
    assert 'id="text"' in page and 'id="alpha"' in page and "text: textEdit()" in page
