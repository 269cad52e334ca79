"""The page's editing work, without web code (tests drive it directly): upload or pick, invert
once, then decode-only previews.

A preview applies the delta scale and each slider's direction with exactly the functions
`e4e edit` uses (`editing.rescale_codes`, `editing.resolve_direction(...).apply`, in slider
order), decodes (a lock serialises the model), and returns the image. Previews are progressive
(issue 25): while a slider moves the page asks for `size: "preview"`, the synthesis stopped
after its 256 block (`E4E.decode(size=256)`, exactly the full decode's partial sum at 256),
and when it rests for `"full"`. A request that a newer one of the same session has overtaken
gets None: without decoding when that happened before it reached the model, and at the next
block boundary when it happened during the decode (`should_stop`). The latent picker lists
only files under the folder given on the command line.

A picked HyperStyle result is decoded with its offsets (the refine switch on); a picked PTI
result (`e4e invert --refine pti`) with its own tuned generator, for every preview, full
decode, image download and text edit of its session, so that strength 0 gives back its
inversion.png (a picked latent has no photo to paste back into). The
refine switch does not apply to a PTI session (refused in one line), and its latent download is
the edited pivot, `<name>_edit_pti_pivot.npy`: the base generator alone does not decode it to
the tuned result (`e4e edit FOLDER` does).
"""

import contextlib
import io
import re
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import E4EError
from .limits import MAX_PREPARES, MAX_UPLOAD, Busy, TooLarge
from .previews import PASTE_SIDES, PREVIEW_SIDE, data_url, paste, png
from .refining import PTI_NO_REFINE, PageRefiner, TunedDecoders, refined_latent_bytes
from .sessions import Session, Sessions, kept_photo
from .uploads import read_upload, shown_name

N_SEFA = 5
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")  # own direction files offered as sliders


