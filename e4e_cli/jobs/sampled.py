"""Directions from and on samples of a generator: what `e4e directions pca` and `show` run.

- pca: GANSpace's W PCA of any generator: z ~ N(0,1) through the mapping network in blocks of
  PCA_BLOCK rows drawn in order from `torch.Generator().manual_seed(seed)`, streamed into
  `boundaries.CovarianceStream` (flat memory), written as the released `*_pca.pt` files are
  ({"comp": [K,1,D], "mean": [1,D], "std": [K]}), so `ganspace:C:START:END --pca FILE` reads it.
- show: a strip image of a direction at a few strengths (columns) on seeded random samples or
  given latents (rows).

Outputs are written atomically and an existing one is refused unless `overwrite`.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .. import progress
from ..devices import resolve_device
from ..digests import content_sha256
from ..errors import E4EError
from ..fsutil import atomic_write, ensure_dir, safe_name
from .directions import check_free, directions_dir, load_code
from .outputs import label_corner, strength_label, write_json

PCA_BLOCK = 10_000  # z rows per block; the samples depend only on the seed and their number
PCA_COMPONENTS = 80  # GANSpace's default
PCA_SAMPLES = 1_000_000  # GANSpace's N for StyleGAN2's W

# --------------------------------------------------------------------------------------
# Generators for pca and show


@dataclass
class GeneratorSource:
    """A generator file of any layout `train.generators.load_generator` reads, or a domain's e4e checkpoint."""

    generator: Optional[Path] = None
    domain: Optional[str] = None
    checkpoint: Optional[Path] = None
    weights_dir: Optional[Path] = None


def load_any_generator(src: GeneratorSource):
    """`LoadedGenerator` (generator float32 eval, latent_avg [D], ...) and the file it came from."""
    from ..train.generators import load_generator

    if src.generator is not None and (src.domain is not None or src.checkpoint is not None):
        raise E4EError("give --generator FILE or --domain/--checkpoint, not both")
    path = src.generator or src.checkpoint
    if path is None:
        from ..weights.locate import checkpoint_path

        path = checkpoint_path(src.domain or "ffhq", src.weights_dir)
    return load_generator(Path(path)), Path(path)


# --------------------------------------------------------------------------------------
# pca


def z_blocks(n: int, dim: int, seed: int, block: int = PCA_BLOCK):
    """z [<=block,dim] blocks, N(0,1), drawn in order from one CPU generator seeded with `seed`."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    for start in range(0, n, block):
        yield torch.randn(min(block, n - start), dim, generator=gen)


def pca_of_mapping(generator, *, samples: int, components: int, seed: int, device=None,
                   show_progress: bool = True) -> dict:
    """GANSpace's W PCA: {"comp": [K,1,D], "mean": [1,D], "std": [K]} float32 tensors."""
    import torch

    from ..boundaries import CovarianceStream

    if samples < 2:
        raise E4EError(f"--samples must be at least 2, got {samples}")
    dim = int(generator.style_dim)
    if not 1 <= components <= dim:
        raise E4EError(f"--components must be 1..{dim} for this generator, got {components}")
    device = device or torch.device("cpu")
    mapping = generator.style.to(device)
    stream = CovarianceStream(dim)
    with progress.bar(total=samples, desc="sampling W", unit="z", wanted=show_progress) as pbar:
        for z in z_blocks(samples, dim, seed):
            with torch.inference_mode():
                w = mapping(z.to(device)).double().cpu().numpy()
            if not np.isfinite(w).all():
                raise E4EError("the mapping network produced NaN or infinite values")
            stream.update(w)
            pbar.update(len(z))
    comp, std, mean = stream.components(components)
    if not std[0] > 1e-3:  # a trained W spreads far more; the synthetic checkpoints: 1e-11
        import warnings

        warnings.warn(f"the mapping network sends every z to nearly the same w (largest std {std[0]:.1e}): "
                      "its components are noise, and GANSpace edits with them will be erratic", stacklevel=2)
    return {"comp": torch.from_numpy(comp).float().reshape(components, 1, dim),
            "mean": torch.from_numpy(mean).float().reshape(1, dim),
            "std": torch.from_numpy(std).float()}


