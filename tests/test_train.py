"""`e4e train` (issue 14), at tiny scale on the CPU: the recipe's pieces against hand-computed
values, learning, progressive stages, checkpoints in the released layout, exact resume, bad input."""
from __future__ import annotations

import json
import math
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from e4e_cli.nn.networks import Generator
from e4e_cli.train import checkpoints
from e4e_cli.train.coach import Trainer, delta_mask, progressive_stage, run
from e4e_cli.train.discriminator import CodePool, LatentDiscriminator, d_loss, delta_penalty, g_adv_loss, r1_penalty
from e4e_cli.train.generators import load_generator, save_rosinality_checkpoint
from e4e_cli.train.options import TrainOptions
from e4e_cli.train.ranger import Ranger

import conftest
from conftest import HOOKS, RunsCode, assert_one_line_error, run_e4e

TINY = dict(input_size=64, loss_size=64, encoder_widths=(16, 16, 32, 32), encoder_units=(1, 1, 1, 1),
            lpips_lambda=0.0, id_lambda=0.0, dataset_type="church_encode", image_every=0, save_every=0,
            log_every=10, val_fraction=0.25, device="cpu", irse50_init=False)


def tiny_generator(seed: int = 0) -> Generator:
    """A narrow 64 px StyleGAN2 generator with 32-d styles and no noise, for training."""
    return conftest.tiny_generator(64, seed=seed, style_dim=32, channels={4: 32, 8: 32, 16: 16, 32: 16, 64: 8}, noise=0.0)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A generator file and 48 images it generated (from truncated W codes)."""
    root = tmp_path_factory.mktemp("tiny")
    g = tiny_generator()
    with torch.no_grad():
        avg = g.mean_latent(2000)
        save_rosinality_checkpoint(root / "g.pt", generator=g, latent_avg=avg)
        z = torch.randn(48, 32, generator=torch.Generator().manual_seed(1))
        w = avg + 0.7 * (g.mapping(z) - avg)
        imgs = g.synthesize(w[:, None].repeat(1, g.n_styles, 1))
    (root / "img").mkdir()
    for i, im in enumerate(imgs):
        a = ((im.clamp(-1, 1) + 1) / 2 * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(a).save(root / "img" / f"{i:03d}.png")
    return root


def tiny_opts(root: Path, out: Path, **kw) -> TrainOptions:
    return TrainOptions(**{"images": str(root / "img"), "generator": str(root / "g.pt"), "out": str(out), **TINY, **kw})


# ---- the recipe's pieces, by hand ----------------------------------------------------------


def test_delta_penalty_by_hand():
    codes = torch.tensor([[[1.0, 0.0], [4.0, 4.0], [1.0, 2.0], [9.0, 9.0]],
                          [[0.0, 0.0], [0.0, 3.0], [4.0, 0.0], [9.0, 9.0]]])  # [2 images, 4 layers, 2]
    # stage 2: layers 1 and 2; per layer the batch mean of ||w_i - w_0||_2
    want = ((5.0 + 3.0) / 2) + ((2.0 + 4.0) / 2)
    assert float(delta_penalty(codes, 2)) == pytest.approx(want)
    assert float(delta_penalty(codes, 0)) == 0.0
    assert float(delta_penalty(codes, 1, p=1)) == pytest.approx(((3 + 4) + 3) / 2)


def test_discriminator_losses_and_r1_by_hand():
    real, fake = torch.tensor([[0.5], [-1.0]]), torch.tensor([[2.0], [0.0]])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    assert float(d_loss(real, fake)) == pytest.approx((sp(-0.5) + sp(1.0)) / 2 + (sp(2.0) + sp(0.0)) / 2)
    assert float(g_adv_loss(fake)) == pytest.approx((sp(-2.0) + sp(0.0)) / 2)
    disc = LatentDiscriminator(4, hidden=4, layers=0)  # D(w) = a.w + b: dD/dw = a everywhere
    with torch.no_grad():
        disc.net[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0]]))
    w = torch.randn(5, 4, requires_grad=True)
    assert float(r1_penalty(disc, w).detach()) == pytest.approx(1 + 4 + 0.25 + 9)
    full = LatentDiscriminator(512)
    assert [type(m).__name__ for m in full.net] == ["Linear", "LeakyReLU"] * 3 + ["Linear"]
    assert full.net[1].negative_slope == 0.2 and full(torch.zeros(3, 512)).shape == (3, 1)


def test_code_pool_by_hand():
    pool = CodePool(3, random.Random(5))
    first = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(pool.query(first), first)  # not full yet: stored and passed through
    twin = random.Random(5)  # the pool's draws, replayed
    new = torch.tensor([[10.0, 10.0], [20.0, 20.0]])
    stored = [r.clone() for r in first]
    want = []
    for row in new:
        if twin.random() > 0.5:
            j = twin.randrange(3)
            want.append(stored[j].clone())
            stored[j] = row.clone()
        else:
            want.append(row)
    assert torch.equal(pool.query(new), torch.stack(want))
    assert torch.equal(torch.cat(pool.codes), torch.stack(stored))
    sd = pool.state_dict()
    again = CodePool(3)
    again.load_state_dict(sd)
    assert torch.equal(again.query(new), pool.query(new))  # same contents and random state
    assert torch.equal(CodePool(0).query(new), new)


def test_code_pool_keeps_one_code_per_image():
    """Given each image's active codes [N,L,D], the pool keeps one per image: a random layer's
    (its draw comes before the pool's own), or w0 (layer 0) when the pool is off."""
    codes = torch.arange(24.0).reshape(2, 3, 4)  # 2 images, 3 active layers
    assert torch.equal(CodePool(0).query(codes), codes[:, 0])
    pool, twin = CodePool(2, random.Random(7)), random.Random(7)
    want = [codes[i, twin.randrange(3)] for i in range(2)]  # not full yet: passed through
    assert torch.equal(pool.query(codes), torch.stack(want))
    pick = [twin.randrange(3)]
    if twin.random() > 0.5:
        j = twin.randrange(2)
        want = want[j]
    else:
        want = codes[0, pick[0]]
    assert torch.equal(pool.query(codes[:1]), want[None])


def test_ranger_matches_its_update_rules_by_hand():
    """Seven steps on f(x) = x^2 / 2 (gradient x), against the three methods' formulas:
    RAdam's un-rectified steps while rho_t <= 5, rectified after, Lookahead at step 6."""
    lr, b1, b2, eps, alpha, k = 0.1, 0.95, 0.999, 1e-5, 0.5, 6
    p = torch.nn.Parameter(torch.tensor([2.0]))
    opt = Ranger([p], lr=lr)
    x, slow, m, v = 2.0, 2.0, 0.0, 0.0
    rho_inf = 2 / (1 - b2) - 1
    for t in range(1, 8):
        p.grad = p.detach().clone()
        opt.step()
        g = x
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho > 5:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            x = x - lr * r * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (math.sqrt(v) + eps)
        else:
            x = x - lr / (1 - b1**t) * m
        if t % k == 0:
            slow = slow + alpha * (x - slow)
            x = slow
        assert float(p) == pytest.approx(x, rel=1e-5), t
    # gradient centralisation: a matrix's gradient loses its mean over the input dimension
    w = torch.nn.Parameter(torch.zeros(2, 3))
    opt = Ranger([w], lr=0.1)
    w.grad = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    opt.step()
    assert float(w[1].abs().max()) == 0.0 and float(w[0, 1]) == 0.0 and float(w[0, 0]) > 0 > float(w[0, 2])


def test_progressive_stages():
    stages = [progressive_stage(s, start=20000, every=2000, n_styles=18) for s in (0, 19999, 20000, 21999, 22000, 99999999)]
    assert stages == [0, 0, 1, 1, 2, 17]
    assert delta_mask(2, 5).tolist() == [1.0, 1.0, 0.0, 0.0]


def test_codes_follow_the_stage(tiny_setup, tmp_path):
    """Before progressive-start every layer's code equals w0 (+ latent_avg); at stage k exactly
    deltas 1..k are non-zero."""
    tr = Trainer(tiny_opts(tiny_setup, tmp_path / "run", w_discriminator_lambda=0.0), log=lambda m: None)
    x = tr.batches.batch(0)
    with torch.no_grad():
        for stage in (0, 1, 3, tr.n_styles - 1):
            codes = tr.codes(x, stage)
            deltas = (codes - codes[:, :1]).abs().amax(dim=(0, 2))  # per layer
            assert deltas[0] == 0
            assert bool((deltas[1 : stage + 1] > 0).all()), (stage, deltas)
            assert bool((deltas[stage + 1 :] == 0).all()), (stage, deltas)
    tr.close()


# ---- the recipe as the reference runs it (issue 21) ---------------------------------------------


def _trainer(tiny_setup, tmp_path, **kw):
    logs: list = []
    tr = Trainer(tiny_opts(tiny_setup, tmp_path / "run", **kw), log=logs.append)
    return tr, logs


def test_inactive_deltas_get_no_gradient_and_no_optimizer_state(tiny_setup, tmp_path):
    """A delta above the current stage is not computed: its head has no gradient and Ranger
    keeps no state for it, so its step count starts (with RAdam's warm-up) when it switches on,
    as in the reference; the FPN's lateral layer joins with delta 3 (the first middle one)."""
    tr, _ = _trainer(tiny_setup, tmp_path, batch_size=2, progressive_start=2, progressive_step_every=2, d_reg_every=100)
    heads = tr.encoder.styles
    for done in range(1, 9):
        tr.train_step()
        for i in range(1, tr.n_styles):
            active = sum(tr.stage(t) >= i for t in range(done))  # steps at which head i ran
            for p in heads[i].parameters():
                st = tr.opt_e.state.get(p, {})
                assert st.get("step", 0) == active, (done, i, st.get("step"))
                assert (p.grad is None) == (tr.stage(done - 1) < i), (done, i)
        lat = sum(tr.stage(t) >= 3 for t in range(done))
        assert tr.opt_e.state.get(tr.encoder.latlayer1.weight, {}).get("step", 0) == lat, done
    assert tr.opt_e.state[heads[0].linear.weight]["step"] == 8  # w0's head trains from the start
    tr.close()


def test_training_renders_with_fresh_noise_per_image(tiny_setup, tmp_path):
    """The reference renders training images with fresh noise (randomize_noise): per image, per
    layer and per step, not the generator's fixed buffers; seeded per image of the global batch
    (a process with rows 2:4 draws what one process draws for them). Held-out numbers keep the
    fixed noise."""
    tr, _ = _trainer(tiny_setup, tmp_path, batch_size=4, w_discriminator_lambda=0.0)
    seen = []
    synth = tr.G.synthesize

    def spy(codes, **kw):
        seen.append(kw.get("noise"))
        return synth(codes, **kw)

    tr.G.synthesize = spy
    tr.train_step()
    tr.train_step()
    first, second = seen
    fixed = tr.G.fixed_noise()
    assert first is not None and len(first) == len(fixed)
    for a, b, f in zip(first, second, fixed):
        assert a.shape == (4, 1, *f.shape[-2:])
        assert not torch.equal(a[0], a[1]) and not torch.equal(a, b) and not torch.equal(a[0], f[0])
    part = tr.train_noise(0, slice(2, 4))
    assert all(torch.equal(p, a[2:4]) for p, a in zip(part, first))
    seen.clear()
    tr.validate()
    assert seen and all(n is None for n in seen)
    tr.close()


def test_r1_steps_keep_the_output_bias_moving_by_momentum(tiny_setup, tmp_path):
    """On an R1 step the reference keeps D's output bias in the graph with a zero gradient, so
    Adam still takes a step for it (by its momentum): after a step with R1 every parameter,
    that bias included, has taken 2 Adam steps and the bias has moved in the second."""
    tr, _ = _trainer(tiny_setup, tmp_path, batch_size=2, d_reg_every=1)
    bias = tr.disc.net[-1].bias
    moves = []
    step = tr.opt_d.step

    def spy(*a, **kw):
        before, grad = bias.detach().clone(), bias.grad
        out = step(*a, **kw)
        moves.append((None if grad is None else float(grad.abs().max()), float((bias.detach() - before).abs().max())))
        return out

    tr.opt_d.step = spy
    tr.train_step()
    (_, first), (r1_grad, second) = moves  # the loss step, then the R1 step
    assert first > 0 and r1_grad == 0.0 and second > 0, moves
    assert {tr.opt_d.state[p]["step"].item() for p in tr.disc.parameters()} == {2.0}
    tr.close()


@pytest.mark.parametrize("pool", [50, 0])
def test_discriminator_gets_one_fake_code_per_image(tiny_setup, tmp_path, pool):
    """The reference's fakes: one code per image, a random one of its active codes through the
    pool (w0 + latent_avg alone with the pool off), not all N x (k+1) active codes."""
    tr, _ = _trainer(tiny_setup, tmp_path, batch_size=4, w_pool_size=pool, progressive_start=0,
                     progressive_step_every=1)
    tr.step = 3  # stage 3: four active codes per image
    inputs = []
    forward = tr.disc.forward
    tr.disc.forward = lambda w: inputs.append(w.detach().clone()) or forward(w)
    x = tr.batches.batch(3)
    tr._disc_step(x, tr.stage(3), 3)
    real, fake = inputs[:2]
    assert real.shape == fake.shape == (4, tr.style_dim)
    with torch.no_grad():
        codes = tr.codes(x, 3)
    for i in range(4):
        dist = (codes[i, :4] - fake[i]).abs().amax(dim=1)
        if pool:
            assert float(dist.min()) <= 1e-6, (i, dist)
        else:
            assert float(dist[0]) <= 1e-6, (i, dist)
    tr.close()


def test_lpips_is_the_batch_mean(tiny_setup, tmp_path, monkeypatch):
    """The reference's LPIPS criterion returns the batch mean (weight 0.8 against L2's mean), not
    the sum (which at batch 4 weighs it 3.2). LPIPS with random weights: only the weighting is
    under test here (tests/test_lossnets.py checks the values)."""
    from e4e_cli.train.lossnets import LPIPS

    torch.manual_seed(0)
    net = LPIPS()
    seen = []

    def spy(a, b):
        out = LPIPS.forward(net, a, b)
        seen.append(out.detach())
        return out

    monkeypatch.setattr(Trainer, "_lpips", lambda self: spy)
    tr, _ = _trainer(tiny_setup, tmp_path, batch_size=4, lpips_lambda=0.8, w_discriminator_lambda=0.0,
                     delta_norm_lambda=0.0)
    logs = tr.train_step()
    (per,) = seen
    assert per.shape == (4,) and float(per.std()) > 0
    assert logs["lpips"] == pytest.approx(float(per.mean()), rel=1e-6)
    assert logs["loss"] == pytest.approx(logs["l2"] + 0.8 * float(per.mean()), rel=1e-5)
    tr.close()


def test_domain_picks_the_identity_loss_and_is_recorded(tiny_setup, tmp_path, lossnet_weights):
    """An explicit domain picks the identity network as the reference does (ArcFace IR-SE50 for
    ffhq, MoCo-v2 otherwise), says so in one line and is recorded in the checkpoint's opts."""
    import warnings

    for dataset_type, kind in (("church_encode", "moco"), ("ffhq_encode", "arcface")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tr, logs = _trainer(tiny_setup, tmp_path / dataset_type, dataset_type=dataset_type, id_lambda=None,
                                weights_dir=str(lossnet_weights), w_discriminator_lambda=0.0)
        assert not [w for w in caught if "--domain" in str(w.message)]  # explicit: no warning even at 64 px
        assert tr.id_loss.kind == kind
        line = [m for m in logs if m.startswith("domain ")]
        name = "MoCo-v2" if kind == "moco" else "ArcFace"
        assert len(line) == 1 and f"({dataset_type}): identity loss {name}" in line[0], logs
        assert tr.checkpoint_payload()["opts"]["dataset_type"] == dataset_type
        tr.close()


def test_no_domain_is_the_face_recipe_with_a_warning_for_other_generators(tiny_setup, tmp_path):
    """Without --domain the face recipe is used and recorded (ffhq_encode), with a warning when
    the generator does not look like a face generator: not 1024 px, or an e4e checkpoint trained
    on another domain."""
    with pytest.warns(UserWarning, match=r"no --domain given: .*face recipe.* 64x64 .*--domain cars\|horse\|church"):
        tr, logs = _trainer(tiny_setup, tmp_path, dataset_type="")
    assert tr.opts.dataset_type == "ffhq_encode" and tr.checkpoint_payload()["opts"]["dataset_type"] == "ffhq_encode"
    assert any(m.startswith("domain ffhq (ffhq_encode): identity loss off") for m in logs), logs
    tr.close()
    g = tiny_generator()
    sd = {f"decoder.{k}": v for k, v in g.state_dict().items()}
    torch.save({"state_dict": sd, "latent_avg": torch.zeros(g.n_styles, 32), "opts": {"dataset_type": "horse_encode"}},
               tmp_path / "e.pt")
    with pytest.warns(UserWarning, match="trained as horse"):
        _trainer(tiny_setup, tmp_path / "e", dataset_type="", generator=str(tmp_path / "e.pt"))[0].close()


def test_cli_domain_options(tiny_setup, tmp_path):
    """--domain church records church_encode (options and checkpoint); --domain and --dataset-type
    must agree; an unknown domain is one line."""
    out = tmp_path / "run"
    proc = _train(tiny_setup / "img", out, "--domain", "church", "--val-every", "0", "--image-every", "0",
                  generator=tiny_setup / "g.pt")
    assert proc.returncode == 0, proc.stderr
    assert "domain church (church_encode): identity loss off" in proc.stderr and "e4e: note:" not in proc.stderr
    assert json.loads((out / "options.json").read_text())["dataset_type"] == "church_encode"
    obj = torch.load(checkpoints.latest(out), map_location="cpu", weights_only=True)
    assert obj["opts"]["dataset_type"] == "church_encode"
    bad = tmp_path / "bad"
    assert_one_line_error(_train(tiny_setup / "img", bad, "--domain", "cars", "--dataset-type", "church_encode",
                                 generator=tiny_setup / "g.pt"), "disagree")
    assert_one_line_error(_train(tiny_setup / "img", bad, "--domain", "cats", generator=tiny_setup / "g.pt"), "--domain")
    assert not bad.exists()


def test_encoder_init_needs_the_irse50_file_or_an_explicit_random(tiny_setup, tmp_path, case_checkpoint):
    """The reference starts the encoder from IR-SE50 and refuses to go on without it: so does
    `e4e train` (one line naming the file, the download and --encoder-init random), and a custom
    architecture (which IR-SE50 cannot start) needs --encoder-init random too."""
    out = tmp_path / "run"
    proc = _train(tiny_setup / "img", out, generator=tiny_setup / "g.pt", init=None)
    assert_one_line_error(proc, "--encoder-init random", "architecture")
    imgs = tmp_path / "img"
    imgs.mkdir()
    for i in range(2):
        Image.new("RGB", (256, 256), (60 * i, 90, 200)).save(imgs / f"{i}.png")
    proc = run_e4e("train", imgs, "--generator", case_checkpoint("church_256_s3"), "--out", out, "--domain", "church",
                   "--lpips-lambda", "0", "--id-lambda", "0", "--weights-dir", tmp_path / "none", "--batch-size", "2",
                   "--device", "cpu")
    assert_one_line_error(proc, "model_ir_se50.pth", "e4e download-weights ir_se50", "--encoder-init random")
    assert not out.exists()


@pytest.mark.slow
def test_resume_without_max_steps_keeps_the_runs_target(tiny_setup, tmp_path):
    """`--resume` without --max-steps runs to the original run's target (not 500000)."""
    out = tmp_path / "run"
    run(tiny_opts(tiny_setup, out, max_steps=4, batch_size=2, val_every=0), log=lambda m: None, progress=False,
        stop_after=2)
    assert checkpoints.latest(out).name == "step_0000002.pt"
    proc = run_e4e("train", "--resume", "--out", out, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "step 2 of 4" in proc.stderr
    assert checkpoints.latest(out).name == "step_0000004.pt"


# ---- learning, checkpoints, resume ---------------------------------------------------------


@pytest.mark.slow
def test_a_few_hundred_steps_halve_the_held_out_error(tiny_setup, tmp_path):
    """The whole recipe (discriminator, delta penalty, progressive stages; LPIPS and identity
    off: their weights cannot be downloaded here), 300 steps of batch 4, lr 2e-3."""
    opts = tiny_opts(tiny_setup, tmp_path / "run", max_steps=300, batch_size=4, lr=2e-3, val_every=300,
                     progressive_start=50, progressive_step_every=10)
    last = run(opts, log=lambda m: None, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val_mse"] for r in rows if "val_mse" in r}
    assert set(val) >= {0, 300}
    assert val[300] <= 0.5 * val[0], val
    assert last["val_mse"] == val[300]
    assert (tmp_path / "run" / "log.csv").read_text().startswith("step,")


def _encoder_params(trainer_or_path):
    obj = torch.load(trainer_or_path, map_location="cpu", weights_only=True)
    return {k: v for k, v in obj["state_dict"].items() if k.startswith("encoder.")}


@pytest.mark.slow
def test_resume_after_an_interrupt_equals_an_uninterrupted_run(tiny_setup, tmp_path):
    kw = dict(max_steps=24, batch_size=4, val_every=0, progressive_start=6, progressive_step_every=4, d_reg_every=4,
              w_pool_size=5, seed=3)
    run(tiny_opts(tiny_setup, tmp_path / "a", **kw), log=lambda m: None, progress=False)
    run(tiny_opts(tiny_setup, tmp_path / "b", **kw), log=lambda m: None, progress=False, stop_after=10)
    assert checkpoints.latest(tmp_path / "b").name == "step_0000010.pt"
    run(tiny_opts(tiny_setup, tmp_path / "b", **kw), resume=True, log=lambda m: None, progress=False)
    a = _encoder_params(checkpoints.latest(tmp_path / "a"))
    b = _encoder_params(checkpoints.latest(tmp_path / "b"))
    assert checkpoints.latest(tmp_path / "b").name == "step_0000024.pt"
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= 1e-6, worst  # float32; in practice identical


@pytest.mark.slow
def test_checkpoint_is_the_released_layout_and_loads_in_invert(tmp_path, case_checkpoint, parity_dir, lossnet_weights):
    """The full-size encoder for a 256 generator (the synthetic church e4e checkpoint's decoder),
    its backbone started from the IR-SE50 file (as the reference): keys and shapes equal the
    released manifest; E4E and `e4e invert` reproduce its codes."""
    from e4e_cli.model import E4E

    src = Path(parity_dir) / "images" / "church_img.jpg"
    (tmp_path / "img").mkdir()
    for i in range(2):
        Image.open(src).convert("RGB").resize((256, 256)).rotate(i * 5).save(tmp_path / "img" / f"{i}.png")
    opts = TrainOptions(images=str(tmp_path / "img"), generator=str(case_checkpoint("church_256_s3")),
                        out=str(tmp_path / "run"), dataset_type="church_encode", batch_size=2, max_steps=1,
                        lpips_lambda=0.0, id_lambda=0.0, val_every=0, image_every=0, save_every=0, val_fraction=0.0,
                        device="cpu", weights_dir=str(lossnet_weights))
    run(opts, log=lambda m: None, progress=False,
        on_params=lambda tag, rank, params: torch.save(params, tmp_path / f"rank{rank}{tag}.pt"))
    start = torch.load(tmp_path / "rank0_start.pt")
    irse = torch.load(lossnet_weights / "model_ir_se50.pth", weights_only=True)
    backbone = [k for k in start if k.startswith(("input_layer.", "body."))]
    assert len(backbone) > 100 and all(torch.equal(start[k], irse[k]) for k in backbone)
    ckpt = checkpoints.latest(tmp_path / "run")
    obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    manifest = json.loads((Path(parity_dir) / "manifest_256.json").read_text())
    want = {k: tuple(shape) for k, shape, _ in manifest["tensors"]}
    got = {k: tuple(v.shape) for k, v in obj["state_dict"].items()}
    assert got == want
    assert obj["opts"]["encoder_type"] == "Encoder4Editing" and obj["opts"]["stylegan_size"] == 256
    assert tuple(obj["latent_avg"].shape) == (14, 512)

    model = E4E.from_checkpoint(ckpt, device="cpu", precision="fp32")
    x = model.preprocess([Image.open(tmp_path / "img" / "0.png")])
    enc = model.encoder
    with torch.no_grad():
        w0, deltas = enc(x, impl="ref")
        mine = obj["latent_avg"][None] + w0[:, None] + torch.cat([torch.zeros_like(w0)[:, None], deltas], 1)
    codes = model.encode(x)  # the fast path, as `e4e invert` runs it
    assert float((codes - mine).abs().max()) <= 1e-4
    proc = run_e4e("invert", tmp_path / "img" / "0.png", "--checkpoint", ckpt, "--domain", "church", "--no-align",
                   "--precision", "fp32", "--out", tmp_path / "inv")
    assert proc.returncode == 0, proc.stderr
    assert float(np.abs(np.load(tmp_path / "inv" / "0" / "latent.npy") - mine[0].numpy()).max()) <= 1e-4


# ---- bad input: one line, nothing written ------------------------------------------------------


def _train(root, out, *extra, generator=None, init="random"):
    return run_e4e("train", root, "--generator", generator, "--out", out, "--max-steps", "1", "--lpips-lambda", "0",
                   "--id-lambda", "0", "--input-size", "64", "--loss-size", "64", "--encoder-widths", "16,16,32,32",
                   "--encoder-units", "1,1,1,1", "--batch-size", "2", *(("--encoder-init", init) if init else ()), *extra)


def test_bad_input_is_one_line_and_writes_nothing(tiny_setup, tmp_path):
    g = tiny_setup / "g.pt"
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "run"
    assert_one_line_error(_train(empty, out, generator=g), "holds no images")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not an image at all")
    assert_one_line_error(_train(junk, out, generator=g), "readable image")
    html = tmp_path / "g.html.pt"
    html.write_text("<!DOCTYPE html><html><body>quota exceeded</body></html>")
    assert_one_line_error(_train(tiny_setup / "img", out, generator=html), "HTML")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(g.read_bytes()[: g.stat().st_size // 2])
    assert_one_line_error(_train(tiny_setup / "img", out, generator=cut), "truncated")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": RunsCode(marker)}))
    assert_one_line_error(_train(tiny_setup / "img", out, generator=evil), "refusing to load", "system")
    assert not marker.exists(), "the pickle's code ran"
    assert_one_line_error(_train(tiny_setup / "img", out, "--size", "256", generator=g), "64x64", "256")
    assert not out.exists(), "nothing may be written for bad input"
    assert_one_line_error(_train(tiny_setup / "img", out, "--encoder-widths", "1,2", generator=g), "--encoder-widths")


def test_generator_files_round_trip(tmp_path):
    g = tiny_generator(seed=4)
    avg = torch.randn(32)
    save_rosinality_checkpoint(tmp_path / "g.pt", generator=g, latent_avg=avg)
    lg = load_generator(tmp_path / "g.pt")
    assert (lg.size, lg.kind, lg.channel_multiplier) == (64, "rosinality", None)
    assert torch.equal(lg.latent_avg, avg)
    codes = torch.randn(2, g.n_styles, 32)
    with torch.no_grad():
        torch.testing.assert_close(lg.generator.synthesize(codes), g.synthesize(codes))
    assert not any(p.requires_grad for p in lg.generator.parameters())


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tiny_setup, tmp_path):
    """2 processes (gloo, CPU) with a global batch of 4: both ranks end with identical encoder
    weights (bitwise: DDP averages the gradients, the optimizers step alike), and they match one
    process with the same global batch whose BatchNorm sees the batch in 2 chunks (--bn-groups 2)
    within 1e-4 (the gradient sums run in another order; measured 1.2e-7), while the weights
    move over 100x that (lr 3e-2, 8 steps: R1 steps, a Lookahead sync, stages 0-3; measured
    2.2e-2). Summing the ranks' gradients instead of averaging them (1.9e-2 away), ignoring
    --bn-groups (8.3e-3) or not training (nothing moves) fail. Code pools are off: they are per
    process."""
    import os
    import subprocess
    import sys

    tol = 1e-4
    args = ["train", tiny_setup / "img", "--generator", tiny_setup / "g.pt", "--max-steps", "8", "--batch-size", "4",
            "--lr", "3e-2", "--lpips-lambda", "0", "--id-lambda", "0", "--input-size", "64", "--loss-size", "64",
            "--encoder-widths", "16,16,32,32", "--encoder-units", "1,1,1,1", "--w-pool-size", "0",
            "--progressive-start", "2", "--progressive-step-every", "2", "--d-reg-every", "3", "--val-every", "0",
            "--image-every", "0", "--save-every", "0", "--device", "cpu", "--domain", "church",
            "--encoder-init", "random"]
    env = dict(os.environ, OMP_NUM_THREADS="1", E4E_NO_PROGRESS="1")
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(HOOKS),
           "--dump-params", str(two), "--", *map(str, args), "--out", str(tmp_path / "run2")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "global batch 4 (2 x 2 process(es))" in proc.stderr
    proc = run_e4e(*args, "--out", tmp_path / "run1", "--bn-groups", "2", hooks=["--dump-params", one])
    assert proc.returncode == 0, proc.stderr
    r0, r1 = torch.load(two / "rank0.pt"), torch.load(two / "rank1.pt")
    single, start = torch.load(one / "rank0.pt"), torch.load(two / "rank0_start.pt")
    assert all(torch.equal(start[k], torch.load(one / "rank0_start.pt")[k]) for k in start)  # the same start
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    worst = max(float((r0[k] - single[k]).abs().max()) for k in r0)
    moved = max(float((r0[k] - start[k]).abs().max()) for k in r0)
    assert moved >= 100 * tol, f"the weights moved {moved:.3g}: too little to tell runs apart at {tol}"
    assert worst <= tol, f"2 processes vs 1: {worst:.3g} (moved {moved:.3g})"
    assert checkpoints.latest(tmp_path / "run2").name == "step_0000008.pt"


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_finishes(tiny_setup, tmp_path):
    """SIGINT mid-run: exit 130, a checkpoint of the steps done, the command to continue; --resume
    then runs to --max-steps."""
    import os
    import signal
    import subprocess
    import time

    from conftest import e4e_executable, sigint_default

    out = tmp_path / "run"
    args = [e4e_executable(), "train", str(tiny_setup / "img"), "--generator", str(tiny_setup / "g.pt"), "--out", str(out),
            "--max-steps", "100000", "--batch-size", "2", "--lpips-lambda", "0", "--id-lambda", "0", "--input-size", "64",
            "--loss-size", "64", "--encoder-widths", "16,16,32,32", "--encoder-units", "1,1,1,1", "--log-every", "1",
            "--val-every", "0", "--image-every", "0", "--save-every", "0", "--device", "cpu", "--encoder-init", "random"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, E4E_NO_PROGRESS="1"), preexec_fn=sigint_default)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "log.jsonl").exists() and len((out / "log.jsonl").read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # never leave a training process behind when the test fails
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    ckpt = checkpoints.latest(out)
    done = int(checkpoints.STEP_FILE.search(ckpt.name).group(1))
    assert done >= 3
    assert not list(out.rglob("*.part")), "no half-written files"
    proc = run_e4e("train", "--resume", "--out", out, "--max-steps", str(done + 2))
    assert proc.returncode == 0, proc.stderr
    assert checkpoints.latest(out).name == f"step_{done + 2:07d}.pt"
