"""StyleCLIP global directions (issue 33) against the reference fixture (tests/fixtures/styleclip:
StyleCLIP's own text-direction and boundary code run on a random CLIP; see its README)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clip_support import FIXTURES, random_clip, real_vocab, tiny_vocab
from e4e_cli import styleclip
from e4e_cli.clip_text import Tokenizer, load_clip
from e4e_cli.errors import E4EError

REF = dict(np.load(FIXTURES / "reference.npz"))
META = json.loads((FIXTURES / "reference.json").read_text())


@pytest.fixture(scope="module")
def vocab():
    return real_vocab()


@pytest.fixture(scope="module")
def clip(vocab, tmp_path_factory):
    c = META["clip"]
    path = random_clip(tmp_path_factory.mktemp("clip") / "clip.safetensors", seed=c["seed"], width=c["width"],
                       layers=c["layers"], proj=c["proj"])
    return load_clip(path, vocab)


def test_templates_are_the_79_imagenet_templates():
    t = styleclip.IMAGENET_TEMPLATES
    assert len(t) == 79 and len(set(t)) == 79 and all(x.count("{}") == 1 for x in t)
    assert t[0] == "a bad photo of a {}." and t[-1] == "a tattoo of the {}."


def test_token_ids_match_the_reference(vocab):
    tok = Tokenizer(vocab)
    assert tok.vocab_size == 49408 and tok.sot == 49406 and tok.eot == 49407
    ids = tok(META["token_texts"]).numpy()
    for text, want, got in zip(META["token_texts"], REF["token_ids"], ids):
        assert got.tolist() == want.tolist(), text


def test_text_direction_matches_the_reference(clip):
    cache = {}
    for (target, neutral), want in zip(META["pairs"], REF["dt"]):
        dt = styleclip.text_direction(clip, target, neutral, cache=cache)
        np.testing.assert_allclose(dt.numpy(), want, atol=2e-5)
    assert set(cache) == {t for pair in META["pairs"] for t in pair}  # each text encoded once


def test_style_direction_matches_the_reference():
    fs3, std = REF["fs3"].astype(np.float32), REF["std"].astype(np.float32)
    for (pair, beta), want, moved in zip(META["cases"], REF["ds"], REF["moved"]):
        d = styleclip.style_direction(fs3, REF["dt"][pair], std, beta=beta)
        assert d.moved == moved
        np.testing.assert_allclose(d.delta.numpy(), want, atol=1e-6)


def test_beta_threshold_and_normalisation():
    fs3 = torch.eye(4, 2)  # channel relevances to dt=[1,0]: 1, 0, 0, 0 ; to [0,1]: 0, 1, 0, 0
    fs3[2] = torch.tensor([0.5, 0.0])
    fs3[3] = torch.tensor([-0.25, 0.0])
    std = torch.tensor([2.0, 3.0, 4.0, 5.0])
    d = styleclip.style_direction(fs3, torch.tensor([1.0, 0.0]), std, beta=0.3)
    assert d.moved == 2
    torch.testing.assert_close(d.delta, torch.tensor([1.0 * 2, 0, 0.5 * 4, 0]))  # divided by the largest, times std
    d = styleclip.style_direction(fs3, torch.tensor([1.0, 0.0]), std, beta=0.25)  # |Δs| = β is kept
    assert d.moved == 3
    with pytest.raises(E4EError, match="moves no channel"):
        styleclip.style_direction(fs3, torch.tensor([1.0, 0.0]), std, beta=1.5)


def test_edited_styles_and_image_match_the_reference(church):
    from e4e_cli.model import E4E

    model = E4E.from_checkpoint(church, device="cpu")
    g = model.generator
    codes = torch.from_numpy(REF["codes"])
    s = g.styles(codes)[0]
    np.testing.assert_allclose(s.detach().numpy(), REF["s_plain"], atol=1e-5)
    e = META["edit"]
    d = styleclip.style_direction(REF["fs3"].astype(np.float32), REF["dt"][e["pair"]], REF["std"].astype(np.float32),
                                  beta=e["beta"])
    np.testing.assert_allclose((s + e["alpha"] * d.delta).detach().numpy(), REF["s_edited"], atol=1e-5)
    for impl in ("ref", "fast"):
        img = model.decode(codes, style_offsets=e["alpha"] * d.delta, impl=impl)[0]
        img8 = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy().astype(int)
        assert np.abs(img8 - REF["image"].astype(int)).max() <= 1, impl


def test_bad_texts_are_one_error(tmp_path):
    tok = Tokenizer(tiny_vocab(tmp_path / "v.txt.gz"))
    with pytest.raises(E4EError, match="empty"):
        tok(["  "])
    with pytest.raises(E4EError, match="at most 77"):
        tok(["x" * 80])
    assert tok(["x" * 75])[0, 76] == tok.eot  # 75 tokens + the two marks fill the context exactly
    with pytest.raises(E4EError, match="empty"):
        styleclip.text_direction(None, "", "a face")


def test_relevance_that_does_not_fit_is_refused():
    from e4e_cli.nn.networks import Generator

    with torch.device("meta"):
        g = Generator(1024)
    assert styleclip.relevance_sizes(g) == {6048: "every channel", 5376: "the layers up to 128 px"}
    with torch.device("meta"):
        cars = Generator(512)
    for rows in (6049, cars.n_style_channels, 100):
        with pytest.raises(E4EError, match=r"StyleSpace has 6048 channels.*\[5376,512\] for the layers up to 128 px"):
            styleclip.fit_relevance(np.zeros((rows, 4)), g)
    fitted = styleclip.fit_relevance(np.ones((5376, 4)), g)
    assert fitted.shape == (6048, 4) and fitted[5376:].abs().sum() == 0 and fitted[:5376].min() == 1
