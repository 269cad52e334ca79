"""The fast paths (nn.fast_encoder, nn.fast_generator; E4E's impl="fast", reduced precision,
memory release) against the reference modules (nn.networks).

Tiny networks (widths are arguments) keep these quick; the full-size models are covered by the
parity tests. Nothing here is timed: speed lives in bench/bench.py.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_generator
from e4e_cli.checkpoint import CheckpointInfo
from e4e_cli.model import E4E, physical_cores, release_file_pages
from e4e_cli.nn import fast_encoder, fast_generator, ops
from e4e_cli.nn.engine import FastOptions, Plans
from e4e_cli.nn.networks import Encoder4Editing, blur_kernel_2d

ROOT = Path(__file__).resolve().parents[1]


def fast_synth(g, codes, noise=None, *, dtype=None, plans=None, **options):
    """The generator's fast path with FastOptions(**options)."""
    return fast_generator.synthesize(g, codes, noise, dtype=dtype, options=FastOptions(**options), plans=plans)


def tiny_encoder(seed=2):
    torch.manual_seed(seed)
    enc = Encoder4Editing(n_styles=8, widths=(4, 8, 8, 16), units=(1, 2, 2, 1), style_dim=16, input_size=64, se_reduction=4)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is really exercised
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            elif isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(0.1, 0.4)
    return enc.eval()


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------------------------
# ops


def test_polyphase_kernel_equals_transposed_conv_then_blur():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 6, dtype=torch.float64)
    w = torch.randn(4, 5, 3, 3, dtype=torch.float64)
    k = blur_kernel_2d(scale=4.0).double()
    ref = ops.upfirdn2d(F.conv_transpose2d(x, w.transpose(0, 1), stride=2), k, pad=(1, 1), impl="ref")
    out = F.pixel_shuffle(F.conv2d(x, ops.polyphase_up_weight(w, k), padding=1), 2)
    assert out.shape == ref.shape == (2, 4, 14, 12)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)


def test_polyphase_kernel_rejects_other_shapes():
    with pytest.raises(ValueError, match="3x3"):
        ops.polyphase_up_weight(torch.randn(2, 2, 1, 1), blur_kernel_2d())


@pytest.mark.parametrize("channels_last", [False, True])
def test_blur_with_bias_equals_reference_fir(channels_last):
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    k = blur_kernel_2d(scale=4.0).double()
    b = torch.randn(3, dtype=torch.float64)
    ref = ops.upfirdn2d(x, k, pad=(1, 1), impl="ref") + b[None, :, None, None]
    torch.testing.assert_close(ops.blur2d(x, k, bias=b), ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("extra", [False, True])
def test_phase_shuffle_add_equals_pixel_shuffle_plus_add(extra):
    c, h, w = 3, 5, 4
    y = torch.randn(2, 4 * c, h, w)
    other = torch.randn(1, 1, 2 * h, 2 * w)
    ext = torch.randn(2, 2, 2 * h, 2 * w) if extra else None
    out = ops.phase_shuffle_add(y, other, ext)
    # phase-major (ry*2+rx)*C + c  ->  pixel_shuffle order c*4 + ry*2 + rx
    ps = y.reshape(2, 4, c, h, w).transpose(1, 2).reshape(2, 4 * c, h, w)
    want = F.pixel_shuffle(ps, 2) + other
    assert out.shape == (2, c + (2 if extra else 0), 2 * h, 2 * w)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out[:, :c], want)
    if extra:
        torch.testing.assert_close(out[:, c:], ext)


def test_conv2d_lrelu_equals_conv_then_lrelu():
    x = torch.randn(1, 6, 9, 9).contiguous(memory_format=torch.channels_last)
    w = torch.randn(5, 6, 3, 3).contiguous(memory_format=torch.channels_last)
    b = torch.randn(5)
    with torch.no_grad():
        got = ops.conv2d_lrelu(x, w, b, padding=1)
    torch.testing.assert_close(got, F.leaky_relu(F.conv2d(x, w, b, padding=1), 0.2), atol=1e-5, rtol=1e-5)


