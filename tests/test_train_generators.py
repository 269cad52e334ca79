"""Loading StyleGAN2 generators for `e4e train` (e4e_cli/train/generators.py).

Every fixture is built here: small narrow random generators (32 px) saved in the rosinality,
e4e and StyleGAN2-ADA layouts. Image comparisons use atol 1e-4 (float32, same kernels).
"""
from __future__ import annotations

import math
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import RunsCode
from e4e_cli.errors import E4EError
from e4e_cli.nn.networks import Generator
from e4e_cli.train.generators import load_generator, save_rosinality_checkpoint

CH = {4: 16, 8: 16, 16: 8, 32: 8}


def _rand_gen(seed=0, size=32, channels=CH, style_dim=16, n_mlp=3):
    torch.manual_seed(seed)
    g = Generator(size, style_dim=style_dim, n_mlp=n_mlp, channels=channels).eval()
    with torch.no_grad():
        for name, prm in g.named_parameters():
            if name.endswith("noise.weight") or name.endswith("activate.bias") or name.endswith("to_rgb1.bias") or ".bias" in name and "to_rgb" in name:
                prm.normal_(0, 0.1)
    return g


def _image(g, w):
    codes = w[:, None].expand(-1, g.n_styles, -1)
    return g.synthesize(codes)


