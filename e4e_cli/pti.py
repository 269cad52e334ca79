"""Pivotal tuning (PTI, Roich et al. 2021): keep the pivot code fixed, tune the generator to the photo.

The pivot is the e4e code of the photo. The generator's synthesis parameters (every weight,
bias, modulation and noise strength; the mapping network gets no gradient from a W+ code and
is left out) are tuned with Adam (lr 3e-4) on 1 x L2 + 1 x LPIPS(alex) between the decode of
the pivot and the photo, at the generator's resolution, with the fixed noise buffers (the
reference's noise_mode='const'), for up to 350 steps; the loop stops as soon as a step's LPIPS
is at or below 0.06 (that step's loss is computed but not stepped on, as in the reference).

The tuned generator is stored as its difference from the base generator (`save_diff`): an npz
of float16 arrays (no pickle), with the base checkpoint's SHA-256 and the settings in a JSON
record. `load_diff` checks both before anything is applied; `tuned_decoder` turns a base model
and a difference into a decode-only E4E whose decodes are the tuned generator's.

The loss networks live in the training package; callers pass the LPIPS module in (`PTI(...,
lpips=train.lossnets.load_lpips())`), so this module imports nothing above the library layer.
"""
from __future__ import annotations

import copy
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import domains, npzfiles, progress
from .digests import content_sha256
from .errors import USAGE, E4EError
from .fsutil import atomic_write
from .model import E4E, preprocess_images

# the reference's configs/hyperparameters.py
DEFAULT_STEPS = 350
DEFAULT_LR = 3e-4
DEFAULT_LPIPS_STOP = 0.06
L2_WEIGHT = 1.0
LPIPS_WEIGHT = 1.0
DIFF_FORMAT = "e4e-pti-diff/1"
DIFF_NAME = "tuned_generator.npz"
DIFF_PRECISIONS = {"fp16": np.float16, "fp32": np.float32}
_PREFIX = "d/"


@dataclass
class PTISettings:
    """What a tuning does: at most `steps` Adam steps at `lr`, stopping when LPIPS <= `lpips_stop`."""

    steps: int = DEFAULT_STEPS
    lr: float = DEFAULT_LR
    lpips_stop: float = DEFAULT_LPIPS_STOP
    precision: str = "fp16"  # of the stored difference

    def check(self) -> "PTISettings":
        """One usage-error line for a value that cannot be meant."""
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise E4EError(f"--pti-steps must be a whole number >= 0, got {self.steps!r}", exit_code=USAGE)
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise E4EError(f"--pti-lr must be > 0, got {self.lr}", exit_code=USAGE)
        if not (self.lpips_stop >= 0 and np.isfinite(self.lpips_stop)):
            raise E4EError(f"--lpips-stop must be >= 0, got {self.lpips_stop}", exit_code=USAGE)
        if self.precision not in DIFF_PRECISIONS:
            raise E4EError(f"--offsets-precision must be one of {', '.join(DIFF_PRECISIONS)}, got {self.precision!r}",
                           exit_code=USAGE)
        return self

    def record(self) -> dict:
        return {"steps": self.steps, "lr": self.lr, "lpips_stop": self.lpips_stop, "pivot": "e4e",
                "l2_weight": L2_WEIGHT, "lpips_weight": LPIPS_WEIGHT, "noise": "fixed", "locality": False,
                "precision": self.precision}


def parse_steps(text: str) -> int:
    """`--pti-steps` text -> a whole number >= 0 (one usage-error line for '-1', '2.5', 'x')."""
    try:
        n = int(str(text).strip())
    except ValueError:
        raise E4EError(f"--pti-steps must be a whole number >= 0, got {text!r}", exit_code=USAGE) from None
    if n < 0:
        raise E4EError(f"--pti-steps must be a whole number >= 0, got {text!r}", exit_code=USAGE)
    return n


