"""Checkpoint loading: the released layout loads; broken or hostile files are refused clearly."""
from __future__ import annotations

import pickle
import zipfile

import pytest
import torch

from conftest import RunsCode
from e4e_cli.checkpoint import infer_info, read_checkpoint
from e4e_cli.errors import E4EError
from e4e_cli.model import E4E


def test_hostile_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, bad)
    with pytest.raises(E4EError, match="would run code"):
        read_checkpoint(bad)
    assert not marker.exists()
    # a plain pickle (not a zip) too
    bad2 = tmp_path / "evil2.pt"
    bad2.write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(E4EError):
        read_checkpoint(bad2)
    assert not marker.exists()


def test_html_page_saved_as_pt(tmp_path):
    p = tmp_path / "e4e_ffhq_encode.pt"
    p.write_text("<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head></html>")
    with pytest.raises(E4EError, match="HTML page"):
        read_checkpoint(p)


def test_empty_missing_and_folder(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(E4EError, match="empty"):
        read_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(E4EError, match="not found"):
        read_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(E4EError, match="folder"):
        read_checkpoint(tmp_path)


def small_official(tmp_path, **extra):
    obj = {"state_dict": {"encoder.x": torch.zeros(2), "decoder.y": torch.ones(3)}, "latent_avg": torch.zeros(14, 512),
           "opts": {"dataset_type": "church_encode", "encoder_type": "Encoder4Editing"}, "global_step": 5}
    obj.update(extra)
    p = tmp_path / "small.pt"
    torch.save(obj, p)
    return p


def test_truncated_file(tmp_path):
    p = small_official(tmp_path)
    data = p.read_bytes()
    t = tmp_path / "trunc.pt"
    t.write_bytes(data[: len(data) // 2])
    with pytest.raises(E4EError, match="truncated or corrupt"):
        read_checkpoint(t)


def test_missing_keys_are_named(tmp_path):
    p = small_official(tmp_path)
    with pytest.raises(E4EError) as err:
        E4E.from_checkpoint(p, device="cpu")
    msg = str(err.value)
    assert "missing key(s)" in msg and "encoder.input_layer.0.weight" in msg and "unexpected key(s): encoder.x" in msg
    assert "\n" not in msg


def test_wrong_encoder_type_and_not_a_dict(tmp_path):
    p = small_official(tmp_path, opts={"encoder_type": "GradualStyleEncoder", "dataset_type": "ffhq_encode"})
    with pytest.raises(E4EError, match="only e4e checkpoints"):
        E4E.from_checkpoint(p, device="cpu")
    q = tmp_path / "list.pt"
    torch.save([1, 2, 3], q)
    with pytest.raises(E4EError, match="not an e4e checkpoint"):
        read_checkpoint(q)


@pytest.mark.parametrize("opts,size,n,domain", [
    ({"stylegan_size": 1024, "dataset_type": "ffhq_encode"}, 1024, 18, "ffhq"),
    ({"dataset_type": "ffhq_encode"}, 1024, 18, "ffhq"),
    ({"dataset_type": "cars_encode"}, 512, 16, "cars"),
    ({"dataset_type": "horse_encode"}, 256, 14, "horse"),
    ({"dataset_type": "church_encode"}, 256, 14, "church"),
])
def test_size_inferred_from_opts(opts, size, n, domain):
    info = infer_info({"state_dict": {}, "opts": opts})
    assert (info.size, info.n_styles, info.domain) == (size, n, domain)


@pytest.mark.slow
def test_official_layout_loads_with_extras_and_without_latent_avg(tmp_path, case_checkpoint):
    src = case_checkpoint("church_256_s3")
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    assert zipfile.is_zipfile(src)
    m = E4E.from_checkpoint(src, device="cpu")
    assert (m.size, m.n_styles, m.domain, m.input_size) == (256, 14, "church", (256, 256))
    torch.testing.assert_close(m.latent_avg, ckpt["latent_avg"])
    # the generator's weights are memory-mapped from the file, not copied: their memory lies inside
    # this process's mappings of the checkpoint file (model._file_mappings reads /proc/self/maps)
    from e4e_cli.nn.runtime import _file_mappings

    maps = _file_mappings(str(src))
    assert maps, "the checkpoint file is not mapped into the process"
    for p in (m.generator.convs[0].conv.weight, m.generator.to_rgbs[-1].conv.weight, m.generator.style[1].weight):
        lo = p.data_ptr()
        hi = lo + p.numel() * p.element_size()
        assert any(a <= lo and hi <= b for a, b in maps), "a generator weight was copied out of the file"
    fresh = torch.zeros(1000)
    assert not any(a <= fresh.data_ptr() < b for a, b in maps), "the check must tell anonymous memory apart"
    # training extras are ignored; a missing latent_avg is computed from the mapping network
    del ckpt["latent_avg"]
    ckpt["optimizer"] = {"state": {}, "param_groups": []}
    ckpt["discriminator_state_dict"] = {"w": torch.zeros(2)}
    ckpt["opts"].pop("stylegan_size")
    p2 = tmp_path / "no_avg.pt"
    torch.save(ckpt, p2)
    m2 = E4E.from_checkpoint(p2, device="cpu")
    assert m2.latent_avg.shape == (14, 512)
    assert torch.equal(m2.latent_avg[0], m2.latent_avg[13])
    torch.testing.assert_close(m2.latent_avg[0], m2.generator.mean_latent(10_000, seed=0))
