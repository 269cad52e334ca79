"""HyperStyle refinement (e4e_cli/refine.py) against the reference implementation's outputs for
synthetic checkpoints in the released layouts (../shared/parity/hyperstyle: SPEC.md, cases/).

Each case: the W code, the pooled reconstruction after every step, the accumulated offsets of
two layers in full, the final image (uint8, truncated as the reference's tensor2im) and one edit
decoded with the final offsets. The fast path runs both cases, the reference path the 512 one.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import PARITY, hyperstyle_checkpoints
from e4e_cli import editing
from e4e_cli.refine import HyperStyle

ROOT_OF_SHARED = PARITY.parent.parent  # case files name inputs relative to the folder holding shared/


def rel_l2(a, b) -> float:
    a = torch.as_tensor(a).double()
    b = torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm())


def tensor2im(image: torch.Tensor) -> np.ndarray:
    """The reference's conversion: clip((x+1)/2, 0, 1) * 255, truncated."""
    x = ((image.float() + 1) / 2).clamp(0, 1) * 255
    return x.to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def cases(parity_dir):
    out = {}
    for name in ("ffhq_1024_s1", "cars_512_s2"):
        spec = json.loads((parity_dir / "hyperstyle" / "cases" / f"{name}.json").read_text())
        out[name] = (spec, np.load(parity_dir / "hyperstyle" / "cases" / f"{name}.npz"))
    return out


@pytest.mark.parametrize("name,impl", [("ffhq_1024_s1", "fast"), ("cars_512_s2", "fast"), ("cars_512_s2", "ref")])
def test_refinement_matches_the_reference(cases, name, impl):
    spec, data = cases[name]
    tol = spec["tolerances"]
    hs_path, we_path = hyperstyle_checkpoints(name)
    hs = HyperStyle.from_files(hs_path, we_path, device="cpu", precision="fp32", impl=impl)
    assert hs.layers == tuple(int(i) for i in data["tuned_layers"])
    x = torch.from_numpy(data["input"])
    r = hs.refine(x, steps=spec["n_iters"], keep_steps=True)

    assert float((r.codes - torch.from_numpy(data["codes"])).abs().max()) <= tol["codes_max_abs"]
    assert len(r.steps) == spec["n_iters"] + 1
    for k, y in enumerate(r.steps):
        assert rel_l2(y, data[f"y_hat/{k}"]) <= tol["y_hat_rel_l2"], k
    for i in spec["delta_layers"]:
        want = torch.from_numpy(data[f"delta/{i}"])
        assert float((r.offsets[i].expand(want.shape) - want).abs().max()) <= tol["delta_full_max_abs"], i
    j, rows = spec["shared_delta_layer"], spec["shared_delta_rows"]
    got = r.offsets[j][:, :rows]
    assert float((got - torch.from_numpy(data[f"delta/{j}/rows0_16"])).abs().max()) <= tol["delta_full_max_abs"]
    norms = data["delta_norms"][-1]
    for i, n in enumerate(norms):
        if n < 0:
            assert i not in r.offsets
            continue
        full = r.offsets[i].expand(-1, -1, -1, *hs.decoder.generator.layers()[i][0].weight.shape[-2:])
        assert abs(float(full.double().norm()) - n) <= tol["delta_norms_rel"] * n, i

    img = tensor2im(r.image[0])
    assert img.shape == data["image_uint8"].shape
    diff = np.abs(img.astype(int) - data["image_uint8"].astype(int))
    assert diff.max() <= tol["image_uint8_max_abs"]
    assert (diff > 0).mean() <= tol["image_uint8_frac_differing"]

    for e in spec["edits"]:  # the edit changes the code; the final offsets stay
        if e["kind"] == "interfacegan":
            direction = editing.load_direction(ROOT_OF_SHARED / e["file"], n_styles=hs.n_styles)
            edited = editing.interfacegan(r.codes, direction, e["factor"])
        else:
            pca = editing.load_pca(ROOT_OF_SHARED / e["file"])
            edited = editing.ganspace(r.codes, pca, e["pca_idx"], e["start"], e["end"], e["strength"])
        assert float((edited - torch.from_numpy(data[f"edit/{e['name']}/codes"])).abs().max()) <= tol["codes_max_abs"]
        y = hs.pool(hs.decode(edited, offsets=r.offsets_of(0)))
        assert rel_l2(y, data[f"edit/{e['name']}/y_hat"]) <= tol["edit_y_hat_rel_l2"], e["name"]
