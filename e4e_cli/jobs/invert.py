"""The user's main jobs as library calls: invert photos, edit latents, write the results.

`invert_inputs` and `edit_sources` are what `e4e invert` and `e4e edit` run; they never
stop a batch for one bad input: each item gets a status, failures are collected, and every
file is written atomically (temporary name, then rename).

Output layout of an invert into OUT:
    OUT/<stem>/aligned.png      the aligned face (faces only)
    OUT/<stem>/alignment.json   crop quad + photo size, for pasting back (faces only)
    OUT/<stem>/inversion.png    full-resolution reconstruction, 8 bit
    OUT/<stem>/latent.npy       float32 [n_styles,512]
    OUT/<stem>/latent.pt        float32 [1,n_styles,512] (what PTI/StyleCLIP-style tools load)
    OUT/<stem>/meta.json        source, checkpoint, domain, delta scale, ...
    OUT/summary.json            every input with its status
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import E4EError
from ..fsutil import atomic_save_image, atomic_write, ensure_dir, unique_names
from ..images import IMAGE_SUFFIXES

LATENT_SUFFIXES = (".npy", ".pt")
DEFAULT_OUT = Path("e4e-out")
N_STYLES_DOMAIN = {18: "ffhq", 16: "cars", 14: "church"}
MIN_SIDE = 16  # smaller inputs carry no usable content after the resize to 256


# --------------------------------------------------------------------------------------
# Small helpers


def write_json(path: Path, data) -> Path:
    text = json.dumps(data, indent=2, default=str) + "\n"
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_npy(path: Path, array: np.ndarray) -> Path:
    return atomic_write(path, lambda fh: np.save(fh, np.ascontiguousarray(array), allow_pickle=False))


def write_pt(path: Path, tensor) -> Path:
    import torch

    buf = io.BytesIO()
    torch.save(tensor.detach().cpu().contiguous(), buf)
    return atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def expand_inputs(inputs: Sequence[Path], suffixes=IMAGE_SUFFIXES) -> list[Path]:
    """Files as given; folders expanded to their files with `suffixes` (sorted). Missing paths are
    kept so that they get reported per item."""
    out: list[Path] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in suffixes and not q.name.startswith("."))
            if not found:
                raise E4EError(f"folder {p} holds no {'/'.join(sorted(s.lstrip('.') for s in suffixes))} files")
            out.extend(found)
        else:
            out.append(p)
    return out


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output folder names: each file's stem (characters a folder name should not hold replaced),
    unique for any set of inputs (`fsutil.unique_names`), so two inputs never share a folder."""
    return unique_names([re.sub(r"[^\w.+-]", "_", Path(p).stem) or "image" for p in paths])


def fmt_strength(s: float) -> str:
    """A strength as a file-name part: +3, -1p5; up to 10 significant digits, so two strengths
    of one run never share a name (`:g`'s 6 digits made +1 of both 1 and 1.000001)."""
    return f"{s:+.10g}".replace(".", "p")


def slug(text: str) -> str:
    return re.sub(r"[^\w+-]+", "-", text).strip("-") or "edit"


def progress_enabled(n: int) -> bool:
    return n > 1 and os.environ.get("E4E_NO_PROGRESS", "") in ("", "0")


def _progress(items, total: int, desc: str):
    if not progress_enabled(total):
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="img", leave=False)


# --------------------------------------------------------------------------------------
# Model loading


@dataclass
class ModelOptions:
    domain: Optional[str] = None  # None: the checkpoint's record (ffhq's file without --checkpoint)
    checkpoint: Optional[Path] = None
    device: str = "auto"
    precision: Optional[str] = None
    weights_dir: Optional[Path] = None


_MODELS: dict = {}


