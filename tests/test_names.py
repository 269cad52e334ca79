"""Issue 30, section 3: whatever an input is called (`..`, `.`, `...`, a leading dot, only
spaces), every result folder and file lands inside --out, never in its parent, and none is hidden."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PARITY, run_e4e
from e4e_cli.fsutil import child_path, safe_name
from e4e_cli.jobs.outputs import unique_names_of, unique_stems

#: photo names whose stems are `..`, `.`, `...`, a hidden name and only spaces
ODD = ["...png", "..jpg", "....png", ".hidden.png", "   .png"]
FP32 = ("--device", "cpu", "--precision", "fp32")


def _inside(folder: Path, name: str) -> bool:
    p = (folder / name).resolve()
    return p.parent == folder.resolve() and not name.startswith(".") and name.strip() == name


def test_output_names_stay_inside_the_folder(tmp_path):
    names = unique_stems([tmp_path / n for n in ODD + ["con.png", "a b.png", "x" * 300 + ".png"]])
    assert len({n.casefold() for n in names}) == len(names)
    for n in names:
        assert _inside(tmp_path, n), n
        assert child_path(tmp_path, n).parent == tmp_path
        assert len(n.encode("utf-8")) <= 160
    assert names[:5] == ["image", "image_2", "image_3", "hidden", "image_4"]
    assert names[5] == "con_"  # a device name on Windows
    for n in unique_names_of(["..", ".", "", " ", "..."]):
        assert _inside(tmp_path, n), n
    assert safe_name("photo.v2", "image") == "photo.v2" and safe_name("été", "image") == "été"
    for bad in ("", ".", "..", "a/b", "../x"):
        with pytest.raises(Exception, match="would leave"):
            child_path(tmp_path, bad)


def test_align_names_are_never_hidden_or_empty():
    from e4e_cli.cli.align import _unique_stems

    stems = _unique_stems([Path(n) for n in ODD])
    assert stems == ["photo", "photo-2", "photo-3", "hidden", "photo-4"]


def _odd_photos(folder: Path) -> list[Path]:
    folder.mkdir()
    noise = (np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8")
    paths = []
    for n in ODD:
        Image.fromarray(noise).save(folder / n, format="PNG")
        paths.append(folder / n)
    return paths


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


def test_invert_and_edit_write_only_inside_out(case_checkpoint, tmp_path):
    """`e4e invert ...png ..jpg --out OUT` wrote aligned.png, inversion.png, latent.* and meta.json
    into OUT's parent; `e4e edit` on such photos names its outputs after the same folders."""
    ck = case_checkpoint("church_256_s3")
    work = tmp_path / "work"
    work.mkdir()
    photos = _odd_photos(work / "in")
    before = _files(work)
    proc = run_e4e("invert", *photos, "--checkpoint", ck, "--out", work / "out" / "OUT", *FP32)
    assert proc.returncode == 0, proc.stderr
    new = _files(work) - before
    assert new and all(p.parts[:2] == ("out", "OUT") for p in new), sorted(map(str, new))
    folders = sorted(p.name for p in (work / "out" / "OUT").iterdir() if p.is_dir())
    assert folders == ["hidden", "image", "image_2", "image_3", "image_4"]
    assert all(not p.name.startswith(".") for p in new)

    before = _files(work)
    proc = run_e4e("edit", photos[1], photos[3], "-d", "sefa:0", "-s", "1", "--checkpoint", ck,
                   "--invert-out", work / "out" / "OUT", "--out", work / "out" / "ED", *FP32)
    assert proc.returncode == 0, proc.stderr
    new = _files(work) - before
    assert new and all(p.parts[:2] in (("out", "ED"), ("out", "OUT")) for p in new), sorted(map(str, new))
    edited = sorted(p.name for p in (work / "out" / "ED").iterdir() if p.suffix == ".png")
    assert edited == ["hidden_sefa-0_+1.png", "image_sefa-0_+1.png"]


def test_align_writes_only_inside_out(tmp_path):
    photo = PARITY / "images" / "input_img.jpg"
    if not photo.is_file():
        pytest.skip("parity photo not available")
    src = tmp_path / "in"
    src.mkdir()
    names = ["..jpg", ".hidden.jpg", "   .jpg"]
    for n in names:
        shutil.copy(photo, src / n)
    proc = run_e4e("align", *[src / n for n in names], "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["hidden.json", "hidden.png", "photo-2.json", "photo-2.png", "photo.json", "photo.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
