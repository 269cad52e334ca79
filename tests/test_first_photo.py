"""A fast first photo (issue 25): loading builds the networks without random values and without
torch's compiler, and `e4e invert` aligns its first photo while the model loads (jobs/ahead.py)
with the same result. Speed itself lives in bench/bench_first_photo.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from e4e_cli.checkpoint import skeleton
from e4e_cli.errors import E4EError
from e4e_cli.jobs.ahead import AlignAhead, align_input
from e4e_cli.nn.networks import Generator

ROOT = Path(__file__).resolve().parents[1]


def test_loading_a_checkpoint_imports_no_compiler(case_checkpoint):
    """torch._dynamo (about a second to import) stays out of a process that loads a model: the
    meta device's Python kernels imported it while the networks were built."""
    code = ("import sys; from e4e_cli.model import E4E; "
            f"m = E4E.from_checkpoint({str(case_checkpoint('church_256_s3'))!r}, device='cpu'); "
            "print('torch._dynamo' in sys.modules, {p.device.type for p in m.generator.parameters()})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "{'cpu'}"]


def test_skeleton_draws_no_random_numbers():
    """Building under `skeleton()` leaves the random stream where it was (no weights drawn), and
    what is computed from constants (the blur kernels) is still right."""
    torch.manual_seed(0)
    expected = torch.randn(4)
    torch.manual_seed(0)
    with skeleton():
        g = Generator(32, style_dim=16, n_mlp=2, channels={4: 8, 8: 8, 16: 8, 32: 8})
    assert torch.equal(torch.randn(4), expected)
    ref = Generator(32, style_dim=16, n_mlp=2, channels={4: 8, 8: 8, 16: 8, 32: 8})
    kernels = {k: v for k, v in g.state_dict().items() if k.endswith("kernel")}
    assert kernels and all(torch.equal(v, ref.state_dict()[k]) for k, v in kernels.items())


@pytest.fixture
def face_photo(parity_dir) -> Path:
    return parity_dir / "images" / "input_img.jpg"


def test_align_ahead_takes_the_first_photo_not_done_yet(tmp_path, face_photo):
    """A photo whose outputs are finished is skipped by invert, so the one after it is aligned
    ahead; the result is what aligning it then would give, handed over once."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (inputs / name).write_bytes(face_photo.read_bytes())
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    for name in ("latent.npy", "inversion.png", "meta.json"):
        (out / "a" / name).write_bytes(b"x")
    ahead = AlignAhead([inputs], out=out, face="largest", overwrite=False)
    assert ahead.path == inputs / "b.jpg"
    assert ahead.take(inputs / "a.jpg") is None
    got = ahead.take(inputs / "b.jpg")
    again = align_input(inputs / "b.jpg", "largest")
    assert np.array_equal(np.asarray(got["image"]), np.asarray(again["image"]))
    assert got["alignment"] == again["alignment"] and got["n_faces"] == again["n_faces"]
    assert ahead.take(inputs / "b.jpg") is None
    assert AlignAhead([inputs], out=out, face="largest", overwrite=True).path == inputs / "a.jpg"


def test_align_ahead_hands_its_error_to_the_photo(tmp_path):
    """A photo without a face fails when invert reaches it, with alignment's own message."""
    noise = tmp_path / "noise.png"
    Image.fromarray((np.random.RandomState(0).rand(96, 96, 3) * 255).astype("uint8")).save(noise)
    ahead = AlignAhead([noise], out=tmp_path / "out", face="largest", overwrite=False)
    with pytest.raises(E4EError, match="no face"):
        ahead.take(noise)
    assert AlignAhead([tmp_path / "missing.jpg"], out=tmp_path / "out", face="largest", overwrite=False).path is None


def test_sefa_directions_are_kept_until_the_weights_change(monkeypatch):
    """`e4e ui` asks for several SeFa components as it starts: the eigenvectors are computed once
    per generator, handed out as copies, and computed anew once a modulation weight changes."""
    from e4e_cli import editing

    solved = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda m: solved.append(m.shape) or eigh(m))
    torch.manual_seed(0)
    g = Generator(32, style_dim=16, n_mlp=2, channels={4: 8, 8: 8, 16: 8, 32: 8})
    first, _ = editing.sefa_directions(g, range(g.n_styles))
    for k in range(4):  # the ui's five sliders of one matrix: solved once
        editing.sefa(torch.zeros(1, g.n_styles, 16), g, k, range(g.n_styles), 1.0)
    assert len(solved) == 1, solved
    assert g in editing._SEFA
    first_copy = first.clone()
    first.zero_()  # a caller's change to its copy does not reach the next caller
    assert torch.equal(editing.sefa_directions(g, range(g.n_styles))[0], first_copy)
    conv = next(iter(g.layers()))[0]
    with torch.no_grad():
        conv.modulation.weight.add_(torch.randn_like(conv.modulation.weight))
    changed, _ = editing.sefa_directions(g, range(g.n_styles))
    assert len(solved) == 2  # the changed weight: solved anew, once
    editing._SEFA.clear()
    assert torch.equal(changed, editing.sefa_directions(g, range(g.n_styles))[0])
    assert not torch.allclose(changed.abs(), first_copy.abs(), atol=1e-3)
