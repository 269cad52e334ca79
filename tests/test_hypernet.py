"""HyperStyle's W-encoder and hypernetwork: strict loading of the released layout, and the
reference's numbers on the synthetic checkpoints (parity/hyperstyle/SPEC.md "Fixtures").

The loading tests run on checkpoint dicts of meta tensors (the real files are 1.5 GB); the
parity tests (`slow`) load the cached synthetic pairs and run one hypernet pass of batch 5
per case: the five inputs cat([x, y_hat/k]) of the reference loop, whose outputs summed
up to iteration k are the accumulated deltas the fixtures record.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import HYPERSTYLE_CASES, hyperstyle_checkpoints
from e4e_cli import hyperstyle_ckpt as hc
from e4e_cli.checkpoint import read_checkpoint
from e4e_cli.errors import E4EError
from e4e_cli.nn.hypernet import SHARED_LAYERS, HyperNet, WEncoder, delta_layers, expand_delta, n_outputs_for, w_codes
from e4e_cli.nn.networks import Generator
from e4e_cli.synthetic import HYPERSTYLE_RELEASE_LAYERS


def one_line_error(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


# ---------------------------------------------------------------------------------------------
# The delta layer table and the compact form


def test_delta_layers_follow_the_generator():
    layers = delta_layers(1024)
    assert [n_outputs_for(s) for s in (1024, 512, 256)] == [26, 23, 20] and len(layers) == 26
    assert len(delta_layers(512)) == 23 and len(delta_layers(256)) == 20
    assert [lay.index for lay in layers if lay.kind == "shared"] == list(SHARED_LAYERS)
    assert [lay.index for lay in layers if lay.kind == "rgb"] == list(range(1, 26, 3))
    assert (layers[14].out, layers[14].cin, layers[14].k, layers[14].weight) == (256, 512, 3, "convs.8.conv")
    assert (layers[24].full_shape, layers[25].full_shape) == ((32, 32, 3, 3), (3, 32, 1, 1))
    assert layers[24].compact_shape == (32, 32) and layers[0].compact_shape == (512, 512, 3, 3)
    with torch.device("meta"):
        g = Generator(1024)
    for lay in layers:  # each names a decoder weight of its full shape
        assert tuple(g.get_submodule(lay.weight).weight.shape[1:]) == lay.full_shape


def test_expand_delta_repeats_over_the_kernel():
    d = torch.randn(2, 4, 5)
    full = expand_delta(d, 3)
    assert full.shape == (2, 4, 5, 3, 3) and torch.equal(full[:, :, :, 2, 1], d) and torch.equal(full[..., 0, 0], d)
    assert expand_delta(d[0], 1).shape == (4, 5, 1, 1)  # ToRGB, and a single image's delta
    shared = torch.randn(1, 2, 2, 3, 3)
    assert expand_delta(shared, 3) is shared and expand_delta(None, 3) is None


# ---------------------------------------------------------------------------------------------
# Strict loading, on dicts of meta tensors shaped as the released files


def fake_checkpoint(size=256, layers=HYPERSTYLE_RELEASE_LAYERS, **opts):
    """A HyperStyle checkpoint dict of meta tensors in the released layout (aliases included);
    b1 of the shared hypernet is a real tensor so that the alias checks can compare values."""
    tuned = hc.parse_layers(layers, n_outputs_for(size), path="x")
    with torch.device("meta"):
        net, g = HyperNet(size, tuned), Generator(size)
    sd = {"hypernet." + k: v for k, v in net.state_dict().items()}
    sd["hypernet.shared_weight_hypernet.b1"] = torch.zeros(4608)
    for i in tuned:
        if i in SHARED_LAYERS:
            for n in hc.SHARED_KEYS:
                sd[f"hypernet.refinement_blocks.{i}.hypernet.{n}"] = sd[f"hypernet.shared_weight_hypernet.{n}"]
    sd.update({"decoder." + k: v for k, v in g.state_dict().items()})
    n_styles = 2 * int(np.log2(size)) - 2
    o = {"encoder_type": "SharedWeightsHyperNetResNet", "dataset_type": "ffhq_hypernet", "output_size": size,
         "input_nc": 6, "layers_to_tune": layers, "n_hypernet_outputs": n_outputs_for(size), **opts}
    return {"state_dict": sd, "latent_avg": torch.ones(n_styles, 512), "opts": o}


def test_a_released_layout_loads():
    parts = hc.hyperstyle_from_checkpoint(fake_checkpoint(), path="hs.pt")
    assert (parts.size, parts.n_styles, parts.n_outputs, parts.domain, parts.wide) == (256, 14, 20, "ffhq", False)
    assert parts.n_iters == 5
    assert parts.layers_to_tune == (0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18)  # 20.. are beyond a 256 generator
    assert sorted(parts.hypernet.refinement_blocks.keys(), key=int) == [str(i) for i in parts.layers_to_tune]
    # one shared hypernet: no refinement block holds (a copy of) it
    assert not [k for k in parts.hypernet.state_dict() if ".hypernet." in k]
    assert parts.latent_avg.shape == (14, 512) and not parts.hypernet.training
    assert parts.generator().size == 256


@pytest.mark.parametrize("dataset, domain, wide", [("cars_hypernet", "cars", True), ("afhq_wild_hypernet", "wild", False),
                                                   ("ffhq_hypernet", "ffhq", False)])
def test_domain_from_dataset_type(dataset, domain, wide):
    parts = hc.hyperstyle_from_checkpoint(fake_checkpoint(dataset_type=dataset), path="hs.pt")
    assert (parts.domain, parts.wide) == (domain, wide)


def test_layers_to_tune():
    assert hc.parse_layers("", 23, path="x") == tuple(range(23))
    assert hc.parse_layers(HYPERSTYLE_RELEASE_LAYERS, 23, path="x")[-2:] == (20, 21)  # 23, 24 ignored at 512
    assert hc.parse_layers([3, 1], 20, path="x") == (1, 3)
    with pytest.raises(E4EError) as e:
        hc.parse_layers("1,two", 20, path="hs.pt")
    one_line_error(e, "hs.pt", "layers_to_tune")
    parts = hc.hyperstyle_from_checkpoint(fake_checkpoint(layers=""), path="hs.pt")
    assert parts.layers_to_tune == tuple(range(20)) and "19" in parts.hypernet.refinement_blocks


def test_latent_avg_of_one_row_is_repeated():
    ck = fake_checkpoint()
    ck["latent_avg"] = torch.arange(512.0)
    avg = hc.hyperstyle_from_checkpoint(ck, path="hs.pt").latent_avg
    assert avg.shape == (14, 512) and torch.equal(avg[13], torch.arange(512.0))
    ck["latent_avg"] = torch.zeros(3, 512)
    with pytest.raises(E4EError) as e:
        hc.hyperstyle_from_checkpoint(ck, path="hs.pt")
    one_line_error(e, "hs.pt", "latent_avg")


def _drop(key):
    def edit(ck):
        del ck["state_dict"][key]
    return edit


def _add(key, value):
    def edit(ck):
        ck["state_dict"][key] = value
    return edit


def _opt(name, value):
    def edit(ck):
        ck["opts"][name] = value
    return edit


@pytest.mark.parametrize("edit, needles", [
    (_drop("hypernet.refinement_blocks.14.output.1.bias"), ["missing", "hypernet.refinement_blocks.14.output.1.bias"]),
    (_drop("hypernet.body.3.downsample.1.running_var"), ["missing", "hypernet.body.3.downsample.1.running_var"]),
    (_drop("decoder.convs.3.conv.weight"), ["missing", "decoder.convs.3.conv.weight"]),
    (_add("hypernet.refinement_blocks.1.convs.0.weight", torch.zeros(1)), ["unexpected", "refinement_blocks.1.convs.0"]),
    (_add("hypernet.refinement_blocks.0.convs.0.weight", torch.zeros(128, 6, 3, 3)), ["wrong shape", "convs.0.weight"]),
    (_drop("hypernet.refinement_blocks.5.hypernet.w2"), ["missing", "hypernet.refinement_blocks.5.hypernet.w2"]),
    (_add("hypernet.refinement_blocks.5.hypernet.b1", torch.ones(4608)), ["refinement_blocks.5.hypernet.b1", "differ"]),
    (_opt("encoder_type", "SharedWeightsHyperNetResNetSeparable"), ["SharedWeightsHyperNetResNetSeparable", "not supported"]),
    (_opt("output_size", 512), ["output_size is 512", "256 px"]),
    (_opt("input_nc", 3), ["input_nc"]),
])
def test_a_checkpoint_that_does_not_fit_is_one_line_error(edit, needles):
    ck = fake_checkpoint()
    edit(ck)
    with pytest.raises(E4EError) as e:
        hc.hyperstyle_from_checkpoint(ck, path="/w/hs.pt")
    one_line_error(e, "/w/hs.pt", *needles)


def test_an_alias_equal_in_value_is_accepted():
    ck = fake_checkpoint()
    ck["state_dict"]["hypernet.refinement_blocks.5.hypernet.b1"] = torch.zeros(4608)  # another tensor, same values
    hc.hyperstyle_from_checkpoint(ck, path="hs.pt")


def test_the_wrong_file_of_the_pair_is_named():
    with torch.device("meta"):
        enc = WEncoder()
    w_ck = {"state_dict": {"encoder." + k: v for k, v in enc.state_dict().items()}, "opts": {"encoder_type": "WEncoder"}}
    with pytest.raises(E4EError) as e:
        hc.hyperstyle_from_checkpoint(w_ck, path="w.pt")
    one_line_error(e, "w.pt", "W-encoder")
    with pytest.raises(E4EError) as e:
        hc.w_encoder_from_checkpoint(fake_checkpoint(), path="hs.pt")
    one_line_error(e, "hs.pt", "HyperStyle checkpoint, not its W-encoder")
    assert not hc.w_encoder_from_checkpoint(w_ck, path="w.pt").training
    del w_ck["state_dict"]["encoder.linear.bias"]
    w_ck["state_dict"]["encoder.styles.0.linear.bias"] = torch.zeros(512)
    with pytest.raises(E4EError) as e:
        hc.w_encoder_from_checkpoint(w_ck, path="w.pt")
    one_line_error(e, "w.pt", "e4e encoder")
    w_ck["state_dict"].pop("encoder.styles.0.linear.bias")
    with pytest.raises(E4EError) as e:
        hc.w_encoder_from_checkpoint(w_ck, path="w.pt")
    one_line_error(e, "w.pt", "missing", "encoder.linear.bias")


def test_unreadable_files_are_one_line_errors(tmp_path):
    html = tmp_path / "hyperstyle_ffhq.pt"
    html.write_text("<!DOCTYPE html><html>quota exceeded</html>")
    for reader in (hc.read_hyperstyle, hc.read_w_encoder):
        with pytest.raises(E4EError) as e:
            reader(html)
        one_line_error(e, str(html))
    bare = tmp_path / "bare.pt"
    torch.save({"x": torch.zeros(1)}, bare)
    with pytest.raises(E4EError) as e:
        hc.read_hyperstyle(bare)
    one_line_error(e, "not a HyperStyle checkpoint")


# ---------------------------------------------------------------------------------------------
# The reference's numbers (synthetic checkpoints, parity/hyperstyle/cases)


@pytest.fixture(scope="module", params=sorted(HYPERSTYLE_CASES))
def case(request, parity_dir):
    name = request.param
    spec = json.loads((parity_dir / "hyperstyle" / "cases" / f"{name}.json").read_text())
    data = np.load(parity_dir / "hyperstyle" / "cases" / f"{name}.npz")
    hs, w_enc = hyperstyle_checkpoints(name)
    parts = hc.read_hyperstyle(hs)
    assert (parts.size, parts.domain) == (spec["size"], spec["domain"])
    x = torch.from_numpy(data["input"])
    xs = torch.cat([torch.cat([x, torch.from_numpy(data[f"y_hat/{k}"])], dim=1) for k in range(spec["n_iters"])])
    with torch.inference_mode():
        compact = parts.hypernet.forward_compact(xs)  # iteration k's output is row k
    return dict(name=name, spec=spec, data=data, parts=parts, w_enc=hc.read_w_encoder(w_enc), compact=compact)


@pytest.mark.slow
def test_w_encoder_and_codes(case):
    data, parts = case["data"], case["parts"]
    with torch.inference_mode():
        w = case["w_enc"](torch.from_numpy(data["input"]))  # [1,512]
    assert float((w - torch.from_numpy(data["w"][:, 0])).abs().max()) <= 1e-4
    assert torch.equal(parts.latent_avg, torch.from_numpy(data["latent_avg"][0]))
    codes = w_codes(w, parts.latent_avg)
    assert codes.shape == data["codes"].shape
    assert float((codes - torch.from_numpy(data["codes"])).abs().max()) <= 1e-4


@pytest.mark.slow
def test_accumulated_deltas(case):
    spec, data, parts = case["spec"], case["data"], case["parts"]
    net = parts.hypernet
    assert list(parts.layers_to_tune) == data["tuned_layers"].tolist()
    full = net.expand(case["compact"])
    ref = data["delta_norms"]  # [n_iters, n_outputs], -1 where untuned
    assert ref.shape == (spec["n_iters"], parts.n_outputs)
    norms = np.full_like(ref, -1.0)
    for i, d in enumerate(full):
        if d is not None:
            assert tuple(d.shape[1:]) == net.layers[i].full_shape
            assert tuple(case["compact"][i].shape[1:]) == net.layers[i].compact_shape
            norms[:, i] = d.cumsum(dim=0).double().flatten(1).norm(dim=1).numpy()
    assert np.array_equal(norms < 0, ref < 0)
    assert float((np.abs(norms - ref) / np.abs(ref))[ref > 0].max()) <= 1e-4
    final = {i: d.sum(dim=0, keepdim=True) for i, d in enumerate(full) if d is not None}
    for i in spec["delta_layers"]:
        assert float((final[i] - torch.from_numpy(data[f"delta/{i}"])).abs().max()) <= 1e-5, i
    i, rows = spec["shared_delta_layer"], spec["shared_delta_rows"]
    ref_rows = torch.from_numpy(data[f"delta/{i}/rows0_{rows}"])
    assert float((final[i][:, :rows] - ref_rows).abs().max()) <= 1e-5


@pytest.mark.slow
def test_forward_gives_the_full_deltas(case, monkeypatch):
    net = case["parts"].hypernet
    monkeypatch.setattr(net, "forward_compact", lambda x: [None if d is None else d[:1] for d in case["compact"]])
    full = net(None)
    assert len(full) == net.n_outputs
    for i, (d, c) in enumerate(zip(full, case["compact"])):
        if c is None:
            assert d is None and i not in case["parts"].layers_to_tune
        else:
            assert d.is_contiguous() and tuple(d.shape) == (1, *net.layers[i].full_shape)
            assert torch.equal(d[..., 0, 0] if c.dim() == 3 else d, c[:1])


@pytest.mark.slow
def _in_a_mapping_of(address: int, path) -> bool:
    """Whether `address` lies in a region of this process mapped from the file at `path`."""
    import os

    st = os.stat(path)
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        same_file = int(fields[4]) == st.st_ino and os.path.realpath(fields[5]) == os.path.realpath(path)
        if same_file and start <= address < end:
            return True
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux's /proc/self/maps")
def test_the_file_is_mapped_not_copied(case):
    """The shared hypernet and the heads are the checkpoint's memory-mapped tensors (assign=True),
    the aliases are not held, and the decoder's tensors become the generator's parameters."""
    parts = case["parts"]
    tensors = list(parts.hypernet.state_dict().values())
    assert sum(t.numel() for t in tensors) * 4 < 1.6e9  # one copy of w2 (134M values), not ten
    w2 = parts.hypernet.shared_weight_hypernet.w2
    ck = read_checkpoint(parts.path)  # a second mapping of the file: its aliases are one storage
    sd = ck["state_dict"]
    alias = sd[f"hypernet.refinement_blocks.{parts.layers_to_tune[0]}.hypernet.w2"]
    assert alias.untyped_storage().data_ptr() == sd["hypernet.shared_weight_hypernet.w2"].untyped_storage().data_ptr()
    assert w2.shape == (512, 262144) and not w2.requires_grad
    # the 512 MB weight lies in a mapping of the checkpoint file itself (/proc/self/maps), not in
    # memory it was copied into (mmap=False would read 1.5 GB)
    assert _in_a_mapping_of(w2.data_ptr(), parts.path), "the shared hypernet weight is not mapped from the file"
    assert _in_a_mapping_of(parts.decoder_state["conv1.conv.weight"].data_ptr(), parts.path)
    g = parts.generator()
    assert g.conv1.conv.weight.data_ptr() == parts.decoder_state["conv1.conv.weight"].data_ptr()
