"""`e4e invert-dataset` (issue 17): shards, resume after a kill, torchrun with 2 processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from e4e_cli.jobs.dataset import load_latents

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
    killed = run_e4e(*args(folder, one, ckpt), hooks=["--kill-after-shards", "2"])
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
    logs = tmp_path / "shard-logs"
    logs.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).with_name("run_with_hooks.py")), "--log-shards", str(logs), "--",
           *map(str, args(folder, two, ckpt))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # each process wrote its own shards (k % 2 == rank), each shard once: the work was split
    wrote = {r: sorted(int(x) for x in (logs / f"rank{r}.txt").read_text().split()) for r in (0, 1)}
    assert wrote == {0: [0, 2, 4, 6], 1: [1, 3, 5]}, wrote
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


# ---- codes of two checkpoints are never mixed (issue 21) -----------------------------------


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    """2 images: two shards of 1 (each run encodes little: the checks are about files)."""
    root = tmp_path_factory.mktemp("ds2")
    for i in range(2):
        Image.fromarray((np.random.RandomState(100 + i).rand(40, 40, 3) * 255).astype("uint8")).save(root / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def twin_checkpoints(tmp_path_factory, case_checkpoint):
    """(A, B): the church checkpoint and a twin with other encoder weights, saved the same way
    (so of the same byte size)."""
    import torch

    ck = torch.load(case_checkpoint("church_256_s3"), map_location="cpu", weights_only=True)
    folder = tmp_path_factory.mktemp("twin")
    a, b = folder / "a.pt", folder / "b.pt"
    torch.save(ck, a)
    for k, v in ck["state_dict"].items():
        if k.startswith("encoder.") and v.is_floating_point() and v.ndim == 4:
            v.mul_(1.5)  # every conv of the encoder: other codes
    torch.save(ck, b)
    assert b.stat().st_size == a.stat().st_size, "the twin must have the same size for this test"
    return a, b


def small_args(folder, out, ckpt, *extra):
    return ["invert-dataset", folder, "--out", out, "--domain", "church", "--checkpoint", ckpt, "--shard-size", "1",
            "--workers", "0", "--precision", "fp32", "--batch-size", "1", *extra]


def place(src, dest, mtime_ns=None):
    """Copy `src` to `dest` as `cp -p` would: same bytes, and (optionally) a given mtime."""
    import shutil

    shutil.copyfile(src, dest)
    if mtime_ns is not None:
        os.utime(dest, ns=(mtime_ns, mtime_ns))


def test_same_name_size_and_mtime_is_not_the_same_checkpoint(small_folder, twin_checkpoints, tmp_path):
    a, b = twin_checkpoints
    ckpt = tmp_path / "w" / "step_100.pt"
    ckpt.parent.mkdir()
    place(a, ckpt)
    st = ckpt.stat()
    prefix = tmp_path / "out" / "lat"
    first = run_e4e(*small_args(small_folder, prefix, ckpt))
    assert first.returncode == 0, first.stderr
    codes_a, _, _ = load_latents(prefix)

    place(b, ckpt, mtime_ns=st.st_mtime_ns)  # another run's step_100.pt, copied with its mtime kept
    assert (ckpt.stat().st_size, ckpt.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    again = run_e4e(*small_args(small_folder, prefix, ckpt))
    assert_one_line_error(again, "another checkpoint", "--overwrite")
    assert np.array_equal(load_latents(prefix)[0], codes_a), "a refused run changes nothing"

    redo = run_e4e(*small_args(small_folder, prefix, ckpt, "--overwrite"))
    assert redo.returncode == 0, redo.stderr
    assert "0 already done" in redo.stderr
    codes_b, _, _ = load_latents(prefix)
    assert float(np.abs(codes_b - codes_a).max()) > 1e-3, "B's codes, not A's"


def test_interrupted_rerun_with_another_checkpoint_is_never_read_as_one(small_folder, twin_checkpoints, tmp_path):
    from e4e_cli.errors import E4EError

    a, b = twin_checkpoints
    prefix = tmp_path / "out" / "lat"
    assert run_e4e(*small_args(small_folder, prefix, a)).returncode == 0
    load_latents(prefix)  # complete and consistent

    # B over A's prefix, killed after its first shard: the old index is gone before that shard was written
    killed = run_e4e(*small_args(small_folder, prefix, b, "--overwrite"), hooks=["--kill-after-shards", "1"])
    assert killed.returncode == 3
    assert not (prefix.parent / "lat.index.json").exists()
    with pytest.raises(E4EError, match="not found"):
        load_latents(prefix)

    # a finished A whose second shard was replaced by B's (another run wrote into the same folder)
    assert run_e4e(*small_args(small_folder, prefix, a, "--overwrite")).returncode == 0
    other = tmp_path / "other" / "lat"
    assert run_e4e(*small_args(small_folder, other, b)).returncode == 0
    place(other.parent / "lat-00001.npz", prefix.parent / "lat-00001.npz")
    with pytest.raises(E4EError, match=r"lat-00001\.npz"):
        load_latents(prefix)


def test_load_latents_checks_fingerprint_and_paths(small_folder, twin_checkpoints, tmp_path):
    """A shard rewritten with consistent bytes in the index but another fingerprint or paths is refused."""
    import json as _json

    from e4e_cli.jobs.dataset import write_shard
    from e4e_cli.digests import sha256_file
    from e4e_cli.errors import E4EError

    a, _ = twin_checkpoints
    prefix = tmp_path / "lat"
    assert run_e4e(*small_args(small_folder, prefix, a)).returncode == 0
    index_file = tmp_path / "lat.index.json"
    index = _json.loads(index_file.read_text())
    shard = tmp_path / "lat-00000.npz"
    with np.load(shard) as z:
        result = {"codes": z["codes"], "ok": z["ok"], "errors": list(z["errors"])}
        paths, fp = list(z["paths"]), _json.loads(str(z["fingerprint"]))
    for bad_paths, bad_fp, needle in ((paths, dict(fp, delta_scale=0.5), "another checkpoint or options"),
                                      (["elsewhere.png"], fp, "other images")):
        write_shard(shard, bad_paths, result, _json.dumps(bad_fp, sort_keys=True))
        index["shards"][0]["sha256"] = sha256_file(shard)
        index_file.write_text(_json.dumps(index))
        with pytest.raises(E4EError, match=needle):
            load_latents(prefix)
