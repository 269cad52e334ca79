"""Align a command's first photo in a thread while the model loads (issue 25: a fast first photo).

A cold `e4e invert photo.jpg` spends about as long importing torch and loading the checkpoint as
loading dlib's landmark model and aligning the face; the two do not depend on each other, and
dlib's detection and numpy's filtering run without the GIL. `AlignAhead` starts the alignment of
the first photo that will be inverted before the command imports torch; `invert_inputs` takes
its result (or its error, reported for that photo as usual) when it reaches that photo. The
alignment is the same call, with the same result, as without it. This module imports neither
torch nor the model (importing them first would leave nothing to overlap).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional, Sequence

from ..errors import E4EError
from .outputs import expand_inputs, unique_stems


def align_input(path: Path, face: str) -> dict:
    """Align the chosen face of one photo; what `prepare_input` returns for a face."""
    from ..alignment import align_photo

    faces = align_photo(path, face=face)
    first = faces[0]
    return {"image": first.image, "alignment": first.to_json(), "n_faces": first.n_faces}


def finished(outdir: Path) -> bool:
    """True when `outdir` holds a finished inversion (meta.json is written last)."""
    return all((outdir / name).is_file() for name in ("latent.npy", "inversion.png", "meta.json"))


class AlignAhead:
    """The first photo of `inputs` that `invert_inputs` will invert (not one already done, unless
    `overwrite`), aligned in a daemon thread started here. Nothing is started when there is no
    such photo or the inputs are not readable (the job reports that itself)."""

    def __init__(self, inputs: Sequence[Path], *, out: Path, face: str, overwrite: bool):
        self.path: Optional[Path] = None
        self._result: Optional[dict] = None
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        try:
            paths = expand_inputs(inputs)
        except (E4EError, OSError):
            return
        for p, stem in zip(paths, unique_stems(paths)):
            if overwrite or not finished(Path(out) / stem):
                if p.is_file():
                    self.path = p
                break
        if self.path is None:
            return
        self._thread = threading.Thread(target=self._run, args=(self.path, face), name="e4e-align-ahead", daemon=True)
        self._thread.start()

    def _run(self, path: Path, face: str) -> None:
        try:
            self._result = align_input(path, face)
        except BaseException as exc:  # noqa: BLE001  (handed to the main thread by `take`)
            self._error = exc

    def busy(self) -> bool:
        """True while the photo is still being aligned."""
        return self._thread is not None and self._thread.is_alive()

    def take(self, path: Path) -> Optional[dict]:
        """The alignment of `path` if it is the photo aligned ahead (waits for it; raises its
        error), else None. Once only: a second call gets None."""
        if self._thread is None or Path(path) != self.path:
            return None
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise self._error
        return self._result
