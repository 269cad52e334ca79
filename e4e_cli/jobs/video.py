"""Edit the face in a video: what `e4e edit CLIP.mp4 --direction D --strength S` runs.

Three passes over the clip, each streaming frames (memory does not grow with its length):
1. track: find the face in every frame (`facetrack.FaceTracker`), keep the raw crops, smooth
   them over time (`facetrack.smooth_quads`); kept in `track.json`;
2. invert: crop each frame with its smoothed quad and encode the crops in batches; the codes go
   to `latents.npy` [T, n_styles, 512] (rows of frames without the face are NaN), written as
   `latents.npy.part` batch by batch with the count done in `latents.part.json`, so an
   interrupted run resumes where it stopped; the finished file's `latents.json` records what it
   was made from (video, checkpoint, precision, face and smoothing: all by content), and a run
   that differs in any of these computes its own;
3. edit: per strength, apply the direction, decode, paste back (the ellipse mask of the smoothed
   crop: it moves as smoothly as the crop, never with each frame's landmarks) and encode with
   libx264 under a temporary name (`video.VideoWriter`); frames without the face pass through.

Outputs in OUT/<stem>/: `<stem>_<direction>_<strength>.mp4` with a `.json` record beside it
(written last: it marks the video done, and a rerun made the same way skips it), `video.json`
(the source, checkpoint, direction, strengths, smoothing, precision and one entry per frame:
index, time, status `edited`/`no_face`, reason, quad), `track.json`, `latents.npy`.
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
from ..facetrack import DEFAULT_AXES_SIGMA, DEFAULT_CENTER_SIGMA, FaceTracker, smooth_quads
from ..fsutil import child_path, ensure_dir, safe_name, slug
from ..video import DEFAULT_CRF, ReadReport, VideoWriter, probe, read_frames
from .outputs import checkpoint_identity, fmt_strength, write_json

TRACK_VERSION = 1


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
    side_by_side: bool = False
    overwrite: bool = False
    crf: int = DEFAULT_CRF
    landmarks: Optional[Path] = None


@dataclass
class VideoResult:
    folder: Path
    videos: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    frames: int = 0
    edited: int = 0
    seconds: dict = field(default_factory=dict)  # stage -> wall seconds: align, invert, edit
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


def crop_face(rgb: np.ndarray, quad: np.ndarray, size: int):
    """The square `quad` [4,2] of a frame [H,W,3] warped to size x size (PIL RGB): the frame is
    padded by reflection where the quad reaches past it, and shrunk by a whole factor first when
    the face is over twice `size` (as the photo alignment does, against aliasing)."""
    from PIL import Image

    q = np.asarray(quad, dtype=np.float64)
    h, w = rgb.shape[:2]
    lo, hi = np.floor(q.min(axis=0)).astype(int) - 2, np.ceil(q.max(axis=0)).astype(int) + 2
    pads = (max(0, -lo[1]), max(0, hi[1] - h + 1)), (max(0, -lo[0]), max(0, hi[0] - w + 1))
    x0, y0 = max(0, lo[0]), max(0, lo[1])
    x1, y1 = min(w, hi[0] + 1), min(h, hi[1] + 1)
    part = rgb[y0:y1, x0:x1]
    if any(p for pair in pads for p in pair):
        part = np.pad(part, (*pads, (0, 0)), mode="symmetric")
    q = q - [x0 - pads[1][0], y0 - pads[0][0]]
    img = Image.fromarray(np.ascontiguousarray(part))
    side = float(np.hypot(*(q[3] - q[0])))
    factor = int(np.floor(side / size * 0.5))
    if factor > 1:
        img = img.resize((max(1, round(img.width / factor)), max(1, round(img.height / factor))),
                         Image.Resampling.LANCZOS)
        q = (q + 0.5) * [img.width / part.shape[1], img.height / part.shape[0]] - 0.5
    return img.transform((size, size), Image.Transform.QUAD, tuple((q + 0.5).flatten()), Image.Resampling.BILINEAR)


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


# ---- pass 2: the codes ------------------------------------------------------------------------

def _latents(job: VideoEditJob, folder: Path, key: dict, model, quads: list) -> np.ndarray:
    """latents.npy [T,n,512] for these crops (reused, resumed or computed)."""
    import torch

    final, record = folder / "latents.npy", folder / "latents.json"
    part, part_rec = folder / "latents.npy.part", folder / "latents.part.json"
    if (_read_json(record) or {}).get("key") == key and final.is_file():
        codes = np.load(final, mmap_mode="r")
        if codes.shape == (len(quads), model.n_styles, 512):
            return codes
    shape = (len(quads), model.n_styles, 512)
    done = 0
    have = _read_json(part_rec)
    if have is not None and have.get("key") == key and part.is_file():
        try:
            codes = np.lib.format.open_memmap(part, mode="r+")
            done = int(have.get("done", 0)) if codes.shape == shape else 0
        except (OSError, ValueError):
            done = 0
    if done == 0:
        codes = np.lib.format.open_memmap(part, mode="w+", dtype=np.float32, shape=shape)
        codes[:] = np.nan
    step = job.batch_size or model.default_batch_size()
    size = model.input_size[0]
    batch: list = []

    def flush():
        nonlocal done
        if batch:
            imgs = [crop_face(rgb, quads[i], size) for i, rgb in batch]
            with torch.inference_mode():
                out = model.encode(imgs).float().cpu().numpy()
            for (i, _), c in zip(batch, out):
                codes[i] = c
            bar.update(len(batch))
            batch.clear()
        codes.flush()
        done = upto
        write_json(part_rec, {"key": key, "done": done})

    todo = sum(q is not None for q in quads[done:])
    with progress.bar(total=todo, desc="invert", unit="frame") as bar:
        upto = done
        for fr in read_frames(job.video, start=done):
            if fr.index >= len(quads):
                break
            if quads[fr.index] is not None:
                batch.append((fr.index, fr.rgb))
            upto = fr.index + 1
            if len(batch) >= step:
                flush()
        upto = len(quads)
        flush()
    del codes
    record.unlink(missing_ok=True)
    part.replace(final)
    write_json(record, {"key": key, "shape": list(shape), "nan_rows": "frames without the face"})
    part_rec.unlink(missing_ok=True)
    return np.load(final, mmap_mode="r")


# ---- pass 3: edit, paste back, encode -----------------------------------------------------------

def _write_edit(job: VideoEditJob, dest: Path, model, direction, strength: float, codes: np.ndarray, quads: list,
                info, n_frames: int, seconds: dict) -> Optional[str]:
    """Encode one edited video; `seconds` gathers the time spent generating, pasting and encoding."""
    import torch
    from PIL import Image

    from ..compositing import paste_face

    step = job.batch_size or model.default_batch_size()
    width = info.width * (2 if job.side_by_side else 1)
    pending: list = []  # (frame, face index or None) waiting for their batch's decode

    def flush():
        idx = [f.index for f in pending if quads[f.index] is not None]
        faces = {}
        t0 = time.perf_counter()
        if idx:
            c = torch.from_numpy(np.ascontiguousarray(codes[idx])).to(model.device)
            with torch.inference_mode():
                edited = direction.apply(c, strength)
                imgs = model.to_pil(model.decode(edited, crop=False))
            faces = dict(zip(idx, imgs))
        t1 = time.perf_counter()
        seconds["generate"] = seconds.get("generate", 0.0) + t1 - t0
        for f in pending:
            t0 = time.perf_counter()
            out = f.rgb
            if f.index in faces:
                out = np.asarray(paste_face(Image.fromarray(f.rgb), faces[f.index], quads[f.index], mask="ellipse"))
            if job.side_by_side:
                out = np.concatenate([f.rgb, out], axis=1)
            t1 = time.perf_counter()
            writer.write(out, pts=f.pts)
            seconds["paste"] = seconds.get("paste", 0.0) + t1 - t0
            seconds["encode"] = seconds.get("encode", 0.0) + time.perf_counter() - t1
            bar.update(1)
        pending.clear()

    with VideoWriter(dest, source=job.video, width=width, height=info.height, time_base=info.time_base,
                     rate=info.rate, crf=job.crf, rotation=info.rotation) as writer, \
            progress.bar(total=n_frames, desc=f"edit {fmt_strength(strength)}", unit="frame") as bar:
        for fr in read_frames(job.video):
            if fr.index >= n_frames:
                break
            pending.append(fr)
            # a batch of faces, or a bounded run of frames (a long stretch without the face is not held)
            if sum(quads[f.index] is not None for f in pending) >= step or len(pending) >= 4 * step:
                flush()
        flush()
        writer.commit()
    return writer.audio_note


def run_video_edit(job: VideoEditJob) -> VideoResult:
    """Edit one clip at every strength (see the module's docstring)."""
    from ..digests import content_sha256
    from ..editing import resolve_direction
    from ..model import ModelOptions, load_model

    video = Path(job.video)
    info = probe(video)  # a file that is not a video fails here, before any model is loaded
    model = load_model(ModelOptions(domain=job.domain, checkpoint=job.checkpoint, device=job.device,
                                    precision=job.precision, weights_dir=job.weights_dir))
    direction = resolve_direction(job.direction, model, pca_file=job.pca, weights_dir=job.weights_dir)
    strengths = list(job.sweep or job.strengths)
    if not strengths:
        if direction.default_strength is None:
            raise E4EError(f"direction {job.direction!r} has no default strength: pass --strength S or --sweep START:STOP:N")
        strengths = [direction.default_strength]
    strengths = list(dict.fromkeys(float(s) for s in strengths))
    stem = safe_name(video.stem, "video")
    folder = ensure_dir(child_path(ensure_dir(job.out), stem))
    result = VideoResult(folder=folder)
    source = {"file": video.name, "sha256": content_sha256(video)}
    ck = checkpoint_identity(model)
    precision = str(getattr(model, "precision", "")).replace("torch.", "")
    smoothing = {"center_sigma": job.smooth_center, "axes_sigma": job.smooth_axes}
    track_key = {"version": TRACK_VERSION, "video_sha256": source["sha256"], "face": str(job.face)}
    # by content: a checkpoint renamed or copied elsewhere is the same one, another file of the same name is not
    latent_key = {**track_key, **smoothing, "checkpoint_sha256": ck.get("sha256"), "domain": model.domain,
                  "size": model.size, "precision": precision, "input_size": list(model.input_size)}

    t0 = time.perf_counter()
    n_hint = info.frames or (int(round(info.duration * info.rate)) if info.duration and info.rate else 0)
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
    t0 = time.perf_counter()
    codes = _latents(job, folder, latent_key, model, quads)
    result.seconds["invert"] = time.perf_counter() - t0
    result.frames, result.edited = len(frames), sum(q is not None for q in quads)

    label = slug(direction.label)
    parts: dict = {}
    t0 = time.perf_counter()
    for s in strengths:
        base = f"{stem}_{label}_{fmt_strength(s)}" + ("_side-by-side" if job.side_by_side else "")
        dest, rec_path = child_path(folder, f"{base}.mp4"), child_path(folder, f"{base}.json")
        rec = {"source": source, "checkpoint": ck, "direction": direction.identity or {"spec": direction.label},
               "strength": s, "smoothing": smoothing, "face": str(job.face), "precision": precision,
               "side_by_side": job.side_by_side, "crf": job.crf}
        if dest.is_file() and not job.overwrite:
            have = _read_json(rec_path)
            if have == rec:
                result.skipped.append(dest)
                continue
            raise E4EError(f"{dest} exists and was made another way: pass --overwrite to replace it, or --out DIR")
        rec_path.unlink(missing_ok=True)
        note = _write_edit(job, dest, model, direction, s, codes, quads, info, len(frames), parts)
        if note and note not in result.notes:
            result.notes.append(note)
        write_json(rec_path, rec)  # last: marks the video done
        result.videos.append(dest)
    result.seconds["edit"] = time.perf_counter() - t0
    result.parts = parts

    statuses = [{"index": f["index"], "time": round(f["time"], 6), "status": "edited" if q is not None else "no_face",
                 "reason": f["reason"], "quad": None if q is None else np.round(q, 3).tolist()}
                for f, q in zip(frames, quads)]
    write_json(folder / "video.json", {
        "source": {**source, "path": str(video)}, "checkpoint": ck, "direction": direction.identity or
        {"spec": direction.label}, "strength": strengths[0] if len(strengths) == 1 else None, "strengths": strengths,
        "smoothing": smoothing, "face": str(job.face), "precision": precision, "crf": job.crf,
        "size": [info.width, info.height], "rotation": info.rotation, "time_base": str(info.time_base),
        "outputs": [p.name for p in result.videos + result.skipped], "read": read, "notes": result.notes,
        "latents": "latents.npy", "frames": statuses})
    return result


