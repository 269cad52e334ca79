"""The CLI's contract (issue 13): usage errors are one line with exit 2, names never collide,
edits are skipped only when what made them matches, one failure of any kind never stops a batch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from e4e_cli.jobs import edit as edit_job
from e4e_cli.jobs import invert as invert_job
from e4e_cli.jobs import outputs
from e4e_cli.errors import EXIT_CODES, MissingWeightsError
from e4e_cli.fsutil import unique_names

from conftest import assert_one_line_error, run_e4e


# ---- usage errors ------------------------------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (["invert", "--batch-size", "abc", "x.jpg"], "--batch-size"),
    (["edit"], "--direction"),
    (["invert"], "Missing argument"),
    (["invert", "x.jpg", "--no-such-option"], "--no-such-option"),
    (["no-such-command"], "no-such-command"),
    (["download-weights", "--weights-dir"], "--weights-dir"),
])
def test_usage_errors_are_one_line_with_exit_2(args, needle):
    proc = run_e4e(*args)
    assert_one_line_error(proc, needle, "--help", code=2)
    assert "Usage:" not in proc.stderr


def test_help_still_works():
    for args in (["--help"], ["invert", "--help"], []):
        proc = run_e4e(*args)
        assert proc.returncode == 0 and "Usage" in proc.stdout and proc.stderr == "", (args, proc.stderr)


def test_exit_codes_are_documented():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert MissingWeightsError("x").exit_code == 3
    for code in EXIT_CODES:
        assert f"| {code} |" in readme, f"exit code {code} missing from the README's table"


# ---- names -------------------------------------------------------------------------------


def test_strengths_never_share_a_file_name():
    labels = [outputs.fmt_strength(v) for v in (1.0, 1.000001, -1.5, 3, 0.25)]
    assert labels == ["+1", "+1p000001", "-1p5", "+3", "+0p25"]


def test_unique_stems_example_from_the_issue():
    stems = outputs.unique_stems([Path("photo.jpg"), Path("photo.png"), Path("photo_2.jpg")])
    assert stems == ["photo", "photo_3", "photo_2"]
    assert outputs.unique_stems([Path("a/photo.jpg")]) == ["photo"]  # the common case keeps its name


names = st.lists(st.text(alphabet="aAbB_2-3.", min_size=1, max_size=5), max_size=12)


@settings(max_examples=300, deadline=None)
@given(names)
def test_unique_names_never_collide(bases):
    out = unique_names(bases)
    assert len(out) == len(bases)
    assert len({n.casefold() for n in out}) == len(out), (bases, out)
    # a base that occurs once (case-insensitively) keeps its name
    for b, n in zip(bases, out):
        if sum(x.casefold() == b.casefold() for x in bases) == 1:
            assert n == b


def _png(path: Path, seed: int) -> Path:
    Image.fromarray((np.random.RandomState(seed).rand(48, 48, 3) * 255).astype("uint8")).save(path)
    return path


def test_invert_never_writes_two_inputs_into_one_folder(tmp_path, case_checkpoint):
    ckpt = case_checkpoint("church_256_s3")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    inputs = [_png(a / "photo.png", 1), _png(b / "photo.png", 2), _png(a / "photo_2.png", 3)]
    proc = run_e4e("invert", *inputs, "--domain", "church", "--checkpoint", ckpt, "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    dirs = [item["outdir"] for item in summary["items"]]
    assert len(set(dirs)) == 3, dirs
    for item in summary["items"]:
        meta = json.loads((Path(item["outdir"]) / "meta.json").read_text())
        assert meta["source"] == str(Path(item["input"]).resolve())


# ---- edits: skip only what the same edit made --------------------------------------------


def test_edit_skips_only_when_the_same_edit_made_the_file(tmp_path, case_checkpoint):
    ckpt = case_checkpoint("church_256_s3")
    lat = tmp_path / "x.npy"
    np.save(lat, np.random.RandomState(0).randn(14, 512).astype(np.float32) * 0.1)
    d1, d2 = tmp_path / "one", tmp_path / "two"
    d1.mkdir(), d2.mkdir()
    np.save(d1 / "look.npy", np.random.RandomState(1).randn(512).astype(np.float32))
    np.save(d2 / "look.npy", np.random.RandomState(2).randn(512).astype(np.float32))
    out = tmp_path / "edits"
    common = ["--strength", "2", "--out", out, "--checkpoint", ckpt, "--domain", "church"]
    first = run_e4e("edit", lat, "--direction", d1 / "look.npy", *common)
    assert first.returncode == 0, first.stderr
    record = json.loads((out / "x_look_+2.json").read_text())
    assert record["direction"]["sha256"] and record["strength"] == 2.0
    made = (out / "x_look_+2.npy").read_bytes()

    again = run_e4e("edit", lat, "--direction", d1 / "look.npy", *common)  # the same edit: skipped
    assert again.returncode == 0 and "already done" in again.stdout, again.stdout + again.stderr

    other = run_e4e("edit", lat, "--direction", d2 / "look.npy", *common)  # same name, other file
    assert_one_line_error(other, "x_look_+2.png", "another direction", "--overwrite", code=1)
    assert (out / "x_look_+2.npy").read_bytes() == made, "nothing overwritten"

    forced = run_e4e("edit", lat, "--direction", d2 / "look.npy", *common, "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert (out / "x_look_+2.npy").read_bytes() != made
    assert json.loads((out / "x_look_+2.json").read_text())["direction"] != record["direction"]

    scaled = run_e4e("edit", lat, "--direction", d2 / "look.npy", *common, "--delta-scale", "0.5")
    assert_one_line_error(scaled, "another delta scale", code=1)
    (out / "x_look_+2.json").unlink()  # an output without its record is not taken for done either
    bare = run_e4e("edit", lat, "--direction", d2 / "look.npy", *common)
    assert_one_line_error(bare, "no record", code=1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["failed"] == 1


# ---- one failure never stops a batch -----------------------------------------------------


def test_a_runtime_error_in_a_batch_fails_that_batch_only(tmp_path, case_checkpoint, monkeypatch):
    from e4e_cli.model import E4E

    model = E4E.from_checkpoint(case_checkpoint("church_256_s3"), device="cpu")
    inputs = [_png(tmp_path / f"p{i}.png", i) for i in range(3)]
    real_decode, calls = model.decode, []

    def flaky_decode(codes, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated oneDNN failure")
        return real_decode(codes, **kw)

    monkeypatch.setattr(model, "decode", flaky_decode)
    out = tmp_path / "o"
    res = invert_job.invert_inputs(inputs, model, invert_job.InvertOptions(out=out, align=False, batch_size=1))
    assert [r.status for r in res] == ["ok", "failed", "ok"]
    assert "internal error: RuntimeError: simulated oneDNN failure" in res[1].error
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"ok": 2, "skipped": 0, "failed": 1}


def test_an_os_error_while_editing_fails_that_source_only(tmp_path, case_checkpoint, monkeypatch):
    lats = []
    for i in range(3):
        lats.append(tmp_path / f"l{i}.npy")
        np.save(lats[-1], np.random.RandomState(i).randn(14, 512).astype(np.float32) * 0.1)
    real_save = edit_job.atomic_save_image

    def full_disk(image, path, **kw):
        if Path(path).name.startswith("l1_"):
            raise OSError(28, "No space left on device", str(path))
        return real_save(image, path, **kw)

    monkeypatch.setattr(edit_job, "atomic_save_image", full_disk)
    job = edit_job.EditJob(sources=lats, direction="sefa:0", strengths=[1.0], sweep=None, out=tmp_path / "e",
                           domain="church", checkpoint=case_checkpoint("church_256_s3"), device="cpu")
    res = edit_job.run_edit(job)
    assert [r.status for r in res] == ["ok", "failed", "ok"]
    assert "No space left on device" in res[1].error
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["counts"]["failed"] == 1
