"""Invert photos: what `e4e invert` runs (and `e4e edit` for photos given to it).

`invert_inputs` never stops a batch for one bad input: each item gets a status, failures are
collected, and every file is written atomically (temporary name, then rename).

Output layout of an invert into OUT:
    OUT/<stem>/aligned.png      the aligned face (faces only)
    OUT/<stem>/alignment.json   crop quad + photo size, for pasting back (faces only)
    OUT/<stem>/inversion.png    full-resolution reconstruction, 8 bit
    OUT/<stem>/latent.npy       float32 [n_styles,512]
    OUT/<stem>/latent.pt        float32 [1,n_styles,512] (what PTI/StyleCLIP-style tools load)
    OUT/<stem>/meta.json        source, checkpoint, domain, delta scale, made_with, ...
    OUT/summary.json            every input with its status (and, after Ctrl-C, what was left)
<stem> is the photo's stem made safe (`..`, `.`, hidden or blank names stay inside OUT). A rerun
skips a finished folder only when `made_with` matches (the photo's and the checkpoint's SHA-256,
precision, alignment, face, delta scale, refinement); one made another way is a failed item
(never silently kept or replaced) until --overwrite.
With `--refine hyperstyle` (model: a refine.HyperStyle), also:
    OUT/<stem>/weight_offsets.npz   the generator's per-layer weight offsets (refine.save_offsets)
With `--refine pti` (model: a pti.PTI), also:
    OUT/<stem>/tuned_generator.npz  the tuned generator's difference from the base (pti.save_diff)
and inversion.png is the refined reconstruction, latent.npy the W code the edits apply to.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import domains, progress
from ..digests import sha256_file
from ..editing import check_delta_scale
from ..errors import E4EError
from ..fsutil import atomic_save_image, child_path, ensure_dir
from .ahead import AlignAhead, align_input, finished
from .outputs import (DEFAULT_OUT, ItemResult, checkpoint_identity, expand_inputs, item_error, read_meta, unique_stems,
                      write_json, write_npy, write_pt, write_summary)

MIN_SIDE = 16  # smaller inputs carry no usable content after the resize to 256


@dataclass
class InvertOptions:
    out: Path = DEFAULT_OUT
    align: bool = True
    batch_size: Optional[int] = None  # None: the model's memory-safe default (E4E.default_batch_size)
    delta_scale: float = 1.0
    overwrite: bool = False
    face: str = "largest"
    report: bool = False
    refine_steps: Optional[int] = None  # with a HyperStyle model: hypernetwork passes (None: 5)
    offsets_precision: str = "fp16"
    content_names: bool = False  # folders named <stem>-<first 12 hex of the photo's SHA-256>: shared by runs over
    # other folders whose photos have the same names (`e4e directions fit` inverts labelled folders so)


def prepare_input(path: Path, model, opts: InvertOptions, *, ahead: Optional[AlignAhead] = None) -> dict:
    """Load (and for faces align) one photo; returns what the batch step needs. Raises E4EError.
    A photo that `ahead` aligned already is taken from it."""
    from ..images import load_image

    if not path.exists():
        raise E4EError(f"{path}: no such file")
    if opts.align and domains.aligns_faces(model.domain):
        early = ahead.take(path) if ahead is not None else None
        return early if early is not None else align_input(path, opts.face)
    image = load_image(path)
    if min(image.size) < MIN_SIDE:
        raise E4EError(f"{path}: image is {image.width}x{image.height}, too small to invert (at least {MIN_SIDE}x{MIN_SIDE})")
    return {"image": image, "alignment": None}


def invert_inputs(inputs: Sequence[Path], model, opts: InvertOptions, *, ahead: Optional[AlignAhead] = None) -> list[ItemResult]:
    """Invert every input image; write the per-image folder and OUT/summary.json. `ahead`: the
    first photo's alignment, started before the model was loaded (`e4e invert` does that)."""

    opts.delta_scale = check_delta_scale(opts.delta_scale)
    refining = hasattr(model, "refine")
    if opts.batch_size is not None and opts.batch_size < 1:
        raise E4EError(f"--batch-size must be >= 1, got {opts.batch_size}")
    batch_size = opts.batch_size or model.default_batch_size()
    out = ensure_dir(opts.out)
    paths = expand_inputs(inputs)
    stems = unique_stems(paths) if not opts.content_names else content_stems(paths)
    results: list[ItemResult] = []
    pending: list[tuple[Path, str, dict]] = []
    if ahead is not None and ahead.busy() and hasattr(model, "prepare_encoder"):
        model.prepare_encoder()  # what the first encode would do, while the first photo is aligned

    def flush():
        if not pending:
            return
        batch = pending[:]
        pending.clear()
        refined = None
        try:
            x = model.preprocess([item["image"] for _, _, item in batch])
            if refining:
                refined = model.refine(x, steps=opts.refine_steps)
                parts, codes, images = None, refined.codes, refined.image
            else:
                parts = model.encode_parts(x)
                codes = parts.codes(opts.delta_scale)
                images = model.decode(codes)
        except Exception as exc:  # noqa: BLE001  (one bad batch never stops the others; see item_error)
            for p, stem, _ in batch:
                results.append(ItemResult(str(p), "failed", error=item_error(exc)))
            return
        pil = model.to_pil(images)
        for j, (p, stem, item) in enumerate(batch):
            d = child_path(out, stem)
            try:
                files = _write_inversion(d, item, codes[j], pil[j], model, p, opts,
                                         parts=None if parts is None else (parts.w0[j], parts.deltas[j]),
                                         offsets=None if refined is None else refined.offsets_of(j))
                results.append(ItemResult(str(p), "ok", outdir=str(d), files=files))
            except OSError as exc:
                results.append(ItemResult(str(p), "failed", outdir=str(d), error=f"cannot write {d}: {exc.strerror or exc}"))
            except Exception as exc:  # noqa: BLE001
                results.append(ItemResult(str(p), "failed", outdir=str(d), error=item_error(exc)))

    setup = made_with(model, opts)
    interrupted = True
    try:
        for p, stem in progress.iterate(list(zip(paths, stems)), total=len(paths), desc="inverting"):
            d = child_path(out, stem)
            try:
                if not p.is_file():
                    raise E4EError("no such file" if not p.exists() else "not a file")
                source_sha = sha256_file(p)
                if not opts.overwrite and finished(d):
                    results.append(_existing(p, d, dict(setup, source_sha256=source_sha), refining))
                    continue
                item = prepare_input(p, model, opts, ahead=ahead)
            except Exception as exc:  # noqa: BLE001
                results.append(ItemResult(str(p), "failed", error=item_error(exc)))
                continue
            pending.append((p, stem, dict(item, made_with=dict(setup, source_sha256=source_sha))))
            if len(pending) >= batch_size:
                flush()
        flush()
        interrupted = False
    finally:  # also on Ctrl-C: summary.json says what was done, and what was left
        order = {str(p): i for i, p in enumerate(paths)}
        results.sort(key=lambda r: order.get(r.input, 0))
        done = {r.input for r in results}
        write_summary(out, results, model, opts, left=[str(p) for p in paths if str(p) not in done] if interrupted else None)
    return results