@dataclass
class TuneLog:
    """One tuning: `losses` [(l2, lpips, total)] of every forward (the last one may be the step
    that stopped the loop), `steps` the optimizer steps taken, `stopped_early` whether LPIPS
    reached the threshold, `seconds` the wall time."""

    losses: list = field(default_factory=list)
    steps: int = 0
    stopped_early: bool = False
    seconds: float = 0.0

    def record(self) -> dict:
        last = self.losses[-1] if self.losses else None
        return {"steps_run": self.steps, "stopped_early": self.stopped_early, "seconds": round(self.seconds, 3),
                "first_loss": None if not self.losses else dict(zip(("l2", "lpips", "total"), self.losses[0])),
                "last_loss": None if last is None else dict(zip(("l2", "lpips", "total"), last))}


def tuned_parameters(generator) -> dict[str, torch.nn.Parameter]:
    """The parameters PTI moves: all of the synthesis (the mapping network `style.*` gets no
    gradient from a W+ code; the reference's Adam holds it but never steps it)."""
    return {k: p for k, p in generator.named_parameters() if not k.startswith("style.")}


def tune_generator(generator, codes: torch.Tensor, target: torch.Tensor, lpips, *, settings: PTISettings,
                   crop: Optional[tuple[int, int]] = None, impl: str = "ref",
                   on_step: Optional[Callable[[int, tuple], None]] = None) -> TuneLog:
    """Tune `generator` (float32, changed in place) so that codes [1,n,512] decode to target
    [1,3,H,W] (in [-1,1]; rows `crop` of the decode when given). `lpips(x, y)` -> [N]."""
    settings.check()
    params = tuned_parameters(generator)
    for p in generator.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(list(params.values()), lr=settings.lr)
    codes = codes.detach().float()
    target = target.detach().float()
    log = TuneLog()
    t0 = time.perf_counter()
    try:
        for _ in range(settings.steps):
            with torch.enable_grad():
                img = generator.synthesize(codes, impl=impl)
                if crop is not None:
                    img = img[:, :, crop[0]:crop[1], :]
                l2 = F.mse_loss(img, target)
                lp = lpips(img, target).mean()
                loss = L2_WEIGHT * l2 + LPIPS_WEIGHT * lp
                log.losses.append((l2.item(), lp.item(), loss.item()))
                if on_step is not None:
                    on_step(log.steps, log.losses[-1])
                if log.losses[-1][1] <= settings.lpips_stop:
                    log.stopped_early = True
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            log.steps += 1
    finally:
        for p in generator.parameters():
            p.requires_grad_(False)
            p.grad = None
        log.seconds = time.perf_counter() - t0
    return log


# ------------------------------------------------------------------------------------------
# The difference file


def difference(tuned, base, *, precision: str = "fp16") -> dict[str, np.ndarray]:
    """{parameter name: (tuned - base) in `precision`} for every tuned parameter that moved."""
    dtype = DIFF_PRECISIONS[precision]
    base_params = dict(base.named_parameters())
    out = {}
    for k, p in tuned_parameters(tuned).items():
        d = (p.detach().float() - base_params[k].detach().float()).cpu()
        if bool((d != 0).any()):
            out[k] = d.numpy().astype(dtype)
    return out


def save_diff(path: str | os.PathLike, diff: dict[str, np.ndarray], *, meta: dict) -> Path:
    """A difference ({name: array}) and its record (`meta`: base_sha256, settings, ...) -> `path`
    (npz without pickle, written to a temporary name and renamed)."""
    if "base_sha256" not in meta:
        raise ValueError("a PTI difference needs the base generator's base_sha256")
    record = dict(meta, format=DIFF_FORMAT, params={k: list(v.shape) for k, v in sorted(diff.items())})
    arrays = {_PREFIX + k: v for k, v in diff.items()}
    arrays["meta"] = np.array(json.dumps(record, sort_keys=True))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write(Path(path), lambda fh: fh.write(buf.getbuffer()))


