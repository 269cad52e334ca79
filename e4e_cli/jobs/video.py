"""Edit the face in a video: what `e4e edit CLIP.mp4 --direction D --strength S` runs.

Three passes over the clip, each streaming frames (memory does not grow with its length):
1. track: find the face in every frame (`facetrack.FaceTracker`), keep the raw crops, smooth
   them over time (`facetrack.smooth_quads`); kept in `track.json`;
2. invert: crop each frame with its smoothed quad and encode the crops in batches (the same
   batches, `plan_chunks`, however many processes share the work); the codes go to
   `latents.npy` [T, n_styles, 512] (rows of frames without the face are NaN), written as
   `latents.npy.part` batch by batch with a per-frame done mask (`latents.done.npy`), so an
   interrupted run resumes where it stopped; the finished file's `latents.json` records what it
   was made from (video, checkpoint, precision, face and smoothing: all by content), and a run
   that differs in any of these computes its own. With `--refine hyperstyle` these are the
   HyperStyle W-encoder's codes: the hypernetwork's weight offsets (megabytes per frame) are
   not kept but recomputed in pass 3, frame by frame;
2b. tune (`--tune N`, one process only): STIT's tuning of one generator on every face frame's
   code and crop (`pti_clip.tune_on_frames`); its float16 difference from the base generator is
   `tuned_generator.npz` (`pti.save_diff`, written under a temporary name and renamed), reused
   by a rerun whose settings, checkpoint and codes match its record; pass 3 decodes with it;
3. edit: per strength, apply the direction, decode (with a frame's offsets when refined), paste
   back (the ellipse mask of the smoothed crop: it moves as smoothly as the crop, never with
   each frame's landmarks) and encode with libx264 under a temporary name
   (`video.VideoWriter`); frames without the face pass through.

Under torchrun (`dist.Group`) the first process tracks the face (the smoothing needs every
frame's neighbours); then each process inverts and edits its own run of batches
(`share_of`). The others hold their edited frames in a temporary file that the first process
encodes after its own, in order, so there is one encoder and the output equals one process's.

Outputs in OUT/<stem>/: `<stem>_<direction>_<strength>.mp4` with a `.json` record beside it
(written last: it marks the video done, and a rerun made the same way skips it), `video.json`
(the source, checkpoint, direction, strengths, smoothing, precision and one entry per frame:
index, time, status `edited`/`no_face`, reason, quad), `track.json`, `latents.npy` and with
`--tune` `tuned_generator.npz`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .. import progress
from ..errors import USAGE, E4EError
from ..facetrack import (DEFAULT_AXES_SIGMA, DEFAULT_CENTER_SIGMA, FaceTracker, crop_face, runs, smooth_quads,
                         smooth_rows)
from ..fsutil import child_path, ensure_dir, safe_name, slug
from ..video import DEFAULT_CRF, ReadReport, VideoWriter, probe, read_frames
from .outputs import checkpoint_identity, fmt_strength, write_json
from .video_tune import tuned_decoder, tune_settings

TRACK_VERSION = 1
LATENTS_VERSION = 2  # 2: written batch by batch of `plan_chunks`, with a per-frame done mask


@dataclass
class VideoEditJob:
    video: Path
    direction: str
    strengths: list
    out: Path
    sweep: Optional[list] = None
    domain: Optional[str] = None
    checkpoint: Optional[Path] = None
    pca: Optional[Path] = None
    device: str = "auto"
    precision: Optional[str] = None
    batch_size: Optional[int] = None
    weights_dir: Optional[Path] = None
    face: object = "largest"
    smooth_center: float = DEFAULT_CENTER_SIGMA
    smooth_axes: float = DEFAULT_AXES_SIGMA
    smooth_codes: float = 0.0  # Gaussian sigma (frames) over the codes before the edit; 0: off (STIT does not)
    side_by_side: bool = False
    overwrite: bool = False
    crf: int = DEFAULT_CRF
    landmarks: Optional[Path] = None
    refine: bool = False  # `--refine hyperstyle`: every frame refined by HyperStyle before its edit is decoded
    refine_steps: Optional[int] = None
    refiner: Optional[Path] = None
    w_encoder: Optional[Path] = None
    tune: int = 0  # `--tune N`: STIT's tuning of one generator on all face frames, N passes; 0: off
    tune_lr: Optional[float] = None  # `--tune-lr` (STIT's 3e-5 when None)


@dataclass
class VideoResult:
    folder: Path
    videos: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    frames: int = 0
    edited: int = 0
    seconds: dict = field(default_factory=dict)  # stage -> wall seconds: align, invert, tune, edit
    tune: Optional[dict] = None  # the clip's tuning record (with "reused": True when an earlier run's was used)
    parts: dict = field(default_factory=dict)  # edit's parts: generate, paste, encode (with reading frames: the rest)


def check_smoothing(value: float, name: str) -> float:
    v = float(value)
    if not (np.isfinite(v) and 0 <= v <= 100):
        raise E4EError(f"{name} must be between 0 (off) and 100 frames, got {value!r}", exit_code=USAGE)
    return v


def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---- pass 1: the face's track ----------------------------------------------------------------

def _track(job: VideoEditJob, folder: Path, key: dict, n_hint: int) -> dict:
    """track.json for this clip and face choice (reused when its key matches)."""
    path = folder / "track.json"
    have = _read_json(path)
    if have is not None and have.get("key") == key:
        return have
    from ..alignment import FaceAligner

    tracker = FaceTracker(FaceAligner(landmarks=job.landmarks), face=job.face)
    report = ReadReport()
    frames = []
    with progress.bar(total=n_hint or None, desc="align", unit="frame") as bar:
        for fr in read_frames(job.video, report=report):
            seen = tracker.see(fr.rgb)
            frames.append({"index": fr.index, "pts": fr.pts, "time": fr.time,
                           "raw": None if seen.quad is None else seen.quad.round(3).tolist(), "reason": seen.reason})
            bar.update(1)
    if not frames:
        raise E4EError(f"{job.video.name}: no frame could be decoded" + (f" ({report.reason})" if report.reason else ""))
    if all(f["raw"] is None for f in frames):
        if tracker.asked_face_missing:
            raise E4EError(f"{job.video.name}: face {job.face} asked for, but no frame has that many faces "
                           "(faces are numbered from 0, left to right)")
        raise E4EError(f"no face found in any of the {len(frames)} frames of {job.video.name}")
    data = {"key": key, "frames": frames, "read": {"frames": report.frames, "broke_at": report.broke_at,
                                                    "reason": report.reason}}
    write_json(path, data)
    return data


# ---- batches and shares ---------------------------------------------------------------------

def plan_chunks(quads: list, step: int) -> list:
    """Frame ranges [a, b) that both the inversion and the edit decode as one batch: each holds at
    most `step` frames with the face and at most 4 * step frames (a long stretch without the face
    is not held). One plan for the clip, however it is shared between processes, so every batch
    is the same and a sharded run computes what one process computes."""
    chunks, a, faces = [], 0, 0
    for i, q in enumerate(quads):
        faces += q is not None
        if faces >= step or i + 1 - a >= 4 * step:
            chunks.append((a, i + 1))
            a, faces = i + 1, 0
    if a < len(quads):
        chunks.append((a, len(quads)))
    return chunks


def share_of(chunks: list, *, rank: int, world: int) -> list:
    """This process's run of consecutive chunks (process r takes chunks k with k * world // n == r)."""
    n = len(chunks)
    return [c for k, c in enumerate(chunks) if k * world // max(1, n) == rank]


def _encode_crops(model, imgs: list):
    """Crops (PIL) -> codes [B,n,512] float32 numpy: e4e's codes, or the W-encoder's a HyperStyle
    refinement starts from (its hypernetwork runs in the edit pass, where its offsets are used)."""
    import torch

    with torch.inference_mode():
        out = model.encode_w(model.preprocess(imgs)) if _refining(model) else model.encode(imgs)
    return out.float().cpu().numpy()


def _refining(model) -> bool:
    return hasattr(model, "refine")


# ---- pass 2: the codes ------------------------------------------------------------------------

def mark_done(done: np.ndarray, a: int, b: int) -> None:
    """Frames [a, b) of `latents.done.npy` are done (their codes were flushed first)."""
    done[a:b] = 1
    done.flush()


def _latents(job: VideoEditJob, folder: Path, key: dict, model, quads: list, chunks: list, group) -> np.ndarray:
    """latents.npy [T,n,512] for these crops (reused, resumed or computed). While it is made,
    `latents.npy.part` holds the codes and `latents.done.npy` [T] uint8 marks each frame whose
    batch was written, so a resumed run (with any number of processes) does only the rest."""
    final, record = folder / "latents.npy", folder / "latents.json"
    part, part_rec, done_path = folder / "latents.npy.part", folder / "latents.part.json", folder / "latents.done.npy"
    shape = (len(quads), model.n_styles, 512)
    if (_read_json(record) or {}).get("key") == key and final.is_file():
        codes = np.load(final, mmap_mode="r")
        if codes.shape == shape:
            return codes
    if group.rank == 0:
        fresh = (_read_json(part_rec) or {}).get("key") != key
        if not fresh:
            try:
                fresh = (np.load(part, mmap_mode="r").shape != shape
                         or np.load(done_path, mmap_mode="r").shape != (len(quads),))
            except (OSError, ValueError):
                fresh = True
        if fresh:
            part_rec.unlink(missing_ok=True)
            codes = np.lib.format.open_memmap(part, mode="w+", dtype=np.float32, shape=shape)
            codes[:] = np.nan
            codes.flush()
            done = np.lib.format.open_memmap(done_path, mode="w+", dtype=np.uint8, shape=(len(quads),))
            done.flush()
            del codes, done
            write_json(part_rec, {"key": key})
    group.barrier()
    codes = np.lib.format.open_memmap(part, mode="r+")
    done = np.lib.format.open_memmap(done_path, mode="r+")
    todo = [c for c in share_of(chunks, rank=group.rank, world=group.world) if not done[c[0]:c[1]].all()]
    size = model.input_size[0]
    n_faces = sum(q is not None for a, b in todo for q in quads[a:b])
    with progress.bar(total=n_faces, desc="invert", unit="frame", wanted=group.rank == 0) as bar:
        if todo:
            frames = read_frames(job.video, start=todo[0][0])
            for a, b in todo:
                batch = []
                for fr in frames:
                    if fr.index >= a and quads[fr.index] is not None:
                        batch.append((fr.index, crop_face(fr.rgb, quads[fr.index], size)))
                    if fr.index >= b - 1:
                        break
                if batch:
                    out = _encode_crops(model, [img for _, img in batch])
                    for (i, _), c in zip(batch, out):
                        codes[i] = c
                codes.flush()
                mark_done(done, a, b)  # after the codes are on disk
                bar.update(len(batch))
            frames.close()
    del codes, done
    group.barrier()
    if group.rank == 0:
        record.unlink(missing_ok=True)
        part.replace(final)
        write_json(record, {"key": key, "shape": list(shape), "nan_rows": "frames without the face"})
        part_rec.unlink(missing_ok=True)
        done_path.unlink(missing_ok=True)
    group.barrier()
    return np.load(final, mmap_mode="r")


# ---- pass 3: edit, paste back, encode -----------------------------------------------------------

def _edited_frames(job: VideoEditJob, model, direction, strength: float, codes: np.ndarray, quads: list,
                   chunks: list, seconds: dict):
    """(frame, edited RGB [H,W(x2),3]) for every frame of `chunks` (consecutive), batch by batch;
    `seconds` gathers the time spent generating and pasting."""
    import torch
    from PIL import Image

    from ..compositing import paste_face

    if not chunks:
        return
    size = model.input_size[0]
    run_of = {i: r for r in runs([q is not None for q in quads]) for i in range(*r)}

    def codes_of(idx: list):  # [B,n,512]: the frames' codes, smoothed over time with --smooth-codes
        if job.smooth_codes <= 0:
            rows = np.asarray(codes[idx], dtype=np.float32)
        else:
            rows = np.stack([smooth_rows(codes, [i], run_of[i], job.smooth_codes)[0] for i in idx]).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(rows)).to(model.device)

    frames = read_frames(job.video, start=chunks[0][0])
    try:
        for a, b in chunks:
            pending = []
            for fr in frames:
                if fr.index >= a:
                    pending.append(fr)
                if fr.index >= b - 1:
                    break
            idx = [f.index for f in pending if quads[f.index] is not None]
            faces = {}
            t0 = time.perf_counter()
            if idx:
                with torch.inference_mode():
                    if _refining(model):  # the hypernetwork's offsets for these crops, then the edit decoded with them
                        crops = [crop_face(f.rgb, quads[f.index], size) for f in pending if quads[f.index] is not None]
                        refined = model.refine(model.preprocess(crops), steps=job.refine_steps)
                        c = refined.codes if job.smooth_codes <= 0 else codes_of(idx)
                        out = model.decode(direction.apply(c, strength), offsets=refined.offsets, crop=False)
                    else:
                        out = model.decode(direction.apply(codes_of(idx), strength), crop=False)
                    imgs = model.to_pil(out)
                faces = dict(zip(idx, imgs))
            seconds["generate"] = seconds.get("generate", 0.0) + time.perf_counter() - t0
            for f in pending:
                t0 = time.perf_counter()
                out = f.rgb
                if f.index in faces:
                    out = np.asarray(paste_face(Image.fromarray(f.rgb), faces[f.index], quads[f.index], mask="ellipse"))
                if job.side_by_side:
                    out = np.concatenate([f.rgb, out], axis=1)
                seconds["paste"] = seconds.get("paste", 0.0) + time.perf_counter() - t0
                yield f, out
    finally:
        frames.close()


