"""The generator's per-layer weight offsets (HyperStyle) and its early exit (previews), in the
reference path (networks.Generator.synthesize) and the fast path (fast_generator.synthesize).
Tiny generators keep these quick; the full-size loop is checked against the reference
implementation's outputs in test_hyperstyle_parity.py."""
from __future__ import annotations

import itertools

import pytest
import torch

from conftest import tiny_generator
from e4e_cli.nn import fast_generator
from e4e_cli.nn.engine import FastOptions, Plans


def random_offsets(g, *, batch=None, scale=0.1, seed=0, compact_every=2):
    """Offsets for every layer: full [O,I,k,k] for some, per-channel [O,I,1,1] for others."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, (mod, _) in enumerate(g.layers()):
        o, c, k, _ = mod.weight.shape[1:]
        kk = 1 if i % compact_every else k
        shape = (o, c, kk, kk) if batch is None else (batch, o, c, kk, kk)
        out[i] = scale * torch.randn(*shape, generator=gen, dtype=mod.weight.dtype)
    return out


def offset_by_hand(g, offsets):
    """A copy of `g` whose weights are W * (1 + offset): what the offsets must mean."""
    import copy

    h = copy.deepcopy(g)
    with torch.no_grad():
        for i, (mod, _) in enumerate(h.layers()):
            if i in offsets:
                mod.weight.mul_(1 + offsets[i])
    return h


def test_reference_offsets_mean_a_relative_change_of_the_raw_weight():
    g = tiny_generator(dtype=torch.float64)
    codes = torch.randn(2, g.n_styles, 16, dtype=torch.float64)
    off = random_offsets(g)
    with torch.no_grad():
        got = g.synthesize(codes, offsets=off)
        want = offset_by_hand(g, off).synthesize(codes)
        plain = g.synthesize(codes)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert (got - plain).abs().max() > 1e-2  # the offsets do something


@pytest.mark.parametrize("up_mode,mode", list(itertools.product(["transpose", "polyphase"], ["auto", "activation", "weight"])))
def test_fast_offsets_equal_reference(up_mode, mode):
    g = tiny_generator(size=64)
    codes = torch.randn(2, g.n_styles, 16)
    off = random_offsets(g)
    plans = Plans()
    opts = FastOptions(up_mode=up_mode, mode=mode)
    with torch.no_grad():
        ref = g.synthesize(codes, offsets=off)
        fast = fast_generator.synthesize(g, codes, dtype=None, options=opts, plans=plans, offsets=off)
        plain = fast_generator.synthesize(g, codes, dtype=None, options=opts, plans=plans)
    torch.testing.assert_close(fast, ref, atol=3e-5, rtol=1e-4)
    # the cached plan is the generator's own: a later call without offsets is unaffected
    torch.testing.assert_close(plain, g.synthesize(codes), atol=3e-5, rtol=1e-4)
    assert (plain - fast).abs().max() > 1e-2


def test_per_sample_offsets_decode_each_image_with_its_own():
    g = tiny_generator(dtype=torch.float64)
    codes = torch.randn(3, g.n_styles, 16, dtype=torch.float64)
    off = random_offsets(g, batch=3)
    with torch.no_grad():
        ref = g.synthesize(codes, offsets=off)
        fast = fast_generator.synthesize(g, codes, offsets=off)
        one = g.synthesize(codes[1:2], offsets={k: v[1] for k, v in off.items()})
    torch.testing.assert_close(ref[1:2], one, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fast.float(), ref, atol=2e-5, rtol=1e-5)


def test_offsets_are_checked_against_the_layers():
    g = tiny_generator()
    codes = torch.randn(1, g.n_styles, 16)
    o, c = g.conv1.conv.weight.shape[1:3]
    for bad in ({0: torch.zeros(o + 1, c, 3, 3)}, {0: torch.zeros(o, c, 2, 2)}, {99: torch.zeros(o, c, 3, 3)},
                {0: torch.zeros(4, o, c, 3, 3)}):
        with pytest.raises(ValueError, match="weight offset for layer"):
            g.synthesize(codes, offsets=bad)
        with pytest.raises(ValueError, match="weight offset for layer"):
            fast_generator.synthesize(g, codes, offsets=bad)


def _partial_sums(g, codes, impl="ref"):
    """{resolution: the skip branch's image} captured during one full reference decode."""
    seen = {}
    hooks = [g.to_rgb1.register_forward_hook(lambda m, a, out: seen.__setitem__(out.shape[-1], out.detach().clone()))]
    for rgb in g.to_rgbs:
        hooks.append(rgb.register_forward_hook(lambda m, a, out: seen.__setitem__(out.shape[-1], out.detach().clone())))
    try:
        full = g.synthesize(codes, impl=impl)
    finally:
        for h in hooks:
            h.remove()
    return full, seen


@pytest.mark.parametrize("stop_at", [4, 16, 32])
def test_early_exit_equals_the_partial_sum_of_the_full_decode(stop_at):
    g = tiny_generator(size=64)
    codes = torch.randn(2, g.n_styles, 16)
    with torch.no_grad():
        full, seen = _partial_sums(g, codes)
        ref = g.synthesize(codes, stop_at=stop_at)
        fast = fast_generator.synthesize(g, codes, stop_at=stop_at)
    assert ref.shape == fast.shape == (2, 3, stop_at, stop_at)
    assert torch.equal(ref, seen[stop_at])  # the same operations: bit for bit
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-4)
    assert torch.equal(g.synthesize(codes, stop_at=64), full)


