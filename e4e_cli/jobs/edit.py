"""Edit latents: what `e4e edit` runs. Resolve the direction, gather the sources (inverting
photos first), apply it at every strength, decode and write images, latents and records.

Each output `<name>_<direction>_<strength>.png/.npy` has a `.json` record of what made it; a
rerun skips outputs whose record matches and refuses to overwrite one made by another edit.

What is edited and which model decodes it is `jobs.edit_sources`: a latent is decoded by what
made it (the checkpoint its meta.json records, by SHA-256). A latent refined by HyperStyle
(`e4e invert --refine hyperstyle`: weight_offsets.npz beside it, or one `.npz` holding code,
offsets and record; photos given with `--refine hyperstyle`) is decoded by that refiner's
generator with its offsets: the edit moves the code, the offsets stay, as the reference's
editing scripts do. `--generator FILE` decodes with another generator
of the same architecture instead (a fine-tuned one: domain adaptation keeps the person).

With `preview_size` N (`--preview-size`) the generator stops after its N block (E4E.decode's
early exit, the full decode's partial sum at N px): a fast sweep whose outputs go to
`OUT/preview-N/`, each record saying `preview_size: N`, so none is taken for a full-size result.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .. import progress
from ..editing import Direction, rescale_codes, resolve_direction
from ..errors import USAGE, E4EError
from ..fsutil import atomic_save_image, ensure_dir, slug
from .edit_sources import Source, choose_decoder, gather_sources, read_source
from .invert import InvertOptions, invert_inputs
from .outputs import (DEFAULT_OUT, ItemResult, checkpoint_identity, fmt_strength, item_error, read_meta, save_gif,
                      save_strip, strength_label, unique_names_of, write_json, write_npy, write_summary)


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
    generator: Optional[Path] = None  # decode with this generator (same architecture) instead
    preview_size: Optional[int] = None  # decode at this resolution (early exit) into out/preview-N/
    refine: bool = False  # photos given as sources are refined by HyperStyle (`--refine hyperstyle`)
    refine_steps: Optional[int] = None
    refiner: Optional[Path] = None
    w_encoder: Optional[Path] = None
    offsets_precision: str = "fp16"
    text: Optional[str] = None  # a text edit (StyleCLIP): `direction` is then unused, strengths are α
    neutral: Optional[str] = None
    beta: float = 0.15
    relevance: Optional[Path] = None


def run_edit(job: EditJob) -> list[ItemResult]:
    """Resolve sources (inverting photos first), apply the direction at every strength, write images + latents."""

    items, results = gather_sources(job.sources)
    strengths = job.sweep or job.strengths
    loaded: list[Source] = []
    for p, kind in items:
        if kind == "photo":
            continue
        try:
            loaded.append(read_source(p, kind))
        except E4EError as exc:
            results.append(ItemResult(str(p), "failed", error=str(exc)))
    photos = [p for p, k in items if k == "photo"]
    if not loaded and not photos:
        return results  # nothing readable: each source's own reason, no model to load
    decoder = choose_decoder(job, loaded)
    model = decoder.model
    if job.generator is not None:
        model = _with_generator(model, job.generator)
    if job.text is not None:
        from ..textedit import text_direction

        direction = text_direction(model, text=job.text, neutral=job.neutral, beta=job.beta, relevance=job.relevance,
                                   weights_dir=job.weights_dir)
    else:
        direction = resolve_direction(job.direction, model, pca_file=job.pca, weights_dir=job.weights_dir)
    if not strengths:
        if direction.default_strength is None:
            raise E4EError(f"direction {job.direction!r} has no default strength: pass --strength S or --sweep START:STOP:N")
        strengths = [direction.default_strength]
    if job.preview_size is not None and job.preview_size > model.size:
        raise E4EError(f"--preview-size {job.preview_size} is larger than the {model.domain} checkpoint's "
                       f"{model.size} px images", exit_code=USAGE)
    if job.preview_size == model.size:  # the full decode itself: a full-size result
        job = dataclasses.replace(job, preview_size=None)
    out = ensure_dir(job.out / f"preview-{job.preview_size}" if job.preview_size else job.out)

    sources: list[Source] = []
    if photos and decoder.inverter is None:
        results += [ItemResult(str(p), "failed", error=decoder.photo_refusal) for p in photos]
    elif photos:
        inv = invert_inputs(photos, decoder.inverter, InvertOptions(
            out=job.invert_out, overwrite=job.overwrite, delta_scale=1.0, batch_size=job.batch_size,
            refine_steps=job.refine_steps, offsets_precision=job.offsets_precision))
        for r in inv:
            if r.status == "failed":
                results.append(r)
                continue
            try:
                src = read_source(Path(r.outdir) / "latent.npy", "latent")
            except E4EError as exc:
                results.append(ItemResult(r.input, "failed", error=str(exc)))
                continue
            sources.append(dataclasses.replace(src, name=Path(r.outdir).name, origin=r.input))
    for src in loaded:
        why = decoder.refuses(src)
        if why:
            results.append(ItemResult(src.origin, "failed", error=why))
        else:
            sources.append(src)

    strengths = list(dict.fromkeys(strengths, None)) if not job.sweep else strengths  # --strength 1 --strength 1.0: once
    names = unique_names_of([s.name for s in sources])
    interrupted = True
    try:
        for src, name in progress.iterate(list(zip(sources, names)), total=len(sources), desc="editing"):
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
        interrupted = False
    finally:  # also on Ctrl-C: summary.json says what was done, and what was left
        done = {r.input for r in results}
        write_summary(out, results, model, job,
                      left=[s.origin for s in sources if s.origin not in done] if interrupted else None)
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
        **({"preview_size": job.preview_size} if job.preview_size else {}),  # full-size records as before
        **({"offsets_sha256": _file_sha256(src.offsets_file)} if src.offsets_file is not None else {}),
        **({"generator": _generator_identity(job.generator)} if job.generator is not None else {}),
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
    """The delta scale the latent was inverted at (1 when unrecorded; a HyperStyle code records
    none: it has no deltas, and rescaling leaves it as it is)."""
    scale = (read_meta(src.invert_dir) or {}).get("delta_scale")
    try:
        return 1.0 if scale is None else float(scale)
    except (TypeError, ValueError):
        return 1.0


def _edit_one(src: Source, name: str, model, direction: Direction, strengths: list, records: list, job: EditJob,
              out: Path) -> dict:
    import torch

    if src.codes.shape[0] != model.n_styles:
        raise E4EError(f"latent has {src.codes.shape[0]} layers; the {model.domain} checkpoint needs {model.n_styles}")
    photo = None
    if job.paste_back:  # before anything is written: a source that cannot be pasted back fails whole
        from .pasteback import paste_context

        photo = paste_context(src.invert_dir)
    offsets = None
    if src.tuned:  # PTI: the tuned generator (base + the stored difference) decodes it
        from ..pti import load_tuned

        model, _ = load_tuned(src.offsets_file, model)
    elif src.offsets_file is not None:
        from ..refine import load_offsets

        offsets, _ = load_offsets(src.offsets_file, generator=model.generator)
    codes = torch.from_numpy(src.codes)[None].to(model.device)
    if job.delta_scale is not None:
        codes = rescale_codes(codes, model.latent_avg, from_scale=_source_scale(src), to_scale=job.delta_scale)
    edited = torch.cat([direction.apply(codes, s) for s in strengths])  # [S,n,512]
    frames = []
    files: dict = {}
    step = job.batch_size or model.default_batch_size()
    for start in range(0, len(strengths), step):
        chunk = edited[start : start + step]
        styles = None
        if direction.style_offsets is not None:  # a text edit: α·Δs per strength, in StyleSpace
            styles = torch.stack([direction.style_offsets(s) for s in strengths[start : start + step]])
        frames += model.to_pil(model.decode(chunk, offsets=offsets, size=job.preview_size, style_offsets=styles))
    for s, codes_s, frame, rec in zip(strengths, edited, frames, records):
        base = f"{name}_{slug(direction.label)}_{fmt_strength(s)}"
        files[f"{base}.png"] = str(atomic_save_image(frame, out / f"{base}.png"))
        files[f"{base}.npy"] = str(write_npy(out / f"{base}.npy", codes_s.detach().float().cpu().numpy()))
        files[f"{base}.json"] = str(write_json(out / f"{base}.json", rec))  # last: marks the output done
    if job.sweep:
        base = f"{name}_{slug(direction.label)}_sweep"
        files[f"{base}.png"] = str(save_strip(frames, out / f"{base}.png", labels=[strength_label(s) for s in strengths]))
        files[f"{base}.gif"] = str(save_gif(frames, out / f"{base}.gif"))
    if job.paste_back:
        from .pasteback import paste_back_edits

        files.update(paste_back_edits(src, name, direction.label, strengths, frames, out, sweep=bool(job.sweep),
                                      color_match=job.color_match, mask=job.paste_mask, context=photo))
    return files


def _file_sha256(path: Optional[Path]) -> Optional[str]:
    if path is None:
        return None
    from ..digests import content_sha256

    if not path.is_file():
        raise E4EError(f"{path} is missing: the refined latent beside it cannot be decoded without its offsets")
    return content_sha256(path)


def _generator_identity(path: Path) -> dict:
    from ..digests import content_sha256

    return {"file": Path(path).name, "sha256": content_sha256(path)}


def _with_generator(model, path: Path):
    """`model` decoding with the generator in `path` (rosinality .pt, e4e checkpoint or SG2-ADA .pkl)
    instead of its own: same architecture required, its latent_avg kept (the codes are `model`'s)."""
    from ..model import E4E
    from ..train.generators import load_generator

    loaded = load_generator(path, size=model.size)
    g = loaded.generator
    if g.n_styles != model.n_styles or [m.weight.shape for m, _ in g.layers()] != \
            [m.weight.shape for m, _ in model.generator.layers()]:
        raise E4EError(f"generator {Path(path).name} has another architecture than the {model.domain} checkpoint's")
    return E4E(None, g.to(model.device), model.latent_avg, model.info, device=model.device,
               precision=model.precision, path=str(path))