def _held_frames_path(folder: Path, rank: int) -> Path:
    return folder / f".edit-frames.rank{rank}.npy.part"


def _write_edit(job: VideoEditJob, dest: Path, model, direction, strength: float, codes: np.ndarray, quads: list,
                chunks: list, info, frames: list, seconds: dict, group) -> Optional[str]:
    """Encode one edited video; `seconds` gathers the time spent generating, pasting and encoding.
    With several processes each edits its share of the chunks; the others hold their frames in
    a temporary file that the first process encodes after its own, in order."""
    width = info.width * (2 if job.side_by_side else 1)
    n_frames = sum(b - a for a, b in chunks)
    mine = share_of(chunks, rank=group.rank, world=group.world)
    folder = dest.parent
    if group.rank != 0:
        n_mine = sum(b - a for a, b in mine)
        held = None
        if n_mine:
            held = np.lib.format.open_memmap(_held_frames_path(folder, group.rank), mode="w+", dtype=np.uint8,
                                             shape=(n_mine, info.height, width, 3))
            for j, (_, out) in enumerate(_edited_frames(job, model, direction, strength, codes, quads, mine, seconds)):
                held[j] = out
            held.flush()
            del held
        group.barrier()  # this share is on disk
        group.barrier()  # the first process has encoded it
        return None

    note = None
    with VideoWriter(dest, source=job.video, width=width, height=info.height, time_base=info.time_base,
                     rate=info.rate, crf=job.crf, rotation=info.rotation) as writer, \
            progress.bar(total=n_frames, desc=f"edit {fmt_strength(strength)}", unit="frame") as bar:
        def put(rgb, pts):
            t0 = time.perf_counter()
            writer.write(rgb, pts=pts)
            seconds["encode"] = seconds.get("encode", 0.0) + time.perf_counter() - t0
            bar.update(1)

        for f, out in _edited_frames(job, model, direction, strength, codes, quads, mine, seconds):
            put(out, f.pts)
        group.barrier()
        for r in range(1, group.world):
            theirs = share_of(chunks, rank=r, world=group.world)
            if not theirs:
                continue
            p = _held_frames_path(folder, r)
            held = np.load(p, mmap_mode="r")
            k = 0
            for a, b in theirs:
                for i in range(a, b):
                    put(held[k], frames[i]["pts"])
                    k += 1
            del held
            p.unlink(missing_ok=True)
        writer.commit()
        note = writer.audio_note
    group.barrier()
    return note


