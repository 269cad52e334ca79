"""Issue 32: PTI's W pivot (`--pivot w`, the projector as PTI runs it) and its locality regularizer
(`--locality`), at library level on a tiny generator with an L2 distance standing in for LPIPS
(the loss network is passed in), and through `e4e invert` on the synthetic church 256 checkpoint."""
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_e4e, tiny_generator


def l2_distance(x, y):  # [N,3,H,W] x2 -> [N], the place LPIPS takes in the loops
    return ((x - y) ** 2).mean(dim=(1, 2, 3))


def test_projection_learning_rate_follows_the_reference_schedule():
    """The projector's schedule: 0 at the first step, a cosine warm-up over 5% of the steps to
    0.01 (not PTI's first_inv_lr 5e-3, which the first step overwrites), a cosine ramp-down over
    the last 25%."""
    from e4e_cli.projection import projection_lr

    assert projection_lr(0, 400) == 0.0
    assert math.isclose(projection_lr(10, 400), 0.005, rel_tol=1e-9)  # half-way up the warm-up
    assert all(math.isclose(projection_lr(s, 400), 0.01) for s in (20, 100, 200, 300))
    assert math.isclose(projection_lr(350, 400), 0.005, rel_tol=1e-9)  # half-way down
    assert projection_lr(399, 400) < 1e-4


def test_noise_regularization_sums_shifted_products_over_the_pyramid():
    from e4e_cli.projection import noise_regularization

    ones = torch.ones(1, 1, 16, 16)  # every product's mean is 1: two terms per level, levels 16 and 8
    assert float(noise_regularization([ones])) == pytest.approx(4.0)
    assert float(noise_regularization([ones, torch.ones(1, 1, 4, 4)])) == pytest.approx(6.0)
    g = torch.Generator().manual_seed(0)
    white = torch.randn(1, 1, 64, 64, generator=g)
    assert float(noise_regularization([white])) < 1e-2  # uncorrelated noise is barely penalised


def test_projection_finds_the_w_of_a_generated_image():
    """The target is the decode of a known w: the projection returns one w for every layer, the
    distance falls, the code ends nearer the known w than the mean it started from, and the
    caller's generator keeps its fixed noise."""
    from e4e_cli.projection import project_w

    gen = tiny_generator(size=16, noise=0.0)
    noise_before = [b.clone() for b in gen.fixed_noise()]
    torch.manual_seed(3)
    with torch.no_grad():
        w_true = gen.mapping(torch.randn(1, gen.style_dim))
        target = gen.synthesize(w_true[:, None].expand(1, gen.n_styles, -1))
        w_mean = gen.mapping(torch.from_numpy(np.random.RandomState(123).randn(600, gen.style_dim)).float()).mean(0)
    code, log = project_w(gen, target, l2_distance, steps=30, seed=1)
    assert code.shape == (1, gen.n_styles, gen.style_dim)
    assert torch.equal(code, code[:, :1].expand_as(code))  # a W code
    assert log.losses[-1][0] < 0.5 * log.losses[0][0]
    assert (code[0, 0] - w_true[0]).norm() < (w_mean - w_true[0]).norm()
    assert all(torch.equal(a, b) for a, b in zip(gen.fixed_noise(), noise_before))
    again, _ = project_w(gen, target, l2_distance, steps=30, seed=1)
    assert torch.equal(code, again)  # seeded: a projection can be repeated


