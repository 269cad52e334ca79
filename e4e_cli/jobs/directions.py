"""Making editing directions: what `e4e directions fit`, `pca` and `show` run.

- fit: labelled latents (a `path,label` CSV, or a positive and a negative folder) -> their codes
  (latent files, `e4e invert` folders, or photos inverted first) -> `boundaries.fit_boundary`
  (optionally `project_out` of condition directions) -> NAME.npy ([D], or [n_styles,D] when
  fitted on some layers: zero on the others) and NAME.json (how it was made), in the weights
  folder's `directions/` by default, where `e4e ui` finds them.
- pca: GANSpace's W PCA of any generator: z ~ N(0,1) through the mapping network in blocks of
  PCA_BLOCK rows drawn in order from `torch.Generator().manual_seed(seed)`, streamed into
  `boundaries.CovarianceStream`, written as the released `*_pca.pt` files are
  ({"comp": [K,1,D], "mean": [1,D], "std": [K]}), so `ganspace:C:START:END --pca FILE` reads it.
- show: a strip image of a direction at a few strengths (columns) on seeded random samples or
  given latents (rows).

Every output is written atomically and an existing one is refused unless `overwrite`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import progress
from ..errors import E4EError
from ..fsutil import atomic_write, ensure_dir
from ..images import IMAGE_SUFFIXES

LATENT_SUFFIXES = (".npy", ".pt")
PCA_BLOCK = 10_000  # z rows per block; the samples depend only on the seed and their number
PCA_COMPONENTS = 80  # GANSpace's default
PCA_SAMPLES = 1_000_000  # GANSpace's N for StyleGAN2's W
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


# --------------------------------------------------------------------------------------
# Shared helpers


def directions_dir(weights_dir=None) -> Path:
    """The weights folder's `directions/`: where fitted directions go and `e4e ui` looks."""
    from ..weights.fetch import resolve_weights_dir

    return resolve_weights_dir(weights_dir) / "directions"


def check_free(paths: Sequence[Path], overwrite: bool) -> None:
    """E4EError when an output exists and `overwrite` is not set (checked before any slow work)."""
    if overwrite:
        return
    for p in paths:
        if Path(p).exists():
            raise E4EError(f"{p} already exists: pass --overwrite to replace it, or choose another name or --out")


def write_json_file(path: Path, data: dict) -> Path:
    text = json.dumps(data, indent=2, default=str) + "\n"
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def _sha256_file(path: Path) -> str:
    from ..digests import content_sha256

    return content_sha256(path)


# --------------------------------------------------------------------------------------
# Labels


@dataclass
class Labelled:
    """One labelled input: a latent file, an `e4e invert` folder or a photo; `where` names its origin for messages."""

    path: Path
    label: float
    where: str


def read_labels_csv(path: Path) -> list[Labelled]:
    """`path,label` rows (a `path,label` header and blank or `#` lines are skipped); relative
    paths are taken from the CSV's folder."""
    path = Path(path)
    if not path.is_file():
        raise E4EError(f"labels file {path} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise E4EError(f"cannot read labels file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    items: list[Labelled] = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) != 2:
            raise E4EError(f"{path}, line {lineno}: expected 2 columns (path,label), got {len(cells)}")
        if not items and cells[0].lower() == "path" and cells[1].lower() == "label":
            continue
        try:
            label = float(cells[1])
        except ValueError:
            raise E4EError(f"{path}, line {lineno}: label {cells[1][:40]!r} is not a number") from None
        if not np.isfinite(label):
            raise E4EError(f"{path}, line {lineno}: label {cells[1][:40]!r} is not a finite number")
        p = Path(cells[0]).expanduser()
        items.append(Labelled(p if p.is_absolute() else path.parent / p, label, f"{path.name}, line {lineno}"))
    if not items:
        raise E4EError(f"labels file {path} has no rows (expected path,label lines)")
    return items


