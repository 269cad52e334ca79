"""Inverting a whole dataset: `e4e invert-dataset DIR --out PREFIX` (issue 17).

The sorted list of images under DIR is cut into shards of `shard_size` images (shard k holds
images k*N .. (k+1)*N-1); under torchrun, rank r does the shards k with k % world == r, so the
result does not depend on the number of processes. Each shard is one `.npz`, written to a
temporary name and renamed:

    PREFIX-00000.npz: codes float32 [m, n_styles, 512], paths [m] (relative to DIR),
                      ok bool [m] (False where the image failed: its codes are zeros),
                      errors [m] (one-line reasons, '' where ok), fingerprint (what made it)

When every rank is done, rank 0 writes `PREFIX.index.json` (shards, counts, SHA-256 of each
shard, checkpoint, options, source list) and `PREFIX.failures.jsonl` (one line per bad image).
A rerun verifies each shard that exists (it loads, holds the expected paths, and was made by
the same checkpoint and options) and skips it; a corrupt or foreign one is redone. The
checkpoint is named by its content (SHA-256, `digests`), never by file name, size or mtime.
A run whose fingerprint differs from an existing index's is refused unless `overwrite`
(which removes the old index first), and `load_latents` checks every shard's SHA-256 and
fingerprint against the index: codes of two checkpoints are never mixed. Images are read
(and for faces aligned) in DataLoader worker processes.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .. import dist, domains, npzfiles
from .. import progress as bars
from ..errors import E4EError
from ..digests import sha256_file
from ..fsutil import atomic_write, ensure_dir

FORMAT = "e4e-latent-shards/1"


@dataclass
class DatasetOptions:
    root: Path
    prefix: Path
    shard_size: int = 1000
    batch_size: Optional[int] = None
    workers: int = 2
    align: bool = True
    face: str = "largest"
    delta_scale: float = 1.0
    overwrite: bool = False  # start again: remove an index made with other settings, redo every shard


def list_dataset(root: Path) -> list[str]:
    """Image files under `root`, as sorted relative POSIX paths."""
    from ..images import is_image_file

    root = Path(root)
    if not root.is_dir():
        raise E4EError(f"{root} is not a folder")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if is_image_file(p))
    if not files:
        raise E4EError(f"{root} holds no images")
    return files


def shard_path(prefix: Path, k: int) -> Path:
    return Path(f"{prefix}-{k:05d}.npz")


def fingerprint(model, opts: DatasetOptions) -> str:
    from .outputs import checkpoint_identity

    return json.dumps({"checkpoint": checkpoint_identity(model), "precision": str(model.precision),
                       "align": bool(opts.align and domains.aligns_faces(model.domain)), "face": opts.face,
                       "delta_scale": opts.delta_scale}, sort_keys=True)


def check_shard(path: Path, *, count: int, n_styles: Optional[int]) -> None:
    """The shard's arrays declare the sizes its index (or this run) expects, checked on their
    headers before any is inflated (`npzfiles`); else one E4EError line."""
    with npzfiles.read_errors(path, what="shard", advice="run `e4e invert-dataset` again"):
        members = npzfiles.layout(path)
    npzfiles.check(path, members, "codes", shapes=[(count, n_styles, 512)], what="shard")
    npzfiles.check(path, members, "ok", shapes=[(count,)], kinds="b", what="shard")
    for name in ("paths", "errors"):
        npzfiles.check(path, members, name, shapes=[(count,)], kinds="U", max_itemsize=4 * 4096, what="shard")
    for name in ("fingerprint", "format"):
        npzfiles.check(path, members, name, shapes=[()], kinds="U", max_itemsize=4 << 20, what="shard")


def shard_is_done(path: Path, paths: Sequence[str], fp: str) -> bool:
    """A finished shard: it loads, and holds exactly these paths made with this fingerprint."""
    if not path.is_file():
        return False
    try:
        check_shard(path, count=len(paths), n_styles=None)
        with np.load(path, allow_pickle=False) as z:
            return (list(z["paths"]) == list(paths) and str(z["fingerprint"]) == fp
                    and z["codes"].shape[0] == len(paths) and z["ok"].shape[0] == len(paths))
    except Exception:  # noqa: BLE001  (a corrupt shard is simply redone)
        return False


class _Images:
    """A torch Dataset over one shard's images: (index, encoder input [3,H,W] or None, error)."""

    def __init__(self, root: Path, rel: Sequence[str], *, domain: str, align: bool, face: str, size_hw):
        self.root, self.rel, self.domain, self.align, self.face, self.size_hw = root, list(rel), domain, align, face, size_hw

    def __len__(self):
        return len(self.rel)

    def __getitem__(self, i):
        from ..model import preprocess_images
        from .invert import InvertOptions, prepare_input
        from .outputs import item_error

        class _Domain:  # what prepare_input reads of a model
            domain = self.domain

        try:
            item = prepare_input(self.root / self.rel[i], _Domain(), InvertOptions(out=Path("."), align=self.align, face=self.face))
            return i, preprocess_images(item["image"], self.size_hw)[0], ""
        except Exception as exc:  # noqa: BLE001  (a bad image never stops the run)
            return i, None, item_error(exc)


