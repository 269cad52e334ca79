"""Making editing directions from labels: what `e4e directions fit` (and `list`) run.

- fit: labelled latents (a `path,label` CSV, or a positive and a negative folder) -> their codes
  (latent files, `e4e invert` folders, or photos inverted first) -> `boundaries.fit_boundary`
  (optionally `project_out` of condition directions) -> NAME.npy ([D], or [n_styles,D] when
  fitted on some layers: zero on the others) and NAME.json (how it was made), in the weights
  folder's `directions/` by default, where `e4e ui` finds them.

`jobs.sampled` runs `pca` and `show` (they sample a generator).

Every output is written atomically and an existing one is refused unless `overwrite`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..digests import content_sha256, sha256_file
from ..editing import SAVED_NAME
from ..errors import USAGE, E4EError
from ..fsutil import atomic_write, ensure_dir
from ..images import IMAGE_SUFFIXES
from .outputs import write_json

LATENT_SUFFIXES = (".npy", ".pt")
NAME_RE = SAVED_NAME  # a NAME that `e4e edit -d NAME` finds again


# --------------------------------------------------------------------------------------
# Shared helpers


def directions_dir(weights_dir=None) -> Path:
    """The weights folder's `directions/`: where fitted directions go and `e4e ui` looks."""
    from ..weights.locate import resolve_weights_dir

    return resolve_weights_dir(weights_dir) / "directions"


def check_free(paths: Sequence[Path], overwrite: bool) -> None:
    """E4EError when an output exists and `overwrite` is not set (checked before any slow work)."""
    if overwrite:
        return
    for p in paths:
        if Path(p).exists():
            raise E4EError(f"{p} already exists: pass --overwrite to replace it, or choose another name or --out")


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
    invert_out: Path = Path("e4e-out/fit-inversions")  # apart from `e4e invert`'s e4e-out/summary.json
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
    from ..model import ModelOptions, load_model
    from .invert import InvertOptions, invert_inputs

    model = load_model(ModelOptions(domain=source.domain, checkpoint=source.checkpoint, device=source.device,
                                    precision=source.precision, weights_dir=source.weights_dir))
    # folders named by content: photos of the same name in other labelled folders (or runs) never
    # meet, the same photo is inverted once, and `invert_inputs` checks each folder's record
    results = invert_inputs([it.path for it in items], model,
                            InvertOptions(out=source.invert_out, align=source.align, delta_scale=1.0, content_names=True))
    by_input = {r.input: r for r in results}
    maker = f"{Path(str(getattr(model, 'path', None) or '?')).name} ({model.domain})"
    for i, it in zip(index, items):
        r = by_input.get(str(it.path))
        if r is None or r.status == "failed":
            raise E4EError(f"{it.where}: cannot invert {it.path}: {r.error if r else 'no result'}")
        yield i, load_code(Path(r.outdir) / "latent.npy"), maker


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
    if Path(job.positive).resolve() == Path(job.negative).resolve():
        raise E4EError(f"--positive and --negative are the same folder ({job.positive}): give one folder with the "
                       "attribute and one without", exit_code=USAGE)
    items = folder_items(job.positive, 1.0) + folder_items(job.negative, 0.0)
    check_no_item_in_both(items)
    return items


def check_no_item_in_both(items: Sequence[Labelled]) -> None:
    """The same file (by content) labelled both ways tells the fit nothing but noise: refused."""
    seen: dict = {}
    for it in items:
        p = it.path / "latent.npy" if it.path.is_dir() else it.path
        if not p.is_file():
            continue
        other = seen.setdefault(sha256_file(p), it)
        if other.label != it.label:
            raise E4EError(f"{other.path} and {it.path} are the same file but labelled {other.label:g} and {it.label:g}")


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
        "conditions": [{"file": str(Path(c).resolve()), "sha256": content_sha256(Path(c))} for c in job.conditions],
        "checkpoint": makers,
    }
    ensure_dir(out)
    atomic_write(npy, lambda fh: np.save(fh, direction, allow_pickle=False))
    write_json(rec, info)  # last: its presence marks a finished fit
    return FitResult(npy, rec, info)


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
