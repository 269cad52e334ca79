"""The loss networks of `e4e train` (e4e_cli/train/lossnets.py) loaded from weight files in the
released layouts, through the same loaders as the real files, against the values the reference
criteria compute with those files (shared/parity/lossnets: SPEC.md, cases.npz).

The files are random but deterministic (make_lossnets.py, seed 1; conftest `lossnet_weights`
writes them once per session). Tolerances as the SPEC: abs 1e-5.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_e4e
from e4e_cli.errors import E4EError, MissingWeightsError
from e4e_cli.train.lossnets import irse50_encoder_init, load_identity_loss, load_lpips

TOL = 1e-5


@pytest.fixture(scope="module")
def cases(parity_dir):
    """The SPEC's inputs as the reference feeds them (NCHW float32 in [-1,1]) and its outputs."""
    d = dict(np.load(Path(parity_dir) / "lossnets" / "cases.npz"))

    def t(u8):
        return (torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5

    return {"x": t(d["x_u8"]), "y": t(d["y_u8"]), "y_hat": t(d["y_hat_u8"]), **d}


def _close(got, want, what):
    got = np.asarray(got.detach() if isinstance(got, torch.Tensor) else got, dtype=np.float64)
    err = float(np.abs(got - np.asarray(want, dtype=np.float64)).max())
    assert err <= TOL, f"{what}: max abs error {err:.3g} > {TOL}"


def test_lpips_alex_matches_the_reference(lossnet_weights, cases):
    """Per-sample distances, their batch mean (what the reference's criterion returns and the
    coach weighs with 0.8) and a second pair."""
    net = load_lpips(weights_dir=lossnet_weights)
    with torch.no_grad():
        per = net(cases["y_hat"], cases["y"])
        _close(per, cases["lpips_per_sample"], "lpips per sample")
        _close(per.mean(), cases["lpips"], "lpips batch mean")
        _close(net(cases["x"], cases["y"]).mean(), cases["lpips_x_y"], "lpips(x, y)")


def _check_identity(loss, cases, prefix):
    """One forward (the networks are slow on 2 cores): its features recorded on the way."""
    feats, embed = [], loss.embed
    loss.embed = lambda img: feats.append(embed(img)) or feats[-1]
    with torch.no_grad():
        value, info = loss(cases["y_hat"], cases["y"], cases["x"])
    feats = dict(zip(("y_hat", "y", "x"), feats))  # the order forward embeds them in
    for k, f in feats.items():
        _close(f, cases[f"{prefix}_feats_{k}"], f"{prefix} features of {k}")
    _close(value, cases[f"{prefix}_loss"], f"{prefix} loss")
    _close(info["id_improve"], cases[f"{prefix}_improve"], f"{prefix} improvement")
    # the reference's per-sample logs: <y_hat, y>, <y_hat, x>, <y, x>
    logs = torch.stack([(feats["y_hat"] * feats["y"]).sum(1), (feats["y_hat"] * feats["x"]).sum(1),
                        (feats["y"] * feats["x"]).sum(1)], dim=1)
    _close(logs, cases[f"{prefix}_logs"], f"{prefix} per-sample similarities")
    _close(info["id_similarity"], cases[f"{prefix}_logs"][:, 0].mean(), f"{prefix} mean similarity")


def test_arcface_ir_se50_identity_matches_the_reference(lossnet_weights, cases):
    loss = load_identity_loss(domain="ffhq", weights_dir=lossnet_weights)
    assert loss.kind == "arcface"
    _check_identity(loss, cases, "id")


def test_moco_v2_identity_matches_the_reference(lossnet_weights, cases):
    """MoCo features of a 256 image resized to 224 by nearest neighbour (the reference's plain
    F.interpolate(size=224)); bilinear misses by ~1e-3."""
    loss = load_identity_loss(domain="church", weights_dir=lossnet_weights)
    assert loss.kind == "moco"
    _check_identity(loss, cases, "moco")


def test_irse50_encoder_init_is_the_files_backbone(lossnet_weights, tmp_path):
    raw = torch.load(lossnet_weights / "model_ir_se50.pth", map_location="cpu", weights_only=True)
    init = irse50_encoder_init(weights_dir=lossnet_weights)
    assert set(init) == {k for k in raw if k.startswith(("input_layer.", "body."))}
    assert all(torch.equal(init[k], raw[k]) for k in init)
    with pytest.raises(MissingWeightsError) as exc:
        irse50_encoder_init(weights_dir=tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and "model_ir_se50.pth" in msg and "e4e download-weights ir_se50" in msg
    assert "--encoder-init random" in msg


# ---- a wrong file is one line ------------------------------------------------------------------


def _folder_with(tmp_path, lossnet_weights, name, obj) -> Path:
    """A weights folder: links to the good files, `name` replaced by `obj` (torch.save)."""
    d = tmp_path / "w"
    d.mkdir(exist_ok=True)
    for f in lossnet_weights.iterdir():
        (d / f.name).unlink(missing_ok=True)
        if f.name != name:
            (d / f.name).symlink_to(f)
    torch.save(obj, d / name)
    return d


def _load(kind, weights_dir):
    if kind == "lpips":
        return load_lpips(weights_dir=weights_dir)
    if kind == "encoder":
        return irse50_encoder_init(weights_dir=weights_dir)
    return load_identity_loss(domain="ffhq" if kind == "arcface" else "church", weights_dir=weights_dir)


@pytest.fixture(scope="module")
def released(lossnet_weights):
    """file name -> its loaded contents (read once)."""
    return {f.name: torch.load(f, map_location="cpu", weights_only=True) for f in lossnet_weights.iterdir()}


def _tensors(obj):
    return obj["state_dict"] if "state_dict" in obj else obj


FILES = [("lpips", "lpips_alex_v0.1.pth", "lin2.model.1.weight"),
         ("lpips", "alexnet-owt-7be5be79.pth", "features.3.weight"),
         ("arcface", "model_ir_se50.pth", "body.5.res_layer.1.weight"),
         ("moco", "moco_v2_800ep_pretrain.pth.tar", "module.encoder_q.layer3.2.bn2.running_var")]


@pytest.mark.parametrize("kind,name,key,fault", [
    *[(*f, fault) for f in FILES for fault in ("shape", "unexpected", "missing")],
    ("encoder", "model_ir_se50.pth", "output_layer.3.weight", "shape"),  # the encoder's start checks the whole file
])
def test_a_wrong_loss_network_file_is_one_line(tmp_path, lossnet_weights, released, kind, name, key, fault):
    """A tensor of another shape, one key too many, or one too few: E4EError naming the file
    and the key, never torch's multi-line RuntimeError; an unexpected key is not ignored."""
    obj = dict(released[name])
    sd = dict(_tensors(obj))
    if fault == "shape":
        sd[key] = torch.zeros(*sd[key].shape[:-1], sd[key].shape[-1] + 1) if sd[key].ndim else torch.zeros(2)
        needle = key
    elif fault == "unexpected":
        extra = key.rsplit(".", 1)[0] + ".extra"
        sd[extra] = torch.zeros(1)
        needle = extra
    else:
        del sd[key]
        needle = key
    if "state_dict" in obj:
        obj["state_dict"] = sd
    else:
        obj = sd
    folder = _folder_with(tmp_path, lossnet_weights, name, obj)
    with pytest.raises(E4EError) as exc:
        _load(kind, folder)
    msg = str(exc.value)
    assert "\n" not in msg and name in msg and needle in msg, msg


def test_moco_file_with_other_networks_is_refused(tmp_path, lossnet_weights, released):
    """MoCo training checkpoints may also hold the key encoder (encoder_k) or the queue: the
    released feature file does not, and the loader does not silently drop them."""
    obj = dict(released["moco_v2_800ep_pretrain.pth.tar"])
    obj["state_dict"] = {**obj["state_dict"], "module.encoder_k.conv1.weight": torch.zeros(64, 3, 7, 7)}
    folder = _folder_with(tmp_path, lossnet_weights, "moco_v2_800ep_pretrain.pth.tar", obj)
    with pytest.raises(E4EError, match="unexpected tensor.*encoder_k"):
        _load("moco", folder)


def test_cli_reports_a_wrong_loss_network_file_in_one_line(tmp_path, lossnet_weights, released):
    """`e4e train` with a mis-shaped LPIPS file: `e4e: error:` once, exit 1, nothing written."""
    sd = dict(released["lpips_alex_v0.1.pth"])
    sd["lin0.model.1.weight"] = torch.zeros(1, 63, 1, 1)
    folder = _folder_with(tmp_path, lossnet_weights, "lpips_alex_v0.1.pth", sd)
    import conftest

    from e4e_cli.train.generators import save_rosinality_checkpoint
    from PIL import Image

    g = conftest.tiny_generator(32)
    save_rosinality_checkpoint(tmp_path / "g.pt", generator=g, latent_avg=torch.zeros(g.style_dim))
    (tmp_path / "img").mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(tmp_path / "img" / f"{i}.png")
    out = tmp_path / "run"
    proc = run_e4e("train", tmp_path / "img", "--generator", tmp_path / "g.pt", "--out", out, "--weights-dir", folder,
                   "--domain", "church", "--id-lambda", "0", "--encoder-init", "random", "--max-steps", "1",
                   "--input-size", "64", "--loss-size", "64", "--encoder-widths", "16,16,32,16",
                   "--encoder-units", "1,1,1,1", "--batch-size", "2", "--device", "cpu")
    assert_one_line_error(proc, "lin0.model.1.weight", "[1, 63, 1, 1]", code=1)
    assert not out.exists()
