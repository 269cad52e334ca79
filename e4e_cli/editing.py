"""Latent editing: InterFaceGAN directions, GANSpace components and SeFa directions.

Codes are [B,n_styles,512] W+ latents. All edits return new tensors; inputs are not
modified. See SPEC.md "Editing" for the formulas.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import E4EError


# --------------------------------------------------------------------------------------
# Presets


@dataclass(frozen=True)
class Preset:
    """A named edit: where its file lives (asset name in the weights folder) and its default strength."""

    name: str
    kind: str  # "interfacegan" | "ganspace"
    asset: str  # downloads registry name of the file
    filename: str
    domain: str
    strength: float
    description: str
    component: int = 0
    start: int = 0
    end: int = 0


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("age", "interfacegan", "age", "age.pt", "ffhq", 3.0, "older (+) or younger (-)"),
        Preset("smile", "interfacegan", "smile", "smile.pt", "ffhq", 3.0, "smile (+) or neutral/frown (-)"),
        Preset("pose", "interfacegan", "pose", "pose.pt", "ffhq", 3.0, "turn the head (per-layer direction)"),
        Preset("ganspace:eye_openness", "ganspace", "ffhq_pca", "ffhq_pca.pt", "ffhq", 20, "open (+) or close (-) the eyes", 54, 7, 8),
        Preset("ganspace:smile", "ganspace", "ffhq_pca", "ffhq_pca.pt", "ffhq", -20, "smile (target coordinate)", 46, 4, 5),
        Preset("ganspace:trimmed_beard", "ganspace", "ffhq_pca", "ffhq_pca.pt", "ffhq", 20, "trim the beard", 58, 7, 9),
        Preset("ganspace:white_hair", "ganspace", "ffhq_pca", "ffhq_pca.pt", "ffhq", -24, "whiten the hair", 57, 7, 10),
        Preset("ganspace:lipstick", "ganspace", "ffhq_pca", "ffhq_pca.pt", "ffhq", 20, "add lipstick", 34, 10, 11),
        Preset("ganspace:viewpoint_1", "ganspace", "cars_pca", "cars_pca.pt", "cars", 2, "turn the car one way", 0, 0, 5),
        Preset("ganspace:viewpoint_2", "ganspace", "cars_pca", "cars_pca.pt", "cars", -2, "turn the car the other way", 0, 0, 5),
        Preset("ganspace:cube", "ganspace", "cars_pca", "cars_pca.pt", "cars", 25, "boxier body", 16, 3, 6),
        Preset("ganspace:color", "ganspace", "cars_pca", "cars_pca.pt", "cars", -8, "change the paint colour", 22, 9, 11),
        Preset("ganspace:grass", "ganspace", "cars_pca", "cars_pca.pt", "cars", -18, "add grass to the background", 41, 9, 11),
    ]
}


# --------------------------------------------------------------------------------------
# Loading direction files


def _load_tensor_file(path: str | Path, *, what: str = "direction file"):
    p = Path(path)
    if not p.is_file():
        raise E4EError(f"{what} {p} not found")
    try:
        if p.suffix.lower() == ".npy":
            return torch.from_numpy(np.load(p, allow_pickle=False))
        if p.suffix.lower() == ".npz":
            with np.load(p, allow_pickle=False) as z:
                return {k: torch.from_numpy(z[k]) for k in z.files}
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure is the file's fault, not a bug
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise E4EError(f"cannot read {what} {p}: {first}") from None


def load_single_tensor(path: str | Path, *, what: str = "direction file") -> torch.Tensor:
    """The one tensor in a .npy/.npz/.pt file (a dict holding exactly one tensor is accepted)."""
    d = _load_tensor_file(path, what=what)
    if isinstance(d, dict):
        tensors = [v for v in d.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise E4EError(f"{what} {path} holds a dict ({', '.join(map(str, d))}); expected one tensor")
        d = tensors[0]
    if not isinstance(d, torch.Tensor):
        raise E4EError(f"{what} {path} holds a {type(d).__name__}, not a tensor")
    return d


def load_direction(path: str | Path, *, n_styles: int, dim: int = 512) -> torch.Tensor:
    """A direction file (.pt/.npy of [512], [1,512], [n,512] or [1,n,512]) as [1,1 or n,512] float32."""
    d = load_single_tensor(path)
    d = d.detach().to("cpu", torch.float32)
    shape = tuple(d.shape)
    if d.ndim == 1 and shape == (dim,):
        d = d.reshape(1, 1, dim)
    elif d.ndim == 2 and shape[1] == dim and shape[0] in (1, n_styles):
        d = d.reshape(1, shape[0], dim)
    elif d.ndim == 3 and shape[0] == 1 and shape[2] == dim and shape[1] in (1, n_styles):
        pass
    else:
        raise E4EError(
            f"direction {Path(path).name} has shape {list(shape)}; this checkpoint needs [512], [1,512], "
            f"[{n_styles},512] or [1,{n_styles},512]"
        )
    if not torch.isfinite(d).all():
        raise E4EError(f"direction file {path} holds NaN or infinite values")
    return d


@dataclass
class PCA:
    """GANSpace PCA of W: mean [1,512], comp [K,1,512] (unit rows), std [K]."""

    mean: torch.Tensor
    comp: torch.Tensor
    std: torch.Tensor

    @property
    def n_components(self) -> int:
        return self.comp.shape[0]


def load_pca(path: str | Path) -> PCA:
    d = _load_tensor_file(path)
    if not isinstance(d, dict) or not {"mean", "comp", "std"} <= set(d):
        raise E4EError(f"PCA file {path} must be a dict with 'mean', 'comp' and 'std' tensors")
    try:
        mean = torch.as_tensor(d["mean"]).float().reshape(1, -1)
        comp = torch.as_tensor(d["comp"]).float()
        comp = comp.reshape(comp.shape[0], 1, -1)
        std = torch.as_tensor(d["std"]).float().reshape(-1)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise E4EError(f"PCA file {path} has tensors of unexpected shapes ({exc})") from None
    if comp.shape[0] != std.shape[0] or comp.shape[2] != mean.shape[1]:
        raise E4EError(f"PCA file {path}: comp {list(comp.shape)}, std {list(std.shape)}, mean {list(mean.shape)} do not fit")
    return PCA(mean=mean, comp=comp, std=std)


# --------------------------------------------------------------------------------------
# Edits


def check_strength(strength: float) -> float:
    s = float(strength)
    if not math.isfinite(s):
        raise E4EError(f"strength must be a finite number, got {strength!r}")
    return s


def interfacegan(codes: torch.Tensor, direction: torch.Tensor, factor: float) -> torch.Tensor:
    """codes [B,n,512] + factor * direction ([1,1,512] for every layer or [1,n,512] per layer)."""
    factor = check_strength(factor)
    if direction.ndim == 2:
        direction = direction[None]
    if direction.shape[1] not in (1, codes.shape[1]) or direction.shape[2] != codes.shape[2]:
        raise E4EError(f"direction of shape {list(direction.shape)} does not fit codes of shape {list(codes.shape)}")
    return codes + factor * direction.to(codes)


def ganspace(codes: torch.Tensor, pca: PCA, component: int, start: int, end: int, strength: float) -> torch.Tensor:
    """Move layers start..end-1 so that layer 0's coordinate on `component` becomes `strength`.

    coord = ((codes[:,0] - mean) . comp[c]) / std[c]; add (strength - coord) * comp[c] * std[c].
    """
    strength = check_strength(strength)
    n = codes.shape[1]
    if not 0 <= component < pca.n_components:
        raise E4EError(f"GANSpace component {component} is out of range (0..{pca.n_components - 1})")
    if not (0 <= start < end <= n):
        raise E4EError(f"GANSpace layers {start}:{end} are out of range for {n} layers (0 <= start < end <= {n})")
    comp = pca.comp[component].to(codes)  # [1,512]
    std = pca.std[component].to(codes)
    coord = ((codes[:, 0] - pca.mean.to(codes)) * comp).sum(dim=-1) / std  # [B]
    delta = (strength - coord)[:, None] * comp * std  # [B,512]
    out = codes.clone()
    out[:, start:end] += delta[:, None, :]
    return out


# --------------------------------------------------------------------------------------
# SeFa: closed-form directions from the generator's modulation weights


def parse_layers(spec: str | None, n_styles: int) -> list[int]:
    """'all', '3', '0-3' (inclusive) or '0,2,5-7' -> sorted code indices."""
    if spec is None or spec in ("", "all"):
        return list(range(n_styles))
    out: set[int] = set()
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise E4EError(f"bad layer list {spec!r} (use e.g. 'all', '0-3' or '0,2,5-7')")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if a > b or b >= n_styles:
            raise E4EError(f"layer range {part.strip()!r} is out of range 0..{n_styles - 1}")
        out.update(range(a, b + 1))
    return sorted(out)


def sefa_directions(generator, layers: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors (rows, unit, orthogonal, by decreasing eigenvalue) of sum W_l^T W_l over the
    modulation weights W_l [in_l,512] of the layers reading codes `layers`: ([512,512], eigenvalues [512]).
    """
    chosen = set(layers)
    mats = []
    for conv, idx in generator.layers():
        if idx in chosen:
            w = conv.modulation.weight.detach().float().cpu() * conv.modulation.scale  # [in,512]
            mats.append(w / w.norm(dim=1, keepdim=True).clamp_min(1e-12))
    if not mats:
        raise E4EError("SeFa: no generator layer reads the chosen codes")
    w = torch.cat(mats, dim=0).double()
    vals, vecs = torch.linalg.eigh(w.t() @ w)  # ascending
    order = torch.argsort(vals, descending=True)
    return vecs[:, order].t().float().contiguous(), vals[order].float()


def sefa(codes: torch.Tensor, generator, k: int, layers: Sequence[int], strength: float) -> torch.Tensor:
    """Add strength * (k-th SeFa direction) to the chosen layers."""
    strength = check_strength(strength)
    if not 0 <= k < codes.shape[2]:
        raise E4EError(f"SeFa component {k} is out of range (0..{codes.shape[2] - 1})")
    dirs, _ = sefa_directions(generator, layers)
    out = codes.clone()
    out[:, list(layers)] += strength * dirs[k].to(codes)
    return out