class Editor:
    """The model, its directions and the sessions."""

    def __init__(self, model, *, weights_dir=None, latents_dir: Optional[Path] = None, synthetic: bool = False,
                 directions_dir: Optional[Path] = None, refiner_files: Optional[tuple] = None,
                 relevance: Optional[Path] = None):
        from .. import editing

        self.model, self.synthetic = model, synthetic
        self.refiner = PageRefiner(refiner_files, model)  # the page's "refine" switch
        self.tuned = TunedDecoders(model)  # picked PTI results' tuned generators (at most two kept)
        self.latents_dir = Path(latents_dir).resolve() if latents_dir else None
        self.lock = threading.Lock()  # the model: one encode or decode at a time
        self.sessions = Sessions()
        self.prepares = threading.BoundedSemaphore(MAX_PREPARES)
        self.directions = {}
        specs = [n for n, p in editing.PRESETS.items() if p.domain == model.domain]
        specs += [f"sefa:{k}" for k in range(N_SEFA)]
        for spec in specs:
            try:
                d = editing.resolve_direction(spec, model, weights_dir=weights_dir)
            except E4EError:
                continue  # its file is not downloaded
            lo, hi = (-5.0, 5.0) if d.kind != "ganspace" else (-30.0, 30.0)
            self.directions[spec.replace(":", "-")] = (spec, d, lo, hi)
        self._add_own_directions(weights_dir, directions_dir)
        self.weights_dir, self.relevance = weights_dir, relevance
        self.text_edits = self._text_edits_available()
        self._texts: dict = {}  # (target, neutral, beta) -> Direction: each text resolved once

    def _text_edits_available(self) -> bool:
        """Whether the page offers a text box: CLIP's files and a relevance for this model are there."""
        from ..textedit import resolve_relevance
        from ..weights.locate import require_asset

        try:
            require_asset("clip_vit_b32", self.weights_dir)
            require_asset("clip_vocab", self.weights_dir)
            resolve_relevance(self.model, self.relevance, self.weights_dir)
        except E4EError:
            return False
        return True

    def text_offsets(self, text) -> Optional[object]:
        """A text edit's StyleSpace offsets [C] from the page's {"target", "alpha"[, "neutral", "beta"]}
        (None: no text or α 0), with `e4e edit --text`'s function."""
        if not text:
            return None
        if not isinstance(text, dict):
            raise E4EError("text must be an object with target and alpha")
        target = str(text.get("target") or "")
        alpha = float(text.get("alpha", 0.0))
        if not target.strip() or alpha == 0.0:
            return None
        if not self.text_edits:
            raise E4EError("text edits need CLIP and a relevance file: e4e download-weights clip (and styleclip_ffhq "
                           "for faces, or e4e ui --relevance FILE)")
        neutral = text.get("neutral") or None
        beta = float(text.get("beta", 0.15))
        key = (target[:400], neutral, beta)
        if key not in self._texts:
            from ..textedit import text_direction

            with self.lock:  # CLIP runs beside the generator: one model at a time
                self._texts[key] = text_direction(self.model, text=key[0], neutral=neutral, beta=beta,
                                                  relevance=self.relevance, weights_dir=self.weights_dir)
        return self._texts[key].style_offsets(alpha)

    def _add_own_directions(self, weights_dir, directions_dir: Optional[Path]) -> None:
        """A slider for each direction file in the weights folder's directions/ and in
        `directions_dir` (`e4e ui --directions DIR`) that fits this checkpoint. Only plainly named
        files (SAFE_NAME) are offered: the name becomes the slider's id and label on the page."""
        from ..editing import resolve_direction
        from ..jobs.directions import user_directions

        for path in user_directions(weights_dir, directions_dir):
            if not SAFE_NAME.fullmatch(path.stem):
                continue
            key = f"file-{path.stem}"
            if key in self.directions:
                continue  # the weights folder's file wins over a namesake in --directions
            try:
                d = resolve_direction(str(path), self.model)
            except E4EError:
                continue  # made for another checkpoint (other layers) or unreadable
            self.directions[key] = (path.stem, d, -5.0, 5.0)

    # ---- facts for the page ---------------------------------------------------------------

    def info(self) -> dict:
        return {"domain": self.model.domain, "size": self.model.size, "synthetic": self.synthetic,
                "preview_size": self.preview_size("preview"),
                "paste_back": self.model.domain == "ffhq", "refine": self.refiner.available,
                "directions": [{"id": k, "label": spec, "min": lo, "max": hi} for k, (spec, d, lo, hi) in self.directions.items()],
                "text_edits": self.text_edits,
                "latents": self.list_latents()}

    def list_latents(self) -> list[str]:
        if self.latents_dir is None or not self.latents_dir.is_dir():
            return []
        found = (p for p in self.latents_dir.rglob("latent.npy") if self._inside_latents(p))
        return sorted(str(p.relative_to(self.latents_dir)) for p in found)[:500]

    def _inside_latents(self, path: Path) -> bool:
        """After resolving `..` and symlinks: a latent.npy file under the --latents folder."""
        real = path.resolve()
        return self.latents_dir in real.parents and real.name == "latent.npy" and real.is_file()

    # ---- sessions ---------------------------------------------------------------------------

    def session(self, sid: str) -> Session:
        return self.sessions.get(sid)

    @contextlib.contextmanager
    def _preparing(self):
        """At most MAX_PREPARES photos are read, aligned and inverted at once (each holds a photo
        and its decoded pixels in memory); one more is told to try again instead of queueing."""
        if not self.prepares.acquire(blocking=False):
            raise Busy("the server is busy preparing other photos: try again in a moment")
        try:
            yield
        finally:
            self.prepares.release()

    def upload(self, data: bytes, filename: str = "photo") -> dict:
        """Check, (align,) invert once; returns session id and the aligned face and inversion as PNG data URLs."""
        if len(data) > MAX_UPLOAD:
            raise TooLarge(f"the file is over the {MAX_UPLOAD >> 20} MB limit")
        if not data:
            raise E4EError(f"{shown_name(filename)}: the file is empty")
        with self._preparing():
            return self._upload(data, filename)

    def _upload(self, data: bytes, filename: str) -> dict:
        import torch

        photo, aligned, alignment = read_upload(data, filename, align=self.model.domain == "ffhq")
        with self.lock, torch.inference_mode():
            parts = self.model.encode_parts([aligned])
            codes, w0 = parts.codes(1.0), parts.codes(0.0)
            inversion = self.model.to_pil(self.model.decode(codes))[0]
        if alignment is None:  # no paste-back: refinement needs only the (bounded) photo
            photo, quad, marks = None, None, None
            aligned = kept_photo(aligned, None)[0]
        else:
            photo, quad, marks = kept_photo(photo, alignment)
        sid = self.sessions.add(Session(codes=codes, w0_codes=w0, photo=photo, quad=quad, landmarks=marks,
                                        aligned=aligned, name=(Path(shown_name(filename)).stem or "photo")[:100]))
        return {"session": sid, "aligned": data_url(png(aligned, PREVIEW_SIDE)),
                "inversion": data_url(png(inversion, PREVIEW_SIDE))}

    def pick_latent(self, rel: str) -> dict:
        if self.latents_dir is None:
            raise E4EError("no latent folder was given (e4e ui --latents DIR)")
        try:
            path = (self.latents_dir / rel).resolve()  # once: what is checked is what is read
            inside = self._inside_latents(path)  # `..` and symlinks that lead out
        except (OSError, ValueError):  # a NUL in the path, a name too long for the file system
            inside = False
        if not inside:
            raise E4EError("not a latent.npy inside the latent folder")
        with self._preparing():
            return self._pick_latent(path)

    def _pick_latent(self, path: Path) -> dict:
        import torch

        from ..editing import load_latent_file

        arr = load_latent_file(path)
        if arr.shape[0] != self.model.n_styles:
            raise E4EError(f"that latent has {arr.shape[0]} layers; this checkpoint needs {self.model.n_styles}")
        codes = torch.from_numpy(arr)[None].to(self.model.device)
        base = codes[:, :1] + (self.model.latent_avg - self.model.latent_avg[:1])[None]
        tuned = self.tuned.open_folder(path.parent)  # (key, decoder, record) of a PTI result
        found = None if tuned is not None else self.refiner.open_folder(path.parent)  # HyperStyle: (offsets, record)
        with self.lock, torch.inference_mode():
            if tuned is not None:  # a PTI invert: its pivot decoded by its tuned generator
                inversion = self.model.to_pil(tuned[1].decode(codes))[0]
            elif found is None:
                inversion = self.model.to_pil(self.model.decode(codes))[0]
            else:  # a HyperStyle invert: its code and offsets, decoded by the refiner's generator
                inversion = self.model.to_pil(self.refiner.get().decode(codes, offsets=found[0]))[0]
        s = Session(codes=codes, w0_codes=base, name=path.parent.name)
        if found is not None:
            s.refined, s.refine_record = (codes, found[0]), found[1]
        if tuned is not None:
            s.tuned, s.tuned_record = tuned[0], tuned[2]
        sid = self.sessions.add(s)
        return {"session": sid, "aligned": None, "inversion": data_url(png(inversion, PREVIEW_SIDE)),
                "refined": found is not None, "tuned": tuned is not None}

    # ---- HyperStyle refinement ------------------------------------------------------------------

    def refine(self, sid: str, *, steps: Optional[int] = None) -> dict:
        """Refine the session's photo with HyperStyle (once; the code and offsets stay with the
        session): the refined reconstruction as a PNG data URL."""
        import torch

        s = self.session(sid)
        if s.tuned is not None:
            raise E4EError(PTI_NO_REFINE)
        if s.refined is None:
            if s.aligned is None:
                raise E4EError("refining needs the photo: upload it (a plain latent picked from the folder has none)")
            with self._preparing():
                record = self.refiner.record(steps=steps)
                with self.lock, torch.inference_mode():
                    codes, offsets, last = self.refiner.refine(s.aligned, steps=steps)
                s.refined, s.refine_record = (codes, offsets), record
                self.sessions.fit(keep=sid)  # the offsets count against the sessions' bound
            image = self.model.to_pil(last)[0]  # the last step's decode is the refined reconstruction
        else:  # asked again: decode what the session keeps
            with self.lock, torch.inference_mode():
                image = self.model.to_pil(self.refiner.get().decode(s.refined[0], offsets=s.refined[1]))[0]
        return {"session": sid, "inversion": data_url(png(image, PREVIEW_SIDE)), "refined": True}

    # ---- edits --------------------------------------------------------------------------------

    def edited_codes(self, s: Session, strengths: dict, delta_scale: float, *, refined: bool = False):
        """The delta scale first (as `e4e edit --delta-scale`), then each slider's direction in the
        page's order, with `e4e edit`'s functions: [1,n,512]. `refined`: from the HyperStyle code
        (one W vector on every row: the delta scale has nothing to scale)."""
        from ..editing import check_delta_scale, rescale_codes

        if refined and s.tuned is not None:
            raise E4EError(PTI_NO_REFINE)
        if refined and s.refined is None:
            raise E4EError("this photo is not refined yet: switch refine on first")
        codes = s.refined[0] if refined else s.codes
        a = check_delta_scale(float(delta_scale))
        if a != 1.0 and not refined:
            codes = rescale_codes(codes, self.model.latent_avg, from_scale=1.0, to_scale=a)
        for key, value in strengths.items():
            if key not in self.directions:
                raise E4EError(f"unknown direction {str(key)[:40]!r}")
            v = float(value)
            if v != 0.0:
                codes = self.directions[key][1].apply(codes, v)
        return codes

    def latent_file(self, sid: str, strengths: dict, delta_scale: float, *, refined: bool = False) -> tuple[bytes, str]:
        """(bytes, file name) of the edited latent: plain, `<name>_edit.npy` ([n,512] float32);
        refined, `<name>_edit_refined.npz`, the edited code with the session's offsets and refine
        record (`refine.load_refined_latent` reads it; `e4e edit` takes it); a PTI session's,
        `<name>_edit_pti_pivot.npy`, the edited pivot alone (its tuned generator stays in the
        result folder: decoded by the base generator it is not what the page shows)."""
        s = self.session(sid)
        code = self.edited_codes(s, strengths, delta_scale, refined=refined)[0].detach().float().cpu().numpy()
        if refined:
            return refined_latent_bytes(code, s.refined[1], s.refine_record), f"{s.name}_edit_refined.npz"
        buf = io.BytesIO()
        np.save(buf, code.astype(np.float32), allow_pickle=False)
        return buf.getvalue(), f"{s.name}_edit{'_pti_pivot' if s.tuned is not None else ''}.npy"

    def preview_size(self, kind: str) -> Optional[int]:
        """The decode's resolution for a page request: "preview" stops the synthesis after the
        PREVIEW_SIDE block (None when the model is no larger: its full decode is the preview);
        "full" (and the downloads) decode everything (None)."""
        if kind not in PASTE_SIDES:
            raise E4EError(f"size must be 'preview' or 'full', got {str(kind)[:20]!r}")
        return PREVIEW_SIDE if kind == "preview" and self.model.size > PREVIEW_SIDE else None

    def render(self, sid: str, strengths: dict, delta_scale: float, paste_back: bool, *, seq: Optional[int] = None,
               size: Optional[int] = None, paste_side: Optional[int] = None, refined: bool = False, text=None):
        """(PIL image, codes); None when a newer request of this session has overtaken `seq`:
        before the decode, while it waited for the model, or during it (the decode stops at the
        next block boundary). `size`: the early-exit preview's resolution (None: full).
        `paste_side`: paste back into the photo shrunk to this longest side (None: as kept).
        `text`: a text edit on top ({"target", "alpha"}, `text_offsets`)."""
        import torch

        from ..errors import Cancelled

        s = self.session(sid)
        if seq is not None:
            with s.lock:
                s.seq = max(s.seq, seq)
        codes = self.edited_codes(s, strengths, delta_scale, refined=refined)
        styles = self.text_offsets(text)
        if refined:
            decoder, offsets = self.refiner.get().decoder, s.refined[1]
        else:  # a PTI session: its tuned generator (rebuilt here, outside the model lock, if it was dropped)
            decoder, offsets = (self.model if s.tuned is None else self.tuned.get(s.tuned)), None
        stale = None if seq is None else (lambda: seq < s.seq)
        if stale is not None and stale():  # overtaken already: do not even wait for the model
            return None
        with self.lock:  # one decode at a time: a newer one waits here while the stale one stops
            if stale is not None and stale():  # overtaken while waiting
                return None
            try:
                with torch.inference_mode():
                    image = self.model.to_pil(decoder.decode(codes, size=size, should_stop=stale, offsets=offsets,
                                                             style_offsets=styles))[0]
            except Cancelled:
                return None
        if stale is not None and stale():  # no paste-back or PNG for an answer nobody will show
            return None
        if paste_back and s.quad is not None and s.photo is not None:
            image = paste(s, image, paste_side)
        return image, codes

