"""Fast paths against the reference paths, on tiny networks (widths are arguments)."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from conftest import tiny_generator
from e4e_cli.nn import fast_generator, ops
from e4e_cli.nn.networks import Encoder4Editing, blur_kernel_2d

torch.manual_seed(0)


def naive_upfirdn1d(x, k, up, down, p0, p1):
    """Literal 1-D version of SPEC's description, in numpy, for one row."""
    z = np.zeros(len(x) * up)
    z[::up] = x
    z = np.concatenate([np.zeros(max(p0, 0)), z, np.zeros(max(p1, 0))])
    z = z[max(-p0, 0): len(z) - max(-p1, 0)]
    out = np.array([np.dot(z[i:i + len(k)], k[::-1]) for i in range(len(z) - len(k) + 1)])
    return out[::down]


@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 1)), (2, 1, (2, 1)), (1, 2, (1, 1)), (2, 1, (-1, 0)), (1, 1, (-1, -1))])
def test_upfirdn2d_matches_literal_spec(up, down, pad):
    k1 = np.array([1.0, 3.0, 3.0, 1.0])
    k1 = k1 / k1.sum()
    kernel = torch.tensor(np.outer(k1, k1), dtype=torch.float64)
    x = torch.randn(1, 1, 7, 7, dtype=torch.float64)
    out = ops.upfirdn2d(x, kernel, up=up, down=down, pad=pad)
    rows = np.stack([naive_upfirdn1d(r, k1, up, down, *pad) for r in x[0, 0].numpy()])
    want = np.stack([naive_upfirdn1d(c, k1, up, down, *pad) for c in rows.T]).T
    np.testing.assert_allclose(out[0, 0].numpy(), want, atol=1e-12)


@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 1)), (2, 1, (2, 1)), (1, 2, (1, 1)), (2, 1, (-1, 0)), (2, 2, (1, 2))])
def test_upfirdn2d_per_channel_layout_matches_depthwise(up, down, pad):
    """The reference implementation's layout (each channel a single-channel image; what the
    bench times as the reference's way) computes the same FIR as the default layout."""
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    k = torch.rand(4, 3, dtype=torch.float64)  # not symmetric: a flipped kernel would show
    a = ops.upfirdn2d(x, k, up=up, down=down, pad=pad)
    with ops.reference_fir_layout("per_channel"):
        b = ops.upfirdn2d(x, k, up=up, down=down, pad=pad)
    assert ops.current_fir_layout() == "depthwise"  # restored
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="layout"):
        ops.reference_fir_layout("nhwc")


def test_reference_fir_layout_is_per_thread():
    """The layout is a context variable: another thread's block does not change this thread's."""
    seen = {}
    inside, done = threading.Event(), threading.Event()

    def worker():
        with ops.reference_fir_layout("per_channel"):
            seen["worker"] = ops.current_fir_layout()
            inside.set()
            done.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    assert inside.wait(10)
    seen["main"] = ops.current_fir_layout()
    done.set()
    t.join()
    assert seen == {"worker": "per_channel", "main": "depthwise"}


def test_generator_reference_way_matches_reference_path():
    g = tiny_generator(size=16)
    codes = torch.randn(2, g.n_styles, g.style_dim)
    with torch.no_grad():
        a = g.synthesize(codes, impl="ref")
        with ops.reference_fir_layout("per_channel"):
            b = g.synthesize(codes, impl="ref")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_upfirdn2d_fast_upsample_equals_ref():
    x = torch.randn(2, 3, 8, 8)
    k = blur_kernel_2d(scale=4.0)
    a = ops.upfirdn2d(x, k, up=2, pad=(2, 1), impl="ref")
    b = ops.upfirdn2d(x, k, up=2, pad=(2, 1), impl="fast")
    assert a.shape == b.shape == (2, 3, 16, 16)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_unknown_impl_falls_back_with_warning():
    x = torch.randn(1, 2, 4, 4)
    with pytest.warns(UserWarning, match="reference"):
        y = ops.upfirdn2d(x, blur_kernel_2d(), pad=(1, 2), impl="cuda-kernel")
    torch.testing.assert_close(y, ops.upfirdn2d(x, blur_kernel_2d(), pad=(1, 2)))