def load_diff(path: str | os.PathLike, *, generator=None, base_sha256: Optional[str] = None) -> tuple[dict, dict]:
    """`save_diff`'s file -> ({name: float32 tensor}, record). One E4EError line for a file that
    is missing, truncated, not ours, made from another base generator (`base_sha256`) or not
    fitting `generator`'s parameters."""
    p = Path(path)
    with npzfiles.read_errors(p, what="tuned-generator file", advice="invert again"):
        members = npzfiles.layout(p)  # headers first: nothing is inflated that does not fit
        if "meta" not in members:
            raise E4EError(f"{p} is not a tuned-generator file written by e4e (no record)")
        npzfiles.check(p, members, "meta", shapes=[()], kinds="U", max_itemsize=4 << 20, what="tuned-generator file")
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if not isinstance(meta, dict) or meta.get("format") != DIFF_FORMAT:
                raise E4EError(f"{p}: not a tuned-generator difference (format {meta.get('format') if isinstance(meta, dict) else None!r}, want {DIFF_FORMAT})")
            if base_sha256 is not None and meta.get("base_sha256") != base_sha256:
                raise E4EError(f"{p} was tuned from another base generator (SHA-256 {str(meta.get('base_sha256'))[:12]}..., "
                               f"this checkpoint's is {base_sha256[:12]}...): use the checkpoint it was made with")
            want = meta.get("params") or {}
            names = sorted(m[len(_PREFIX):] for m in members if m.startswith(_PREFIX))
            if names != sorted(want) or len(members) != len(names) + 1:
                raise E4EError(f"{p}: the arrays stored differ from its record (truncated or edited?)")
            params = dict(tuned_parameters(generator)) if generator is not None else None
            out = {}
            for k in names:
                shape = tuple(want[k])
                if params is not None and (k not in params or tuple(params[k].shape) != shape):
                    raise E4EError(f"{p} does not fit this generator (parameter {k}): it was made for another checkpoint")
                npzfiles.check(p, members, _PREFIX + k, shapes=[shape], max_bytes=1 << 28, what="tuned-generator file")
                a = torch.from_numpy(np.asarray(z[_PREFIX + k], dtype=np.float32))
                if not torch.isfinite(a).all():
                    raise E4EError(f"{p}: the difference of {k} is not finite")
                out[k] = a
    return out, meta


def apply_diff(base, diff: dict[str, torch.Tensor]):
    """A copy of generator `base` with `diff` added to its parameters (base + float32(diff))."""
    tuned = copy.deepcopy(base)
    params = dict(tuned.named_parameters())
    with torch.no_grad():
        for k, d in diff.items():
            params[k].copy_(params[k].float() + d.to(params[k].device))
    return tuned.eval()


def tuned_decoder(model: E4E, generator) -> E4E:
    """A decode-only E4E around a tuned copy of `model`'s generator (same precision, paths, crop)."""
    return E4E(None, generator, model.latent_avg, model.info, device=model.device, impl=model.impl,
               precision=model.precision, path=model.path, fast_options=model.fast_options)


def base_sha256(model: E4E) -> str:
    """The SHA-256 of the checkpoint file whose generator a difference is taken from."""
    if not model.path or not Path(model.path).is_file():
        raise E4EError("pivotal tuning needs a checkpoint file (its SHA-256 names the base of the difference)")
    return content_sha256(model.path)


def load_tuned(path: str | os.PathLike, model: E4E) -> tuple[E4E, dict]:
    """(decode-only E4E with the tuned generator, record) for a difference made from `model`'s
    checkpoint; one E4EError line for one made from another."""
    diff, meta = load_diff(path, generator=model.generator, base_sha256=base_sha256(model))
    return tuned_decoder(model, apply_diff(model.generator, diff)), meta


# ------------------------------------------------------------------------------------------
# `e4e invert --refine pti`: what jobs.invert calls (the same interface as refine.HyperStyle)


@dataclass
class PTIBatch:
    """Photos prepared for tuning: the encoder input [B,3,h,w] and the targets [B,3,H,W] at the
    generator's (cropped) output size."""

    x: torch.Tensor
    targets: torch.Tensor


