"""StyleCLIP's global directions (Patashnik et al., ICCV 2021; issue 33): edits from words in
StyleSpace.

- `text_direction`: the target and the neutral text, each put in CLIP's 79 ImageNet prompt
  templates, encoded, normalised, averaged and normalised again; Δt = target - neutral, normalised.
- `style_direction`: Δs = fs3 · Δt over StyleSpace's channels; channels with |Δs| < β are zeroed,
  the rest divided by the largest |Δs| and multiplied by the channel's standard deviation.
- the edit decodes the codes with the style offsets α · Δs (`E4E.decode(style_offsets=...)`).

`fs3` [C,512] is the relevance of each channel to CLIP's image embedding (`relevance.py` computes
it for any generator; StyleCLIP released FFHQ's); the standard deviations come with it or from
`style_stats` (the generator's own samples, as the reference's: truncation 0.7 on the first 8 codes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import E4EError

#: CLIP's 79 ImageNet prompt templates, in the order StyleCLIP uses them
IMAGENET_TEMPLATES = (
    'a bad photo of a {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'a photo of a {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
    'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.',
    'a plushie {}.',
    'a photo of the nice {}.',
    'a photo of the small {}.',
    'a photo of the weird {}.',
    'the cartoon {}.',
    'art of the {}.',
    'a drawing of the {}.',
    'a photo of the large {}.',
    'a black and white photo of a {}.',
    'the plushie {}.',
    'a dark photo of a {}.',
    'itap of a {}.',
    'graffiti of the {}.',
    'a toy {}.',
    'itap of my {}.',
    'a photo of a cool {}.',
    'a photo of a small {}.',
    'a tattoo of the {}.',
)


def _unit(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x / x.norm(dim=dim, keepdim=True)


def text_embedding(clip, text: str) -> torch.Tensor:
    """One text's CLIP embedding over the templates: [D] float32, unit length."""
    feats = clip.text_features([t.format(text) for t in IMAGENET_TEMPLATES])  # [79,D]
    return _unit(_unit(feats).mean(dim=0))


def text_direction(clip, target: str, neutral: str, *, cache: dict | None = None) -> torch.Tensor:
    """Δt [D] (unit length) from `neutral` to `target`. `cache` (text -> embedding) encodes each
    text once across calls."""
    emb = []
    for text in (target, neutral):
        if not text or not text.strip():
            raise E4EError("the text is empty: type what the edit should show (e.g. --text \"a face with glasses\")")
        if cache is not None and text in cache:
            emb.append(cache[text])
            continue
        e = text_embedding(clip, text)
        if cache is not None:
            cache[text] = e
        emb.append(e)
    dt = emb[0] - emb[1]
    norm = float(dt.norm())
    if not norm > 1e-12:
        raise E4EError(f"the target {target!r} and the neutral text {neutral!r} give the same CLIP embedding: "
                       "there is no direction between them")
    return dt / norm


@dataclass
class StyleDirection:
    """Δs [C] (StyleSpace offsets for α = 1) and how many channels it moves."""

    delta: torch.Tensor
    moved: int
    beta: float


def style_direction(fs3, dt, std, *, beta: float) -> StyleDirection:
    """Δs from the relevance `fs3` [C,D], Δt [D] and the channels' standard deviations `std` [C]:
    zeroed where |fs3·Δt| < β, divided by the largest |fs3·Δt|, times `std`. Raises E4EError
    when β leaves no channel."""
    fs3 = torch.as_tensor(fs3, dtype=torch.float32)
    dt = torch.as_tensor(dt, dtype=torch.float32)
    std = torch.as_tensor(std, dtype=torch.float32)
    if fs3.ndim != 2 or fs3.shape[1] != dt.shape[0] or std.shape != fs3.shape[:1]:
        raise E4EError(f"relevance {tuple(fs3.shape)}, text direction {tuple(dt.shape)} and standard deviations "
                       f"{tuple(std.shape)} do not fit together")
    ds = fs3 @ dt
    keep = ds.abs() >= beta
    moved = int(keep.sum())
    if moved == 0:
        raise E4EError(f"--beta {beta:g} moves no channel (the largest relevance for this text is "
                       f"{float(ds.abs().max()):.3g}): lower --beta")
    ds = torch.where(keep, ds, torch.zeros_like(ds))
    ds = ds / ds.abs().max()
    return StyleDirection(delta=ds * std, moved=moved, beta=float(beta))


@torch.no_grad()
def style_stats(generator, w_avg, *, n: int = 100_000, seed: int = 5, psi: float = 0.7, cutoff: int = 8,
                chunk: int = 5_000) -> tuple[torch.Tensor, torch.Tensor]:
    """StyleSpace's per-channel (mean, std) [C] over `n` mapping-network samples truncated as the
    reference does (ψ 0.7 towards `w_avg` [D] on the first `cutoff` codes)."""
    gen = torch.Generator().manual_seed(seed)
    dev = generator.noises.noise_0.device
    total = torch.zeros(generator.n_style_channels, dtype=torch.float64)
    sq = torch.zeros_like(total)
    w_avg = torch.as_tensor(w_avg, dtype=torch.float32).reshape(-1).to(dev)
    for start in range(0, n, chunk):
        z = torch.randn(min(chunk, n - start), generator.style_dim, generator=gen).to(dev)
        w = generator.mapping(z)
        codes = w[:, None].repeat(1, generator.n_styles, 1)
        k = min(cutoff, generator.n_styles)
        codes[:, :k] = w_avg + psi * (codes[:, :k] - w_avg)
        s = generator.styles(codes).double().cpu()
        total += s.sum(0)
        sq += (s * s).sum(0)
    mean = total / n
    std = (sq / n - mean * mean).clamp_min(0).sqrt()
    return mean.float(), std.float()


def relevance_sizes(generator) -> dict[int, str]:
    """Row counts a relevance may have for `generator`: every StyleSpace channel, or (StyleCLIP's
    own cut, computing only what matters most) the channels of the layers up to 128 px."""
    sizes = {generator.n_style_channels: "every channel"}
    upto = sum(n for _, c, n in generator.style_layers() if c == 0 or 2 ** ((c - 1) // 2 + 3) <= 128)
    sizes.setdefault(upto, "the layers up to 128 px")
    return sizes


def fit_relevance(fs3, generator) -> torch.Tensor:
    """`fs3` checked against a generator's StyleSpace: [C,D]. A relevance of the layers up to
    128 px only gets zero rows for the rest (those channels never move). E4EError when it fits
    neither."""
    fs3 = torch.as_tensor(np.asarray(fs3), dtype=torch.float32)
    n_channels = generator.n_style_channels
    sizes = relevance_sizes(generator)
    if fs3.ndim != 2 or fs3.shape[0] not in sizes:
        raise E4EError(f"the relevance matrix has shape {tuple(fs3.shape)}; this generator's StyleSpace has "
                       f"{n_channels} channels ([{n_channels},512]" +
                       "".join(f", or [{k},512] for {v}" for k, v in sizes.items() if k != n_channels) + ")")
    if fs3.shape[0] < n_channels:
        fs3 = torch.cat([fs3, fs3.new_zeros(n_channels - fs3.shape[0], fs3.shape[1])])
    return fs3
