"""The reference implementation's numbers, reproduced on the CPU (SPEC.md "Fixtures")."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from e4e_cli import editing
from e4e_cli.model import E4E, pool256

pytestmark = pytest.mark.slow

CASE_NAMES = ["church_256_s3", "cars_512_s2", "ffhq_1024_s1"]


def rel_l2(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", params=CASE_NAMES)
def case(request, parity_dir, case_checkpoint):
    name = request.param
    spec = json.loads((parity_dir / "cases" / f"{name}.json").read_text())
    data = np.load(parity_dir / "cases" / f"{name}.npz")
    model = E4E.from_checkpoint(case_checkpoint(name), device="cpu")
    return name, spec, data, model


@pytest.mark.parametrize("impl", ["ref", "fast"])
def test_codes_and_images(case, impl, parity_dir):
    name, spec, data, model = case
    model.impl = impl
    if spec.get("align"):
        x = torch.from_numpy(data["input"])  # alignment is covered by test_alignment
    else:
        x = model.preprocess(Image.open(parity_dir / spec["image"]))
        assert torch.equal(x, torch.from_numpy(data["input"])), "preprocessing differs from the reference"
    codes = model.encode(x)
    assert codes.shape == data["codes"].shape
    assert float((codes - torch.from_numpy(data["codes"])).abs().max()) <= 1e-4
    image = model.decode(torch.from_numpy(data["codes"]))
    assert image.shape == data["image"].shape
    assert rel_l2(image, data["image"]) <= 1e-3
    assert rel_l2(pool256(image), data["image_pool256"]) <= 1e-4


def test_aligned_input_matches_preprocessing(case):
    name, spec, data, model = case
    if "aligned" not in data.files:
        pytest.skip("case is not aligned")
    x = model.preprocess(Image.fromarray(data["aligned"]))
    assert torch.equal(x, torch.from_numpy(data["input"]))


def test_edits(case, parity_dir):
    name, spec, data, model = case
    codes = torch.from_numpy(data["codes"])
    if not spec.get("edits"):
        pytest.skip("case has no edits")
    for e in spec["edits"]:
        if e["kind"] == "interfacegan":
            direction = editing.load_direction(parity_dir / e["file"], n_styles=model.n_styles)
            edited = editing.interfacegan(codes, direction, e["factor"])
        else:
            pca = editing.load_pca(parity_dir / e["file"])
            edited = editing.ganspace(codes, pca, e["pca_idx"], e["start"], e["end"], e["strength"])
        ref = data[f"edit/{e['name']}/codes"]
        assert float((edited - torch.from_numpy(ref)).abs().max()) <= 1e-4, e["name"]
        image = model.decode(edited)
        assert rel_l2(pool256(image), data[f"edit/{e['name']}/image_pool256"]) <= 1e-4, e["name"]
