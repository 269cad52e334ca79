"""The W projection: StyleGAN2-ADA's projector as PTI runs it for its default pivot
(`e4e invert --refine pti --pivot w`): one w for every layer, found by Adam against a perceptual
distance, with the projector's learning-rate schedule, code jitter and noise regularization.

The distance network is passed in (`lpips(x, y)` -> [N]); this module imports nothing above the
network layer.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

# the W projection (PTI's first_inv_steps; its projector's schedule: the optimizer is built with
# first_inv_lr 5e-3, but every step sets lr = 0.01 x ramp, the projector's own initial rate)
PROJECTION_STEPS = 450
PROJECTION_LR = 0.01
PROJECTION_W_SAMPLES = 600  # w_avg_samples, drawn with numpy RandomState(123)
PROJECTION_W_SEED = 123
PROJECTION_NOISE_FACTOR = 0.05  # initial_noise_factor (x w_std)
PROJECTION_NOISE_RAMP = 0.75
PROJECTION_LR_RAMPDOWN = 0.25
PROJECTION_LR_RAMPUP = 0.05
PROJECTION_NOISE_REG = 1e5  # regularize_noise_weight
PROJECTION_MAX_SIDE = 256  # images larger than this are compared 'area'-downsampled to it


def check_dtype(dtype: Optional[torch.dtype], impl: str) -> None:
    if dtype is not None and impl == "ref":
        raise ValueError("reduced-precision tuning runs the fast ops (impl='fast'); the reference ops compute in "
                         "their inputs' dtype")


def projection_lr(step: int, steps: int) -> float:
    """The projector's learning rate at `step` of `steps`: a 5% cosine warm-up from 0 and a
    cosine ramp-down over the last 25%, peaking at PROJECTION_LR."""
    t = step / steps
    ramp = min(1.0, (1.0 - t) / PROJECTION_LR_RAMPDOWN)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return PROJECTION_LR * ramp * min(1.0, t / PROJECTION_LR_RAMPUP)


def noise_regularization(noise: list[torch.Tensor]) -> torch.Tensor:
    """The projector's penalty on spatially correlated noise: for each map [1,1,H,W] and its
    2x box-downsamplings down to 8x8, the squared mean of its products with itself shifted by
    one pixel along x and along y."""
    total = torch.zeros(())
    for n in noise:
        while True:
            total = total + (n * torch.roll(n, shifts=1, dims=3)).mean() ** 2
            total = total + (n * torch.roll(n, shifts=1, dims=2)).mean() ** 2
            if n.shape[2] <= 8:
                break
            n = F.avg_pool2d(n, kernel_size=2)
    return total


def _compared(img: torch.Tensor) -> torch.Tensor:
    """What the projection's distance sees: [1,3,h,w] 'area'-downsampled so that its width is
    at most PROJECTION_MAX_SIDE (the reference squares to 256 x 256; a cars crop keeps its aspect)."""
    if img.shape[3] <= PROJECTION_MAX_SIDE:
        return img
    h = max(1, round(img.shape[2] * PROJECTION_MAX_SIDE / img.shape[3]))
    return F.interpolate(img, size=(h, PROJECTION_MAX_SIDE), mode="area")


@dataclass
class ProjectionLog:
    """One projection: `losses` [(distance, total)] per step, the wall time."""

    losses: list = field(default_factory=list)
    seconds: float = 0.0


def project_w(generator, target: torch.Tensor, lpips, *, steps: int = PROJECTION_STEPS, seed: int = 0,
              crop: Optional[tuple[int, int]] = None, impl: str = "ref", dtype: Optional[torch.dtype] = None,
              on_step: Optional[Callable[[int, float], None]] = None) -> tuple[torch.Tensor, ProjectionLog]:
    """target [1,3,H,W] in [-1,1] -> (its W code repeated over the layers [1,n,D], log).

    From the mean of 600 mapped samples, Adam (betas 0.9, 0.999) moves one w and the generator's
    noise maps (re-drawn at random, penalised by `noise_regularization` x 1e5 and renormalised
    after every step; on a copy, so the caller's generator keeps its fixed noise), with the
    code jittered by a noise that fades over the first 75% of the steps. Where we differ from
    the reference: its distance is NVIDIA's VGG16 LPIPS features (a TorchScript program we do
    not ship); ours is the LPIPS (alex) the tuning uses, on the same <= 256 px images; and its
    random numbers (the noise maps, the jitter) come from the unseeded global generator, ours
    from `seed`."""
    check_dtype(dtype, impl)
    gen = copy.deepcopy(generator).float().eval()
    for p in gen.parameters():
        p.requires_grad_(False)
    dim, n_styles = gen.style_dim, gen.n_styles
    z = torch.from_numpy(np.random.RandomState(PROJECTION_W_SEED).randn(PROJECTION_W_SAMPLES, dim)).float()
    with torch.no_grad():
        w_samples = gen.mapping(z.to(target.device)).float()  # [600,D]
    w_mean = w_samples.mean(0, keepdim=True)  # [1,D]
    w_std = float(((w_samples - w_mean) ** 2).sum() / PROJECTION_W_SAMPLES) ** 0.5
    rng = torch.Generator().manual_seed(int(seed))
    noise = [torch.randn(b.shape, generator=rng).to(b.device).requires_grad_(True) for b in gen.fixed_noise()]
    w_opt = w_mean[:, None, :].clone().requires_grad_(True)  # [1,1,D]
    opt = torch.optim.Adam([w_opt] + noise, betas=(0.9, 0.999), lr=PROJECTION_LR)
    goal = _compared(target.detach().float())
    log = ProjectionLog()
    t0 = time.perf_counter()
    for step in range(steps):
        t = step / steps
        jitter = w_std * PROJECTION_NOISE_FACTOR * max(0.0, 1.0 - t / PROJECTION_NOISE_RAMP) ** 2
        for group in opt.param_groups:
            group["lr"] = projection_lr(step, steps)
        with torch.enable_grad():
            ws = (w_opt + torch.randn(w_opt.shape, generator=rng).to(w_opt.device) * jitter).expand(1, n_styles, dim)
            img = gen.synthesize(ws, noise=noise, impl=impl, dtype=dtype).float()
            if crop is not None:
                img = img[:, :, crop[0]:crop[1], :]
            dist = lpips(_compared(img), goal).sum()
            loss = dist + PROJECTION_NOISE_REG * noise_regularization(noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        with torch.no_grad():
            for b in noise:
                b -= b.mean()
                b *= b.square().mean().rsqrt()
        log.losses.append((dist.item(), loss.item()))
        if on_step is not None:
            on_step(step, log.losses[-1][0])
    log.seconds = time.perf_counter() - t0
    return w_opt.detach().expand(1, n_styles, dim).clone(), log