def _collate(items):
    return items


def invert_shards(model, root: Path, shards: Sequence[tuple[int, Sequence[str]]], opts: DatasetOptions, *,
                  batch_size: int, on_shard: Callable[[int, Sequence[str], dict], None],
                  on_images: Callable[[int], None] = lambda n: None) -> None:
    """Codes for the given shards' images; `on_shard(k, paths, {"codes", "ok", "errors"})` as each
    completes. One DataLoader (its workers read and align) for all of them; a batch never spans
    two shards, so a shard's numbers do not depend on which others this process does."""
    import torch

    flat = [(k, j, r) for k, part in shards for j, r in enumerate(part)]
    ds = _Images(root, [r for _, _, r in flat], domain=model.domain, align=opts.align, face=opts.face,
                 size_hw=model.input_size)
    batches, start = [], 0
    for k, part in shards:
        for b in range(0, len(part), batch_size):
            batches.append(list(range(start + b, start + min(len(part), b + batch_size))))
        start += len(part)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=opts.workers, collate_fn=_collate)
    sizes = {k: len(part) for k, part in shards}
    pending: dict[int, dict] = {}
    for items in loader:
        k = flat[items[0][0]][0]
        res = pending.setdefault(k, {"codes": np.zeros((sizes[k], model.n_styles, model.generator.style_dim), np.float32),
                                     "ok": np.zeros(sizes[k], bool), "errors": [""] * sizes[k], "left": sizes[k]})
        good = [(flat[i][1], x) for i, x, _ in items if x is not None]
        for i, x, err in items:
            if x is None:
                res["errors"][flat[i][1]] = err
        if good:
            try:
                c = model.encode(torch.stack([x for _, x in good]), delta_scale=opts.delta_scale).float().cpu().numpy()
                for (j, _), cj in zip(good, c):
                    res["codes"][j], res["ok"][j] = cj, True
            except Exception as exc:  # noqa: BLE001
                from .outputs import item_error

                for j, _ in good:
                    res["errors"][j] = item_error(exc)
        res["left"] -= len(items)
        on_images(len(items))
        if res["left"] == 0:
            on_shard(k, dict(shards)[k], pending.pop(k))


def write_shard(path: Path, rel: Sequence[str], result: dict, fp: str) -> None:
    def write(fh):
        buf = io.BytesIO()
        np.savez(buf, codes=result["codes"], ok=result["ok"], errors=np.array(result["errors"], dtype=str),
                 paths=np.array(list(rel), dtype=str), fingerprint=np.array(fp), format=np.array(FORMAT))
        fh.write(buf.getvalue())

    atomic_write(path, write)


