"""What the page shows: PNG data URLs of decodes, and faces pasted back into the photo.

Previews travel over loopback, where bytes are cheap and time is not: PNGs at zlib level 1.
A paste-back for display goes into a copy of the photo shrunk to PASTE_SIDES (kept per side
with the session): a large photo need not be warped and blended at full size for a preview.
"""

import base64
import io
from typing import Optional

import numpy as np

PREVIEW_SIDE = 256  # the early-exit preview's resolution, and the thumbnails' side
PASTE_SIDES = {"preview": 2 * PREVIEW_SIDE, "full": 1024}  # the photo's longest side when a face is pasted back for display


def png(image, max_side: Optional[int] = None, *, fast: bool = False) -> bytes:
    """PNG bytes; `fast`: zlib level 1 (a 1024 image in ~0.07 s instead of ~0.3 s, 15% larger)."""
    from PIL import Image

    if max_side and max(image.size) > max_side:
        s = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))), Image.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1 if fast else 6)
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def scaled(photo, quad, landmarks, size: tuple):
    """(photo, quad, landmarks) with the photo resized to `size` (w, h) and the points moved with
    it (pixel centres: p' = (p + 0.5) * scale - 0.5)."""
    from PIL import Image

    small = photo.resize(size, Image.LANCZOS)
    scale = np.array([small.width / photo.width, small.height / photo.height])

    def move(p):
        return None if p is None else (np.asarray(p, dtype=np.float64) + 0.5) * scale - 0.5

    return small, move(quad), move(landmarks)


def paste(s, face, side: Optional[int]):
    """`face` pasted back into session `s`'s photo, or into a copy shrunk to `side` px (kept per
    side; quad and landmarks scaled with it). The download pastes into the kept photo as it is."""
    from ..compositing import paste_face

    photo, quad, marks = s.photo, s.quad, s.landmarks
    if side is not None and max(photo.size) > side:
        if side not in s.shrunk:
            k = side / max(photo.size)
            s.shrunk[side] = scaled(photo, quad, marks, (max(1, round(photo.width * k)), max(1, round(photo.height * k))))
        photo, quad, marks = s.shrunk[side]
    return paste_face(photo, face, quad, landmarks=marks)