def test_demod_from_wsq_equals_demod_coefficients():
    w = torch.randn(6, 5, 3, 3, dtype=torch.float64)
    s = torch.rand(3, 5, dtype=torch.float64) + 0.5
    torch.testing.assert_close(ops.demod_from_wsq(w.pow(2).sum([2, 3]), s), ops.demod_coefficients(w, s))


@pytest.mark.parametrize("shape", [(2, 600, 80, 70), (1, 7, 80, 70), (2, 3, 5, 5)])
def test_relayout_is_an_exact_copy_in_the_other_layout(shape):
    """Blocked (600 channels: blocks of 436 pixels and a remainder), one block, and tiny (PyTorch's own copy)."""
    x = torch.randn(*shape)
    cl = ops.relayout(x, torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous() or shape[1] == 1
    assert torch.equal(cl, x)
    back = ops.relayout(cl, torch.contiguous_format)
    assert back.is_contiguous() and torch.equal(back, x)
    assert ops.relayout(back, torch.contiguous_format) is back  # already so: no copy
    strided = x.transpose(2, 3)  # neither layout: still exact
    assert torch.equal(ops.relayout(strided, torch.channels_last), strided)


def test_relayout_rejects_bad_arguments():
    with pytest.raises(ValueError, match="NCHW"):
        ops.relayout(torch.zeros(3, 4), torch.channels_last)
    with pytest.raises(ValueError, match="memory_format"):
        ops.relayout(torch.zeros(1, 2, 3, 4), torch.preserve_format)


needs_winograd = pytest.mark.skipif(not ops.winograd_available(), reason="this PyTorch build has no NNPACK")


@needs_winograd
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv3x3_winograd_matches_the_direct_convolution(channels_last):
    torch.manual_seed(0)
    x = torch.randn(2, 24, 40, 36)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b, noise = torch.randn(20, 24, 3, 3) / 15, torch.randn(20), torch.randn(1, 1, 40, 36)
    want = F.conv2d(x.double(), w.double(), b.double(), padding=1) + noise.double()  # float64
    with torch.no_grad():
        got = ops.conv3x3(x, w, b, addend=noise, impl="winograd")
        direct = ops.conv3x3(x, w, b, addend=noise, impl="direct")
    assert got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last  # x's layout back
    assert rel(got, want) < 5e-5 and rel(direct, want) < 1e-6
    assert rel(got, want) > 0  # it really is another method (Winograd rounds differently)


@needs_winograd
def test_conv3x3_auto_takes_winograd_only_where_it_can_run_and_pays(monkeypatch):
    calls = []
    real = torch._nnpack_spatial_convolution
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", lambda *a: calls.append(a[0].shape) or real(*a))
    big, small = torch.randn(1, 8, 16, 16), torch.randn(1, 8, 6, 6)
    w = torch.randn(8, 8, 3, 3)
    th = {"min_channels": 8, "min_side": 16}
    with torch.no_grad():
        ops.conv3x3(big, w, **th)  # pays: Winograd
        ops.conv3x3(small, w, **th)  # too small: direct
        ops.conv3x3(big, w)  # the default thresholds (128 or 256 channels, 64 pixels): direct
        ops.conv3x3(big, w, impl="direct", **th)
        ops.conv3x3(big.double(), w.double(), **th)  # float64: direct
        ops.conv3x3(big.bfloat16(), w.bfloat16(), **th)  # reduced precision: direct
    assert calls == [big.shape]
    monkeypatch.setenv("E4E_WINOGRAD", "0")  # the off switch
    with torch.no_grad():
        ops.conv3x3(big, w, **th)
    assert calls == [big.shape]
    monkeypatch.delenv("E4E_WINOGRAD")
    y = ops.conv3x3(big, w.clone().requires_grad_(), **th)  # gradients wanted: direct, and they flow
    assert y.requires_grad and len(calls) == 1
    with pytest.warns(UserWarning, match="cannot run here"):
        with torch.no_grad():
            out = ops.conv3x3(big.double(), w.double(), impl="winograd")
    torch.testing.assert_close(out, F.conv2d(big.double(), w.double(), padding=1))
    with pytest.warns(UserWarning, match="unknown impl"):
        ops.conv3x3(big, w, impl="fft")
    with pytest.raises(ValueError, match="do not fit"):
        ops.conv3x3(big, torch.randn(8, 5, 3, 3))


@needs_winograd
def test_generator_with_winograd_convolutions_matches_the_reference():
    g = tiny_generator(size=64)
    codes = torch.randn(2, g.n_styles, 16)
    with torch.no_grad():
        ref = g.synthesize(codes)
        direct = fast_synth(g, codes, conv3x3="direct")
        wino = fast_synth(g, codes, conv3x3="winograd")
    assert rel(wino, ref) < 1e-4 and rel(wino, direct) < 1e-4
    assert not torch.equal(wino, direct)  # the Winograd path really ran


# ---------------------------------------------------------------------------------------------
# generator


@pytest.mark.parametrize("up_mode,mode", list(itertools.product(["transpose", "polyphase"], ["auto", "activation", "weight"])))
@pytest.mark.parametrize("batch", [1, 3])
def test_generator_fast_equals_reference(up_mode, mode, batch):
    g = tiny_generator(dtype=torch.float64)
    codes = torch.randn(batch, g.n_styles, 16, dtype=torch.float64)
    with torch.no_grad():
        ref = g.synthesize(codes)  # the reference returns float32
        fast = fast_synth(g, codes, up_mode=up_mode, mode=mode)
    assert fast.shape == ref.shape == (batch, 3, 32, 32)
    assert fast.is_contiguous()
    torch.testing.assert_close(fast.float(), ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("up_mode,mode", list(itertools.product(["transpose", "polyphase"], ["auto", "weight"])))
@pytest.mark.parametrize("size", [32, 64])
def test_generator_fast_float32_equals_reference(up_mode, mode, size):
    """float32 takes the paths float64 cannot (oneDNN's fused conv + leaky ReLU, the noise
    carried as input channels after a polyphase up-sampling layer)."""
    g = tiny_generator(size=size)
    codes = torch.randn(2, g.n_styles, 16)
    with torch.no_grad():
        ref = g.synthesize(codes)
        fast = fast_synth(g, codes, up_mode=up_mode, mode=mode)
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-4)


def test_generator_auto_mode_uses_both_modes_and_is_cached():
    g = tiny_generator(size=64)
    codes = torch.randn(2, g.n_styles, 16)
    plans = Plans()
    with torch.no_grad():
        a = fast_generator.synthesize(g, codes, plans=plans)
        plan = next(iter(plans.of(g).values()))
        b = fast_generator.synthesize(g, codes, plans=plans)
        ref = g.synthesize(codes)
    modes = [st.weight_mode for st in plan.steps]
    assert any(modes) and not all(modes), "tiny 64 generator should mix activation and weight mode"
    assert modes == sorted(modes), "weight mode, once started, continues to the last layer"
    assert len(plans.of(g)) == 1 and len(plans) == 1 and torch.equal(a, b)
    torch.testing.assert_close(a, ref, atol=1e-4, rtol=1e-4)
    plans.clear()
    assert not plans.of(g) and len(plans) == 0


def test_all_styles_in_one_matmul_equal_each_layers_modulation():
    g = tiny_generator()
    codes = torch.randn(2, g.n_styles, 16)
    plans = Plans()
    with torch.no_grad():
        fast_generator.synthesize(g, codes, plans=plans)
        plan = next(iter(plans.of(g).values()))
        styles = F.linear(codes, plan.style_w, plan.style_b)
        for st in plan.steps:
            own = st.mod.modulation(codes[:, st.code])
            torch.testing.assert_close(styles[:, st.code, st.off: st.off + own.shape[1]], own, atol=1e-6, rtol=1e-6)


def test_generator_fast_random_noise_matches_reference():
    g = tiny_generator()
    codes = torch.randn(2, g.n_styles, 16)
    noise = g.random_noise(2, torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = g.synthesize(codes, noise=noise)
        fast = fast_generator.synthesize(g, codes, noise)
        fixed = fast_generator.synthesize(g, codes)
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(fast, fixed)


def test_generator_fast_leaves_parameters_untouched():
    g = tiny_generator()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    with torch.no_grad():
        fast_generator.synthesize(g, torch.randn(1, g.n_styles, 16), dtype=torch.bfloat16)
    for k, v in g.state_dict().items():
        assert torch.equal(v, before[k]), k


def _lowp_supported(dtype) -> bool:
    try:
        F.conv2d(torch.ones(1, 2, 4, 4, dtype=dtype), torch.ones(2, 2, 3, 3, dtype=dtype), padding=1)
        F.conv_transpose2d(torch.ones(1, 2, 4, 4, dtype=dtype), torch.ones(2, 2, 3, 3, dtype=dtype), stride=2)
        return True
    except (RuntimeError, NotImplementedError):
        return False


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("up_mode", ["transpose", "polyphase"])
def test_generator_reduced_precision_close_to_float32(dtype, up_mode):
    """The GPU's half-precision path, run on the CPU: correct up to the format's rounding."""
    if not _lowp_supported(dtype):
        pytest.skip(f"{dtype} convolutions are not supported on this CPU build")
    g = tiny_generator()
    codes = torch.randn(2, g.n_styles, 16)
    with torch.no_grad():
        ref = g.synthesize(codes)
        low = fast_synth(g, codes, dtype=dtype, up_mode=up_mode)
    assert low.dtype == torch.float32, "the RGB image is accumulated in float32"
    assert torch.isfinite(low).all()
    assert rel(low, ref) < (3e-2 if dtype == torch.bfloat16 else 5e-3)


# ---------------------------------------------------------------------------------------------
# encoder


@pytest.mark.parametrize("hw", [(64, 64), (48, 64), (80, 64)])  # (80, 64): the heads' last conv meets 3x2, not 2x2
def test_encoder_fast_equals_reference(hw):
    enc = tiny_encoder()
    x = torch.randn(2, 3, *hw)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    plans = Plans()
    with torch.no_grad():
        w0, deltas = enc(x)
        fw0, fdeltas = fast_encoder.encode(enc, x, plans=plans)
    torch.testing.assert_close(fw0, w0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fdeltas, deltas, atol=1e-5, rtol=1e-5)
    for k, v in enc.state_dict().items():  # BatchNorm was folded into new tensors
        assert torch.equal(v, before[k]), k
    assert len(plans.of(enc)) == 1
    plans.clear(enc)
    assert not plans.of(enc)


def test_encoder_bn_folding_is_exact_in_float64():
    enc = tiny_encoder().double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        w0, deltas = enc(x)
        fw0, fdeltas = fast_encoder.encode(enc, x)
    torch.testing.assert_close(fw0, w0.to(fw0.dtype), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(fdeltas, deltas.to(fdeltas.dtype), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_encoder_reduced_precision_close_to_float32(dtype):
    if not _lowp_supported(dtype):
        pytest.skip(f"{dtype} convolutions are not supported on this CPU build")
    enc = tiny_encoder()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        w0, deltas = enc(x)
        lw0, ldeltas = fast_encoder.encode(enc, x, dtype=dtype)
    assert lw0.dtype == ldeltas.dtype == torch.float32
    assert rel(lw0, w0) < 3e-2 and rel(ldeltas, deltas) < 5e-2


def test_encoder_unknown_impl_falls_back_with_warning():
    enc = tiny_encoder()
    x = torch.randn(1, 3, 64, 64)
    with pytest.warns(UserWarning, match="reference"), torch.no_grad():
        a = enc(x, impl="triton")
    with torch.no_grad():
        b = enc(x)
    torch.testing.assert_close(a[0], b[0])


# Batch invariance is not promised bitwise: oneDNN and MKL may pick another kernel for another
# batch size, which rounds differently (a fresh clone on an AVX2-only EPYC saw the encoder differ
# in the last bits). Measured here: at most 4.3e-7 relative (float32, 20 seeds). The bound is
# 1e-6 relative to the output's largest value in float32, 1e-2 in bfloat16 (its epsilon is 7.8e-3).
BATCH_TOL = {None: 1e-6, torch.bfloat16: 1e-2}


def _rel_max(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_fast_paths_are_batch_invariant(dtype):
    """An image's result does not depend on the batch it is in, within rounding (BATCH_TOL): the
    CLI's --batch-size changes outputs by no more than that."""
    if dtype is not None and not _lowp_supported(dtype):
        pytest.skip(f"{dtype} convolutions are not supported on this CPU build")
    tol = BATCH_TOL[dtype]
    for seed in range(3):
        torch.manual_seed(seed)
        enc, g = tiny_encoder(), tiny_generator(size=64, seed=seed + 1)
        x = torch.randn(3, 3, 64, 64)
        codes = torch.randn(3, g.n_styles, 16)
        with torch.no_grad():
            one = fast_encoder.encode(enc, x[:1], dtype=dtype)
            three = fast_encoder.encode(enc, x, dtype=dtype)
            assert _rel_max(one[0], three[0][:1]) <= tol and _rel_max(one[1], three[1][:1]) <= tol
            last = fast_encoder.encode(enc, x[2:], dtype=dtype)
            assert _rel_max(last[1], three[1][2:]) <= tol
            img1 = fast_generator.synthesize(g, codes[:1], dtype=dtype)
            img3 = fast_generator.synthesize(g, codes, dtype=dtype)
            assert _rel_max(img1, img3[:1]) <= tol
            # and the bound is tight enough to see a real difference: another image is far off
            assert _rel_max(img3[1:2], img3[:1]) > 10 * tol


# ---------------------------------------------------------------------------------------------
# E4E API on tiny networks


def tiny_model(**kw):
    g = tiny_generator()
    enc = tiny_encoder()
    info = CheckpointInfo(size=32, n_styles=8, domain="church", encoder_type="Encoder4Editing", start_from_latent_avg=True)
    return E4E(enc, g, torch.zeros(8, 16), info, device=torch.device("cpu"), **kw)


def test_model_fast_default_matches_reference_and_precision_choices():
    fast, ref = tiny_model(), tiny_model(impl="ref")
    assert fast.impl == "fast" and fast.precision == torch.float32
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(Exception):  # input must be the model's input size (256 for church)
        fast.encode(x)
    fast.info.domain = ref.info.domain = "church"
    # tiny encoder works on 64x64: call the modules the way encode() does
    with torch.no_grad():
        c_fast = fast_encoder.encode(fast.encoder, x)[0]
        c_ref = ref.encoder(x)[0]
    torch.testing.assert_close(c_fast, c_ref, atol=1e-5, rtol=1e-5)
    codes = torch.randn(2, 8, 16)
    torch.testing.assert_close(fast.decode(codes), ref.decode(codes), atol=1e-4, rtol=1e-4)
    low = fast.decode(codes, precision="bf16")
    assert low.dtype == torch.float32 and rel(low, ref.decode(codes)) < 3e-2
    assert fast.release_encoder_memory() == 0  # not memory-mapped: nothing to release


def test_model_runs_the_path_and_options_it_holds():
    """E4E chooses the path: its FastOptions reach the fast generator, its plans are its own and
    clear_fast_cache() empties them; the reference path is the module's own synthesis, with the
    FIR layout FastOptions name (same numbers)."""
    enc, g = tiny_encoder(), tiny_generator(size=64)
    codes = torch.randn(2, 10, 16)
    info = CheckpointInfo(size=64, n_styles=10, domain="church", encoder_type="Encoder4Editing", start_from_latent_avg=True)
    model = E4E(enc, g, torch.zeros(10, 16), info, device=torch.device("cpu"),
                fast_options=FastOptions(up_mode="polyphase", mode="weight"))
    with torch.no_grad():
        want = fast_synth(g, codes, up_mode="polyphase", mode="weight")
        ref = g.synthesize(codes)
    assert torch.equal(model.decode(codes), want)
    assert [k[2:] for k in model.plans.of(g)] == [("polyphase", "weight")]
    other = E4E(enc, g, torch.zeros(10, 16), info, device=torch.device("cpu"))  # the same networks, default options
    other.decode(codes)
    assert [k[2:] for k in other.plans.of(g)] == [("transpose", "auto")] and len(model.plans) == 1
    model.clear_fast_cache()
    assert len(model.plans) == 0 and len(other.plans) == 1
    model.impl = "ref"
    torch.testing.assert_close(model.decode(codes), ref, atol=0, rtol=0)
    model.fast_options = model.fast_options.replace(fir_layout="per_channel")
    torch.testing.assert_close(model.decode(codes), ref, atol=1e-5, rtol=1e-5)
    assert len(model.plans) == 0, "the reference path builds no plans"
    with pytest.raises(ValueError, match="up_mode"):
        FastOptions(up_mode="fused")
    with pytest.raises(ValueError, match="conv3x3"):
        FastOptions(conv3x3="fft")


def test_models_with_other_options_in_two_threads_do_not_affect_each_other():
    """Two E4E objects over the same networks, with different FastOptions (and the reference
    path with the reference implementation's FIR layout), decoding at the same time from three
    threads: each gets exactly what it gets alone. Class attributes or module globals as
    switches (the old Generator.fast_mode, ops._FIR_LAYOUT) could not promise that."""
    enc, g = tiny_encoder(), tiny_generator(size=64)
    info = CheckpointInfo(size=64, n_styles=10, domain="church", encoder_type="Encoder4Editing", start_from_latent_avg=True)

    def model(**kw):
        return E4E(enc, g, torch.zeros(10, 16), info, device=torch.device("cpu"), **kw)

    wino = "winograd" if ops.winograd_available() else "direct"
    models = {
        "a": model(fast_options=FastOptions(up_mode="transpose", mode="activation", conv3x3="direct")),
        "b": model(fast_options=FastOptions(up_mode="polyphase", mode="weight", conv3x3=wino,
                                            winograd_min_channels=1, winograd_min_side=1)),
        "ref": model(impl="ref", fast_options=FastOptions(fir_layout="per_channel")),
    }
    codes = torch.randn(2, 10, 16)
    alone = {}
    for k, m in models.items():  # one at a time, each in a thread of its own as below (same thread settings)
        t = threading.Thread(target=lambda k=k, m=m: alone.__setitem__(k, m.decode(codes)))
        t.start()
        t.join(60)
    assert not torch.equal(alone["a"], alone["b"])  # the options really change the numbers
    assert not torch.equal(alone["a"], alone["ref"]) and not torch.equal(alone["b"], alone["ref"])
    start = threading.Barrier(len(models))
    wrong, errors = [], []

    def work(name):
        try:
            start.wait(30)
            for _ in range(25):
                if not torch.equal(models[name].decode(codes), alone[name]):
                    wrong.append(name)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(k,)) for k in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert not wrong, f"results changed by another thread's options: {sorted(set(wrong))} ({len(wrong)} of 75)"


def test_heap_reuse_changes_no_result_and_restores_malloc(monkeypatch):
    """The float32 decode's glibc tuning (model._HeapReuse) is active only inside decode and
    leaves the images bit for bit the same."""
    from e4e_cli import model as model_mod

    hr = model_mod._HeapReuse
    model = tiny_model()
    codes = torch.randn(2, 8, 16)
    monkeypatch.setattr(hr, "_lib", False)  # off
    off = model.decode(codes)
    monkeypatch.setattr(hr, "_lib", None)  # found again (glibc here; elsewhere a no-op)
    monkeypatch.delenv("E4E_HEAP_REUSE", raising=False)
    on = model.decode(codes)
    assert torch.equal(on, off)
    assert hr.held == 0
    with hr.hold(), hr.hold():
        assert hr.held == 2
    assert hr.held == 0
    monkeypatch.setattr(hr, "_lib", None)
    monkeypatch.setenv("E4E_HEAP_REUSE", "0")
    assert hr._libc() is False


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("E4E_TEST_COMPILE", "") in ("", "0"),
                    reason="torch.compile takes ~30 s even for the tiny model on a small CPU; set E4E_TEST_COMPILE=1")
def test_opt_in_torch_compile_matches_eager():
    """The GPU-oriented torch.compile path, checked on the CPU (no GPU in CI)."""
    model, eager = tiny_model().compile(), tiny_model()
    codes = torch.randn(2, 8, 16)
    torch.testing.assert_close(model.decode(codes), eager.decode(codes), atol=1e-4, rtol=1e-4)
    x = torch.randn(2, 3, 64, 64)  # the tiny encoder's size (encode() checks for the domain's 256)
    with torch.no_grad():
        got = model._compiled["encoder"](model.encoder, x, dtype=None, plans=model.plans)
        want = fast_encoder.encode(eager.encoder, x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# memory


def test_release_file_pages_keeps_values(tmp_path):
    path = tmp_path / "t.pt"
    torch.save({"a": torch.arange(3 << 20, dtype=torch.float32), "b": torch.randn(1000)}, path)
    sd = torch.load(path, mmap=True, weights_only=True)
    total = float(sd["a"].sum())
    released = release_file_pages([sd["a"], sd["b"]], str(path))
    if not sys.platform.startswith("linux"):
        assert released == 0
        return
    assert released > 0 and released % 4096 == 0
    assert float(sd["a"].sum()) == total  # re-read from the file
    anon = torch.arange(3 << 20, dtype=torch.float32)
    assert release_file_pages([anon], str(path)) == 0, "anonymous memory must never be advised"
    assert float(anon.sum()) == total


@pytest.mark.slow
def test_model_release_encoder_memory_on_a_real_checkpoint(case_checkpoint):
    model = E4E.from_checkpoint(case_checkpoint("church_256_s3"), device="cpu")
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    codes = model.encode(x)
    if sys.platform.startswith("linux"):
        assert model.release_encoder_memory() > 100 << 20  # the encoder is most of the file
    torch.testing.assert_close(model.encode(x), codes, atol=0, rtol=0)
    img = model.decode(codes)  # decode releases the encoder's pages again; output unchanged
    assert torch.isfinite(img).all()
    torch.testing.assert_close(model.encode(x), codes, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# threads and start-up


def test_physical_cores_and_thread_override():
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)
    code = "import torch; from e4e_cli.model import configure_threads; print(configure_threads(), torch.get_num_threads())"
    env = dict(os.environ, E4E_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["1", "1"], out.stderr


def test_cli_help_imports_no_heavy_modules():
    """`e4e --help` must start fast: no torch, numpy or PIL at import of the CLI and its commands."""
    code = ("import sys; from e4e_cli.cli.app import _register; _register(); "
            "print(','.join(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported at start-up: {out.stdout.strip()}"
