"""Latent editing: InterFaceGAN directions, GANSpace components and SeFa directions.

Codes are [B,n_styles,512] W+ latents. All edits return new tensors; inputs are not
modified. See SPEC.md "Editing" for the formulas.
"""
from __future__ import annotations

import math
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import domains, npzfiles
from .checkpoint import load_untrusted
from .errors import USAGE, E4EError
from .fsutil import slug


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


#: the largest array a direction, latent or PCA .npz file may declare (GANSpace's PCA is ~1 MB)
MAX_TENSOR_FILE_BYTES = 256 << 20


def _load_tensor_file(path: str | Path, *, what: str = "direction file"):
    p = Path(path)
    if not p.is_file():
        raise E4EError(f"{what} {p} not found")
    try:
        if p.suffix.lower() == ".npy":
            return torch.from_numpy(np.load(p, allow_pickle=False))
        if p.suffix.lower() == ".npz":
            members = npzfiles.layout(p)  # a direction, latent or PCA is small: a large member is refused unread
            for name in members:
                npzfiles.check(p, members, name, shapes=[(None,) * n for n in range(5)], kinds="fiu",
                               max_bytes=MAX_TENSOR_FILE_BYTES, what=what)
            with np.load(p, allow_pickle=False) as z:
                return {k: torch.from_numpy(z[k]) for k in z.files}
        return load_untrusted(p, what=what)
    except E4EError:
        raise
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
        raise E4EError(f"strength must be a finite number, got {strength!r}", exit_code=USAGE)
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


_SEFA: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # generator -> {key: (vecs, vals)}


def sefa_directions(generator, layers: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors (rows, unit, orthogonal, by decreasing eigenvalue) of sum W_l^T W_l over the
    modulation weights W_l [in_l,512] of the layers reading codes `layers`: ([512,512], eigenvalues [512]).

    Kept per generator and layers while those weights are unchanged (their storage and version):
    `e4e ui` asks for five components of the same matrix as it starts (0.6 s, 0.12 s kept).
    """
    chosen = set(layers)
    convs = [conv for conv, idx in generator.layers() if idx in chosen]
    if not convs:
        raise E4EError("SeFa: no generator layer reads the chosen codes")
    key = (tuple(sorted(chosen)), tuple((c.modulation.weight.data_ptr(), c.modulation.weight._version) for c in convs))
    kept = _SEFA.get(generator, {}).get(key)
    if kept is None:
        mats = []
        for conv in convs:
            w = conv.modulation.weight.detach().float().cpu() * conv.modulation.scale  # [in,512]
            mats.append(w / w.norm(dim=1, keepdim=True).clamp_min(1e-12))
        w = torch.cat(mats, dim=0).double()
        vals, vecs = torch.linalg.eigh(w.t() @ w)  # ascending
        order = torch.argsort(vals, descending=True)
        kept = (vecs[:, order].t().float().contiguous(), vals[order].float())
        _SEFA[generator] = {key: kept}
    return kept[0].clone(), kept[1].clone()


def sefa(codes: torch.Tensor, generator, k: int, layers: Sequence[int], strength: float) -> torch.Tensor:
    """Add strength * (k-th SeFa direction) to the chosen layers."""
    strength = check_strength(strength)
    if not 0 <= k < codes.shape[2]:
        raise E4EError(f"SeFa component {k} is out of range (0..{codes.shape[2] - 1})")
    dirs, _ = sefa_directions(generator, layers)
    return add_on_layers(codes, dirs[k], layers, strength)


def add_on_layers(codes: torch.Tensor, vec: torch.Tensor, layers: Sequence[int], strength: float) -> torch.Tensor:
    """codes [B,n,512] with strength * vec [512] added on the given layers (a new tensor)."""
    out = codes.clone()
    out[:, list(layers)] += strength * vec.to(codes)
    return out


# --------------------------------------------------------------------------------------
# A direction named on the command line, latent files, the delta scale


@dataclass
class Direction:
    """A resolved edit: `apply(codes, strength) -> codes`, with a default strength and a label."""

    label: str
    kind: str
    default_strength: Optional[float]
    apply: Callable
    identity: dict = field(default_factory=dict)  # what an edit made with it records (spec, file hash)
    style_offsets: Optional[Callable] = None  # strength -> StyleSpace offsets [C] (text edits; codes unchanged)


def resolve_direction(spec: str, model, *, pca_file: Optional[Path] = None, weights_dir: Optional[Path] = None) -> Direction:
    """A preset name, a direction file, `ganspace:COMPONENT:START:END` or `sefa:K[:LAYERS]`."""
    if spec in PRESETS:
        p = PRESETS[spec]
        if p.domain != model.domain:
            raise E4EError(f"direction {spec!r} is for {p.domain} checkpoints, this one is {model.domain}")
        from .weights.locate import require_asset

        path = require_asset(p.asset, weights_dir)
        ident = _file_identity(spec, path)
        if p.kind == "interfacegan":
            d = load_direction(path, n_styles=model.n_styles)
            return Direction(spec, p.kind, p.strength, lambda c, s: interfacegan(c, d, s), ident)
        pca = load_pca(path)
        return Direction(spec, p.kind, p.strength,
                         lambda c, s: ganspace(c, pca, p.component, p.start, p.end, s), ident)
    m = re.fullmatch(r"ganspace:(\d+):(\d+):(\d+)", spec)
    if m:
        comp, start, end = map(int, m.groups())
        if pca_file is None:
            from .weights.locate import require_asset

            known = domains.DOMAINS.get(model.domain)
            asset = known.pca_asset if known else None
            if asset is None:
                raise E4EError(f"no GANSpace PCA file is known for {model.domain}: pass --pca FILE")
            pca_file = require_asset(asset, weights_dir)
        pca = load_pca(pca_file)
        return Direction(slug(spec), "ganspace", None, lambda c, s: ganspace(c, pca, comp, start, end, s),
                         _file_identity(spec, pca_file))
    m = re.fullmatch(r"sefa:(\d+)(?::([\d,\- ]+|all))?", spec)
    if m:
        k = int(m.group(1))
        layers = parse_layers(m.group(2), model.n_styles)
        if k >= model.generator.style_dim:
            raise E4EError(f"SeFa component {k} is out of range (0..{model.generator.style_dim - 1})")
        dirs, _ = sefa_directions(model.generator, layers)
        vec = dirs[k]
        return Direction(slug(spec), "sefa", 3.0, lambda c, s: add_on_layers(c, vec, layers, check_strength(s)),
                         {"spec": spec})
    if spec.startswith(("ganspace:", "sefa:")):
        raise E4EError(f"bad direction {spec!r}: use ganspace:COMPONENT:START:END or sefa:K[:LAYERS]")
    path = Path(spec)
    if path.suffix.lower() in (".pt", ".npy", ".npz") or path.exists():
        if not path.is_file():
            raise E4EError(f"direction file {path} not found")
        d = load_direction(path, n_styles=model.n_styles)
        return Direction(slug(path.stem), "file", None, lambda c, s: interfacegan(c, d, s),
                         _file_identity(spec, path))
    saved = saved_direction(spec, weights_dir)
    if saved is not None:  # NAME of `e4e directions fit --name NAME`
        d = load_direction(saved, n_styles=model.n_styles)
        return Direction(slug(saved.stem), "file", None, lambda c, s: interfacegan(c, d, s), _file_identity(spec, saved))
    known = ", ".join(n for n, p in PRESETS.items() if p.domain == model.domain)
    raise E4EError(f"unknown direction {spec!r}; presets for {model.domain}: {known} (or a .pt/.npy file, a NAME "
                   "in the weights folder's directions/, ganspace:COMPONENT:START:END, sefa:K[:LAYERS])")


SAVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")  # what `e4e directions fit --name` accepts


def saved_direction(name: str, weights_dir: Optional[Path] = None) -> Optional[Path]:
    """NAME, NAME.npy or NAME.pt in the weights folder's directions/ (where `e4e directions fit`
    writes by default and `e4e ui` looks), or None."""
    from .weights.locate import resolve_weights_dir

    stem = name.removesuffix(".npy").removesuffix(".pt")
    if not SAVED_NAME.fullmatch(stem):
        return None
    folder = resolve_weights_dir(weights_dir) / "directions"
    for cand in (folder / name, folder / f"{stem}.npy", folder / f"{stem}.pt"):
        if cand.is_file():
            return cand
    return None


def _file_identity(spec: str, path: Path) -> dict:
    """A direction's identity: its spec and the SHA-256 of the file it reads (small files)."""
    from .digests import content_sha256

    return {"spec": spec, "file": Path(path).name, "sha256": content_sha256(path)}


