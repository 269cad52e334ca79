"""`e4e invert-dataset` (issue 17): shards, resume after a kill, torchrun with 2 processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from e4e_cli.dataset import load_latents

from conftest import assert_one_line_error, run_e4e

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """40 small images in two sub-folders, and one file that is not an image."""
    root = tmp_path_factory.mktemp("ds")
    for i in range(40):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray((np.random.RandomState(i).rand(48, 48, 3) * 255).astype("uint8")).save(sub / f"{i:02d}.png")
    (root / "a" / "zz_broken.png").write_text("not an image")
    return root


def args(folder, out, ckpt):
    return ["invert-dataset", folder, "--out", out, "--domain", "church", "--checkpoint", ckpt, "--shard-size", "6",
            "--workers", "1", "--precision", "fp32", "--batch-size", "3"]


def mtimes(prefix):
    return {p.name: p.stat().st_mtime_ns for p in prefix.parent.glob(prefix.name + "-*.npz")}


def test_killed_run_resumes_and_two_processes_match_one(folder, tmp_path, case_checkpoint):
    ckpt = case_checkpoint("church_256_s3")
    one = tmp_path / "one" / "lat"
    # a run killed after 2 shards (as a SIGKILL would: no index, no cleanup)
    killed = run_e4e(*args(folder, one, ckpt), env={"E4E_DATASET_STOP_AFTER_SHARDS": "2"})
    assert killed.returncode == 3
    first = mtimes(one)
    assert len(first) == 2 and not (one.parent / "lat.index.json").exists()
    # corrupt one more shard file as a crash mid-write could not (atomic), but a disk could
    (one.parent / "lat-00005.npz").write_bytes(b"garbage")
    done = run_e4e(*args(folder, one, ckpt))
    assert done.returncode == 0, done.stderr
    assert "2 already done" in done.stderr
    after = mtimes(one)
    assert all(after[n] == t for n, t in first.items()), "finished shards are not redone"
    assert len(after) == 7  # 41 files / 6

    index = json.loads((one.parent / "lat.index.json").read_text())
    assert index["n_images"] == 41 and index["n_failed"] == 1 and index["n_ok"] == 40
    assert [s["count"] for s in index["shards"]] == [6] * 6 + [5]
    assert index["sources"] == sorted(index["sources"])
    failures = [json.loads(line) for line in (one.parent / "lat.failures.jsonl").read_text().splitlines()]
    assert failures == [{"path": "a/zz_broken.png", "error": failures[0]["error"]}] and "not an image" in failures[0]["error"]

    two = tmp_path / "two" / "lat"
    env = dict(os.environ, OMP_NUM_THREADS="1", E4E_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "e4e_cli",
           *map(str, args(folder, two, ckpt))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    c1, p1, ok1 = load_latents(one)
    c2, p2, ok2 = load_latents(two)
    assert p1 == p2 == index["sources"]
    assert (ok1 == ok2).all() and int(ok1.sum()) == 40
    assert float(np.abs(c1 - c2).max()) <= 1e-6
    assert not ok1[p1.index("a/zz_broken.png")] and not c1[p1.index("a/zz_broken.png")].any()
    # the codes are what `e4e invert` writes for the same image
    inv = run_e4e("invert", folder / "b" / "00.png", "--domain", "church", "--checkpoint", ckpt, "--precision", "fp32",
                  "--out", tmp_path / "inv")
    assert inv.returncode == 0, inv.stderr
    assert float(np.abs(np.load(tmp_path / "inv" / "00" / "latent.npy") - c1[p1.index("b/00.png")]).max()) <= 1e-5


def test_bad_dataset_input_is_one_line(tmp_path, case_checkpoint):
    ckpt = case_checkpoint("church_256_s3")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_e4e(*args(empty, tmp_path / "x", ckpt)), "holds no images")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_text("no")
    proc = run_e4e(*args(junk, tmp_path / "j" / "lat", ckpt))
    assert_one_line_error(proc, "none of the 1 images")
    assert_one_line_error(run_e4e(*args(empty, tmp_path / "x", ckpt), "--shard-size", "0"), "--shard-size")
