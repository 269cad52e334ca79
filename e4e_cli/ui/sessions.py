"""The page's sessions (an uploaded photo or a picked latent), bounded in number and in bytes.

A session keeps what its previews, paste-back and refinement need: the codes, the aligned face
and the photo at up to KEPT_PHOTO_PIXELS (with the quad and landmarks scaled along). All
sessions together hold at most MAX_SESSION_BYTES; a new or grown session makes the oldest
others go.
"""

import math
import threading
import uuid
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import E4EError
from .limits import KEPT_PHOTO_PIXELS, MAX_SESSION_BYTES, MAX_SESSIONS
from .previews import PASTE_SIDES, scaled


@dataclass
class Session:
    codes: "object"  # [1,n,512] at delta scale 1 (latent_avg included)
    w0_codes: "object"  # [1,n,512] at delta scale 0
    photo: Optional["object"] = None  # PIL, upright, at most KEPT_PHOTO_PIXELS
    quad: Optional[np.ndarray] = None  # [4,2] where the face came from, in `photo`'s pixels
    landmarks: Optional[np.ndarray] = None  # [68,2] likewise (None: an elliptic paste mask)
    aligned: Optional["object"] = None  # PIL, the face the encoder saw (refinement starts from it)
    seq: int = 0
    name: str = "photo"
    lock: threading.Lock = field(default_factory=threading.Lock)
    shrunk: dict = field(default_factory=dict)  # longest side -> (photo, quad, landmarks) for display paste-backs
    refined: Optional[tuple] = None  # HyperStyle: (codes [1,n,512], {layer: offsets}), once refined
    refine_record: Optional[dict] = None  # what refined it (the record a downloaded .npz carries)
    # PTI (a picked `e4e invert --refine pti` result): the key of its tuned decoder in the page's
    # refining.TunedDecoders (difference file, its SHA-256), and meta.json's "refine" record. The
    # decoder is not counted in the session's bytes: TunedDecoders bounds those on its own.
    tuned: Optional[tuple] = None
    tuned_record: Optional[dict] = None


def kept_photo(photo, alignment: Optional[dict]):
    """What a session keeps of an uploaded photo for paste-back: (photo, quad, landmarks), the
    photo shrunk to KEPT_PHOTO_PIXELS when larger."""
    quad = marks = None
    if alignment is not None:
        quad = np.asarray(alignment["quad"], dtype=np.float64)
        marks = np.asarray(alignment["landmarks"], dtype=np.float64) if alignment.get("landmarks") else None
    pixels = photo.width * photo.height
    if pixels <= KEPT_PHOTO_PIXELS:
        return photo, quad, marks
    k = (KEPT_PHOTO_PIXELS / pixels) ** 0.5
    return scaled(photo, quad, marks, (max(1, math.floor(photo.width * k)), max(1, math.floor(photo.height * k))))


def _tensor_bytes(t) -> int:
    return 0 if t is None else int(t.numel()) * int(t.element_size())


def _image_bytes(image) -> int:
    return 0 if image is None else image.width * image.height * len(image.getbands())


def session_bytes(s: Session) -> int:
    """What a session holds, counted from above: its images (and the display copies its
    paste-backs may make), codes and HyperStyle offsets."""
    total = _image_bytes(s.photo) + _image_bytes(s.aligned)
    if s.photo is not None and s.quad is not None:
        total += sum(3 * side * side for side in PASTE_SIDES.values() if max(s.photo.size) > side)
    total += _tensor_bytes(s.codes) + _tensor_bytes(s.w0_codes)
    if s.refined is not None:
        total += _tensor_bytes(s.refined[0]) + sum(_tensor_bytes(t) for t in s.refined[1].values())
    return total


class Sessions:
    """The loaded sessions, oldest first (uploads finish in worker threads: one lock)."""

    def __init__(self, *, max_count: int = MAX_SESSIONS, max_bytes: int = MAX_SESSION_BYTES):
        self.max_count, self.max_bytes = max_count, max_bytes
        self._by_id: dict[str, Session] = {}  # insertion order = age
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, s: Session) -> str:
        sid = uuid.uuid4().hex
        with self._lock:
            self._by_id[sid] = s
        self.fit(keep=sid)
        return sid

    def get(self, sid: str) -> Session:
        with self._lock:
            s = self._by_id.get(sid)
        if s is None:
            raise E4EError("this photo is no longer loaded: upload it again")
        return s

    def total_bytes(self) -> int:
        with self._lock:
            return sum(session_bytes(s) for s in self._by_id.values())

    def fit(self, *, keep: str) -> None:
        """Forget the oldest sessions but `keep` (the one just added or grown) until the rest
        are within the count and byte bounds."""
        with self._lock:
            sizes = {sid: session_bytes(s) for sid, s in self._by_id.items()}
            total = sum(sizes.values())
            for sid in list(self._by_id):
                if len(self._by_id) <= self.max_count and total <= self.max_bytes:
                    break
                if sid != keep:
                    del self._by_id[sid]
                    total -= sizes[sid]