def test_locality_codes_lie_thirty_units_from_the_pivot_towards_truncated_w():
    from e4e_cli.pti import LocalityBall

    gen = tiny_generator(size=16)
    torch.manual_seed(0)
    pivot = torch.randn(1, gen.n_styles, gen.style_dim)
    w_avg = torch.randn(gen.style_dim)
    ball = LocalityBall(gen, pivot, w_avg, l2_distance, seed=5)
    code = ball.code()
    assert float((code - pivot).norm()) == pytest.approx(30.0, rel=1e-5)
    z = torch.randn(1, gen.style_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        w = w_avg + 0.5 * (gen.mapping(z)[0] - w_avg)
    towards = (w[None, None].expand_as(pivot) - pivot)
    assert torch.allclose(code, pivot + 30 * towards / towards.norm(), atol=1e-5)
    assert float(ball.loss(gen).detach()) == 0.0  # an untuned generator is its own original


def _tune(gen, base, code, target, *, locality: bool):
    from e4e_cli.pti import PTISettings, tune_generator

    settings = PTISettings(steps=25, lr=3e-3, lpips_stop=0.0, locality=locality, seed=2)
    return tune_generator(gen, code, target, l2_distance, settings=settings, base=base,
                          w_avg=torch.zeros(base.style_dim))


def test_locality_keeps_the_generator_unchanged_away_from_the_photo():
    """The same tuning with and without the regularizer: both fit the photo, and the regularized
    generator's decodes of far codes (the regularizer's own samples) moved less."""
    from e4e_cli.pti import LocalityBall

    base = tiny_generator(size=8)
    torch.manual_seed(1)
    code = base.mapping(torch.randn(1, base.style_dim)).detach()[:, None].expand(1, base.n_styles, -1).clone()
    target = torch.rand(1, 3, 8, 8) * 2 - 1
    free, held = copy.deepcopy(base), copy.deepcopy(base)
    log_free = _tune(free, base, code, target, locality=False)
    log_held = _tune(held, base, code, target, locality=True)
    assert log_free.losses[-1][0] < log_free.losses[0][0] and log_held.losses[-1][0] < log_held.losses[0][0]
    probe = LocalityBall(base, code, torch.zeros(base.style_dim), l2_distance, seed=99)
    far = torch.cat([probe.code() for _ in range(8)])
    zeros = [torch.zeros_like(b) for b in base.fixed_noise()]
    with torch.no_grad():
        moved = {name: float((g.synthesize(far, noise=zeros) - base.synthesize(far, noise=zeros)).abs().mean())
                 for name, g in (("free", free), ("held", held))}
    assert moved["held"] < 0.8 * moved["free"], moved


def test_locality_needs_the_original_generator():
    from e4e_cli.pti import PTISettings, tune_generator

    gen = tiny_generator(size=16)
    with pytest.raises(ValueError, match="original generator"):
        tune_generator(gen, torch.zeros(1, gen.n_styles, gen.style_dim), torch.zeros(1, 3, 16, 16), l2_distance,
                       settings=PTISettings(steps=1, locality=True))


# ---------------------------------------------------------------------------------------------
# the command line


def test_pivot_options_need_refine_pti_and_sane_values(tmp_path):
    from PIL import Image

    from e4e_cli.cli.options import check_pti
    from e4e_cli.errors import E4EError

    photo = tmp_path / "p.png"
    Image.new("RGB", (64, 64), (90, 120, 150)).save(photo)
    out = tmp_path / "o"
    assert_one_line_error(run_e4e("invert", photo, "--locality", "--out", out), "need --refine pti", code=2)
    assert_one_line_error(run_e4e("invert", photo, "--refine", "pti", "--pivot-steps", "3", "--out", out),
                          "needs --pivot w", code=2)
    assert not out.exists()
    for args, needle in (((None, None, None, None, "w"), "need --refine pti"),
                         (("pti", None, None, None, "z"), "--pivot must be one of e4e, w"),
                         (("pti", None, None, None, "w", False, 0), "--pivot-steps must be"),
                         (("pti", None, None, None, None, False, None, 100), "--pti-resolution must be a power of two"),
                         ((None, None, None, None, None, False, None, 64), "need --refine pti")):
        with pytest.raises(E4EError, match=needle) as err:
            check_pti(*args)
        assert err.value.exit_code == 2
    s = check_pti("pti", None, None, None, "w", True, 7, 64)
    assert (s.pivot, s.pivot_steps, s.locality, s.resolution) == ("w", 7, True, 64)
    assert s.record()["resolution"] == 64 and "resolution" not in check_pti("pti", None, None, None).record()


@pytest.mark.slow
def test_invert_with_a_w_pivot_and_locality(church, parity_dir, tmp_path, lpips_dir):
    """`e4e invert --refine pti --pivot w --locality`: latent.npy is a W code (one row repeated),
    not the e4e code; the record names the pivot, its steps and the regularizer."""
    photo = Path(parity_dir) / "images" / "church_img.jpg"
    proc = run_e4e("invert", photo, "--refine", "pti", "--pivot", "w", "--pivot-steps", "1", "--pti-steps", "1",
                   "--locality", "--checkpoint", church, "--weights-dir", lpips_dir, "--device", "cpu",
                   "--precision", "fp32", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    d = tmp_path / "o" / "church_img"
    code = np.load(d / "latent.npy")
    assert code.shape == (14, 512) and np.array_equal(code, np.broadcast_to(code[:1], code.shape))
    rec = json.loads((d / "meta.json").read_text())["refine"]
    assert rec["pivot"] == "w" and rec["pivot_steps"] == 1 and rec["locality"] is True and rec["steps_run"] == 1
    assert rec["locality_alpha"] == 30.0


def test_bf16_tuning_follows_fp32():
    """`--precision bf16` (what `auto` picks on a CPU with native bf16) tunes with bfloat16
    convolutions under float32 parameters and Adam: the same losses within bf16's precision, and
    the parameters stay float32."""
    from e4e_cli.pti import PTISettings, tune_generator

    base = tiny_generator(size=16)
    torch.manual_seed(4)
    code = torch.randn(1, base.n_styles, base.style_dim)
    target = torch.rand(1, 3, 16, 16) * 2 - 1
    logs = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        gen = copy.deepcopy(base)
        logs[name] = tune_generator(gen, code, target, l2_distance, settings=PTISettings(steps=4, lr=1e-3, lpips_stop=0.0),
                                    dtype=dtype, impl="fast")
        assert all(p.dtype == torch.float32 for p in gen.parameters())
    a, b = np.array(logs["fp32"].losses), np.array(logs["bf16"].losses)
    assert np.allclose(a, b, rtol=3e-2, atol=1e-3), (a, b)
    assert not np.array_equal(a, b)  # the convolutions did run in bfloat16


def test_lower_resolution_tuning_moves_only_the_blocks_up_to_it():
    """The faster variant (`--pti-resolution`): the skip image at 8 px of a 16 px generator against
    the photo box-averaged to 8 px. Its loss falls, the blocks above 8 px keep their weights (the
    stored difference holds none of them), the blocks up to it move."""
    from e4e_cli.pti import PTISettings, difference, tune_generator

    base = tiny_generator(size=16)
    torch.manual_seed(6)
    code = torch.randn(1, base.n_styles, base.style_dim)
    target = torch.rand(1, 3, 16, 16) * 2 - 1
    gen = copy.deepcopy(base)
    log = tune_generator(gen, code, target, l2_distance, settings=PTISettings(steps=6, lr=3e-3, lpips_stop=0.0,
                                                                              resolution=8))
    assert log.losses[-1][0] < log.losses[0][0]
    low = torch.nn.functional.interpolate(target, size=(8, 8), mode="area")
    with torch.no_grad():
        first = base.synthesize(code, stop_at=8)
    assert log.losses[0][0] == pytest.approx(float(((first - low) ** 2).mean()), rel=1e-5)  # compared at 8 px
    moved = set(difference(gen, base))
    top = {k for k in moved if k.startswith(("convs.2.", "convs.3.", "to_rgbs.1."))}  # the 16 px block
    assert not top and any(k.startswith("convs.0.") for k in moved) and "conv1.conv.weight" in moved


def test_pti_resolution_larger_than_the_generator_is_refused(church, lpips_dir, tmp_path):
    from PIL import Image

    photo = tmp_path / "p.png"
    Image.new("RGB", (64, 64), (90, 120, 150)).save(photo)
    proc = run_e4e("invert", photo, "--refine", "pti", "--pti-resolution", "512", "--checkpoint", church,
                   "--weights-dir", lpips_dir, "--device", "cpu", "--out", tmp_path / "o")
    assert_one_line_error(proc, "--pti-resolution 512 is larger than the generator (256 px)", code=2)
    assert not (tmp_path / "o").exists()


def test_partial_rows_is_the_cars_crop_and_none_for_square_domains():
    """The rows a tuning compares: the cars crop (64..448 of 512) and None where all rows are kept."""
    from e4e_cli.domains import partial_rows

    assert partial_rows("cars", 512) == (64, 448)
    assert partial_rows("church", 256) is None and partial_rows("ffhq", 1024) is None
