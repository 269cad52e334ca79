"""StyleSpace decoding (issue 33): W+ codes plus per-channel style offsets, in the reference
(networks.py) and the fast (fast_generator.py) generator paths."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_generator
from e4e_cli.nn import fast_generator, ops
from e4e_cli.nn.engine import FastOptions
from e4e_cli.nn.networks import Generator


def _codes(g, b=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, g.n_styles, g.style_dim, generator=gen)


def test_stylespace_size_excludes_torgb():
    with torch.device("meta"):
        g = Generator(1024)
    assert g.n_style_channels == 6048  # StyleCLIP's S at 1024 without the ToRGB layers' 3040
    layers = g.layers()
    assert all(layers[i][0].demodulate for i, _, _ in g.style_layers())
    assert sum(m.weight.shape[2] for m, _ in layers) == 9088


@pytest.mark.parametrize("mode", ["auto", "weight", "activation"])
def test_zero_offsets_decode_the_plain_image(mode):
    g = tiny_generator()
    codes = _codes(g)
    zero = torch.zeros(g.n_style_channels)
    with torch.no_grad():
        plain_ref = g.synthesize(codes)
        assert torch.equal(g.synthesize(codes, style_offsets=zero), plain_ref)
        opts = FastOptions(mode=mode)
        plain_fast = fast_generator.synthesize(g, codes, options=opts)
        assert torch.equal(fast_generator.synthesize(g, codes, options=opts, style_offsets=zero[None].expand(2, -1)),
                           plain_fast)


@pytest.mark.parametrize("mode", ["auto", "weight", "activation"])
def test_offsets_move_the_styles_in_both_paths(mode):
    g = tiny_generator()
    codes = _codes(g)
    off = torch.randn(2, g.n_style_channels, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = g.synthesize(codes, style_offsets=off)
        fast = fast_generator.synthesize(g, codes, options=FastOptions(mode=mode), style_offsets=off)
        plain = g.synthesize(codes)
    assert (ref - plain).abs().max() > 1e-2  # the offsets do something
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)
    # one image's offsets [C] broadcast over the batch
    with torch.no_grad():
        one = g.synthesize(codes, style_offsets=off[0])
        one_fast = fast_generator.synthesize(g, codes, style_offsets=off[0])
    torch.testing.assert_close(one_fast, one, atol=1e-4, rtol=1e-4)


def test_styles_are_the_modulation_outputs_and_offsets_add_to_them(monkeypatch):
    """S = each convolution's modulation(code); an offset adds to exactly its channels, and the
    ToRGB layers see their own unmoved styles."""
    g = tiny_generator()
    codes = _codes(g, b=1)
    seen = []
    real = ops.modulated_conv2d

    def spy(x, w, s, *, demodulate, **kw):
        seen.append((demodulate, s.detach().clone()))
        return real(x, w, s, demodulate=demodulate, **kw)

    monkeypatch.setattr(ops, "modulated_conv2d", spy)
    off = torch.randn(g.n_style_channels)
    with torch.no_grad():
        g.synthesize(codes)
        plain = list(seen)
        seen.clear()
        g.synthesize(codes, style_offsets=off)
        moved = list(seen)
        s = g.styles(codes)
    conv_plain = torch.cat([t for d, t in plain if d], dim=1)
    torch.testing.assert_close(conv_plain, s)
    conv_moved = torch.cat([t for d, t in moved if d], dim=1)
    torch.testing.assert_close(conv_moved, s + off)
    for (d0, a), (d1, b) in zip(plain, moved):
        if not d0:  # ToRGB: untouched
            assert torch.equal(a, b)


def test_offsets_of_another_size_are_refused():
    g = tiny_generator()
    with pytest.raises(ValueError, match="StyleSpace"):
        g.synthesize(_codes(g), style_offsets=torch.zeros(g.n_style_channels + 1))
    with pytest.raises(ValueError, match="StyleSpace"):
        fast_generator.synthesize(g, _codes(g), style_offsets=torch.zeros(3, g.n_style_channels))


def test_style_offsets_with_weight_offsets():
    """Refined latents (HyperStyle's weight offsets) take text edits: both offsets at once, ref = fast,
    per image too."""
    g = tiny_generator()
    codes = _codes(g)
    gen = torch.Generator().manual_seed(5)
    woff = {2: 0.1 * torch.randn(2, *g.layers()[2][0].weight.shape[1:], generator=gen)}
    soff = torch.randn(2, g.n_style_channels, generator=gen)
    with torch.no_grad():
        ref = g.synthesize(codes, offsets=woff, style_offsets=soff)
        fast = fast_generator.synthesize(g, codes, offsets=woff, style_offsets=soff)
        assert (ref - g.synthesize(codes, offsets=woff)).abs().max() > 1e-2
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)
