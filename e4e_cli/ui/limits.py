"""What the page server takes and keeps: every limit in one place, with the two errors that
say a limit was met (the routes answer them 503 and 413)."""

from ..errors import E4EError

MAX_UPLOAD = 25 << 20  # bytes of the photo
MAX_UPLOAD_BODY = MAX_UPLOAD + (64 << 10)  # the multipart request around it
MAX_JSON_BODY = 1 << 20  # every other request
MAX_PREPARES = 2  # uploads / latent picks read, aligned and inverted at once; more get "busy"

# A loaded photo stays in memory for its previews and paste-back. A photo may have 100 Mpx
# (images.MAX_PIXELS, ~300 MB as RGB), so it is kept at up to KEPT_PHOTO_PIXELS, and all
# sessions together hold at most MAX_SESSION_BYTES: the oldest are forgotten first.
MAX_SESSIONS = 32
MAX_SESSION_BYTES = 1 << 30
KEPT_PHOTO_PIXELS = 16_000_000

# The upload's file name decides only the temporary file's extension: a short list of the
# photo formats people upload (the content is checked by images.load_image either way).
UPLOAD_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def memory_bound_text() -> str:
    """The bound as `e4e ui --help` and the README state it."""
    return (f"loaded photos hold at most {MAX_SESSION_BYTES >> 30} GB together (each kept at up to "
            f"{KEPT_PHOTO_PIXELS // 1_000_000} megapixels for paste-back; the oldest is forgotten first)")


class Busy(E4EError):
    """Too many photos are being prepared at once: answered 503, the page says try again."""

    http_status = 503


class TooLarge(E4EError):
    """A request or file over its limit: answered 413."""

    http_status = 413
