"""Issue 21's smaller guarantees: the user's --domain wins, one list of image suffixes, an empty
case list fails, the umask is read without being changed."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_e4e


@pytest.fixture(scope="module")
def church_recorded_as_ffhq(case_checkpoint, tmp_path_factory):
    """The church checkpoint with `dataset_type: ffhq_encode` in its opts, as `e4e train` on a 256
    church generator without --dataset-type used to record it."""
    import torch

    ck = torch.load(case_checkpoint("church_256_s3"), map_location="cpu", weights_only=True, mmap=True)
    ck["opts"] = dict(ck["opts"], dataset_type="ffhq_encode")
    path = tmp_path_factory.mktemp("mislabelled") / "trained.pt"
    torch.save(ck, path)
    return path


@pytest.mark.slow
def test_explicit_domain_wins_over_the_checkpoint_record(church_recorded_as_ffhq, parity_dir, tmp_path):
    photo = tmp_path / "noise.png"  # no face anywhere: alignment would fail
    Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8")).save(photo)
    base = ["invert", photo, "--checkpoint", church_recorded_as_ffhq, "--precision", "fp32"]
    guessed = run_e4e(*base, "--out", tmp_path / "guessed")
    assert guessed.returncode == 1 and "no face" in guessed.stderr  # the record decides when --domain is not given
    asked = run_e4e(*base, "--domain", "church", "--out", tmp_path / "asked")
    assert asked.returncode == 0, asked.stderr
    assert "e4e: note:" in asked.stderr and "ffhq" in asked.stderr and "church" in asked.stderr
    import json

    meta = json.loads((tmp_path / "asked" / "noise" / "meta.json").read_text())
    assert meta["domain"] == "church"
    assert not (tmp_path / "asked" / "noise" / "aligned.png").exists()


def test_domain_override_keeps_the_networks(case_checkpoint, parity_dir):
    from e4e_cli.model import ModelOptions, load_model

    ckpt = case_checkpoint("church_256_s3")
    plain = load_model(ModelOptions(checkpoint=ckpt, precision="fp32"))
    with pytest.warns(UserWarning, match="records the church domain; using --domain horse"):
        horse = load_model(ModelOptions(domain="horse", checkpoint=ckpt, precision="fp32"))
    assert (plain.domain, horse.domain) == ("church", "horse")
    assert horse.generator is plain.generator and horse.encoder is plain.encoder
    assert load_model(ModelOptions(domain="church", checkpoint=ckpt, precision="fp32")) is plain


def test_one_list_of_image_suffixes(tmp_path):
    """`invert DIR`, `align DIR`, `invert-dataset` and `train` take the same files."""
    from e4e_cli import images
    from e4e_cli.jobs.outputs import expand_inputs
    from e4e_cli.jobs.dataset import list_dataset

    for suffix in images.IMAGE_SUFFIXES:
        (tmp_path / f"x{suffix}").write_bytes(b"")
        (tmp_path / f"X{suffix.upper()}").write_bytes(b"")
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    want = sorted(p.name for p in tmp_path.iterdir() if images.is_image_file(p))
    assert len(want) == 2 * len(images.IMAGE_SUFFIXES) and {".jfif", ".tga"} <= set(images.IMAGE_SUFFIXES)
    assert sorted(p.name for p in expand_inputs([tmp_path])) == want
    assert sorted(list_dataset(tmp_path)) == want


def test_an_empty_case_list_fails(tmp_path):
    (tmp_path / "test_empty.py").write_text(
        "import pytest\n\n@pytest.mark.parametrize('case', [])\ndef test_x(case):\n    pass\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "setup.cfg"),
                           "--rootdir", str(tmp_path), str(tmp_path / "test_empty.py")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0 and "1 error" in proc.stdout, proc.stdout  # without the setting: 1 skipped, exit 0


def test_umask_is_read_without_changing_it(monkeypatch):
    from e4e_cli import fsutil

    real = os.umask(0o027)
    os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda m: pytest.fail("the umask was changed to read it"))
        assert fsutil.read_umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(real)