def load_model(opts: ModelOptions):
    """The E4E model for `opts` (cached per process): --checkpoint, else the domain's file in the
    weights folder. An explicit domain wins over what a given checkpoint records (with a note when
    they differ): a trained checkpoint may record the wrong one, and the user knows their photos."""
    from ..model import E4E

    if opts.checkpoint is not None:
        path = Path(opts.checkpoint)
        if not path.is_file():
            raise E4EError(f"checkpoint {path} not found")
    else:
        from ..weights.fetch import checkpoint_path

        path = checkpoint_path(opts.domain or "ffhq", opts.weights_dir)
    key = (str(Path(path).resolve()), opts.device, opts.precision)
    if key not in _MODELS:
        _MODELS[key] = E4E.from_checkpoint(path, device=opts.device, precision=opts.precision)
    model = _MODELS[key]
    if opts.domain is None or opts.domain == model.domain:
        return model
    if opts.checkpoint is None:
        raise E4EError(f"{path} is a {model.domain} checkpoint, but --domain {opts.domain} was asked for")
    import warnings

    warnings.warn(f"{path.name} records the {model.domain} domain; using --domain {opts.domain} as asked", stacklevel=2)
    return model.with_domain(opts.domain)


# --------------------------------------------------------------------------------------
# Invert


@dataclass
class ItemResult:
    input: str
    status: str  # "ok" | "skipped" | "failed"
    outdir: Optional[str] = None
    error: Optional[str] = None
    files: dict = field(default_factory=dict)


@dataclass
class InvertOptions:
    out: Path = DEFAULT_OUT
    align: bool = True
    batch_size: Optional[int] = None  # None: the model's memory-safe default (E4E.default_batch_size)
    delta_scale: float = 1.0
    overwrite: bool = False
    face: str = "largest"
    report: bool = False


def check_delta_scale(a: float) -> float:
    a = float(a)
    if not math.isfinite(a) or a < 0:
        raise E4EError(f"--delta-scale must be a finite number >= 0, got {a!r}")
    return a


def _prepare(path: Path, model, opts: InvertOptions) -> dict:
    """Load (and for faces align) one photo; returns what the batch step needs. Raises E4EError."""
    from ..images import load_image

    if not path.exists():
        raise E4EError(f"{path}: no such file")
    if opts.align and model.domain == "ffhq":
        from ..alignment import align_photo

        faces = align_photo(path, face=opts.face)
        face = faces[0]
        return {"image": face.image, "alignment": face.to_json(), "n_faces": face.n_faces}
    image = load_image(path)
    if min(image.size) < MIN_SIDE:
        raise E4EError(f"{path}: image is {image.width}x{image.height}, too small to invert (at least {MIN_SIDE}x{MIN_SIDE})")
    return {"image": image, "alignment": None}


def invert_inputs(inputs: Sequence[Path], model, opts: InvertOptions) -> list[ItemResult]:
    """Invert every input image; write the per-image folder and OUT/summary.json."""

    opts.delta_scale = check_delta_scale(opts.delta_scale)
    if opts.batch_size is not None and opts.batch_size < 1:
        raise E4EError(f"--batch-size must be >= 1, got {opts.batch_size}")
    batch_size = opts.batch_size or model.default_batch_size()
    out = ensure_dir(opts.out)
    paths = expand_inputs(inputs)
    stems = unique_stems(paths)
    results: list[ItemResult] = []
    pending: list[tuple[Path, str, dict]] = []

    def flush():
        if not pending:
            return
        batch = pending[:]
        pending.clear()
        try:
            x = model.preprocess([item["image"] for _, _, item in batch])
            parts = model.encode_parts(x)
            codes = parts.codes(opts.delta_scale)
            images = model.decode(codes)
        except Exception as exc:  # noqa: BLE001  (one bad batch never stops the others; see item_error)
            for p, stem, _ in batch:
                results.append(ItemResult(str(p), "failed", error=item_error(exc)))
            return
        pil = model.to_pil(images)
        for j, (p, stem, item) in enumerate(batch):
            d = out / stem
            try:
                files = _write_inversion(d, item, codes[j], pil[j], model, p, opts,
                                         parts=(parts.w0[j], parts.deltas[j]))
                results.append(ItemResult(str(p), "ok", outdir=str(d), files=files))
            except OSError as exc:
                results.append(ItemResult(str(p), "failed", outdir=str(d), error=f"cannot write {d}: {exc.strerror or exc}"))
            except Exception as exc:  # noqa: BLE001
                results.append(ItemResult(str(p), "failed", outdir=str(d), error=item_error(exc)))

    try:
        for p, stem in _progress(list(zip(paths, stems)), len(paths), "inverting"):
            d = out / stem
            if not opts.overwrite and (d / "latent.npy").is_file() and (d / "inversion.png").is_file() and (d / "meta.json").is_file():
                results.append(ItemResult(str(p), "skipped", outdir=str(d), files=_existing_files(d)))
                continue
            try:
                pending.append((p, stem, _prepare(p, model, opts)))
            except Exception as exc:  # noqa: BLE001
                results.append(ItemResult(str(p), "failed", error=item_error(exc)))
                continue
            if len(pending) >= batch_size:
                flush()
        flush()
    finally:  # also on Ctrl-C: summary.json says what was done
        order = {str(p): i for i, p in enumerate(paths)}
        results.sort(key=lambda r: order.get(r.input, 0))
        write_summary(out, results, model, opts)
    return results