def invert_dataset(model, opts: DatasetOptions, *, log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Invert every image under opts.root into shards; returns the index (rank 0) or this rank's summary."""
    if opts.shard_size < 1:
        raise E4EError(f"--shard-size must be >= 1, got {opts.shard_size}")
    group = dist.Group(backend="gloo")
    rank, world = group.rank, group.world
    rel = list_dataset(opts.root)
    prefix = Path(opts.prefix)
    ensure_dir(prefix.parent if str(prefix.parent) else ".")
    fp = fingerprint(model, opts)
    check_existing_index(prefix, fp, overwrite=opts.overwrite)
    if opts.overwrite and rank == 0:
        for old in (index_path(prefix), Path(f"{prefix}.failures.jsonl")):
            old.unlink(missing_ok=True)  # before any shard is written
    group.barrier()
    n_shards = (len(rel) + opts.shard_size - 1) // opts.shard_size
    mine = [k for k in range(n_shards) if k % world == rank]
    todo, skipped = [], 0
    for k in mine:
        part = rel[k * opts.shard_size : (k + 1) * opts.shard_size]
        if not opts.overwrite and shard_is_done(shard_path(prefix, k), part, fp):
            skipped += 1
        else:
            todo.append((k, part))
    batch = opts.batch_size or model.default_batch_size()
    total = sum(len(p) for _, p in todo)
    if rank == 0:
        log(f"{len(rel)} images in {n_shards} shard(s) of {opts.shard_size}; {world} process(es); "
            f"this one: {len(todo)} to do, {skipped} already done")
    bar = bars.bar(total=total, desc="inverting", wanted=progress and rank == 0 and total > 0)
    t0, done_images = time.perf_counter(), 0

    def finish(k: int, part: Sequence[str], result: dict) -> None:
        write_shard(shard_path(prefix, k), part, result, fp)

    try:
        if todo:
            invert_shards(model, opts.root, todo, opts, batch_size=batch, on_shard=finish, on_images=bar.update)
        done_images = total
    finally:
        bar.close()
    rate = done_images / max(1e-9, time.perf_counter() - t0)
    group.barrier()
    summary = {"rank": rank, "shards_done": len(todo), "shards_skipped": skipped, "images_per_s": rate}
    if rank == 0:
        index = write_index(prefix, rel, opts, model, fp, n_shards)
        index["this_run"] = summary
        group.barrier()
        return index
    group.barrier()
    return summary


def index_path(prefix) -> Path:
    return Path(f"{prefix}.index.json")


def _read_index(path: Path) -> dict:
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise E4EError(f"{path} not found: run `e4e invert-dataset` first (or it was interrupted)") from None
    except (OSError, ValueError) as exc:
        raise E4EError(f"{path} is not a readable index ({exc}): run `e4e invert-dataset --overwrite`") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise E4EError(f"{path} is not an e4e latent index ({FORMAT})")
    return index


def check_existing_index(prefix, fp: str, *, overwrite: bool) -> None:
    """Refuse to add to a finished run made with another checkpoint or other options: its index
    would then describe shards of two runs. `overwrite` starts over instead."""
    path = index_path(prefix)
    if overwrite or not path.exists():
        return
    index = _read_index(path)
    if index.get("fingerprint") != json.loads(fp):
        old = index.get("fingerprint") or {}
        what = [k for k in sorted(set(old) | set(json.loads(fp))) if old.get(k) != json.loads(fp).get(k)]
        raise E4EError(f"{path} holds latents made with another {', '.join(what) or 'setup'}: "
                       "use another --out, or --overwrite to replace them")


def write_index(prefix: Path, rel: Sequence[str], opts: DatasetOptions, model, fp: str, n_shards: int) -> dict:
    shards, failures = [], []
    for k in range(n_shards):
        path = shard_path(prefix, k)
        check_shard(path, count=min(opts.shard_size, len(rel) - k * opts.shard_size), n_styles=model.n_styles)
        with np.load(path, allow_pickle=False) as z:
            ok, errors, paths = z["ok"], z["errors"], z["paths"]
            failures += [{"path": str(p), "error": str(e)} for p, o, e in zip(paths, ok, errors) if not o]
            shards.append({"file": path.name, "first": k * opts.shard_size, "count": int(len(paths)),
                           "failed": int((~ok).sum()), "sha256": sha256_file(path)})
    index = {"format": FORMAT, "root": str(Path(opts.root).resolve()), "n_images": len(rel),
             "n_ok": len(rel) - len(failures), "n_failed": len(failures), "n_styles": model.n_styles,
             "shard_size": opts.shard_size, "shards": shards, "fingerprint": json.loads(fp),
             "domain": model.domain, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "sources": list(rel)}
    atomic_write(Path(f"{prefix}.failures.jsonl"),
                 lambda fh: fh.write("".join(json.dumps(f) + "\n" for f in failures).encode()))
    atomic_write(index_path(prefix), lambda fh: fh.write((json.dumps(index, indent=1) + "\n").encode()))
    return index


def load_latents(prefix) -> tuple[np.ndarray, list[str], np.ndarray]:
    """All codes in source order: (codes [N,n_styles,512], paths, ok [N]) from the index and shards.

    Every shard must be the file the index lists (its SHA-256), made with the index's
    fingerprint and holding the index's paths; anything else is an E4EError naming the shard."""
    index = _read_index(index_path(prefix))
    codes, paths, ok = [], [], []
    for s in index["shards"]:
        path = Path(prefix).parent / s["file"]
        try:
            digest = sha256_file(path)
        except OSError as exc:
            raise E4EError(f"shard {path} cannot be read ({exc.strerror or exc}): run `e4e invert-dataset` again") from None
        if digest != s.get("sha256"):
            raise E4EError(f"shard {path} is not the file {index_path(prefix).name} lists (SHA-256 differs): "
                           "it was rewritten by another run; run `e4e invert-dataset` again")
        check_shard(path, count=int(s.get("count", -1)), n_styles=index.get("n_styles"))
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["fingerprint"])) != index.get("fingerprint"):
                raise E4EError(f"shard {path} was made with another checkpoint or options than its index")
            part = [str(p) for p in z["paths"]]
            if part != index["sources"][s["first"] : s["first"] + s["count"]]:
                raise E4EError(f"shard {path} holds other images than its index lists")
            codes.append(z["codes"])
            paths += part
            ok.append(z["ok"])
    return np.concatenate(codes), paths, np.concatenate(ok)