def test_fast_early_exit_is_the_fast_full_decodes_own_partial_sum(monkeypatch):
    """The fast path's preview is bit for bit the running RGB image its full decode holds after
    the same block (the same code runs up to there)."""
    g = tiny_generator(size=64)
    codes = torch.randn(2, g.n_styles, 16)
    seen = {}
    inner = fast_generator._to_rgb_fast

    def record(st, x, s, skip, cdt):
        y = inner(st, x, s, skip, cdt)
        seen.setdefault(y.shape[-1], []).append(y.clone())
        return y

    monkeypatch.setattr(fast_generator, "_to_rgb_fast", record)
    plans = Plans()
    with torch.no_grad():
        fast_generator.synthesize(g, codes, plans=plans)
        full_32 = torch.cat(seen.pop(32))
        seen.clear()
        preview = fast_generator.synthesize(g, codes, plans=plans, stop_at=32)
    assert torch.equal(preview, full_32.contiguous())


@pytest.mark.parametrize("bad", [2, 3, 48, 128])
def test_early_exit_rejects_other_resolutions(bad):
    g = tiny_generator(size=64)
    codes = torch.randn(1, g.n_styles, 16)
    with pytest.raises(ValueError, match="stop_at"):
        g.synthesize(codes, stop_at=bad)
    with pytest.raises(ValueError, match="stop_at"):
        fast_generator.synthesize(g, codes, stop_at=bad)


def test_reference_early_exit_runs_no_later_block():
    """stop_at=16 on a 64 px generator: the 32 and 64 blocks' convolutions and ToRGBs never run
    (a preview costs its own blocks only)."""
    g = tiny_generator(size=64)
    ran = []
    later = [m for k in range(2, len(g.to_rgbs)) for m in (g.convs[2 * k], g.convs[2 * k + 1], g.to_rgbs[k])]
    hooks = [m.register_forward_hook(lambda mod, i, o: ran.append(mod)) for m in later]
    try:
        with torch.no_grad():
            out = g.synthesize(torch.randn(1, g.n_styles, 16), stop_at=16)
    finally:
        for h in hooks:
            h.remove()
    assert out.shape[-1] == 16 and ran == []


@pytest.mark.parametrize("stop_at", [8, 32])
def test_offsets_with_an_early_exit(stop_at):
    """Offsets and stop_at together: the preview of the offset generator, on both paths."""
    g = tiny_generator(size=64)
    codes = torch.randn(2, g.n_styles, 16)
    offsets = random_offsets(g)
    with torch.no_grad():
        want = offset_by_hand(g, offsets).synthesize(codes, stop_at=stop_at)
        ref = g.synthesize(codes, offsets=offsets, stop_at=stop_at)
        fast = fast_generator.synthesize(g, codes, offsets=offsets, stop_at=stop_at)
        plain = g.synthesize(codes, stop_at=stop_at)
    assert want.shape == (2, 3, stop_at, stop_at)
    torch.testing.assert_close(ref, want, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(fast, want, atol=2e-5, rtol=1e-4)
    assert (ref - plain).abs().max() > 1e-3  # the offsets changed the preview