def _check_disk_for_shares(folder: Path, chunks: list, info, job: VideoEditJob, world: int) -> None:
    """The frames the other processes hold for the first one to encode need room on disk."""
    import shutil

    if world < 2:
        return
    held = sum(b - a for r in range(1, world) for a, b in share_of(chunks, rank=r, world=world))
    need = held * info.height * info.width * (2 if job.side_by_side else 1) * 3
    free = shutil.disk_usage(folder).free
    if need > 0.95 * free:
        raise E4EError(f"{world} processes hold {held} edited frames ({need / 2**30:.1f} GiB) in {folder} for the "
                       f"first process to encode, and only {free / 2**30:.1f} GiB are free: use fewer processes or "
                       "--out on a larger disk")


def _load(job: VideoEditJob):
    """The e4e model, or with `refine` the HyperStyle model (its W-encoder inverts, its
    hypernetwork refines each frame and its generator decodes)."""
    if not job.refine:
        from ..model import ModelOptions, load_model

        return load_model(ModelOptions(domain=job.domain, checkpoint=job.checkpoint, device=job.device,
                                       precision=job.precision, weights_dir=job.weights_dir))
    if job.checkpoint is not None:
        raise E4EError("--checkpoint is an e4e checkpoint; with --refine hyperstyle the HyperStyle checkpoint "
                       "(--refiner) inverts and decodes", exit_code=USAGE)
    from ..refine import load_refiner
    from ..weights.locate import refiner_files

    hs, we = refiner_files(job.domain, job.refiner, job.w_encoder, job.weights_dir)
    return load_refiner(domain=job.domain, refiner=hs, w_encoder=we, device=job.device, precision=job.precision,
                        weights_dir=job.weights_dir)


