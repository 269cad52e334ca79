"""Pass 2b of `e4e edit clip.mp4` (jobs.video): `--tune N`, STIT's tuning of one generator on every
face frame's code and aligned crop (`pti_clip.tune_on_frames`). Its float16 difference from the
base generator is the clip's `tuned_generator.npz` (`pti.save_diff`: temporary name, then
renamed), reused by a rerun whose settings, base checkpoint, codes, clip, smoothing and face
match its record; the edit pass decodes with it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .. import progress
from ..errors import USAGE, E4EError
from ..facetrack import crop_face
from ..video import read_frames

TUNE_TARGETS = ".tune-targets.npy.part"


class _Targets:
    """The face frames' aligned crops (uint8 [F,H,W,3], on disk) as the photo path's tensors [3,H,W]."""

    def __init__(self, arr: np.ndarray, size_hw: tuple):
        self.arr, self.size_hw = arr, size_hw

    def __len__(self) -> int:
        return len(self.arr)

    def __getitem__(self, i: int):
        from PIL import Image

        from ..model import preprocess_images

        return preprocess_images(Image.fromarray(np.asarray(self.arr[i])), self.size_hw)[0]


def tune_settings(tune: int, tune_lr: Optional[float]):
    """pti_clip.ClipTuneSettings for `--tune N` (None when off); one usage line for a value out of range."""
    from ..pti_clip import DEFAULT_LR, ClipTuneSettings

    if tune == 0 and not isinstance(tune, bool):
        if tune_lr is not None:
            raise E4EError("--tune-lr needs --tune N (N > 0)", exit_code=USAGE)
        return None
    return ClipTuneSettings(steps=tune, lr=DEFAULT_LR if tune_lr is None else tune_lr).check()


def reusable_tuning(path: Path, model, key: dict):
    """(decoder with the tuned generator, record) of the clip's difference at `path` when its
    record says it was made with `key` (settings, base checkpoint, codes' content hash, clip,
    smoothing, face); None when it is absent, made another way, from another base generator or
    damaged (then the clip is tuned again)."""
    from .. import pti

    if not path.is_file():
        return None
    try:
        decoder, meta = pti.load_tuned(path, model)
    except E4EError:
        return None
    return (decoder, meta) if meta.get("key") == key else None


def tuned_decoder(video: Path, folder: Path, model, settings, lpips, codes: np.ndarray, quads: list,
                  made_from: dict):
    """(decoder with the clip's tuned generator, the tuning's record, reused?): the difference in
    `tuned_generator.npz` is reused when its record matches these settings, the base checkpoint and
    the codes' content; otherwise the generator is tuned on every face frame and the difference
    written (under a temporary name, then renamed: an interrupted tuning leaves nothing)."""
    import copy

    import torch
    from PIL import Image

    from .. import domains, pti
    from ..pti_clip import codes_sha256, tune_on_frames

    idx = [i for i, q in enumerate(quads) if q is not None]
    pivots = np.asarray(codes[idx], dtype=np.float32)
    key = {**settings.record(), "base_sha256": pti.base_sha256(model), "codes_sha256": codes_sha256(pivots, idx),
           **made_from}
    path = folder / pti.DIFF_NAME
    have = reusable_tuning(path, model, key)
    if have is not None:
        return (*have, True)
    size = model.size
    crop = domains.partial_rows(model.domain, size)
    h, w = model.output_size
    tmp = folder / TUNE_TARGETS
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(idx), h, w, 3))
        row = {i: k for k, i in enumerate(idx)}
        with progress.bar(total=len(idx), desc="tune: crops", unit="frame") as bar:
            frames = read_frames(video, start=idx[0])
            try:
                for fr in frames:
                    if fr.index in row:
                        img = crop_face(fr.rgb, quads[fr.index], size)
                        arr[row[fr.index]] = np.asarray(img.resize((w, h), Image.BILINEAR) if img.size != (w, h) else img)
                        bar.update(1)
                    if fr.index >= idx[-1]:
                        break
            finally:
                frames.close()
        arr.flush()
        gen = copy.deepcopy(model.generator).float()
        n = settings.steps * len(idx)
        with progress.bar(total=n, desc="tune", unit="update") as bar:
            def on_frame(step, f, losses):
                bar.update(1)
                bar.set_postfix_str(f"step {step + 1}/{settings.steps} lpips {losses[1]:.4f}")

            log = tune_on_frames(gen, torch.from_numpy(pivots).to(model.device), _Targets(arr, (h, w)),
                                 lpips.to(model.device), settings=settings, crop=crop, on_frame=on_frame)
        del arr
    finally:
        tmp.unlink(missing_ok=True)
    diff = pti.difference(gen, model.generator, precision=settings.precision)
    del gen
    meta = {"key": key, **key, "checkpoint": str(Path(model.path).resolve()), **log.record()}
    pti.save_diff(path, diff, meta=meta)
    decoder, meta = pti.load_tuned(path, model)  # the edits decode the stored (float16) difference
    return decoder, meta, False

