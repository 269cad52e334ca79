"""Issue 30, section 9 (as a new user): messages that point the right way, bad option values that
exit 2 as the README's table says, options that are refused where they would be ignored, a saved
direction found by name, names never cut in `e4e directions`, strips labelled with their strengths."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import PARITY, assert_one_line_error, hyperstyle_checkpoints, noise_photo, run_e4e

FP32 = ("--device", "cpu", "--precision", "fp32")


@pytest.fixture(scope="module")
def church_invert(church, tmp_path_factory):
    """One plain church inversion (a domain whose photos are inverted whole)."""
    tmp = tmp_path_factory.mktemp("church")
    photo = noise_photo(tmp / "p.png")
    proc = run_e4e("invert", photo, "--checkpoint", church, "--out", tmp / "out", *FP32)
    assert proc.returncode == 0, proc.stderr
    return tmp / "out" / "p"


# ---- messages that point the right way -------------------------------------------------------


def test_a_missing_w_encoder_is_named_for_the_refiners_domain(tmp_path):
    hs, _ = hyperstyle_checkpoints("cars_512_s2")
    empty = tmp_path / "weights"
    empty.mkdir()
    proc = run_e4e("invert", PARITY / "images" / "car_img.jpg", "--refine", "hyperstyle", "--refiner", hs,
                   "--weights-dir", empty, "--out", tmp_path / "o")
    assert_one_line_error(proc, "cars_w_encoder.pt", "e4e download-weights hyperstyle_cars", code=3)
    assert "ffhq" not in proc.stderr


def test_no_domain_is_said_to_be_asked_for_when_none_was(church, tmp_path):
    photo = noise_photo(tmp_path / "p.png", seed=4)
    proc = run_e4e("edit", photo, "-d", "sefa:0", "-s", "1", "--checkpoint", church, "--invert-out", tmp_path / "inv",
                   "--out", tmp_path / "e", *FP32)
    assert proc.returncode == 0, proc.stderr  # was: aligned as an ffhq face ("no face found")
    assert "as asked" not in proc.stderr
    proc = run_e4e("edit", tmp_path / "missing.npy", "-d", "sefa:0", "-s", "1", "--checkpoint", church, *FP32)
    assert_one_line_error(proc, "missing.npy", code=1)
    assert "as asked" not in proc.stderr


def test_paste_back_of_a_non_face_latent_says_why_and_writes_nothing(church_invert, tmp_path):
    out = tmp_path / "e"
    proc = run_e4e("edit", church_invert / "latent.npy", "-d", "sefa:0", "-s", "1", "--paste-back", "--out", out, *FP32)
    assert_one_line_error(proc, "church", "nothing to paste back", code=1)
    assert "output folder" not in proc.stderr  # it was one
    assert "0 files" in proc.stdout and not list(out.glob("*.png"))


def test_a_failed_input_is_named_once(church, tmp_path):
    bad = tmp_path / "mixed" / "trunc.jpg"
    bad.parent.mkdir()
    data = (PARITY / "images" / "church_img.jpg").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    proc = run_e4e("invert", bad, "--checkpoint", church, "--out", tmp_path / "o", *FP32)
    assert_one_line_error(proc, "trunc.jpg", code=1)
    line = [x for x in proc.stderr.splitlines() if x.startswith("e4e: error:")][0]
    assert line.count("trunc.jpg") == 1, line


# ---- exit codes: a bad option value is a usage error (2) ----------------------------------------


@pytest.mark.parametrize("args", [
    ("invert", "p.png", "--precision", "fp64"),
    ("invert", "p.png", "--domain", "dogs"),
    ("invert", "p.png", "--batch-size", "0"),
    ("invert", "p.png", "--device", "tpu"),
    ("invert", "p.png", "--paste-back", "--paste-mask", "square"),
    ("edit", "-d", "sefa:0", "--sweep", "3"),
    ("edit", "-d", "sefa:0", "--paste-back", "--paste-mask", "square"),
    ("evaluate", "p.png", "--domain", "dogs"),
    ("directions", "show", "sefa:0", "--precision", "fp64"),
    ("invert-dataset", ".", "--out", "o", "--batch-size", "0"),
    ("invert", "p.png", "--refine", "ptx"),
    ("invert", "p.png", "--refine-steps", "3"),
    ("invert", "p.png", "--refine", "hyperstyle", "--refine-steps", "99"),
    ("invert", "p.png", "--refine", "hyperstyle", "--offsets-precision", "int8"),
    ("invert", "p.png", "--delta-scale", "nan"),
])
def test_bad_option_values_exit_2(args, tmp_path):
    proc = run_e4e(*args, cwd=tmp_path)
    assert_one_line_error(proc, code=2)


# ---- options refused where they would be ignored ------------------------------------------------


IGNORED = {  # args (PHOTO, CHURCH: placeholders) -> what the one error line names
    "paste-mask without paste-back": (("invert", "PHOTO", "--paste-mask", "ellipse"), "--paste-back"),
    "color-match without paste-back": (("invert", "PHOTO", "--color-match"), "--paste-back"),
    "edit paste-mask without paste-back": (("edit", "-d", "sefa:0", "--paste-mask", "hull"), "--paste-back"),
    "strength with sweep": (("edit", "-d", "sefa:0", "-s", "5", "--sweep", "-1:1:3"), "--sweep"),
    "face on church": (("invert", "PHOTO", "--checkpoint", "CHURCH", "--face", "3", *FP32), "--face"),
    "paste-back on church": (("invert", "PHOTO", "--checkpoint", "CHURCH", "--paste-back", *FP32), "church"),
    "domain wild without refine": (("invert", "PHOTO", "--checkpoint", "CHURCH", "--domain", "wild", *FP32), "--domain wild"),
    "fit positive = negative": (("directions", "fit", "--positive", ".", "--negative", ".", "--name", "x"), "same folder"),
}


@pytest.mark.parametrize("case", list(IGNORED))
def test_options_that_would_be_ignored_are_refused(case, church, tmp_path):
    args, needle = IGNORED[case]
    photo = noise_photo(tmp_path / "p.png")
    args = [photo if a == "PHOTO" else church if a == "CHURCH" else a for a in args]
    proc = run_e4e(*args, "--out", tmp_path / "o", cwd=tmp_path)
    assert_one_line_error(proc, needle, code=2)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("latent.npy"))


def test_the_same_photo_labelled_both_ways_is_refused(tmp_path):
    pos, neg = tmp_path / "pos", tmp_path / "neg"
    for folder in (pos, neg):
        folder.mkdir()
    for i in range(5):
        np.save(pos / f"{i}.npy", np.random.RandomState(i).randn(512).astype(np.float32))
        np.save(neg / f"{i}.npy", np.random.RandomState(10 + i).randn(512).astype(np.float32))
    np.save(neg / "copy.npy", np.load(pos / "3.npy"))
    proc = run_e4e("directions", "fit", "--positive", pos, "--negative", neg, "--name", "x", "--out", tmp_path / "d")
    assert_one_line_error(proc, "3.npy", "copy.npy", "labelled", code=1)


# ---- directions: found by name, never cut, labelled strips --------------------------------------


def test_edit_finds_a_saved_direction_by_name(church, church_invert, tmp_path):
    weights = tmp_path / "weights"
    (weights / "directions").mkdir(parents=True)
    vec = np.random.RandomState(0).randn(512).astype(np.float32)
    np.save(weights / "directions" / "brighter.npy", vec / np.linalg.norm(vec))
    proc = run_e4e("edit", church_invert / "latent.npy", "-d", "brighter", "-s", "2", "--weights-dir", weights,
                   "--out", tmp_path / "e", *FP32)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((tmp_path / "e" / "p_brighter_+2.json").read_text())
    assert rec["direction"]["file"] == "brighter.npy"


@pytest.mark.parametrize("columns", ["80", "100"])
def test_directions_never_cuts_the_names(columns, tmp_path):
    from e4e_cli.editing import PRESETS

    weights = tmp_path / "weights"
    (weights / "directions").mkdir(parents=True)
    np.save(weights / "directions" / "my_glasses_direction_v2.npy", np.ones(512, np.float32))
    proc = run_e4e("directions", "--weights-dir", weights, env={"COLUMNS": columns})
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= int(columns)
    for name in [*PRESETS, "my_glasses_direction_v2", "ganspace:C:START:END", "sefa:K[:LAYERS]"]:
        assert name in proc.stdout, name


def _dark_corner(image: Image.Image, x0: int) -> bool:
    a = np.asarray(image.convert("RGB"))
    return bool((a[-4:, x0:x0 + 4] < 30).all())


def test_sweep_strips_show_their_strengths(church_invert, tmp_path):
    out = tmp_path / "e"
    proc = run_e4e("edit", church_invert / "latent.npy", "-d", "sefa:0", "--sweep", "-2:2:3", "--out", out, *FP32)
    assert proc.returncode == 0, proc.stderr
    strip = Image.open(out / "p_sefa-0_sweep.png")
    assert strip.size == (3 * 256, 256)
    for i, name in enumerate(["p_sefa-0_-2.png", "p_sefa-0_+0.png", "p_sefa-0_+2.png"]):
        assert _dark_corner(strip, i * 256) and not _dark_corner(Image.open(out / name), 0), name


def test_show_takes_a_precision_and_shows_progress(church, tmp_path):
    proc = run_e4e("directions", "show", "sefa:0", "--checkpoint", church, "--samples", "1", "--sweep", "-1:1:2",
                   "--tile", "64", "--precision", "fp32", "--device", "cpu", "--out", tmp_path / "s.png",
                   env={"E4E_NO_PROGRESS": ""})
    assert proc.returncode == 0, proc.stderr
    assert "decoding" in proc.stderr  # a bar while the strip is decoded
    assert _dark_corner(Image.open(tmp_path / "s.png"), 0)


def test_download_list_has_a_licence_column(tmp_path):
    proc = run_e4e("download-weights", "--list", "--weights-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "licence" in proc.stdout and "non-commercial" in proc.stdout


@pytest.mark.parametrize("command", [("invert",), ("edit",), ("align",), ("evaluate",), ("invert-dataset",),
                                     ("directions", "fit"), ("directions", "pca"), ("directions", "show")])
def test_help_says_what_overwrite_does_and_that_folders_are_not_searched_recursively(command):
    proc = run_e4e(*command, "--help", env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.splitlines():
        if line.strip().startswith("--overwrite"):
            said = line.strip()[len("--overwrite"):].split("[default")[0].strip()
            assert said, f"{' '.join(command)} --overwrite has no help text"
    if command[0] in ("invert", "edit", "align", "evaluate"):
        assert "not searched recursively" in " ".join(proc.stdout.split())


def test_a_ctrl_c_no_command_catches_is_one_line(capsys):
    """A KeyboardInterrupt that leaves any command (typer makes it a silent exit 130) still ends
    with one `e4e: error:` line and exit 130."""
    from e4e_cli.cli import app as cli_app

    cli_app._register()
    if not any(c.name == "interrupt-probe" for c in cli_app.app.registered_commands):
        @cli_app.app.command("interrupt-probe", hidden=True)
        def probe():
            raise KeyboardInterrupt

    assert cli_app.main(["interrupt-probe"]) == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == ["e4e: error: interrupted (Ctrl-C)"], err