def run_video_edit(job: VideoEditJob) -> VideoResult:
    """Edit one clip at every strength (see the module's docstring). Under torchrun the first
    process tracks the face; the inversion and the edits are shared out by frame ranges."""
    from .. import dist
    from ..editing import resolve_direction

    video = Path(job.video)
    settings = tune_settings(job.tune, job.tune_lr)
    lpips = None
    if settings is not None:
        if job.refine:
            raise E4EError("--tune tunes the generator for e4e's codes; it does not go with --refine hyperstyle",
                           exit_code=USAGE)
        if dist.world_size() > 1:
            raise E4EError("--tune runs in one process (one generator tuned on every frame): run it without "
                           "torchrun", exit_code=USAGE)
    info = probe(video)  # a file that is not a video fails here, before any model is loaded
    if settings is not None:  # before the model: missing LPIPS weights are said first (exit 3)
        from ..train.lossnets import load_lpips

        lpips = load_lpips(weights_dir=job.weights_dir)
    model = _load(job)
    # SeFa reads the generator's weights: a HyperStyle model's are its decoder's
    direction = resolve_direction(job.direction, model.decoder if _refining(model) else model, pca_file=job.pca,
                                  weights_dir=job.weights_dir)
    strengths = list(job.sweep or job.strengths)
    if not strengths:
        if direction.default_strength is None:
            raise E4EError(f"direction {job.direction!r} has no default strength: pass --strength S or --sweep START:STOP:N")
        strengths = [direction.default_strength]
    strengths = list(dict.fromkeys(float(s) for s in strengths))
    group = dist.Group(backend="gloo")
    try:
        return _run(job, video, info, model, direction, strengths, group, tune=settings, lpips=lpips)
    finally:
        group.close()


