"""The latent discriminator of e4e: it tells codes from the mapping network (W) apart from the
encoder's, pushing every per-layer code into W. With its code pools and losses.

- `LatentDiscriminator`: 3 x [Linear 512-512, LeakyReLU 0.2] + Linear 512-1 on one 512-d code.
- losses (non-saturating): the discriminator minimises softplus(-D(real)) + softplus(D(fake)),
  the encoder softplus(-D(fake)); lazy R1 every `d_reg_every` steps: r1/2 * E||dD(real)/dreal||^2,
  times d_reg_every (so its average weight stays r1/2).
- `CodePool`: a pool of past codes (size 50): once full, each new code is, with probability 1/2,
  swapped for a random stored one (which is returned instead), so the discriminator also sees
  older codes. Given each image's active codes it keeps one per image (a random layer's).
"""
from __future__ import annotations

import random
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class LatentDiscriminator(nn.Module):
    def __init__(self, dim: int = 512, hidden: int = 512, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = []
        cin = dim
        for _ in range(layers):
            mods += [nn.Linear(cin, hidden), nn.LeakyReLU(0.2)]
            cin = hidden
        mods.append(nn.Linear(cin, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, w):  # [N,D] -> [N,1]
        return self.net(w)


def d_loss(real_pred, fake_pred):
    """Non-saturating discriminator loss: mean softplus(-D(real)) + mean softplus(D(fake))."""
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def g_adv_loss(fake_pred):
    """The encoder's adversarial loss: mean softplus(-D(fake))."""
    return F.softplus(-fake_pred).mean()


def r1_penalty(disc: nn.Module, real: torch.Tensor) -> torch.Tensor:
    """E over the batch of ||dD(real)/d real||^2 (needs real.requires_grad)."""
    return _r1(disc(real), real)


def _r1(pred: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(pred.sum(), real, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def r1_step_loss(disc: nn.Module, real: torch.Tensor, *, r1: float, every: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The lazy R1 step's loss, r1/2 * penalty * every, and the penalty. A zero multiple of one
    prediction is added, as the reference does: it keeps D's output bias in the graph (its
    gradient is 0, not None), so Adam still moves that bias by its momentum on R1 steps."""
    real = real.detach().requires_grad_(True)
    pred = disc(real)
    penalty = _r1(pred, real)
    return r1 / 2 * penalty * every + 0 * pred[0].sum(), penalty


def delta_penalty(codes: torch.Tensor, stage: int, p: int = 2) -> torch.Tensor:
    """Sum over the active layers i = 1..stage of mean_batch ||w_i - w_0||_p (codes [N,n,D])."""
    total = codes.new_zeros(())
    for i in range(1, min(stage, codes.shape[1] - 1) + 1):
        total = total + torch.linalg.vector_norm(codes[:, i] - codes[:, 0], ord=p, dim=1).mean()
    return total


class CodePool:
    """Past codes for the discriminator (a 50-code pool by default; size 0 disables it)."""

    def __init__(self, size: int = 50, rng: Optional[random.Random] = None):
        self.size = size
        self.codes: list[torch.Tensor] = []
        self.rng = rng or random.Random(0)

    def query(self, codes: torch.Tensor) -> torch.Tensor:
        """[N,D] -> [N,D]; or [N,L,D] (each image's L active codes) -> [N,D]: one code per image,
        a random one of its L when the pool is on, its first (w0) when the pool is off (as the
        reference's pool and coach pick the discriminator's fakes)."""
        codes = codes.detach()
        if self.size == 0:
            return codes[:, 0] if codes.ndim == 3 else codes
        out = []
        for c in codes:
            if c.ndim == 2:
                c = c[self.rng.randrange(c.shape[0])]
            c = c[None]
            if len(self.codes) < self.size:
                self.codes.append(c.clone())
                out.append(c)
            elif self.rng.random() > 0.5:
                j = self.rng.randrange(self.size)
                out.append(self.codes[j].clone())
                self.codes[j] = c.clone()
            else:
                out.append(c)
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {"size": self.size, "codes": torch.cat(self.codes) if self.codes else torch.zeros(0),
                "rng": _random_state(self.rng)}

    def load_state_dict(self, sd: dict) -> None:
        self.size = int(sd["size"])
        codes = sd["codes"]
        self.codes = [codes[i : i + 1].clone() for i in range(codes.shape[0])]
        _set_random_state(self.rng, sd["rng"])


def _random_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_random_state(rng: random.Random, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((int(version), tuple(int(v) for v in internal), gauss))
