"""Text edits (`e4e edit --text`, issue 33): a StyleCLIP global direction as an `editing.Direction`.

Resolves CLIP (the `clip` weights: `clip_vit_b32` + `clip_vocab`), the relevance (`--relevance
FILE`: an `.npz` from `e4e directions relevance` with `fs3` and the channels' `std`, or a bare
`fs3` `.npy` such as StyleCLIP's released FFHQ file, whose stds then come from the generator's own
samples, cached per checkpoint), computes Δt and Δs (`styleclip.py`) and returns a direction whose
strength is α: it leaves the W+ code alone and moves the StyleSpace channels by α·Δs.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import styleclip
from .editing import Direction
from .errors import E4EError
from .fsutil import atomic_write, cache_dir, ensure_dir, slug

DEFAULT_ALPHA = 4.0
DEFAULT_BETA = 0.15
NEUTRAL = {"ffhq": "a face", "cars": "a car", "horse": "a horse", "church": "a church"}
STD_SAMPLES = 100_000

_CLIPS: dict = {}
_TEXT_CACHE: dict = {}  # (clip weights, text) -> embedding: each text encoded once per process
_STATS: dict = {}


def load_clip_model(weights_dir=None, device="cpu"):
    """CLIP from the weights folder (`e4e download-weights clip`), kept once per process."""
    from .clip_text import load_clip
    from .weights.locate import require_asset

    weights = require_asset("clip_vit_b32", weights_dir)
    vocab = require_asset("clip_vocab", weights_dir)
    key = (str(weights), str(vocab), str(device))
    if key not in _CLIPS:
        _CLIPS[key] = load_clip(weights, vocab, device=device)
    return _CLIPS[key]


def _file_sha(path: Path) -> str:
    from .digests import content_sha256

    return content_sha256(path)


def style_std(model, *, n: int = STD_SAMPLES) -> torch.Tensor:
    """The StyleSpace channels' standard deviations [C] over `n` truncated samples of the model's
    generator (`styleclip.style_stats`), cached on disk by the checkpoint's content."""
    path = getattr(model, "path", None)
    key = None
    if path:
        try:
            key = hashlib.sha1(f"{_file_sha(Path(path))}|n={n}|v1".encode()).hexdigest()[:20]
        except E4EError:
            key = None
    if key and key in _STATS:
        return _STATS[key]
    file = cache_dir() / "sstats" / f"{key}.npz" if key else None
    if file is not None and file.is_file():
        try:
            with np.load(file, allow_pickle=False) as z:
                std = torch.from_numpy(z["std"].astype(np.float32))
            if std.shape == (model.generator.n_style_channels,):
                _STATS[key] = std
                return std
        except (OSError, ValueError, KeyError):
            pass
    _, std = styleclip.style_stats(model.generator, model.latent_avg[0].cpu(), n=n)
    if file is not None:
        try:
            ensure_dir(file.parent)
            atomic_write(file, lambda fh: np.savez(fh, std=std.numpy(), n=np.int64(n)))
        except (E4EError, OSError):
            pass
        _STATS[key] = std
    return std


def load_relevance(path: Path, model) -> tuple[torch.Tensor, torch.Tensor]:
    """(fs3 [C,D], std [C]) for the model's generator from an `.npz` (`fs3`, `std`) or a bare `.npy` fs3."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as z:
                fs3 = z["fs3"]
                std = z["std"] if "std" in z.files else None
        else:
            fs3, std = np.load(path, allow_pickle=False), None
    except (OSError, ValueError, KeyError) as exc:
        raise E4EError(f"cannot read the relevance file {path}: {exc}") from None
    n = model.generator.n_style_channels
    try:
        fs3 = styleclip.fit_relevance(fs3, model.generator)
    except E4EError as exc:
        raise E4EError(f"{path.name}: {exc}") from None
    if std is None:
        std = style_std(model)
    else:
        std = torch.as_tensor(np.asarray(std, dtype=np.float32)).reshape(-1)
        if std.shape[0] != n:
            raise E4EError(f"{path.name}: its standard deviations have {std.shape[0]} channels; this generator's "
                           f"StyleSpace has {n}")
    return fs3, std


def resolve_relevance(model, relevance: Optional[Path], weights_dir=None) -> Path:
    if relevance is not None:
        if not Path(relevance).is_file():
            raise E4EError(f"relevance file {relevance} not found")
        return Path(relevance)
    if model.domain == "ffhq":
        from .weights.locate import require_asset

        return require_asset("styleclip_ffhq", weights_dir)
    raise E4EError(f"no released relevance for {model.domain}: compute it with `e4e directions relevance "
                   f"--domain {model.domain}` and pass --relevance FILE")


def text_direction(model, *, text: str, neutral: Optional[str] = None, beta: float = DEFAULT_BETA,
                   relevance: Optional[Path] = None, weights_dir=None, clip=None) -> Direction:
    """The text edit as a Direction: strength α, `style_offsets(α)` = α·Δs [C]; `identity` records
    the texts, β, the channels moved and the files used."""
    if not text or not text.strip():
        raise E4EError("the text is empty: type what the edit should show (e.g. --text \"a face with glasses\")")
    neutral = neutral if neutral is not None else NEUTRAL.get(model.domain, "a photo")
    if not 0 <= beta:
        raise E4EError(f"--beta must be 0 or more, got {beta}")
    rel_path = resolve_relevance(model, relevance, weights_dir)
    clip_ident = None
    if clip is None:
        from .weights.locate import require_asset

        clip = load_clip_model(weights_dir)
        clip_file = require_asset("clip_vit_b32", weights_dir)
        clip_ident = {"file": clip_file.name, "sha256": _file_sha(clip_file)}
    # the texts first: bad text fails before the relevance's std is computed
    dt = styleclip.text_direction(clip, text, neutral, cache=_TEXT_CACHE.setdefault(id(clip), {}))
    fs3, std = load_relevance(rel_path, model)
    if fs3.shape[1] != dt.shape[0]:
        raise E4EError(f"{rel_path.name} relates channels to {fs3.shape[1]}-d CLIP embeddings; this CLIP's are "
                       f"{dt.shape[0]}-d")
    sd = styleclip.style_direction(fs3, dt, std, beta=beta)
    delta = sd.delta
    label = slug("text_" + text.strip())[:48]
    ident = {"spec": "text", "text": text, "neutral": neutral, "beta": float(beta), "channels_moved": sd.moved,
             "relevance": {"file": rel_path.name, "sha256": _file_sha(rel_path)},
             **({"clip": clip_ident} if clip_ident else {})}

    def offsets(alpha: float) -> torch.Tensor:
        return float(alpha) * delta

    return Direction(label, "styleclip", DEFAULT_ALPHA, lambda c, s: c, ident, style_offsets=offsets)