def item_error(exc: BaseException) -> str:
    """One line for a failed item of a batch. An E4EError is the user's problem and says so; anything
    else is a bug or the system's (out of memory, a full disk) and is named with its type, so the
    batch goes on and summary.json records it (E4E_DEBUG=1 re-raises it with its traceback)."""
    if isinstance(exc, E4EError):
        return str(exc)
    if os.environ.get("E4E_DEBUG", "") not in ("", "0"):
        raise exc
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if getattr(exc, "filename", None) else "")
    return f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"


def _existing_files(d: Path) -> dict:
    return {f.stem if f.suffix != ".pt" else "latent_pt": str(f) for f in sorted(d.iterdir()) if f.is_file() and not f.name.startswith(".")}


def _write_inversion(d: Path, item: dict, codes, pil_image, model, source: Path, opts: InvertOptions, parts=None) -> dict:
    ensure_dir(d)
    files = {}
    if item.get("alignment") is not None:
        files["aligned"] = str(atomic_save_image(item["image"], d / "aligned.png"))
        files["alignment"] = str(write_json(d / "alignment.json", item["alignment"]))
    files["inversion"] = str(atomic_save_image(pil_image, d / "inversion.png"))
    arr = codes.detach().float().cpu().numpy().astype(np.float32)  # [n,512]
    files["latent"] = str(write_npy(d / "latent.npy", arr))
    files["latent_pt"] = str(write_pt(d / "latent.pt", codes.detach().float().cpu()[None]))
    meta = {
        "source": str(Path(source).resolve()),
        "checkpoint": getattr(model, "path", None),
        "domain": model.domain,
        "size": model.size,
        "n_styles": model.n_styles,
        "delta_scale": opts.delta_scale,
        "aligned": item.get("alignment") is not None,
        "n_faces": item.get("n_faces"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if opts.report and parts is not None:
        from ..analysis import latent_report, write_report

        report = latent_report(model, parts[0], parts[1], delta_scale=opts.delta_scale)
        files.update(write_report(d, report))
    files["meta"] = str(write_json(d / "meta.json", meta))  # last: its presence marks a finished item
    return files


def write_summary(out: Path, results: Sequence[ItemResult], model, opts) -> Path:
    data = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "checkpoint": getattr(model, "path", None),
        "domain": model.domain,
        "delta_scale": getattr(opts, "delta_scale", 1.0),
        "counts": {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")},
        "items": [r.__dict__ for r in results],
    }
    return write_json(Path(out) / "summary.json", data)


# --------------------------------------------------------------------------------------
# Directions


@dataclass
class Direction:
    """A resolved edit: `apply(codes, strength) -> codes`, with a default strength and a label."""

    label: str
    kind: str
    default_strength: Optional[float]
    apply: Callable
    identity: dict = field(default_factory=dict)  # what an edit made with it records (spec, file hash)


def resolve_direction(spec: str, model, *, pca_file: Optional[Path] = None, weights_dir: Optional[Path] = None) -> Direction:
    """A preset name, a direction file, `ganspace:COMPONENT:START:END` or `sefa:K[:LAYERS]`."""
    from .. import editing

    if spec in editing.PRESETS:
        p = editing.PRESETS[spec]
        if p.domain != model.domain:
            raise E4EError(f"direction {spec!r} is for {p.domain} checkpoints, this one is {model.domain}")
        from ..weights.fetch import require_asset

        path = require_asset(p.asset, weights_dir)
        ident = _file_identity(spec, path)
        if p.kind == "interfacegan":
            d = editing.load_direction(path, n_styles=model.n_styles)
            return Direction(spec, p.kind, p.strength, lambda c, s: editing.interfacegan(c, d, s), ident)
        pca = editing.load_pca(path)
        return Direction(spec, p.kind, p.strength,
                         lambda c, s: editing.ganspace(c, pca, p.component, p.start, p.end, s), ident)
    m = re.fullmatch(r"ganspace:(\d+):(\d+):(\d+)", spec)
    if m:
        comp, start, end = map(int, m.groups())
        if pca_file is None:
            from ..weights.fetch import require_asset

            asset = {"ffhq": "ffhq_pca", "cars": "cars_pca"}.get(model.domain)
            if asset is None:
                raise E4EError(f"no GANSpace PCA file is known for {model.domain}: pass --pca FILE")
            pca_file = require_asset(asset, weights_dir)
        pca = editing.load_pca(pca_file)
        return Direction(slug(spec), "ganspace", None, lambda c, s: editing.ganspace(c, pca, comp, start, end, s),
                         _file_identity(spec, pca_file))
    m = re.fullmatch(r"sefa:(\d+)(?::([\d,\- ]+|all))?", spec)
    if m:
        k = int(m.group(1))
        layers = editing.parse_layers(m.group(2), model.n_styles)
        if k >= model.generator.style_dim:
            raise E4EError(f"SeFa component {k} is out of range (0..{model.generator.style_dim - 1})")
        dirs, _ = editing.sefa_directions(model.generator, layers)
        vec = dirs[k]
        return Direction(slug(spec), "sefa", 3.0, lambda c, s: _add_on_layers(c, vec, layers, editing.check_strength(s)),
                         {"spec": spec})
    if spec.startswith(("ganspace:", "sefa:")):
        raise E4EError(f"bad direction {spec!r}: use ganspace:COMPONENT:START:END or sefa:K[:LAYERS]")
    path = Path(spec)
    if path.suffix.lower() in (".pt", ".npy", ".npz") or path.exists():
        if not path.is_file():
            raise E4EError(f"direction file {path} not found")
        d = editing.load_direction(path, n_styles=model.n_styles)
        return Direction(slug(path.stem), "file", None, lambda c, s: editing.interfacegan(c, d, s),
                         _file_identity(spec, path))
    known = ", ".join(n for n, p in editing.PRESETS.items() if p.domain == model.domain)
    raise E4EError(f"unknown direction {spec!r}; presets for {model.domain}: {known} (or a .pt/.npy file, "
                   "ganspace:COMPONENT:START:END, sefa:K[:LAYERS])")


def _file_identity(spec: str, path: Path) -> dict:
    """A direction's identity: its spec and the SHA-256 of the file it reads (small files)."""
    from ..digests import content_sha256

    return {"spec": spec, "file": Path(path).name, "sha256": content_sha256(path)}


def checkpoint_identity(model) -> dict:
    """Which checkpoint made an output: its content's SHA-256 (with its file name, for people), so
    two files of the same name, size and mtime are never taken for one (`digests` hashes each file
    version once); its domain and size for an in-memory model."""
    from ..digests import content_sha256

    path = getattr(model, "path", None)
    if path and Path(path).is_file():
        return {"file": Path(path).name, "sha256": content_sha256(path), "domain": model.domain}
    return {"domain": model.domain, "size": model.size}


def _add_on_layers(codes, vec, layers, strength):
    out = codes.clone()
    out[:, list(layers)] += strength * vec.to(codes)
    return out


def parse_sweep(text: str) -> list[float]:
    """'START:STOP:N' -> N evenly spaced strengths (N >= 2)."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise E4EError(f"bad --sweep {text!r}: use START:STOP:N, e.g. -3:3:7") from None
    if not (math.isfinite(a) and math.isfinite(b)) or n < 2 or n > 200:
        raise E4EError(f"bad --sweep {text!r}: START and STOP must be finite and 2 <= N <= 200")
    return [a + (b - a) * i / (n - 1) for i in range(n)]


# --------------------------------------------------------------------------------------
# Edit


@dataclass
class Source:
    """A latent to edit: codes [n,512], a name for outputs, and the invert folder it came from."""

    name: str
    codes: np.ndarray
    origin: str
    invert_dir: Optional[Path] = None


def load_latent_file(path: Path) -> np.ndarray:
    """A latent .npy ([n,512] or [1,n,512]) or .pt (tensor, or a dict holding one) -> float32 [n,512]."""
    from ..editing import load_single_tensor

    arr = load_single_tensor(path, what="latent").detach().float().cpu().numpy()
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[1] != 512:
        raise E4EError(f"latent {path} has shape {list(arr.shape)}; expected [n_styles,512] or [1,n_styles,512]")
    if not np.isfinite(arr).all():
        raise E4EError(f"latent {path} holds NaN or infinite values")
    return arr


def last_invert_sources(out: Path = DEFAULT_OUT) -> list[Path]:
    """The latents of the last `e4e invert` into `out` (its summary.json)."""
    summary = Path(out) / "summary.json"
    if not summary.is_file():
        raise E4EError(f"nothing to edit: no {summary} (run `e4e invert PHOTO` first, or name a photo or latent)")
    try:
        data = json.loads(summary.read_text())
        items = [i for i in data.get("items", []) if i.get("status") in ("ok", "skipped") and i.get("outdir")]
    except (ValueError, AttributeError):
        raise E4EError(f"{summary} is not a valid summary file: run `e4e invert` again") from None
    paths = [Path(i["outdir"]) / "latent.npy" for i in items]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise E4EError(f"the last invert into {out} produced no latents: run `e4e invert PHOTO` first")
    return paths


def domain_of_latent(path: Path, n_styles: int) -> Optional[str]:
    meta = path.parent / "meta.json"
    if meta.is_file():
        try:
            return json.loads(meta.read_text()).get("domain")
        except ValueError:
            pass
    return N_STYLES_DOMAIN.get(n_styles)


def editing_strength(s: float) -> float:
    from ..editing import check_strength

    return check_strength(s)


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


@dataclass
class EditJob:
    sources: list
    direction: str
    strengths: list
    sweep: Optional[list]
    out: Path
    domain: Optional[str] = None
    checkpoint: Optional[Path] = None
    pca: Optional[Path] = None
    device: str = "auto"
    precision: Optional[str] = None
    batch_size: Optional[int] = None  # None: the model's memory-safe default (E4E.default_batch_size)
    delta_scale: Optional[float] = None
    paste_back: bool = False
    color_match: bool = False
    paste_mask: str = "hull"
    invert_out: Path = DEFAULT_OUT
    overwrite: bool = False
    weights_dir: Optional[Path] = None


def _gather_sources(job: EditJob) -> tuple[list[tuple[Path, str]], list[ItemResult]]:
    """(path, kind) per source: kind 'latent' or 'photo'; unreadable names become failures."""
    if not job.sources:
        return [(p, "latent") for p in last_invert_sources(DEFAULT_OUT)], []
    items, failures = [], []
    for p in expand_inputs(job.sources, (*IMAGE_SUFFIXES, *LATENT_SUFFIXES)):
        suffix = p.suffix.lower()
        if suffix in LATENT_SUFFIXES:
            items.append((p, "latent"))
        elif suffix in IMAGE_SUFFIXES or p.exists():
            items.append((p, "photo"))
        else:
            failures.append(ItemResult(str(p), "failed", error="no such file"))
    return items, failures


def run_edit(job: EditJob) -> list[ItemResult]:
    """Resolve sources (inverting photos first), apply the direction at every strength, write images + latents."""

    items, results = _gather_sources(job)
    strengths = job.sweep or job.strengths
    # the domain decides the checkpoint: explicit, else the first latent's record, else ffhq
    domain = job.domain
    if domain is None:
        for p, kind in items:
            if kind == "latent" and p.is_file():
                try:
                    domain = domain_of_latent(p, load_latent_file(p).shape[0])
                except E4EError:
                    continue
                break
    domain = domain or "ffhq"
    model = load_model(ModelOptions(domain=domain, checkpoint=job.checkpoint, device=job.device,
                                    precision=job.precision, weights_dir=job.weights_dir))
    direction = resolve_direction(job.direction, model, pca_file=job.pca, weights_dir=job.weights_dir)
    if not strengths:
        if direction.default_strength is None:
            raise E4EError(f"direction {job.direction!r} has no default strength: pass --strength S or --sweep START:STOP:N")
        strengths = [direction.default_strength]
    out = ensure_dir(job.out)

    sources: list[Source] = []
    photos = [p for p, k in items if k == "photo"]
    if photos:
        inv = invert_inputs(photos, model, InvertOptions(out=job.invert_out, overwrite=job.overwrite,
                                                          delta_scale=1.0, batch_size=job.batch_size))
        for r in inv:
            if r.status == "failed":
                results.append(r)
            else:
                p = Path(r.outdir) / "latent.npy"
                sources.append(Source(Path(r.input).stem, load_latent_file(p), r.input, Path(r.outdir)))
    for p, kind in items:
        if kind != "latent":
            continue
        try:
            arr = load_latent_file(p)
        except E4EError as exc:
            results.append(ItemResult(str(p), "failed", error=str(exc)))
            continue
        name = p.parent.name if p.stem in ("latent",) else p.stem
        sources.append(Source(name, arr, str(p), p.parent if (p.parent / "meta.json").is_file() else None))

    strengths = list(dict.fromkeys(strengths, None)) if not job.sweep else strengths  # --strength 1 --strength 1.0: once
    names = unique_stems([Path(s.name) for s in sources])
    try:
        for src, name in _progress(list(zip(sources, names)), len(sources), "editing"):
            try:
                records = [edit_record(src, direction, s, job, model) for s in strengths]
                done = _finished_edit_files(name, direction, strengths, records, job, out)
                if done is not None:
                    results.append(ItemResult(src.origin, "skipped", outdir=str(out), files=done))
                    continue
                files = _edit_one(src, name, model, direction, strengths, records, job, out)
                results.append(ItemResult(src.origin, "ok", outdir=str(out), files=files))
            except Exception as exc:  # noqa: BLE001  (see item_error)
                results.append(ItemResult(src.origin, "failed", error=item_error(exc)))
    finally:
        write_summary(out, results, model, job)
    return results


def edit_record(src: "Source", direction: Direction, strength: float, job: "EditJob", model) -> dict:
    """What produced an edit output, stored beside it as `<output>.json`: a rerun skips the output
    only when this matches, so a file made with another direction file of the same name, another
    PCA, checkpoint, precision or delta scale is never taken for done."""
    import hashlib

    return {
        "direction": direction.identity or {"spec": direction.label},
        "strength": float(strength),
        "source": src.origin,
        "source_sha256": hashlib.sha256(np.ascontiguousarray(src.codes, dtype=np.float32).tobytes()).hexdigest(),
        "checkpoint": checkpoint_identity(model),
        "precision": str(getattr(model, "precision", "")).replace("torch.", ""),
        "delta_scale": job.delta_scale,
    }


def _finished_edit_files(name: str, direction: Direction, strengths: list, records: list, job: "EditJob",
                         out: Path) -> Optional[dict]:
    """The outputs of this edit if all are there and were made by the same edit (their `.json`
    records match `records`); None when (some of) it is to be done. An output made by a different
    edit is an E4EError (never overwritten silently) unless --overwrite."""
    label = slug(direction.label)
    paths, clashes = [], []
    for s, rec in zip(strengths, records):
        base = f"{name}_{label}_{fmt_strength(s)}"
        outputs = [out / f"{base}.png", out / f"{base}.npy"]
        paths += outputs
        if any(p.is_file() for p in outputs):
            have = _read_record(out / f"{base}.json")
            if have != rec:
                what = "no record of how it was made" if have is None else \
                    "another " + ", ".join(k.replace("_", " ") for k in rec if have.get(k) != rec[k])
                clashes.append(f"{outputs[0].name} ({what})")
    if clashes and not job.overwrite:
        raise E4EError(f"{out} already holds {clashes[0]}" + (f" and {len(clashes) - 1} more" if len(clashes) > 1 else "")
                       + ": pass --overwrite to replace, or --out DIR")
    if job.overwrite or job.paste_back:
        return None
    if job.sweep:
        paths += [out / f"{name}_{label}_sweep.png", out / f"{name}_{label}_sweep.gif"]
    if all(p.is_file() for p in paths):
        return {p.name: str(p) for p in paths}
    return None


def _read_record(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _source_scale(src: Source) -> float:
    if src.invert_dir is not None:
        try:
            return float(json.loads((src.invert_dir / "meta.json").read_text()).get("delta_scale", 1.0))
        except (ValueError, OSError):
            pass
    return 1.0


def _edit_one(src: Source, name: str, model, direction: Direction, strengths: list, records: list, job: EditJob,
              out: Path) -> dict:
    import torch

    if src.codes.shape[0] != model.n_styles:
        raise E4EError(f"latent has {src.codes.shape[0]} layers; the {model.domain} checkpoint needs {model.n_styles}")
    codes = torch.from_numpy(src.codes)[None].to(model.device)
    if job.delta_scale is not None:
        codes = rescale_codes(codes, model.latent_avg, from_scale=_source_scale(src), to_scale=job.delta_scale)
    edited = torch.cat([direction.apply(codes, s) for s in strengths])  # [S,n,512]
    frames = []
    files: dict = {}
    step = job.batch_size or model.default_batch_size()
    for start in range(0, len(strengths), step):
        chunk = edited[start : start + step]
        frames += model.to_pil(model.decode(chunk))
    for s, codes_s, frame, rec in zip(strengths, edited, frames, records):
        base = f"{name}_{slug(direction.label)}_{fmt_strength(s)}"
        files[f"{base}.png"] = str(atomic_save_image(frame, out / f"{base}.png"))
        files[f"{base}.npy"] = str(write_npy(out / f"{base}.npy", codes_s.detach().float().cpu().numpy()))
        files[f"{base}.json"] = str(write_json(out / f"{base}.json", rec))  # last: marks the output done
    if job.sweep:
        base = f"{name}_{slug(direction.label)}_sweep"
        files[f"{base}.png"] = str(save_strip(frames, out / f"{base}.png"))
        files[f"{base}.gif"] = str(save_gif(frames, out / f"{base}.gif"))
    if job.paste_back:
        from .pasteback import paste_back_edits

        files.update(paste_back_edits(src, name, direction.label, strengths, frames, out, sweep=bool(job.sweep),
                                      color_match=job.color_match, mask=job.paste_mask))
    return files


def save_strip(frames, path: Path, height: int = 256) -> Path:
    """Frames side by side, each scaled to `height` pixels."""
    from PIL import Image

    scaled = [f.resize((max(1, round(f.width * height / f.height)), height), Image.LANCZOS) for f in frames]
    strip = Image.new("RGB", (sum(f.width for f in scaled), height))
    x = 0
    for f in scaled:
        strip.paste(f, (x, 0))
        x += f.width
    return atomic_save_image(strip, path)


def save_gif(frames, path: Path, max_side: int = 512, ms: int = 120) -> Path:
    """An animated GIF that plays the sweep forwards and back."""
    from PIL import Image

    scale = min(1.0, max_side / max(frames[0].size))
    size = (max(1, round(frames[0].width * scale)), max(1, round(frames[0].height * scale)))
    small = [f.resize(size, Image.LANCZOS) for f in frames]
    seq = small + small[-2:0:-1]
    return atomic_write(path, lambda fh: seq[0].save(fh, format="GIF", save_all=True, append_images=seq[1:], duration=ms, loop=0))