def test_rosinality_round_trip(tmp_path):
    g = _rand_gen()
    avg = torch.randn(16)
    path = save_rosinality_checkpoint(tmp_path / "g.pt", generator=g, latent_avg=avg)
    lg = load_generator(path)
    assert lg.kind == "rosinality" and lg.size == 32 and lg.channel_multiplier is None
    assert lg.generator.channels == CH and len(lg.generator.style) == 4
    assert torch.equal(lg.latent_avg, avg)
    assert not any(p.requires_grad for p in lg.generator.parameters()) and not lg.generator.training
    w = g.mapping(torch.randn(2, 16))
    torch.testing.assert_close(_image(lg.generator, w), _image(g, w), atol=1e-4, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["g.pt"]  # no temporary left behind


def test_channel_multiplier_and_size_mismatch(tmp_path):
    from e4e_cli.nn.networks import default_channels
    g = Generator(8, style_dim=8, n_mlp=1, channels=default_channels(8, 1))
    save_rosinality_checkpoint(tmp_path / "g.pt", generator=g, latent_avg=torch.zeros(8))
    assert load_generator(tmp_path / "g.pt", size=8).size == 8
    with pytest.raises(E4EError, match=r"8x8.*size 256"):
        load_generator(tmp_path / "g.pt", size=256)


def test_missing_latent_avg_is_mean_of_mapping(tmp_path, caplog):
    g = _rand_gen()
    torch.save({"g_ema": g.state_dict()}, tmp_path / "g.pt")
    lg = load_generator(tmp_path / "g.pt")
    torch.testing.assert_close(lg.latent_avg, g.mean_latent(10_000), atol=1e-6, rtol=0)
    assert "latent_avg" in caplog.text


def test_legacy_torch_save_format(tmp_path):
    g = _rand_gen(seed=4)
    torch.save({"g_ema": g.state_dict(), "latent_avg": torch.ones(16)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    lg = load_generator(tmp_path / "old.pt")
    assert lg.kind == "rosinality" and torch.equal(lg.latent_avg, torch.ones(16))
    w = torch.randn(1, 16)
    torch.testing.assert_close(_image(lg.generator, w), _image(g, w), atol=1e-4, rtol=0)


def test_e4e_checkpoint_decoder(tmp_path):
    g = _rand_gen(seed=1)
    sd = {f"decoder.{k}": v for k, v in g.state_dict().items()}
    sd["encoder.dummy"] = torch.zeros(1)
    avg = torch.randn(16)
    torch.save({"state_dict": sd, "latent_avg": avg.repeat(g.n_styles, 1), "opts": {"stylegan_size": 32}}, tmp_path / "e.pt")
    lg = load_generator(tmp_path / "e.pt")
    assert lg.kind == "e4e" and lg.size == 32
    assert torch.equal(lg.latent_avg, avg)
    w = torch.randn(1, 16)
    torch.testing.assert_close(_image(lg.generator, w), _image(g, w), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- StyleGAN2-ADA pickles


def _fake_persistence_module():
    """A throwaway `torch_utils.persistence` whose objects pickle like NVlabs' (meta dict with module_src)."""
    mod = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # never called by the loader under test
        raise AssertionError("the embedded code path must not run")

    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class Rec:
        def __init__(self, class_name, **state):
            self.class_name, self.st = class_name, state

        def __reduce__(self):
            meta = dict(type="class", version=4, module_src="raise SystemExit('embedded code ran')",
                        class_name=self.class_name, state=self.st)
            return (_reconstruct_persistent_obj, (meta,))

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    return mod, Rec


def _ada_from_ours(g: Generator, w_avg: torch.Tensor, Rec, *, arch="skip", c_dim=0, drop=None, clamp=256, rgb_clamp=None):
    """Inverse of the loader's conversion, in ADA's parameterisation (raw weights + gains);
    `clamp` is every SynthesisLayer's conv_clamp, `rgb_clamp` every ToRGBLayer's (None: absent)."""
    P = torch.nn.Parameter

    def fc(lin, lr):
        i = lin.weight.shape[1]
        return Rec("FullyConnectedLayer", _parameters=OrderedDict(weight=P(lin.weight.detach() * lin.lr_mul / lr),
                   bias=P(lin.bias.detach() * lin.lr_mul / lr)), _buffers=OrderedDict(), _modules=OrderedDict(),
                   weight_gain=lr / np.sqrt(i), bias_gain=lr, activation="lrelu")  # numpy floats, as in ADA

    def layer(sc, noise):
        return Rec("SynthesisLayer", _parameters=OrderedDict(weight=P(sc.conv.weight[0].detach().clone()),
                   noise_strength=P(sc.noise.weight.detach()[0]), bias=P(sc.activate.bias.detach().clone())),
                   _buffers=OrderedDict(noise_const=noise[0, 0].clone(), resample_filter=torch.tensor([1.0, 3, 3, 1])),
                   _modules=OrderedDict(affine=fc(sc.conv.modulation, 1.0)), conv_clamp=clamp, activation="lrelu",
                   _non_persistent_buffers_set=set())

    def torgb(t):
        i = t.conv.weight.shape[2]
        extra = {} if rgb_clamp is None else {"conv_clamp": rgb_clamp}
        return Rec("ToRGBLayer", _parameters=OrderedDict(weight=P(t.conv.weight[0].detach().clone()), bias=P(t.bias.detach().reshape(3))),
                   _buffers=OrderedDict(), _modules=OrderedDict(affine=fc(t.conv.modulation, 1.0)), weight_gain=1 / math.sqrt(i),
                   **extra)

    noises = g.fixed_noise()
    blocks = OrderedDict(b4=Rec("SynthesisBlock", _parameters=OrderedDict(const=P(g.input.input[0].detach().clone())), _buffers=OrderedDict(),
                                _modules=OrderedDict(conv1=layer(g.conv1, noises[0]), torgb=torgb(g.to_rgb1)), architecture=arch))
    for k in range(len(g.to_rgbs)):
        res = 2 ** (k + 3)
        blocks[f"b{res}"] = Rec("SynthesisBlock", _parameters=OrderedDict(), _buffers=OrderedDict(), architecture=arch,
                                _modules=OrderedDict(conv0=layer(g.convs[2 * k], noises[1 + 2 * k]), conv1=layer(g.convs[2 * k + 1], noises[2 + 2 * k]),
                                                     torgb=torgb(g.to_rgbs[k])))
    mapping = Rec("MappingNetwork", _parameters=OrderedDict(), _buffers=OrderedDict(w_avg=w_avg.clone()),
                  _modules=OrderedDict((f"fc{i}", fc(g.style[i + 1], 0.01)) for i in range(len(g.style) - 1)))
    if drop:
        del blocks[drop]  # e.g. a StyleGAN3 synthesis network has no b4/b8 blocks
    synthesis = Rec("SynthesisNetwork", _parameters=OrderedDict(), _buffers=OrderedDict(), _modules=blocks, img_resolution=g.size)
    return Rec("Generator", _parameters=OrderedDict(), _buffers=OrderedDict(), _modules=OrderedDict(mapping=mapping, synthesis=synthesis),
               img_resolution=g.size, img_channels=3, c_dim=c_dim, z_dim=g.style_dim, w_dim=g.style_dim)


def _write_ada(path, g, w_avg, **kw):
    mod, Rec = _fake_persistence_module()
    pkg = types.ModuleType("torch_utils")
    pkg.persistence = mod
    saved = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence")}
    sys.modules.update({"torch_utils": pkg, "torch_utils.persistence": mod})
    try:
        G = _ada_from_ours(g, w_avg, Rec, **kw)
        with open(path, "wb") as fh:
            pickle.dump({"G": G, "D": Rec("Discriminator", x=1), "G_ema": G, "augment_pipe": None}, fh, protocol=4)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_ada_pickle_converts_without_running_code(tmp_path):
    g = _rand_gen(seed=2)
    avg = torch.randn(16)
    _write_ada(tmp_path / "g.pkl", g, avg)
    assert "torch_utils" not in sys.modules
    lg = load_generator(tmp_path / "g.pkl")
    assert lg.kind == "stylegan2-ada" and lg.size == 32 and lg.generator.channels == CH
    torch.testing.assert_close(lg.latent_avg, avg)
    z = torch.randn(2, 16)
    torch.testing.assert_close(lg.generator.mapping(z), g.mapping(z), atol=1e-5, rtol=1e-5)
    w = g.mapping(z)
    torch.testing.assert_close(_image(lg.generator, w), _image(g, w), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kw,msg", [({"arch": "resnet"}, "resnet"), ({"c_dim": 10}, "conditional"), ({"drop": "b16"}, "misses 'b16'")])
def test_ada_unsupported_configs(tmp_path, kw, msg):
    _write_ada(tmp_path / "g.pkl", _rand_gen(), torch.zeros(16), **kw)
    with pytest.raises(E4EError, match=msg):
        load_generator(tmp_path / "g.pkl")


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    target = tmp_path / "pwned"
    with open(tmp_path / "evil.pkl", "wb") as fh:
        pickle.dump({"G_ema": RunsCode(target)}, fh, protocol=4)
    with pytest.raises(E4EError, match=r"refusing to load .*wants to run (posix|os)\.system"):
        load_generator(tmp_path / "evil.pkl")
    assert not target.exists()


def _one_line(exc):
    s = str(exc.value)
    assert s and "\n" not in s
    return s


@pytest.mark.parametrize("case", ["missing", "folder", "html", "empty", "truncated_pt", "truncated_pkl", "no_keys", "garbage"])
def test_bad_files_are_one_line_errors(tmp_path, case):
    g = _rand_gen()
    p = tmp_path / "g.pt"
    if case == "folder":
        p.mkdir()
    elif case == "html":
        p.write_bytes(b"<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "truncated_pt":
        save_rosinality_checkpoint(p, generator=g, latent_avg=torch.zeros(16))
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif case == "truncated_pkl":
        _write_ada(p, g, torch.zeros(16))
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif case == "no_keys":
        torch.save({"weights": torch.zeros(3)}, p)
    elif case == "garbage":
        p.write_bytes(b"hello world, not a model")
    with pytest.raises(E4EError) as exc:
        load_generator(p)
    msg = _one_line(exc)
    assert str(p) in msg
    expect = {"missing": "not found", "folder": "folder", "html": "HTML", "empty": "empty", "truncated_pt": "truncated",
              "truncated_pkl": "truncated", "no_keys": "no generator weights", "garbage": "neither"}[case]
    assert expect in msg


def test_ada_upsampling_conv_matches_ada_math(tmp_path):
    """Our converted up-sampling conv equals StyleGAN2-ADA's math, written out plainly here:
    modulate the raw weight by the styles, demodulate, `conv_transpose2d` with the weight's
    in/out swapped and NOT flipped (ADA passes flip_weight=False for up=2, which its wrapper
    turns into no flip for the transposed conv), stride 2, no padding, then the [1,3,3,1] FIR
    with gain 4 and 1 pixel of padding on each side (3 - (k-1) before, 2 - (k-up) after).
    Tolerance atol 1e-4 (float32; ADA's demodulation eps acts on the unscaled weight)."""
    import torch.nn.functional as F
    g = _rand_gen(seed=3)
    _write_ada(tmp_path / "g.pkl", g, torch.zeros(16))
    conv = load_generator(tmp_path / "g.pkl").generator.convs[2].conv  # 8 -> 16 px, 16 -> 8 channels
    raw = g.convs[2].conv.weight[0].detach()  # what the ADA record holds: [O,I,3,3]
    x, code = torch.randn(2, 16, 8, 8), torch.randn(2, 16)
    styles = g.convs[2].conv.modulation(code)  # ADA affine: same equalised-lr linear
    def ada_up(flip):
        ref = []
        for b in range(2):
            w = raw * styles[b][None, :, None, None]
            w = w * (w.square().sum(dim=[1, 2, 3]) + 1e-8).rsqrt()[:, None, None, None]
            w = w.flip([2, 3]) if flip else w
            y = F.conv_transpose2d(x[b:b + 1], w.transpose(0, 1), stride=2)  # [1,O,17,17]
            taps = torch.tensor([1.0, 3, 3, 1])
            f = (taps[:, None] * taps[None, :]) / 64 * 4
            y = F.pad(y, (1, 1, 1, 1))
            y = F.conv2d(y, f.flip([0, 1]).expand(y.shape[1], 1, 4, 4).contiguous(), groups=y.shape[1])
            ref.append(y)
        return torch.cat(ref)

    out = conv(x, code)
    ref = ada_up(flip=False)
    assert out.shape == ref.shape == (2, 8, 16, 16)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    # the test can tell conventions apart: a flipped weight gives a clearly different image
    assert (out - ada_up(flip=True)).abs().max() > 1e-2


# ---------------------------------------------------------------- against NVlabs' own pickle


@pytest.fixture(scope="module")
def ada_official(parity_dir):
    """shared/parity/ada: a 64 px snapshot pickle written by NVlabs/stylegan2-ada-pytorch itself
    (module source embedded, persistence records, EasyDicts, numpy scalars) and what NVlabs'
    code computes from its G_ema (SPEC.md there)."""
    d = Path(parity_dir) / "ada"
    return d / "ada_64_s1.pkl", {k: torch.from_numpy(v) for k, v in np.load(d / "ada_64_s1.npz").items()}


def test_ada_snapshot_from_nvlabs_code_matches_its_outputs(ada_official):
    """Read through the restricted unpickler (none of the embedded code runs, torch_utils and
    dnnlib are never imported), G_ema gives NVlabs' mapping (abs 1e-6), w_avg, truncation and
    images (const noise, no noise, a W+ code; max abs 1e-5 on a range of ~7)."""
    path, want = ada_official
    before = set(sys.modules)
    lg = load_generator(path)
    assert not {m for m in set(sys.modules) - before if m.split(".")[0] in ("torch_utils", "dnnlib", "training")}
    assert lg.kind == "stylegan2-ada" and lg.size == 64 and lg.generator.n_styles == 10 and len(lg.generator.style) == 3
    g = lg.generator
    with torch.no_grad():
        w = g.mapping(want["z"])
        torch.testing.assert_close(w, want["w"], atol=1e-6, rtol=0)
        torch.testing.assert_close(w[:, None].expand(-1, 10, -1), want["ws"], atol=1e-6, rtol=0)
        torch.testing.assert_close(lg.latent_avg, want["w_avg"], atol=1e-6, rtol=0)
        psi = lg.latent_avg + 0.5 * (w - lg.latent_avg)
        torch.testing.assert_close(psi[:, None].expand(-1, 10, -1), want["ws_psi05"], atol=1e-6, rtol=0)
        for name, codes, noise in (("img", want["ws"], None), ("img_G_forward", want["ws"], None),
                                   ("img_noise_none", want["ws"], [torch.zeros_like(n) for n in g.fixed_noise()]),
                                   ("img_wplus", want["wplus"], None)):
            img = g.synthesize(codes, noise=noise)
            err = float((img - want[name]).abs().max())
            assert err <= 1e-5, (name, err)


def test_ada_conv_clamp_is_applied_in_float32(tmp_path):
    """ADA clamps each SynthesisLayer's output (after bias, lrelu and its sqrt(2) gain) and each
    ToRGB's conv + bias (before the up-sampled skip is added) to +-conv_clamp in any dtype. With a
    small clamp the loaded generator follows that order (written out here from modules of the
    source generator) and its image stays within 4 x clamp (4 ToRGBs, positive unit-sum up-sampling);
    a clamp no layer reaches changes nothing."""
    from e4e_cli.nn import ops

    g = _rand_gen(seed=5)
    w = g.mapping(torch.randn(2, 16))
    codes = w[:, None].expand(-1, g.n_styles, -1)
    _write_ada(tmp_path / "big.pkl", g, torch.zeros(16), clamp=256, rgb_clamp=256)
    big = load_generator(tmp_path / "big.pkl").generator
    with torch.no_grad():
        torch.testing.assert_close(big.synthesize(codes), g.synthesize(codes), atol=1e-4, rtol=0)
    c = 0.05
    _write_ada(tmp_path / "small.pkl", g, torch.zeros(16), clamp=c, rgb_clamp=c)
    small = load_generator(tmp_path / "small.pkl").generator
    noise = g.fixed_noise()

    def rgb(t, x, code, skip):
        y = (t.conv(x, code) + t.bias).clamp(-c, c)
        return y if skip is None else y + ops.upfirdn2d(skip, t.upsample.kernel, up=2, pad=(2, 1))

    with torch.no_grad():
        x = g.conv1(g.input.input.expand(2, -1, -1, -1), codes[:, 0], noise[0]).clamp(-c, c)
        img = rgb(g.to_rgb1, x, codes[:, 1], None)
        for k in range(len(g.to_rgbs)):
            x = g.convs[2 * k](x, codes[:, 1 + 2 * k], noise[1 + 2 * k]).clamp(-c, c)
            x = g.convs[2 * k + 1](x, codes[:, 2 + 2 * k], noise[2 + 2 * k]).clamp(-c, c)
            img = rgb(g.to_rgbs[k], x, codes[:, 3 + 2 * k], img)
        out = small.synthesize(codes)
        assert float(g.synthesize(codes).abs().max()) > 0.5  # unclamped: well beyond the bound
    assert float(out.abs().max()) <= 4 * c + 1e-6
    torch.testing.assert_close(out, img, atol=1e-5, rtol=0)


def test_clamped_generator_takes_offsets_and_an_early_exit(tmp_path):
    """ADA's clamped generator (conv_clamp small enough here to bite: 0.5) honours HyperStyle
    offsets as W*(1+offset) and stops after the asked resolution with the partial sum its full
    decode builds on, as the plain generator does."""
    import copy

    g = _rand_gen(seed=3)
    _write_ada(tmp_path / "g.pkl", g, torch.zeros(16), clamp=0.5, rgb_clamp=0.5)
    cg = load_generator(tmp_path / "g.pkl").generator
    assert type(cg).__name__ == "ClampedGenerator"
    codes = torch.randn(2, cg.n_styles, 16)
    gen = torch.Generator().manual_seed(0)
    offsets = {i: 0.2 * torch.randn(*m.weight.shape[1:], generator=gen) for i, (m, _) in enumerate(cg.layers()) if i % 2}
    by_hand = copy.deepcopy(cg)
    with torch.no_grad():
        for i, (m, _) in enumerate(by_hand.layers()):
            if i in offsets:
                m.weight.mul_(1 + offsets[i])
        full = cg.synthesize(codes)
        assert (full - g.synthesize(codes)).abs().max() > 1e-2  # the clamp is at work
        with_offsets = cg.synthesize(codes, offsets=offsets)
        torch.testing.assert_close(with_offsets, by_hand.synthesize(codes), atol=1e-5, rtol=1e-5)
        assert (with_offsets - full).abs().max() > 1e-3
        # stop_at=16: the running RGB image after the 16 block, which the full decode up-samples on
        partial, inner = [], cg._rgb
        cg._rgb = lambda *a, **k: partial.append(inner(*a, **k)) or partial[-1]
        try:
            cg.synthesize(codes)
        finally:
            del cg._rgb
        at16 = [x for x in partial if x.shape[-1] == 16]
        early = cg.synthesize(codes, stop_at=16)
        assert early.shape == (2, 3, 16, 16) and torch.equal(early, at16[0])
        torch.testing.assert_close(cg.synthesize(codes, offsets=offsets, stop_at=16),
                                   by_hand.synthesize(codes, stop_at=16), atol=1e-5, rtol=1e-5)