def folder_items(folder: Path, label: float) -> list[Labelled]:
    """Latent files, photos and `e4e invert` output folders (holding latent.npy) in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise E4EError(f"folder {folder} not found")
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if (p.is_dir() and (p / "latent.npy").is_file()) or (p.is_file() and p.suffix.lower() in (*LATENT_SUFFIXES, *IMAGE_SUFFIXES)):
            out.append(Labelled(p, label, str(folder)))
    if not out:
        raise E4EError(f"folder {folder} holds no latents (.npy/.pt), photos or e4e invert folders")
    return out


# --------------------------------------------------------------------------------------
# Codes


def load_code(path: Path) -> np.ndarray:
    """A latent file -> float32 [D] (a W code: [D] or [1,D]) or [n,D] (W+: [n,D] or [1,n,D])."""
    from ..editing import load_single_tensor

    arr = load_single_tensor(path, what="latent").detach().float().cpu().numpy()
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (1, 2) or arr.shape[-1] < 2:
        raise E4EError(f"latent {path} has shape {list(arr.shape)}; expected [D], [n_styles,D] or [1,n_styles,D]")
    if not np.isfinite(arr).all():
        raise E4EError(f"latent {path} holds NaN or infinite values")
    return arr.astype(np.float32)


def _kind(item: Labelled) -> str:
    p = item.path
    if p.is_dir():
        if not (p / "latent.npy").is_file():
            raise E4EError(f"{item.where}: folder {p} holds no latent.npy (not an e4e invert output)")
        return "folder"
    if not p.exists():
        raise E4EError(f"{item.where}: {p} not found")
    if p.suffix.lower() in LATENT_SUFFIXES:
        return "latent"
    return "photo"


@dataclass
class CodeSource:
    """Where photos are inverted (only loaded when some input is a photo)."""

    domain: Optional[str] = None
    checkpoint: Optional[Path] = None
    device: str = "auto"
    precision: Optional[str] = "auto"
    weights_dir: Optional[Path] = None
    invert_out: Path = Path("e4e-out")
    align: bool = True


def gather_codes(items: Sequence[Labelled], source: CodeSource) -> tuple[np.ndarray, list[str]]:
    """Codes [N,D] or [N,n,D] of every item, in order, and what made them (checkpoints).
    Photos are inverted first (`e4e invert`'s job, reusing finished results in `invert_out`)."""
    kinds = [_kind(it) for it in items]
    codes: list[Optional[np.ndarray]] = [None] * len(items)
    makers: set[str] = set()
    photos = [i for i, k in enumerate(kinds) if k == "photo"]
    if photos:
        for i, arr, maker in _invert_photos([items[i] for i in photos], source, photos):
            codes[i] = arr
            makers.add(maker)
    for i, (it, k) in enumerate(zip(items, kinds)):
        if k == "photo":
            continue
        path = it.path / "latent.npy" if k == "folder" else it.path
        codes[i] = load_code(path)
        meta = path.parent / "meta.json"
        if meta.is_file():
            try:
                m = json.loads(meta.read_text())
                makers.add(f"{Path(str(m.get('checkpoint') or '?')).name} ({m.get('domain', '?')})")
            except (OSError, ValueError, AttributeError):
                pass
    shapes = {}
    for it, c in zip(items, codes):
        shapes.setdefault(tuple(c.shape), it)
    if len(shapes) > 1:
        (s1, a), (s2, b) = list(shapes.items())[:2]
        raise E4EError(f"latents of different shapes: {a.path.name} is {list(s1)}, {b.path.name} is {list(s2)} "
                       "(all must come from the same generator)")
    return np.stack(codes), sorted(makers)


def _invert_photos(items: Sequence[Labelled], source: CodeSource, index: Sequence[int]):
    from . import invert as pipeline

    model = pipeline.load_model(pipeline.ModelOptions(domain=source.domain, checkpoint=source.checkpoint,
                                                      device=source.device, precision=source.precision,
                                                      weights_dir=source.weights_dir))
    opts = pipeline.InvertOptions(out=source.invert_out, align=source.align, delta_scale=1.0)
    results = pipeline.invert_inputs([it.path for it in items], model, opts)
    by_input = {r.input: r for r in results}
    maker = f"{Path(str(getattr(model, 'path', None) or '?')).name} ({model.domain})"
    for i, it in zip(index, items):
        r = by_input.get(str(it.path))
        if r is None or r.status == "failed":
            raise E4EError(f"{it.where}: cannot invert {it.path}: {r.error if r else 'no result'}")
        folder = Path(r.outdir)
        try:
            made_from = json.loads((folder / "meta.json").read_text()).get("source")
        except (OSError, ValueError, AttributeError):
            made_from = None
        if made_from != str(it.path.resolve()):  # an older invert of another photo with the same name
            raise E4EError(f"{folder} holds the inversion of {made_from}, not {it.path}: use another --invert-out")
        yield i, load_code(folder / "latent.npy"), maker


def features(codes: np.ndarray, layers: Optional[str]) -> tuple[np.ndarray, Optional[list[int]]]:
    """The SVM's inputs: W codes [N,D] as they are; W+ codes [N,n,D] averaged over `layers`
    ('all' or e.g. '0-5', InterFaceGAN's W code is the mean over layers). Returns (x [N,D],
    chosen layer indices or None for W codes)."""
    from ..editing import parse_layers

    if codes.ndim == 2:
        if layers not in (None, "", "all"):
            raise E4EError("--layers needs W+ latents ([n_styles,D]); these are W codes ([D])")
        return codes.astype(np.float64), None
    chosen = parse_layers(layers, codes.shape[1])
    return codes[:, chosen].astype(np.float64).mean(axis=1), chosen


def condition_vector(path: Path, dim: int, n_styles: Optional[int], layers: Optional[list[int]]) -> np.ndarray:
    """A condition direction as a vector of the SVM's space [D]: a [D] direction as it is; a
    per-layer one [n,D] averaged over the fitted layers (moving the codes along the new
    direction on those layers then leaves the condition's score unchanged)."""
    from ..editing import load_single_tensor

    arr = load_single_tensor(path, what="condition direction").detach().double().cpu().numpy()
    shape = list(arr.shape)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    ok_rows = (1,) if n_styles is None else (1, n_styles)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != dim or (arr.shape[0] not in ok_rows and n_styles is not None):
        want = f"[{dim}], [1,{dim}]" + (f", [{n_styles},{dim}] or [1,{n_styles},{dim}]" if n_styles else "")
        raise E4EError(f"condition {path} has shape {shape}; these latents need {want}")
    if not np.isfinite(arr).all():
        raise E4EError(f"condition {path} holds NaN or infinite values")
    if arr.shape[0] == 1:
        return arr[0]
    return arr[layers].mean(axis=0) if layers is not None else arr.mean(axis=0)


# --------------------------------------------------------------------------------------
# fit


@dataclass
class FitJob:
    name: str
    labels: Optional[Path] = None
    positive: Optional[Path] = None
    negative: Optional[Path] = None
    out: Optional[Path] = None  # None: the weights folder's directions/
    layers: Optional[str] = None
    ratio: float = 0.02
    split: float = 0.7
    svm_c: float = 1.0
    seed: int = 0
    conditions: list = field(default_factory=list)
    overwrite: bool = False
    source: CodeSource = field(default_factory=CodeSource)
    weights_dir: Optional[Path] = None


@dataclass
class FitResult:
    direction: Path
    record: Path
    info: dict


def check_name(name: str) -> str:
    """NAME of NAME.npy: a plain file name (no folders), `.npy` dropped if given."""
    name = str(name).strip()
    if name.lower().endswith(".npy"):
        name = name[:-4]
    if not NAME_RE.fullmatch(name):
        raise E4EError(f"--name {name!r}: use letters, digits and _ . + - (no folders; --out DIR picks the folder)")
    return name


def labelled_items(job: FitJob) -> list[Labelled]:
    if job.labels is not None and (job.positive is not None or job.negative is not None):
        raise E4EError("give either a LABELS file or --positive DIR --negative DIR, not both")
    if job.labels is not None:
        return read_labels_csv(job.labels)
    if job.positive is None or job.negative is None:
        raise E4EError("nothing to fit: give a LABELS file (path,label) or both --positive DIR and --negative DIR")
    return folder_items(job.positive, 1.0) + folder_items(job.negative, 0.0)


def fit_direction(job: FitJob) -> FitResult:
    """Fit, project out the conditions, write NAME.npy and NAME.json (see the module docstring)."""
    from .. import boundaries

    name = check_name(job.name)
    out = Path(job.out) if job.out is not None else directions_dir(job.weights_dir)
    npy, rec = out / f"{name}.npy", out / f"{name}.json"
    check_free([npy, rec], job.overwrite)
    for c in job.conditions:
        if not Path(c).is_file():
            raise E4EError(f"condition {c} not found")
    items = labelled_items(job)
    labels = np.array([it.label for it in items], dtype=np.float64)
    boundaries.label_classes(labels, job.ratio)  # one class only: say so before inverting anything
    codes, makers = gather_codes(items, job.source)
    x, chosen = features(codes, job.layers)
    conds = [condition_vector(Path(c), x.shape[1], codes.shape[1] if codes.ndim == 3 else None, chosen)
             for c in job.conditions]
    b = boundaries.fit_boundary(x, labels, ratio=job.ratio, split=job.split, c=job.svm_c, seed=job.seed)
    normal = b.normal
    if conds:
        normal = boundaries.project_out(normal, np.stack(conds))
    if chosen is None or len(chosen) == codes.shape[1]:
        direction = normal.astype(np.float32)  # [D]: every layer
    else:
        direction = np.zeros(codes.shape[1:], np.float32)  # [n,D]: only the fitted layers move
        direction[chosen] = normal
    data_hash = hashlib.sha256(np.ascontiguousarray(codes, np.float32).tobytes()
                               + np.ascontiguousarray(labels).tobytes()).hexdigest()
    info = {
        "name": name,
        "kind": "interfacegan",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "shape": list(direction.shape),
        "labels": str(job.labels) if job.labels is not None else {"positive": str(job.positive), "negative": str(job.negative)},
        "data_sha256": data_hash,
        "label_kind": b.label_kind,
        "thresholds": b.threshold,
        "counts": {"codes": b.n_samples, "positive": b.n_positive, "negative": b.n_negative, "train": b.n_train,
                   "validation": b.n_validation},
        "accuracy": {"train": b.train_accuracy, "validation": b.validation_accuracy},
        "code_space": "W" if chosen is None else "W+",
        "layers": chosen if chosen is not None else "W",
        "ratio": job.ratio if b.label_kind == "real" else None,
        "split": job.split,
        "svm": {"model": "sklearn.svm.LinearSVC", "C": job.svm_c, "seed": job.seed,
                "note": "accuracy from the train/validation split; the written normal is refit on all kept codes"},
        "conditions": [{"file": str(Path(c).resolve()), "sha256": _sha256_file(Path(c))} for c in job.conditions],
        "checkpoint": makers,
    }
    ensure_dir(out)
    atomic_write(npy, lambda fh: np.save(fh, direction, allow_pickle=False))
    write_json_file(rec, info)  # last: its presence marks a finished fit
    return FitResult(npy, rec, info)


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
        from ..weights.fetch import checkpoint_path

        path = checkpoint_path(src.domain or "ffhq", src.weights_dir)
    return load_generator(Path(path)), Path(path)


def torch_device(name: str):
    from ..model import resolve_device

    return resolve_device(name)


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
        out = directions_dir(src.weights_dir) / f"{stem}_pca.pt"
    if out.suffix.lower() != ".pt":
        raise E4EError(f"--out {out}: a PCA file is a .pt file (as the released ffhq_pca.pt)")
    record = out.with_suffix(".json")
    check_free([out, record], job.overwrite)
    loaded, gpath = load_any_generator(src)
    t0 = time.time()
    pca = pca_of_mapping(loaded.generator, samples=job.samples, components=job.components, seed=job.seed,
                         device=torch_device(job.device), show_progress=job.show_progress)
    buf = io.BytesIO()
    torch.save(pca, buf)
    atomic_write(out, lambda fh: fh.write(buf.getvalue()))
    info = {"kind": "ganspace", "generator": {"file": gpath.name, "sha256": _sha256_file(gpath), "layout": loaded.kind},
            "samples": job.samples, "components": job.components, "seed": job.seed,
            "sampling": f"z ~ N(0,1) in blocks of {PCA_BLOCK} from torch.Generator().manual_seed(seed), w = mapping(z)",
            "std_top5": [round(float(s), 6) for s in pca["std"][:5]], "seconds": round(time.time() - t0, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json_file(record, info)
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


def find_direction(spec: str, weights_dir=None) -> str:
    """A path as given; else NAME(.npy/.pt) in the directions folder; else the spec as it is."""
    if Path(spec).exists():
        return spec
    folder = directions_dir(weights_dir)
    for cand in (folder / spec, folder / f"{spec}.npy", folder / f"{spec}.pt"):
        if NAME_RE.fullmatch(spec.removesuffix(".npy").removesuffix(".pt")) and cand.is_file():
            return str(cand)
    return spec


@dataclass
class _GeneratorModel:
    """What `resolve_direction` reads of a model, for a bare generator."""

    generator: object
    domain: str
    n_styles: int


def to_uint8(images) -> np.ndarray:
    """[B,3,H,W] in about [-1,1] -> uint8 [B,H,W,3]."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to("cpu").numpy().astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def show_strip(job: ShowJob) -> Path:
    """Rows: samples (seeded random W, truncated to `truncation`) or given latents; columns:
    the strengths. Each cell is a `tile` px square; writes a PNG of
    (len(strengths) * tile) x (rows * tile)."""
    import torch
    from PIL import Image

    from .invert import resolve_direction, slug

    if job.samples < 1 or job.samples > 64:
        raise E4EError(f"--samples must be 1..64, got {job.samples}")
    strengths = job.strengths or [-3.0, -1.5, 0.0, 1.5, 3.0]
    if len(strengths) > 32:
        raise E4EError(f"at most 32 strengths, got {len(strengths)}")
    spec = find_direction(job.direction, job.source.weights_dir)
    out = Path(job.out) if job.out is not None else Path("e4e-out") / f"{slug(Path(spec).stem if Path(spec).exists() else spec)}_strip.png"
    check_free([out], job.overwrite)
    loaded, _ = load_any_generator(job.source)
    g = loaded.generator.to(torch_device(job.device))
    dev = g.noises.noise_0.device
    domain = job.source.domain or loaded.domain_hint or "custom"
    model = _GeneratorModel(g, domain, g.n_styles)
    direction = resolve_direction(spec, model, pca_file=job.pca, weights_dir=job.source.weights_dir)
    tile = job.tile or min(256, loaded.size)
    if not 8 <= tile <= 1024:
        raise E4EError(f"--tile must be 8..1024, got {tile}")
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
        for s in strengths:
            edited = direction.apply(codes, float(s))
            cells.append(to_uint8(g.synthesize(edited, noise=g.fixed_noise())))  # [R,H,W,3]
    n_rows = codes.shape[0]
    strip = Image.new("RGB", (tile * len(strengths), tile * n_rows))
    for col, imgs in enumerate(cells):
        for row in range(n_rows):
            im = Image.fromarray(imgs[row])
            if im.size != (tile, tile):
                im = im.resize((tile, tile), Image.LANCZOS)
            strip.paste(im, (col * tile, row * tile))
    ensure_dir(out.parent if str(out.parent) else ".")
    from ..fsutil import atomic_save_image

    return atomic_save_image(strip, out)


# --------------------------------------------------------------------------------------
# list


def user_directions(weights_dir=None, extra: Optional[Path] = None) -> list[Path]:
    """Direction files (.npy/.pt, not PCA files) in the weights folder's directions/ and `extra`."""
    folders = [directions_dir(weights_dir)] + ([Path(extra)] if extra is not None else [])
    found: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in LATENT_SUFFIXES
                            and not p.name.startswith(".") and not p.stem.endswith("_pca"))
    return found