@dataclass
class Tuned:
    """One photo's tuning: the stored difference {name: array}, its record, the log."""

    diff: dict
    log: TuneLog


@dataclass
class PTIRefined:
    codes: torch.Tensor  # [B,n,512] the pivots
    image: torch.Tensor  # [B,3,H,W] the tuned generators' decodes of them
    tuned: list

    def offsets_of(self, i: int) -> Tuned:
        return self.tuned[i]


class PTI:
    """An e4e model whose inversions are followed by pivotal tuning (`refine`)."""

    method = "pti"

    def __init__(self, model: E4E, lpips, settings: PTISettings, *, impl: str = "ref"):
        self.model = model
        self.lpips = lpips.to(model.device)
        self.settings = settings.check()
        self.impl = impl
        self.base_sha256 = base_sha256(model)

    # the facts jobs.invert reads
    domain = property(lambda self: self.model.domain)
    size = property(lambda self: self.model.size)
    n_styles = property(lambda self: self.model.n_styles)
    path = property(lambda self: self.model.path)
    precision = property(lambda self: self.model.precision)
    device = property(lambda self: self.model.device)

    def default_batch_size(self) -> int:
        return 1  # one generator per photo

    def record(self, log: Optional[TuneLog] = None) -> dict:
        """meta.json's "refine" (and the difference file's record)."""
        rec = {"method": "pti", "checkpoint": str(Path(self.path).resolve()), "base_sha256": self.base_sha256,
               **self.settings.record()}
        if log is not None:
            rec.update(log.record())
        return rec

    def made_with(self) -> dict:
        """What decides a tuned result besides the photo and checkpoint (jobs.invert.made_with)."""
        return {"method": "pti", **self.settings.record()}

    def preprocess(self, images) -> PTIBatch:
        x = self.model.preprocess(images)
        return PTIBatch(x=x, targets=preprocess_images(images, self.model.output_size))

    def to_pil(self, images):
        return self.model.to_pil(images)

    def refine(self, batch: PTIBatch, *, steps: Optional[int] = None, desc: str = "tuning") -> PTIRefined:
        """Pivots by e4e, then one tuned generator per photo; the images are the tuned decodes
        of the STORED difference (float16 by default), so an edit at strength 0 gives them back."""
        if steps is not None:
            raise E4EError("--refine-steps is HyperStyle's; pivotal tuning takes --pti-steps", exit_code=USAGE)
        codes = self.model.encode(batch.x)
        top, bottom = domains.crop_rows(self.domain, self.size)
        crop = None if (top, bottom) == (0, self.size) else (top, bottom)
        images, tuned = [], []
        for j in range(codes.shape[0]):
            gen = copy.deepcopy(self.model.generator).float()
            bar = progress.bar(total=self.settings.steps, desc=desc, unit="step")
            try:
                log = tune_generator(gen, codes[j:j + 1].clone(), batch.targets[j:j + 1].to(self.device), self.lpips,
                                     settings=self.settings, crop=crop, impl=self.impl,
                                     on_step=lambda i, l: (bar.update(1), bar.set_postfix_str(f"lpips {l[1]:.4f}")))
            finally:
                bar.close()
            diff = difference(gen, self.model.generator, precision=self.settings.precision)
            del gen
            stored = {k: torch.from_numpy(v.astype(np.float32)) for k, v in diff.items()}
            dec = tuned_decoder(self.model, apply_diff(self.model.generator, stored))
            images.append(dec.decode(codes[j:j + 1]))
            tuned.append(Tuned(diff=diff, log=log))
        return PTIRefined(codes=codes, image=torch.cat(images), tuned=tuned)

    def write_result(self, d: Path, tuned: Tuned) -> tuple[dict, dict]:
        """Write one photo's difference into folder `d`: (meta.json's "refine", {name: path})."""
        rec = self.record(tuned.log)
        path = save_diff(d / DIFF_NAME, tuned.diff, meta=rec)
        return dict(rec, diff_bytes=path.stat().st_size), {"tuned_generator": str(path)}