def content_stems(paths) -> list[str]:
    """Folder names by content: `<stem>-<12 hex of SHA-256>` (a missing file keeps its stem, and fails)."""
    from ..fsutil import unique_names

    names = []
    for p, stem in zip(paths, unique_stems(paths)):
        names.append(f"{stem}-{sha256_file(p)[:12]}" if Path(p).is_file() else stem)
    return unique_names(names)


def made_with(model, opts: InvertOptions) -> dict:
    """What decides an inversion besides its photo, by content: the checkpoint's SHA-256 (and the
    W-encoder's for HyperStyle), precision, alignment, face, delta scale, refinement. Stored in
    meta.json; a rerun skips a finished folder only when it matches (and its photo's SHA-256)."""
    from ..digests import content_sha256

    refining = hasattr(model, "refine")
    aligned = bool(opts.align and domains.aligns_faces(model.domain))
    rec = {"checkpoint": checkpoint_identity(model),
           "precision": str(getattr(model, "precision", None) or model.decoder.precision).replace("torch.", ""),
           "align": aligned, "face": opts.face if aligned else None,
           "delta_scale": None if refining else opts.delta_scale, "refine": None}
    if refining and hasattr(model, "made_with"):  # pti
        rec["refine"] = model.made_with()
    elif refining:
        from ..refine import DEFAULT_STEPS

        we = getattr(model, "w_encoder_path", None)
        rec["refine"] = {"steps": DEFAULT_STEPS if opts.refine_steps is None else opts.refine_steps,
                         "offsets_precision": opts.offsets_precision,
                         "w_encoder_sha256": content_sha256(we) if we and Path(we).is_file() else None}
    return rec