def test_bad_shapes_are_rejected_at_entry():
    with pytest.raises(ValueError, match="NCHW"):
        ops.upfirdn2d(torch.randn(3, 4, 4), blur_kernel_2d())
    with pytest.raises(ValueError, match="do not fit"):
        ops.modulated_conv2d(torch.randn(1, 4, 8, 8), torch.randn(5, 3, 3, 3), torch.randn(1, 4))


# (the generator never upsamples with a 1x1 conv, so that combination is not listed)
@pytest.mark.parametrize("up,k", [(False, 1), (False, 3), (True, 3)])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_fast_equals_grouped_reference(up, demodulate, k):
    b, i, o = 3, 6, 5
    x = torch.randn(b, i, 8, 8, dtype=torch.float64)
    w = torch.randn(o, i, k, k, dtype=torch.float64) / (i * k * k) ** 0.5
    s = 1 + 0.3 * torch.randn(b, i, dtype=torch.float64)
    kern = blur_kernel_2d(scale=4.0).double()
    ref = ops.modulated_conv2d(x, w, s, demodulate=demodulate, up=up, blur_kernel=kern, impl="ref")
    fast = ops.modulated_conv2d(x, w, s, demodulate=demodulate, up=up, blur_kernel=kern, impl="fast")
    assert ref.shape == fast.shape == (b, o, 16 if up else 8, 16 if up else 8)
    torch.testing.assert_close(fast, ref, atol=1e-10, rtol=1e-9)


def test_demodulated_weights_have_unit_norm():
    b, i, o, k = 2, 4, 3, 3
    w = torch.randn(o, i, k, k, dtype=torch.float64)
    s = torch.rand(b, i, dtype=torch.float64) + 0.5
    d = ops.demod_coefficients(w, s)
    wb = w[None] * s[:, None, :, None, None] * d[:, :, None, None, None]
    torch.testing.assert_close(wb.pow(2).sum([2, 3, 4]), torch.ones(b, o, dtype=torch.float64), atol=1e-7, rtol=0)


def test_tiny_generator_fast_equals_ref_and_shapes():
    g = tiny_generator()
    assert g.n_styles == 8 and len(g.fixed_noise()) == 7
    codes = torch.randn(2, g.n_styles, 16)
    with torch.no_grad():
        ref = g.synthesize(codes, impl="ref")
        ops_fast = g.synthesize(codes, impl="fast")  # each op's fast path in the reference's structure
        fast = fast_generator.synthesize(g, codes)  # the whole-network fast path
    assert ref.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ops_fast, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)
    # every code index is read by some layer, in order
    assert sorted({idx for _, idx in g.layers()}) == list(range(g.n_styles))


def test_generator_noise_modes_and_code_validation():
    g = tiny_generator()
    codes = torch.randn(1, g.n_styles, 16)
    with torch.no_grad():
        a = g.synthesize(codes)
        b = g.synthesize(codes)
        c = g.synthesize(codes, noise=g.random_noise(1, torch.Generator().manual_seed(3)))
    assert torch.equal(a, b), "fixed noise must be deterministic"
    assert not torch.allclose(a, c), "random noise must change the image"
    with pytest.raises(ValueError, match="codes must be"):
        g.synthesize(torch.randn(1, g.n_styles + 1, 16))


def test_mean_latent_is_deterministic_and_mapping_shape():
    g = tiny_generator()
    m1, m2 = g.mean_latent(500, seed=0), g.mean_latent(500, seed=0)
    assert m1.shape == (16,) and torch.equal(m1, m2)
    assert not torch.equal(m1, g.mean_latent(500, seed=1))
    with torch.no_grad():
        assert g.mapping(torch.randn(4, 16)).shape == (4, 16)


@pytest.mark.parametrize("hw", [(64, 64), (48, 64)])
def test_tiny_encoder_shapes_and_deltas(hw):
    torch.manual_seed(2)
    enc = Encoder4Editing(n_styles=8, widths=(4, 8, 8, 16), units=(1, 2, 2, 1), style_dim=16, input_size=64, se_reduction=4).eval()
    assert enc.taps == (2, 4, 5)
    with torch.no_grad():
        w0, deltas = enc(torch.randn(2, 3, *hw))
    assert w0.shape == (2, 16) and deltas.shape == (2, 7, 16)
    assert torch.isfinite(deltas).all()