def load_latent_file(path: Path) -> np.ndarray:
    """A latent .npy ([n,512] or [1,n,512]) or .pt (tensor, or a dict holding one) -> float32 [n,512]."""
    arr = load_single_tensor(path, what="latent").detach().float().cpu().numpy()
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[1] != 512:
        raise E4EError(f"latent {path} has shape {list(arr.shape)}; expected [n_styles,512] or [1,n_styles,512]")
    if not np.isfinite(arr).all():
        raise E4EError(f"latent {path} holds NaN or infinite values")
    return arr


def rescale_codes(codes, latent_avg, *, from_scale: float, to_scale: float):
    """Re-weight the per-layer deltas of codes [B,n,512] produced at `from_scale` (SPEC: layer 0 has none).

    codes_i = avg_i + w0 + a * delta_i  =>  delta_i = (codes_i - codes_0 - (avg_i - avg_0)) / a.
    """
    if from_scale == to_scale:
        return codes
    if from_scale == 0:
        raise E4EError("this latent was made with --delta-scale 0 (pure W): its deltas are gone, so it cannot be rescaled; invert again")
    avg = latent_avg.to(codes)
    base = codes[:, :1] + (avg - avg[:1])[None]  # avg_i + w0
    return base + (to_scale / from_scale) * (codes - base)


def parse_sweep(text: str) -> list[float]:
    """'START:STOP:N' -> N evenly spaced strengths (N >= 2)."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise E4EError(f"bad --sweep {text!r}: use START:STOP:N, e.g. -3:3:7", exit_code=USAGE) from None
    if not (math.isfinite(a) and math.isfinite(b)) or n < 2 or n > 200:
        raise E4EError(f"bad --sweep {text!r}: START and STOP must be finite and 2 <= N <= 200", exit_code=USAGE)
    return [a + (b - a) * i / (n - 1) for i in range(n)]


def check_delta_scale(a: float) -> float:
    a = float(a)
    if not math.isfinite(a) or a < 0:
        raise E4EError(f"--delta-scale must be a finite number >= 0, got {a!r}", exit_code=USAGE)
    return a
