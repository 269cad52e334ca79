"""The page's HyperStyle switch: the refiner (loaded at its first use), the record of what
refined a session, and the refined latent the page downloads: one `.npz` with the edited code
beside the session's offsets (`refine.save_offsets(latent=)`), which `e4e edit` takes back."""

import tempfile
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
        if rec is None:
            return None
        if rec.get("method") == "pti":
            raise E4EError("that latent is a PTI result (e4e invert --refine pti): the page does not decode tuned "
                           "generators yet; edit it with `e4e edit`")
        hs = self.get()
        if hs.sha256() != rec.get("refiner_sha256"):
            raise E4EError("that latent was refined with another HyperStyle checkpoint than this page's refiner")
        offsets, _ = load_offsets(folder / "weight_offsets.npz", generator=hs.decoder.generator)
        return offsets, {k: rec.get(k) for k in RECORD_KEYS}


def refined_latent_bytes(code, offsets: dict, record: dict) -> bytes:
    """The file a refined download gives: `code` [n,512] and `offsets` in one .npz with `record`."""
    import numpy as np

    from ..refine import save_offsets

    with tempfile.TemporaryDirectory(prefix="e4e-ui-") as tmp:
        path = save_offsets(Path(tmp) / "latent.npz", offsets, meta=record,
                            latent=np.asarray(code, dtype=np.float32))
        return path.read_bytes()
