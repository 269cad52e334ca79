"""Issue 30, section 9: what one command leaves for the next. A rerun of `e4e invert` with other
options is refused (by content: the photo's and the checkpoint's SHA-256), `e4e edit` decodes with
the checkpoint that made the latents, `e4e directions fit` keeps its inversions apart from the
user's, Ctrl-C says what was left, and `make demo` says what to type next."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, assert_one_line_error, interrupt_e4e, noise_photo, run_e4e
from e4e_cli.digests import content_sha256

FP32 = ("--device", "cpu", "--precision", "fp32")


@pytest.fixture(scope="module")
def other_church(church, tmp_path_factory):
    """Another checkpoint of the same architecture and domain: the church one with other opts (so
    another SHA-256), as a retrained or fine-tuned file would be."""
    import torch

    ck = torch.load(church, map_location="cpu", weights_only=True, mmap=True)
    ck["opts"] = dict(ck["opts"], note="another checkpoint")
    path = tmp_path_factory.mktemp("other") / "other_church.pt"
    torch.save(ck, path)
    return path


def _meta(d: Path) -> dict:
    return json.loads((d / "meta.json").read_text())


def test_an_invert_rerun_made_another_way_is_refused(church, other_church, tmp_path):
    photo = noise_photo(tmp_path / "p.png")
    out = tmp_path / "out"
    base = ("invert", photo, "--out", out, *FP32)
    assert run_e4e(*base, "--checkpoint", church).returncode == 0
    made = _meta(out / "p")["made_with"]
    assert made["checkpoint"]["sha256"] == content_sha256(church) and made["delta_scale"] == 1.0
    again = run_e4e(*base, "--checkpoint", church)
    assert again.returncode == 0 and "1 already done" in again.stdout

    proc = run_e4e(*base, "--checkpoint", church, "--delta-scale", "0")
    assert_one_line_error(proc, "delta scale", "--overwrite", code=1)
    proc = run_e4e(*base, "--checkpoint", other_church)
    assert_one_line_error(proc, "another checkpoint", "--overwrite", code=1)
    noise_photo(photo, seed=1)  # another picture under the same name
    proc = run_e4e(*base, "--checkpoint", church)
    assert_one_line_error(proc, "another photo", code=1)
    assert _meta(out / "p")["delta_scale"] == 1.0 and _meta(out / "p")["made_with"] == made  # kept as it was

    proc = run_e4e(*base, "--checkpoint", church, "--delta-scale", "0", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert _meta(out / "p")["delta_scale"] == 0.0 and _meta(out / "p")["made_with"]["source_sha256"] != made["source_sha256"]


def test_edit_decodes_with_the_checkpoint_that_made_the_latents(church, other_church, tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    env = {"E4E_WEIGHTS_DIR": str(empty)}  # the domain's released checkpoint is not there
    noise_photo(tmp_path / "a.png", seed=2)
    noise_photo(tmp_path / "b.png", seed=3)
    assert run_e4e("invert", "a.png", "--checkpoint", other_church, *FP32, cwd=tmp_path, env=env).returncode == 0
    proc = run_e4e("edit", "-d", "sefa:0", "-s", "1", *FP32, cwd=tmp_path, env=env)  # no source: the last invert
    assert proc.returncode == 0, proc.stderr
    assert "as asked" not in proc.stderr
    rec = json.loads((tmp_path / "e4e-out" / "edits" / "a_sefa-0_+1.json").read_text())
    assert rec["checkpoint"]["sha256"] == content_sha256(other_church)

    # a latent made by another checkpoint is not decoded by this run's
    assert run_e4e("invert", "b.png", "--checkpoint", church, "--out", "plain", *FP32, cwd=tmp_path).returncode == 0
    proc = run_e4e("edit", "e4e-out/a/latent.npy", "plain/b/latent.npy", "-d", "sefa:0", "-s", "2", *FP32,
                   cwd=tmp_path, env=env)
    assert_one_line_error(proc, "plain/b/latent.npy", "another checkpoint", code=1)
    assert (tmp_path / "e4e-out" / "edits" / "a_sefa-0_+2.png").is_file()
    assert not (tmp_path / "e4e-out" / "edits" / "b_sefa-0_+2.png").exists()

    # the recorded checkpoint is gone: said, with what to do (exit 3, a missing weights file)
    gone = tmp_path / "gone.pt"
    shutil.copy(other_church, gone)
    assert run_e4e("invert", "b.png", "--checkpoint", gone, "--out", "g", *FP32, cwd=tmp_path).returncode == 0
    gone.unlink()
    proc = run_e4e("edit", "g/b/latent.npy", "-d", "sefa:0", "-s", "1", *FP32, cwd=tmp_path, env=env)
    assert_one_line_error(proc, "gone.pt", "is gone", "--checkpoint", code=3)


def _labelled(folder: Path, seeds) -> Path:
    for i, s in enumerate(seeds):
        noise_photo(folder / f"{i:03d}.png", seed=s, side=32)
    return folder


def test_directions_fit_keeps_its_inversions_apart(church, tmp_path):
    noise_photo(tmp_path / "mine.png", seed=50)
    assert run_e4e("invert", "mine.png", "--checkpoint", church, *FP32, cwd=tmp_path).returncode == 0
    summary = (tmp_path / "e4e-out" / "summary.json").read_text()
    pos, neg = _labelled(tmp_path / "pos", range(10, 15)), _labelled(tmp_path / "neg", range(20, 25))
    fit = ("directions", "fit", "--checkpoint", church, "--split", "1", "--out", "dirs", *FP32)
    proc = run_e4e(*fit, "--positive", pos, "--negative", neg, "--name", "one", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "e4e-out" / "summary.json").read_text() == summary  # the user's last invert, untouched
    assert len(list((tmp_path / "e4e-out" / "fit-inversions").glob("*/latent.npy"))) == 10
    proc = run_e4e("edit", "-d", "sefa:0", "-s", "1", *FP32, cwd=tmp_path)  # no source: still the user's photo
    assert proc.returncode == 0 and "1 source(s) edited" in proc.stdout, proc.stdout + proc.stderr
    # another labelled folder whose photos have the same names: accepted, its own inversions
    pos2 = _labelled(tmp_path / "pos2", range(30, 35))
    proc = run_e4e(*fit, "--positive", pos2, "--negative", neg, "--name", "two", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "e4e-out" / "fit-inversions").glob("*/latent.npy"))) == 15


def test_ctrl_c_says_so_and_summary_lists_what_was_left(church, tmp_path):
    src = tmp_path / "in"
    for i in range(6):
        noise_photo(src / f"p{i}.png", seed=i)
    out = tmp_path / "out"
    proc = interrupt_e4e("invert", src, "--checkpoint", church, "--out", out, "--batch-size", "1", *FP32,
                         when=out / "p1" / "meta.json")
    assert_one_line_error(proc, "interrupted", "summary.json", code=130)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["left"]
    listed = [i["input"] for i in summary["items"]] + summary["left"]
    assert sorted(Path(p).name for p in listed) == [f"p{i}.png" for i in range(6)]
    again = run_e4e("invert", src, "--checkpoint", church, "--out", out, *FP32)
    assert again.returncode == 0 and "interrupted" not in json.loads((out / "summary.json").read_text())


def test_demo_says_what_to_type_next_and_it_finds_the_weights(tmp_path):
    activate = ROOT / ".venv" / "bin" / "activate"
    if not activate.is_file():
        pytest.skip("no .venv in this checkout (make install)")
    weights = tmp_path / "demo-weights"
    weights.mkdir()
    (weights / "e4e_ffhq_encode.pt").write_bytes(b"synthetic")
    env = dict(os.environ, E4E_DEMO_WEIGHTS=str(weights))
    env.pop("E4E_WEIGHTS_DIR", None)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), "--next"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("#")[0].strip() for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert lines[0] == "source .venv/bin/activate" and ".venv/bin/e4e" in proc.stdout
    assert f'export E4E_WEIGHTS_DIR="{weights}"' in lines and "cd demo-out" in lines
    # what it says to type finds the demo's weights
    setup = [line for line in lines if line.startswith(("source", "export"))]
    script = "\n".join(["set -e", f"cd {ROOT}", *setup, "e4e download-weights --list ffhq"])
    ran = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    assert ran.returncode == 0, ran.stderr
    assert str(weights) in ran.stdout and "from E4E_WEIGHTS_DIR" in ran.stdout
