"""Ranger: RAdam steps, a Lookahead on top, and gradient centralisation (the e4e recipe's
optimizer). Written from the three methods' published update rules:

- gradient centralisation: for parameters with more than one dimension, subtract from the
  gradient its mean over all dimensions but the first (the output unit);
- RAdam (Liu et al. 2019): Adam whose adaptive step is used only once the variance of the
  adaptive learning rate is tractable (rho_t > threshold), scaled by the rectification term r_t;
  before that, a plain momentum step;
- Lookahead (Zhang et al. 2019): every k steps the "slow" weights move alpha of the way towards
  the fast ones, and the fast ones restart from there.

Defaults as in the reference's Ranger: betas (0.95, 0.999), eps 1e-5, alpha 0.5, k 6,
threshold 5, weight decay 0.
"""
from __future__ import annotations

import math

import torch


class Ranger(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, *, alpha: float = 0.5, k: int = 6, n_sma_threshold: float = 5.0,
                 betas=(0.95, 0.999), eps: float = 1e-5, weight_decay: float = 0.0, use_gc: bool = True):
        if not 0.0 <= alpha <= 1.0 or k < 1 or lr <= 0:
            raise ValueError("Ranger: need 0 <= alpha <= 1, k >= 1, lr > 0")
        defaults = dict(lr=lr, alpha=alpha, k=k, n_sma_threshold=n_sma_threshold, betas=betas, eps=eps,
                        weight_decay=weight_decay, use_gc=use_gc)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                if group["use_gc"] and g.dim() > 1:
                    g = g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    st["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                    st["slow"] = p.detach().float().clone()
                st["step"] += 1
                t = st["step"]
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                rho_inf = 2 / (1 - b2) - 1
                rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
                w = p.detach().float()
                if group["weight_decay"]:
                    w = w - group["weight_decay"] * group["lr"] * w
                if rho_t > group["n_sma_threshold"]:
                    r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                    step = group["lr"] * r * math.sqrt(1 - b2**t) / (1 - b1**t)
                    w = w - step * m / (v.sqrt() + group["eps"])
                else:
                    w = w - group["lr"] / (1 - b1**t) * m
                if t % group["k"] == 0:  # Lookahead: slow weights move towards the fast ones
                    st["slow"].add_(w - st["slow"], alpha=group["alpha"])
                    w = st["slow"].clone()
                p.copy_(w.to(p.dtype))
        return loss
