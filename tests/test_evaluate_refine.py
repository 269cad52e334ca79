"""`e4e evaluate --refine hyperstyle`: e4e and HyperStyle side by side (rows, table, picture) on
the synthetic cars 512 pair, LPIPS and ArcFace identity from the loss-network files when
present (n/a otherwise), and one-line errors for bad refine options."""
from __future__ import annotations

import csv
import io
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import PARITY, assert_one_line_error, hyperstyle_checkpoints, run_e4e
from e4e_cli import metrics
from e4e_cli.errors import E4EError

CASE = "cars_512_s2"
PHOTO = PARITY / "images" / "car_img.jpg"
GRID_GAP, GRID_HEADER = 6, 22  # charts.image_grid: gap between cells, header band (line + gap)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def evaluated(case_checkpoint, lossnet_weights, tmp_path_factory):
    """One side-by-side run (one refinement pass; --delta-scales 0: scale 1 is added for the comparison)."""
    hs, we = hyperstyle_checkpoints(CASE)
    out = tmp_path_factory.mktemp("evaluate") / "out"
    proc = run_e4e("evaluate", PHOTO, "--checkpoint", case_checkpoint(CASE), "--refine", "hyperstyle",
                   "--refine-steps", "1", "--refiner", hs, "--w-encoder", we, "--weights-dir", lossnet_weights,
                   "--delta-scales", "0", "--device", "cpu", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return SimpleNamespace(out=out, proc=proc, rows=_rows(out / "results.csv"))


def test_side_by_side_rows_table_and_picture(evaluated):
    rows = evaluated.rows
    assert [(r["method"], r["delta_scale"]) for r in rows] == [("e4e", "0"), ("e4e", "1"), ("hyperstyle", "n/a")]
    e4e, ref = rows[1], rows[2]
    assert ref["refine_steps"] == "1" and e4e["refine_steps"] == "n/a"
    for r in (e4e, ref):
        assert float(r["seconds"]) > 0
        assert float(r["psnr"]) == pytest.approx(10 * math.log10(1 / float(r["mse"])), rel=1e-5)
        assert 0 < float(r["lpips"]) < 2  # the loss-network files' LPIPS
        assert r["id_similarity"] == "n/a"  # cars: no identity network
    # what refinement bought on the synthetic pair (e4e 0.2538, one pass 0.2396)
    assert float(ref["mse"]) < float(e4e["mse"])
    out = evaluated.proc.stdout
    assert "e4e vs HyperStyle" in out and "hyperstyle (1 step)" in out and "side_by_side.png" in out
    assert "ID" not in out.split("e4e vs HyperStyle")[1]
    assert [float(c["delta_scale"]) for c in _rows(evaluated.out / "curve.csv")] == [0.0, 1.0]  # e4e only

    # the picture holds the very views that were measured: input | e4e | refined, 256x192 each
    with Image.open(evaluated.out / "side_by_side.png") as im:
        grid = np.asarray(im.convert("RGB"))
    cells = [grid[GRID_HEADER:GRID_HEADER + 192, x:x + 256] for x in (GRID_GAP + i * (256 + GRID_GAP) for i in range(3))]
    with Image.open(PHOTO) as photo:
        view = photo.convert("RGB").resize((256, 192), Image.BILINEAR)
    assert np.abs(cells[0].astype(int) - np.asarray(view).astype(int)).max() <= 1  # the encoder's input, 8 bit
    for cell, r in zip(cells[1:], (e4e, ref)):
        assert metrics.mse(cells[0], cell) == pytest.approx(float(r["mse"]), rel=1e-4)


def test_meters_lpips_and_identity(lossnet_weights, tmp_path):
    from e4e_cli.jobs.evaluate import load_meters

    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(2))
    m = load_meters("ffhq", weights_dir=lossnet_weights, identity=True)
    assert m.lpips(a, a) == pytest.approx(0, abs=1e-6) and m.lpips(a, b) > 0
    assert m.identity(a, a) == pytest.approx(1, abs=1e-5) and -1 <= m.identity(a, b) < 0.999
    assert load_meters("ffhq", weights_dir=tmp_path).identity_na == ""  # not asked for (evaluate without --refine)
    empty = load_meters("ffhq", weights_dir=tmp_path, identity=True)
    assert empty.identity is None and empty.identity_na == "n/a (e4e download-weights ir_se50)"
    assert empty.lpips is None and empty.lpips_na == "n/a (e4e download-weights lpips)"
    cars = load_meters("cars", weights_dir=lossnet_weights.parent, identity=True)
    assert cars.identity is None and "faces" in cars.identity_na


