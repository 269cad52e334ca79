"""The page's HyperStyle switch: the refiner (loaded at its first use), the record of what
refined a session, and the refined latent the page downloads: one `.npz` with the edited code
beside the session's offsets (`refine.save_offsets(latent=)`), which `e4e edit` takes back.

And PTI results (`e4e invert --refine pti`) picked from the latent folder: their tuned
generators (`TunedDecoders`), which decode every edit of such a session."""

import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional

from ..errors import E4EError

# the refine record (as `e4e invert --refine` writes it in meta.json and weight_offsets.npz)
RECORD_KEYS = ("method", "refiner", "refiner_sha256", "w_encoder", "steps", "layers", "size", "domain")


class PageRefiner:
    """The HyperStyle pair given to `e4e ui` (checkpoint, W-encoder) for one page's model."""

    def __init__(self, files: Optional[tuple], model):
        self.files, self.model = files, model
        self._hs = None

    @property
    def available(self) -> bool:
        return self.files is not None

    def get(self):
        """The HyperStyle model (loaded at the first refine: about 1.5 GB, memory-mapped)."""
        if self.files is None:
            raise E4EError(f"no HyperStyle refiner: run `e4e download-weights hyperstyle_{self.model.domain}` "
                           "or start e4e ui with --refiner FILE --w-encoder FILE")
        if self._hs is None:
            from ..refine import HyperStyle

            hs = HyperStyle.from_files(*self.files, device=str(self.model.device), precision=self.model.precision)
            if hs.domain != self.model.domain or hs.size != self.model.size:
                raise E4EError(f"the refiner is a {hs.domain} {hs.size} px checkpoint; this page edits {self.model.domain} "
                               f"{self.model.size} px")
            self._hs = hs
        return self._hs

    def record(self, *, steps: Optional[int]) -> dict:
        """What a refinement on this page is recorded as (the fields `e4e invert --refine` writes)."""
        return self.get().record(steps=steps)

    def refine(self, image, *, steps: Optional[int]):
        """(codes, offsets, last decode) of one aligned image. The offsets are kept at float16
        precision, as `e4e invert --refine` stores them: what the page shows after refining is
        what its download gives back to `e4e edit`."""
        r = self.get().refine([image], steps=steps)
        return r.codes, {k: v.half().float() for k, v in r.offsets_of(0).items()}, r.image

    def open_folder(self, folder: Path) -> Optional[tuple]:
        """(offsets, record) of a `e4e invert --refine hyperstyle` result folder (None for a plain
        one); refused unless its offsets were made by this page's refiner (their generator)."""
        from ..jobs.outputs import refine_record
        from ..refine import load_offsets

        rec = refine_record(folder)
        if rec is None or rec.get("method") == "pti":  # PTI: TunedDecoders.open_folder
            return None
        hs = self.get()
        if hs.sha256() != rec.get("refiner_sha256"):
            raise E4EError("that latent was refined with another HyperStyle checkpoint than this page's refiner")
        offsets, _ = load_offsets(folder / "weight_offsets.npz", generator=hs.decoder.generator)
        return offsets, {k: rec.get(k) for k in RECORD_KEYS}


# A tuned generator is a full copy of the generator (121 MB in float32 at 256 px, 133 MB at
# 1024): the page keeps at most this many alive, whatever the number of PTI sessions (plus,
# briefly, one being built and those a decode in flight still holds).
KEEP_TUNED = 2
PTI_NO_REFINE = ("this latent is a PTI result: its own tuned generator decodes it, and HyperStyle's refinement "
                 "does not apply to it (switch refine off)")


class TunedDecoders:
    """The tuned generators of PTI results opened on the page, for one page's model.

    A session keeps only the key of its tuned decoder: (the difference file's path, its content
    SHA-256). The decoders live here, in an LRU of at most KEEP_TUNED keyed by the SHA-256 (two
    copies of one result share one decoder): a session whose decoder was dropped meanwhile gets
    it rebuilt from its file at its next decode, refused when that file's content is no longer
    the one it opened (a result inverted again since)."""

    def __init__(self, model, keep: int = KEEP_TUNED):
        self.model, self.keep = model, keep
        self._lru: "OrderedDict[str, object]" = OrderedDict()  # SHA-256 -> decode-only E4E, oldest use first
        self._lock = threading.Lock()
        self._building = threading.Lock()  # one tuned copy built at a time, whatever the requests

    def open_folder(self, folder: Path) -> Optional[tuple]:
        """(key, decoder, record) of a PTI result folder (None for any other folder); refused in one
        line when it was tuned from another checkpoint than the page's (`pti.load_tuned`)."""
        from ..jobs.outputs import refine_record
        from ..pti import DIFF_NAME

        rec = refine_record(folder)
        if rec is None or rec.get("method") != "pti":
            return None
        key, decoder = self._load(folder / DIFF_NAME)
        return key, decoder, dict(rec)

    def get(self, key: tuple):
        """The decode-only E4E of a session's key (rebuilt from its file when it was dropped)."""
        return self._load(Path(key[0]), want=key[1])[1]

    def _load(self, path: Path, *, want: Optional[str] = None) -> tuple:
        """((path, SHA-256), decoder) of a difference file: the kept decoder of that content, or a
        new one (`pti.load_tuned`: one line for another base checkpoint or a damaged file).
        `want`: the content a session opened (refused when the file holds another now)."""
        from ..digests import sha256_file
        from ..pti import load_tuned

        with self._lock:
            if want is not None and want in self._lru:
                self._lru.move_to_end(want)
                return (str(path), want), self._lru[want]
        try:
            sha = sha256_file(path)
        except OSError as exc:
            raise E4EError(f"cannot read the tuned generator of that latent: {exc.strerror or exc}") from None
        if want is not None and sha != want:
            raise E4EError("the tuned generator of this latent changed on disk since it was opened: pick the latent "
                           "again")
        with self._building:
            with self._lock:
                decoder = self._lru.get(sha)  # built meanwhile by another request?
            if decoder is None:
                decoder, _ = load_tuned(path, self.model)
                if sha256_file(path) != sha:
                    raise E4EError("the tuned generator of that latent changed while it was read: pick the latent "
                                   "again")
        with self._lock:
            self._lru[sha] = decoder
            self._lru.move_to_end(sha)
            while len(self._lru) > self.keep:  # a decode in flight keeps its own reference meanwhile
                self._lru.popitem(last=False)
        return (str(path), sha), decoder


def refined_latent_bytes(code, offsets: dict, record: dict) -> bytes:
    """The file a refined download gives: `code` [n,512] and `offsets` in one .npz with `record`."""
    import numpy as np

    from ..refine import save_offsets

    with tempfile.TemporaryDirectory(prefix="e4e-ui-") as tmp:
        path = save_offsets(Path(tmp) / "latent.npz", offsets, meta=record,
                            latent=np.asarray(code, dtype=np.float32))
        return path.read_bytes()