def _existing(path: Path, d: Path, want: dict, refining: bool) -> ItemResult:
    """A finished folder met again: skipped when it was made from the same photo the same way,
    else failed (never silently kept, never silently replaced)."""
    other = _other_kind(d, refining)
    if other:
        return ItemResult(str(path), "failed", outdir=str(d),
                          error=f"{d} holds {other}: pass --overwrite to replace it, or choose another --out")
    have = (read_meta(d) or {}).get("made_with")
    if have == want:
        return ItemResult(str(path), "skipped", outdir=str(d), files=_existing_files(d))
    if not isinstance(have, dict):
        what = "no record of how it was made"
    else:
        names = {"source_sha256": "photo", "delta_scale": "delta scale"}
        what = "another " + ", ".join(names.get(k, k) for k in want if have.get(k) != want[k])
    return ItemResult(str(path), "failed", outdir=str(d), error=f"{d} holds an inversion with {what}: "
                      "pass --overwrite to redo it, or choose another --out")


def _existing_files(d: Path) -> dict:
    return {f.stem if f.suffix != ".pt" else "latent_pt": str(f) for f in sorted(d.iterdir()) if f.is_file() and not f.name.startswith(".")}


def _other_kind(d: Path, refining: bool) -> Optional[str]:
    """What an existing result folder holds when it is not the kind being made now (refined or
    plain): skipping it would silently mix the two kinds in one run's results."""
    meta = read_meta(d)
    if meta is None:
        return None
    refined = bool(meta.get("refine"))
    if refined == refining:
        return None
    if not refined:
        return "a plain e4e inversion"
    return "a PTI-tuned inversion" if meta["refine"].get("method") == "pti" else "a HyperStyle-refined inversion"


def _write_inversion(d: Path, item: dict, codes, pil_image, model, source: Path, opts: InvertOptions, parts=None,
                     offsets=None) -> dict:
    ensure_dir(d)
    files = {}
    refine_meta = None
    if offsets is not None and hasattr(model, "write_result"):  # pti: the tuned generator's difference
        refine_meta, written = model.write_result(d, offsets)
        files.update(written)
    elif offsets is not None:
        from ..refine import save_offsets

        refine_meta = model.record(steps=opts.refine_steps)
        path = save_offsets(d / "weight_offsets.npz", offsets, meta=refine_meta, precision=opts.offsets_precision)
        files["weight_offsets"] = str(path)
        refine_meta = dict(refine_meta, offsets_precision=opts.offsets_precision, offsets_bytes=path.stat().st_size)
    for name in ("weight_offsets.npz", "tuned_generator.npz"):  # --overwrite by another kind of result
        if name not in {Path(f).name for f in files.values()} and (d / name).exists():
            (d / name).unlink()
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
        "delta_scale": None if offsets is not None else opts.delta_scale,
        "made_with": item.get("made_with"),
        "refine": refine_meta,
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
