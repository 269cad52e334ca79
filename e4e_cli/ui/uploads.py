"""An uploaded photo, read with the same checks as any input, and told about under its own name.

The bytes go to a temporary file (`upload` + an extension from UPLOAD_SUFFIXES, never the
user's name) because the loader and the face detector read files; any message that names that
file is rewritten to name the user's file instead, so no temporary path reaches the page.
"""

import re
import tempfile
from pathlib import Path
from typing import Optional

from ..errors import E4EError
from .limits import UPLOAD_SUFFIXES


def shown_name(filename: Optional[str]) -> str:
    """The upload's base name as the page may show it: one line, at most 80 characters."""
    name = re.split(r"[\\/]", str(filename or ""))[-1]
    name = " ".join("".join(c if c.isprintable() else " " for c in name).split()) or "photo"
    return name if len(name) <= 80 else name[:77] + "..."


def upload_suffix(filename: Optional[str]) -> str:
    """The temporary file's extension: the upload's own, if it is on the allow-list."""
    suffix = Path(re.split(r"[\\/]", str(filename or ""))[-1]).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise E4EError(f"{shown_name(filename)}: the page takes photos named {', '.join(UPLOAD_SUFFIXES)}")
    return suffix


def read_upload(data: bytes, filename: Optional[str], *, align: bool):
    """(photo, aligned face, alignment record or None) of an upload; faces are aligned as
    `e4e align` does. One E4EError line naming the user's file for anything wrong with it."""
    from ..images import detection_pixels, load_image

    name, suffix = shown_name(filename), upload_suffix(filename)
    with tempfile.TemporaryDirectory(prefix="e4e-ui-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        try:
            path.write_bytes(data)
        except OSError as exc:
            raise E4EError(f"{name}: the server cannot store the upload to read it ({exc.strerror or 'write failed'})") from None
        try:
            photo = load_image(path)  # a text file, a bomb, a truncated image
            if not align:
                return photo, photo, None
            from ..alignment import default_aligner

            face = default_aligner().align(photo, detection_pixels(path, photo), name=name)[0]
            return photo, face.image, face.to_json()
        except E4EError as exc:
            raise E4EError(_renamed(str(exc), path, name)) from None


def _renamed(message: str, path: Path, name: str) -> str:
    """`message` with the temporary file (and its folder) named as the user's file."""
    for old in (str(path), str(path.parent), path.name):
        message = message.replace(old, name)
    return message