@dataclass
class PcaJob:
    source: GeneratorSource
    out: Optional[Path] = None  # None: directions/<domain or generator stem>_pca.pt in the weights folder
    samples: int = PCA_SAMPLES
    components: int = PCA_COMPONENTS
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False
    show_progress: bool = True


def pca_direction_file(job: PcaJob) -> tuple[Path, dict]:
    """Run the PCA and write it (released `*_pca.pt` layout) plus a `.json` record beside it."""
    import torch

    src = job.source
    if job.out is not None:
        out = Path(job.out)
    else:
        stem = Path(src.generator or src.checkpoint).stem if (src.generator or src.checkpoint) else (src.domain or "ffhq")
        out = directions_dir(src.weights_dir) / f"{safe_name(stem, 'generator')}_pca.pt"
    if out.suffix.lower() != ".pt":
        raise E4EError(f"--out {out}: a PCA file is a .pt file (as the released ffhq_pca.pt)")
    record = out.with_suffix(".json")
    check_free([out, record], job.overwrite)
    loaded, gpath = load_any_generator(src)
    t0 = time.time()
    pca = pca_of_mapping(loaded.generator, samples=job.samples, components=job.components, seed=job.seed,
                         device=resolve_device(job.device), show_progress=job.show_progress)
    buf = io.BytesIO()
    torch.save(pca, buf)
    atomic_write(out, lambda fh: fh.write(buf.getvalue()))
    info = {"kind": "ganspace", "generator": {"file": gpath.name, "sha256": content_sha256(gpath), "layout": loaded.kind},
            "samples": job.samples, "components": job.components, "seed": job.seed,
            "sampling": f"z ~ N(0,1) in blocks of {PCA_BLOCK} from torch.Generator().manual_seed(seed), w = mapping(z)",
            "std_top5": [round(float(s), 6) for s in pca["std"][:5]], "seconds": round(time.time() - t0, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(record, info)
    return out, info


# --------------------------------------------------------------------------------------
# show


@dataclass
class ShowJob:
    direction: str  # a file, NAME in the directions folder, a preset, ganspace:C:S:E or sefa:K[:LAYERS]
    source: GeneratorSource = field(default_factory=GeneratorSource)
    out: Optional[Path] = None
    latents: list = field(default_factory=list)  # latent files or e4e invert folders (else random samples)
    samples: int = 3
    seed: int = 0
    strengths: Optional[list] = None  # default -3..3 in 5 steps
    truncation: float = 0.7
    tile: Optional[int] = None  # default min(256, generator size)
    pca: Optional[Path] = None
    device: str = "auto"
    overwrite: bool = False
    precision: Optional[str] = None  # None: fp32; "auto": what the device computes natively
    text: dict = field(default_factory=dict)  # direction "text:TARGET": neutral, beta, relevance (textedit)


def find_direction(spec: str, weights_dir=None) -> str:
    """A path as given; else NAME(.npy/.pt) in the directions folder; else the spec as it is."""
    from ..editing import saved_direction

    if Path(spec).exists():
        return spec
    found = saved_direction(spec, weights_dir)
    return str(found) if found is not None else spec


def _decoder(g, loaded, domain: str, precision: Optional[str]):
    """A decode-only E4E of the generator: its fast paths at `precision` (the reference modules'
    numbers in fp32), so a strip of 15 images at 256 px takes seconds."""
    from ..checkpoint import CheckpointInfo
    from ..devices import resolve_precision
    from ..model import E4E

    dev = g.noises.noise_0.device
    info = CheckpointInfo(size=loaded.size, n_styles=g.n_styles, domain=domain, encoder_type="none",
                          start_from_latent_avg=True)
    avg = loaded.latent_avg.to(dev).reshape(1, -1).repeat(g.n_styles, 1)
    return E4E(None, g, avg, info, device=dev, precision=resolve_precision(precision, dev))


@dataclass
class _GeneratorModel:
    """What `resolve_direction` reads of a model, for a bare generator."""

    generator: object
    domain: str
    n_styles: int


def show_strip(job: ShowJob) -> Path:
    """Rows: samples (seeded random W, truncated to `truncation`) or given latents; columns:
    the strengths. Each cell is a `tile` px square; writes a PNG of
    (len(strengths) * tile) x (rows * tile)."""
    import torch
    from PIL import Image

    from ..editing import resolve_direction
    from ..fsutil import slug
    from ..model import E4E

    if job.samples < 1 or job.samples > 64:
        raise E4EError(f"--samples must be 1..64, got {job.samples}")
    strengths = job.strengths or [-3.0, -1.5, 0.0, 1.5, 3.0]
    if len(strengths) > 32:
        raise E4EError(f"at most 32 strengths, got {len(strengths)}")
    spec = find_direction(job.direction, job.source.weights_dir)
    out = Path(job.out) if job.out is not None else Path("e4e-out") / f"{slug(Path(spec).stem if Path(spec).exists() else spec)}_strip.png"
    check_free([out], job.overwrite)
    loaded, _ = load_any_generator(job.source)
    g = loaded.generator.to(resolve_device(job.device))
    dev = g.noises.noise_0.device
    domain = job.source.domain or loaded.domain_hint or "custom"
    model = _GeneratorModel(g, domain, g.n_styles)
    tile = job.tile or min(256, loaded.size)
    if not 8 <= tile <= 1024:
        raise E4EError(f"--tile must be 8..1024, got {tile}")
    decoder = _decoder(g, loaded, domain, job.precision)
    if job.direction.startswith("text:"):  # StyleCLIP: columns are α
        from ..textedit import text_direction

        direction = text_direction(decoder, text=job.direction[5:], weights_dir=job.source.weights_dir, **job.text)
    else:
        direction = resolve_direction(spec, model, pca_file=job.pca, weights_dir=job.source.weights_dir)
    with torch.inference_mode():
        if job.latents:
            rows = []
            for p in job.latents:
                p = Path(p)
                arr = load_code(p / "latent.npy" if p.is_dir() else p)
                if arr.ndim == 1:
                    arr = np.repeat(arr[None], g.n_styles, axis=0)
                if arr.shape != (g.n_styles, g.style_dim):
                    raise E4EError(f"latent {p} has shape {list(arr.shape)}; this generator needs [{g.n_styles},{g.style_dim}]")
                rows.append(torch.from_numpy(arr))
            codes = torch.stack(rows).to(dev)
        else:
            z = next(z_blocks(job.samples, g.style_dim, job.seed))
            w = g.mapping(z.to(dev))
            avg = loaded.latent_avg.to(dev)
            w = avg + float(job.truncation) * (w - avg)
            codes = w[:, None].repeat(1, g.n_styles, 1)
        cells = []
        for s in progress.iterate(strengths, total=len(strengths), desc="decoding", unit="strength"):
            edited = direction.apply(codes, float(s))
            styles = direction.style_offsets(float(s)) if direction.style_offsets is not None else None
            cells.append(E4E.to_uint8(decoder.decode(edited, crop=False, style_offsets=styles)))  # [R,H,W,3]
    n_rows = codes.shape[0]
    strip = Image.new("RGB", (tile * len(strengths), tile * n_rows))
    for col, imgs in enumerate(cells):
        for row in range(n_rows):
            im = Image.fromarray(imgs[row])
            if im.size != (tile, tile):
                im = im.resize((tile, tile), Image.LANCZOS)
            if row == 0:  # each column's strength, once
                im = label_corner(im, strength_label(strengths[col]))
            strip.paste(im, (col * tile, row * tile))
    ensure_dir(out.parent if str(out.parent) else ".")
    from ..fsutil import atomic_save_image

    return atomic_save_image(strip, out)