@pytest.mark.parametrize("with_id", [True, False])
def test_face_table_has_an_id_column(with_id, tmp_path):
    """For faces the table has ID (numbers with the ArcFace file, n/a and the download without it)."""
    from rich.console import Console

    from e4e_cli.cli.evaluate import _side_by_side
    from e4e_cli.jobs.evaluate import Evaluation, Meters

    ident = 0.5 if with_id else None
    rows = [{"method": "e4e", "image": "a.png", "delta_scale": 1.0, "mse": 0.02, "psnr": 17.0, "lpips": 0.3,
             "id_similarity": ident, "seconds": 0.1},
            {"method": "hyperstyle", "image": "a.png", "delta_scale": None, "mse": 0.01, "psnr": 20.0, "lpips": 0.2,
             "id_similarity": ident and 0.75, "refine_steps": 5, "seconds": 0.4}]
    u8 = np.zeros((256, 256, 3), np.uint8)
    ev = Evaluation(rows=rows, views=[("a.png", u8, u8, u8)])
    meters = Meters(lpips=metrics.mse, identity=(lambda a, b: 1.0) if with_id else None,
                    identity_na="n/a (e4e download-weights ir_se50)")
    console = Console(file=io.StringIO(), width=200)
    path = _side_by_side(console, ev, "ffhq", meters, tmp_path)
    text = console.file.getvalue()
    cells = [[c.strip() for c in re.split("[│┃]", line)[1:-1]] for line in text.splitlines()
             if line.startswith(("┃", "│"))]  # the header row, then one row per method
    table = {row[0]: dict(zip(cells[0], row)) for row in cells[1:]}
    assert cells[0] == ["method", "L2 (MSE)", "PSNR", "LPIPS", "ID", "s/img"] and "CelebA-HQ" in text
    ids = [table["e4e"]["ID"], table["hyperstyle (5 steps)"]["ID"]]
    if with_id:
        assert ids == ["0.5", "0.75"]
    else:
        assert ids == ["n/a", "n/a"] and "ID: n/a (e4e download-weights ir_se50)" in text
    with Image.open(path) as im:
        assert im.width == 3 * 256 + 4 * GRID_GAP


def test_bad_refine_options_are_one_line(case_checkpoint, tmp_path):
    from e4e_cli.cli.options import check_refine
    from e4e_cli.jobs.evaluate import check_refiner_pair

    proc = run_e4e("evaluate", PHOTO, "--refine-steps", "2", "--out", tmp_path / "o")
    assert_one_line_error(proc, "need --refine hyperstyle", code=2)
    empty = tmp_path / "weights"
    empty.mkdir()
    proc = run_e4e("evaluate", PHOTO, "--checkpoint", case_checkpoint(CASE), "--refine", "hyperstyle",
                   "--weights-dir", empty, "--device", "cpu", "--out", tmp_path / "o")
    assert_one_line_error(proc, "e4e download-weights hyperstyle_cars", code=3)
    assert not (tmp_path / "o").exists()
    for args, needle in (((("pti", None, None, None)), "unknown --refine"), (("hyperstyle", 51, None, None), "0 to 50")):
        with pytest.raises(E4EError, match=needle):
            check_refine(*args)
    e4e = SimpleNamespace(domain="church", input_size=(256, 256))
    cars = SimpleNamespace(domain="cars", input_size=(192, 256), path="/w/hyperstyle_cars.pt")
    with pytest.raises(E4EError, match="hyperstyle_cars.pt is a cars checkpoint.*church"):
        check_refiner_pair(e4e, cars)


def test_meters_give_the_reference_numbers(lossnet_weights, parity_dir):
    """evaluate's LPIPS and ID for the loss networks' fixture pairs are the reference's values
    (lossnets/cases.json: LPIPS(y_hat_i, y_i) and <f(y_hat_i), f(y_i)>): the images reach the
    networks as the reference feeds them ([-1,1], NCHW), not merely as numbers in range."""
    import json

    from e4e_cli.jobs.evaluate import load_meters

    spec = json.loads((parity_dir / "lossnets" / "cases.json").read_text())
    data = np.load(parity_dir / "lossnets" / "cases.npz")
    m = load_meters("ffhq", weights_dir=lossnet_weights, identity=True)
    for i in range(2):
        y, y_hat = data["y_u8"][i], data["y_hat_u8"][i]
        assert m.lpips(y_hat, y) == pytest.approx(spec["values"]["lpips_per_sample"][i], abs=1e-5), i
        assert m.identity(y_hat, y) == pytest.approx(spec["id_logs"][i]["diff_target"], abs=1e-5), i