def _run(job, video, info, model, direction, strengths, group, *, tune=None, lpips=None) -> VideoResult:
    from ..digests import content_sha256

    stem = safe_name(video.stem, "video")
    folder = child_path(job.out, stem)
    if group.rank == 0:
        ensure_dir(child_path(ensure_dir(job.out), stem))
    group.barrier()
    result = VideoResult(folder=folder)
    source = {"file": video.name, "sha256": content_sha256(video)}
    ck = checkpoint_identity(model)
    precision = str(getattr(model, "precision", None) or getattr(getattr(model, "decoder", None), "precision", "")
                    ).replace("torch.", "")
    smoothing = {"center_sigma": job.smooth_center, "axes_sigma": job.smooth_axes}
    refine = model.record(steps=job.refine_steps) if _refining(model) else None
    track_key = {"version": TRACK_VERSION, "video_sha256": source["sha256"], "face": str(job.face)}
    # by content: a checkpoint renamed or copied elsewhere is the same one, another file of the same name is not
    latent_key = {**track_key, **smoothing, "layout": LATENTS_VERSION, "checkpoint_sha256": ck.get("sha256"),
                  "domain": model.domain, "size": model.size, "precision": precision,
                  "input_size": list(model.input_size), "codes": "hyperstyle-w-encoder" if refine else "e4e"}

    t0 = time.perf_counter()
    n_hint = info.frames or (int(round(info.duration * info.rate)) if info.duration and info.rate else 0)
    track = _track(job, folder, track_key, n_hint) if group.rank == 0 else None
    group.barrier()
    if track is None:  # the first process's track.json, now written: its key matches, so it is read back
        track = _track(job, folder, track_key, n_hint)
    result.seconds["align"] = time.perf_counter() - t0
    frames = track["frames"]
    raw = [None if f["raw"] is None else np.asarray(f["raw"]) for f in frames]
    quads = smooth_quads(raw, center_sigma=job.smooth_center, axes_sigma=job.smooth_axes)
    read = track["read"]
    if read.get("broke_at") is not None:
        result.notes.append(f"{video.name} stops decoding at frame {read['broke_at']} ({read['reason']}): "
                            f"the {len(frames)} frames before it are edited")
    elif info.duration and info.rate and frames[-1]["time"] + 2 / float(info.rate) < info.duration:
        result.notes.append(f"{video.name} stops decoding at {frames[-1]['time'] + 1 / float(info.rate):.2f} s of the "
                            f"{info.duration:.2f} s its header gives (cut short?): the {len(frames)} frames that decode "
                            "are edited")
    chunks = plan_chunks(quads, job.batch_size or model.default_batch_size())
    t0 = time.perf_counter()
    codes = _latents(job, folder, latent_key, model, quads, chunks, group)
    result.seconds["invert"] = time.perf_counter() - t0
    result.frames, result.edited = len(frames), sum(q is not None for q in quads)
    _check_disk_for_shares(folder, chunks, info, job, group.world)

    decoder, tune_rec = model, None
    if tune is not None:  # one process only (run_video_edit refuses --tune under torchrun)
        from ..pti import DIFF_NAME

        t0 = time.perf_counter()
        decoder, meta, reused = tuned_decoder(video, folder, model, tune, lpips, codes, quads,
                                       {"video_sha256": source["sha256"], **smoothing, "face": str(job.face)})
        result.seconds["tune"] = time.perf_counter() - t0
        tune_rec = {k: meta[k] for k in meta["key"]}  # what decides the tuned generator: the outputs' record
        result.tune = dict(meta, file=str(folder / DIFF_NAME), reused=reused)
        result.tune.pop("key", None)

    label = slug(direction.label)
    parts: dict = {}
    t0 = time.perf_counter()
    for s in strengths:
        base = f"{stem}_{label}_{fmt_strength(s)}" + ("_side-by-side" if job.side_by_side else "")
        dest, rec_path = child_path(folder, f"{base}.mp4"), child_path(folder, f"{base}.json")
        rec = {"source": source, "checkpoint": ck, "direction": direction.identity or {"spec": direction.label},
               "strength": s, "smoothing": {**smoothing, "codes_sigma": job.smooth_codes}, "face": str(job.face), "precision": precision,
               "side_by_side": job.side_by_side, "crf": job.crf}
        if refine:
            rec["refine"] = refine
        if tune_rec:
            rec["tune"] = tune_rec
        group.barrier()  # every process sees the same files when it decides
        if dest.is_file() and not job.overwrite:
            have = _read_json(rec_path)
            if have == rec:
                result.skipped.append(dest)
                continue
            raise E4EError(f"{dest} exists and was made another way: pass --overwrite to replace it, or --out DIR")
        group.barrier()
        if group.rank == 0:
            rec_path.unlink(missing_ok=True)
        note = _write_edit(job, dest, decoder, direction, s, codes, quads, chunks, info, frames, parts, group)
        if group.rank == 0:
            if note and note not in result.notes:
                result.notes.append(note)
            write_json(rec_path, rec)  # last: marks the video done
        result.videos.append(dest)
    result.seconds["edit"] = time.perf_counter() - t0
    result.parts = parts
    if group.rank != 0:
        return result

    statuses = [{"index": f["index"], "time": round(f["time"], 6), "status": "edited" if q is not None else "no_face",
                 "reason": f["reason"], "quad": None if q is None else np.round(q, 3).tolist()}
                for f, q in zip(frames, quads)]
    write_json(folder / "video.json", {
        "source": {**source, "path": str(video)}, "checkpoint": ck, "direction": direction.identity or
        {"spec": direction.label}, "strength": strengths[0] if len(strengths) == 1 else None, "strengths": strengths,
        "smoothing": {**smoothing, "codes_sigma": job.smooth_codes}, "face": str(job.face), "precision": precision,
        "crf": job.crf, "refine": refine,
        "tune": None if result.tune is None else {k: v for k, v in result.tune.items() if k != "reused"},
        "processes": group.world, "size": [info.width, info.height], "rotation": info.rotation,
        "time_base": str(info.time_base), "outputs": [p.name for p in result.videos + result.skipped], "read": read,
        "notes": result.notes, "latents": "latents.npy", "frames": statuses})
    return result
