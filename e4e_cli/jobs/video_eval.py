"""Temporal consistency of an edited clip against its source: what `e4e evaluate SRC.mp4 EDIT.mp4` runs.

As STIT (Tzaban et al. 2022) measures it: identity features (ArcFace IR-SE50) of the aligned
face crops of every frame; TL-ID is the mean cosine similarity of consecutive frames' features
in the edited clip divided by the same in the source, TG-ID the same over all pairs of frames.
1.0 means as consistent as the source; an edit that flickers in identity scores below it.
Flicker: the mean absolute change (gray levels, 0-255) between consecutive frames' face crops,
reported for both clips and as their ratio.

Both clips are cropped with the same smoothed track, found in the source (`facetrack`), so the
numbers compare faces, not crops. An edited clip twice the source's width is taken for a
side-by-side video (source | edit) and its right half is measured. Frames stream: only the
features [T,512] and the previous crops are kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .. import progress
from ..errors import E4EError
from ..facetrack import DEFAULT_AXES_SIGMA, DEFAULT_CENTER_SIGMA, FaceTracker, smooth_quads
from ..video import probe, read_frames
from ..facetrack import crop_face

CROP = 256  # the identity network's input (it crops rows 35:223, columns 32:220 and pools to 112)


@dataclass
class TemporalScores:
    frames: int
    with_face: int
    tl_id: Optional[float]
    tg_id: Optional[float]
    source_local: Optional[float]  # mean cos of consecutive source frames
    edited_local: Optional[float]
    source_global: Optional[float]
    edited_global: Optional[float]
    flicker_source: Optional[float]
    flicker_edited: Optional[float]

    @property
    def flicker_ratio(self) -> Optional[float]:
        if self.flicker_source is None or self.flicker_edited is None or self.flicker_source <= 0:
            return None
        return self.flicker_edited / self.flicker_source


def _embed(identity, crops: list) -> np.ndarray:
    """PIL crops -> unit identity features [N,512]."""
    import torch

    x = torch.from_numpy(np.stack([np.asarray(c, dtype=np.float32) for c in crops])).permute(0, 3, 1, 2)
    with torch.inference_mode():
        f = identity.embed(x / 127.5 - 1.0)
    return torch.nn.functional.normalize(f.float(), dim=1).numpy()


def _local_global(feats: np.ndarray, present: np.ndarray) -> tuple[Optional[float], Optional[float]]:
    """Mean cos of consecutive frames that both have the face; mean cos over all distinct pairs."""
    pairs = present[:-1] & present[1:]
    local = float(np.sum(feats[:-1] * feats[1:], axis=1)[pairs].mean()) if pairs.any() else None
    f = feats[present]
    if len(f) < 2:
        return local, None
    sim = f @ f.T
    n = len(f)
    return local, float((sim.sum() - np.trace(sim)) / (n * (n - 1)))


def evaluate_videos(source: Path, edited: Path, *, weights_dir=None, face="largest", landmarks=None,
                    center_sigma: float = DEFAULT_CENTER_SIGMA, axes_sigma: float = DEFAULT_AXES_SIGMA,
                    batch: int = 8) -> TemporalScores:
    """TL-ID, TG-ID and flicker of `edited` against `source` (see the module's docstring)."""
    from ..alignment import FaceAligner
    from ..train.lossnets import load_identity_loss

    a, b = probe(source), probe(edited)
    half = b.width == 2 * a.width and b.height == a.height
    if not half and (b.width, b.height) != (a.width, a.height):
        raise E4EError(f"{edited.name} is {b.width}x{b.height} but {source.name} is {a.width}x{a.height}: "
                       "give the source of that edit")
    identity = load_identity_loss(domain="ffhq", weights_dir=weights_dir)
    tracker = FaceTracker(FaceAligner(landmarks=landmarks), face=face)
    raw = []
    for fr in progress.iterate(read_frames(source), total=a.frames or 2, desc="align", unit="frame"):
        raw.append(tracker.see(fr.rgb).quad)
    quads = smooth_quads(raw, center_sigma=center_sigma, axes_sigma=axes_sigma)
    present = np.array([q is not None for q in quads])
    if not present.any():
        raise E4EError(f"no face found in any of the {len(quads)} frames of {source.name}")
    feats = {k: np.zeros((len(quads), 512), np.float32) for k in ("source", "edited")}
    flick = {"source": [], "edited": []}
    prev: dict = {}
    pending: list = []

    def flush():
        if pending:
            idx = [i for i, _, _ in pending]
            feats["source"][idx] = _embed(identity, [s for _, s, _ in pending])
            feats["edited"][idx] = _embed(identity, [e for _, _, e in pending])
            pending.clear()

    n_edited = 0
    with progress.bar(total=len(quads), desc="identity", unit="frame") as bar:
        for fs, fe in zip(read_frames(source), read_frames(edited)):
            n_edited += 1
            i = fs.index
            if i >= len(quads):
                break
            q = quads[i]
            if q is not None:
                rgb_e = fe.rgb[:, a.width:] if half else fe.rgb
                crops = {"source": crop_face(fs.rgb, q, CROP), "edited": crop_face(rgb_e, q, CROP)}
                for k, c in crops.items():
                    arr = np.asarray(c, dtype=np.float32).mean(axis=2)
                    if i - 1 in prev.get(k, {}):
                        flick[k].append(float(np.abs(arr - prev[k][i - 1]).mean()))
                    prev[k] = {i: arr}
                pending.append((i, crops["source"], crops["edited"]))
                if len(pending) >= batch:
                    flush()
            bar.update(1)
        flush()
    if n_edited < len(quads):
        raise E4EError(f"{edited.name} has {n_edited} frames, {source.name} {len(quads)}: give the source of that edit")
    src_l, src_g = _local_global(feats["source"], present)
    ed_l, ed_g = _local_global(feats["edited"], present)
    ratio = lambda e, s: None if e is None or s is None or s == 0 else e / s  # noqa: E731
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    return TemporalScores(frames=len(quads), with_face=int(present.sum()), tl_id=ratio(ed_l, src_l),
                          tg_id=ratio(ed_g, src_g), source_local=src_l, edited_local=ed_l, source_global=src_g,
                          edited_global=ed_g, flicker_source=mean(flick["source"]), flicker_edited=mean(flick["edited"]))
