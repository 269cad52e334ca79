"""Pivotal tuning (PTI, Roich et al. 2021): keep the pivot code fixed, tune the generator to the photo.

The pivot is the e4e code of the photo (STIT's choice, the default) or, with `pivot="w"`, the
reference's own first inversion: a 450-step projection into W (`project_w`, StyleGAN2-ADA's
projector as PTI configures it). The generator's synthesis parameters (every weight,
bias, modulation and noise strength; the mapping network gets no gradient from a W+ code and
is left out) are tuned with Adam (lr 3e-4) on 1 x L2 + 1 x LPIPS(alex) between the decode of
the pivot and the photo, at the generator's resolution, with the fixed noise buffers (the
reference's noise_mode='const'), for up to 350 steps; the loop stops as soon as a step's LPIPS
is at or below 0.06 (that step's loss is computed but not stepped on, as in the reference).
The locality regularizer (`locality=True`, off by default as in the reference) adds, every step,
0.1 x L2 + 0.1 x LPIPS between the tuned and the original generator's decodes (zero noise) of
one code 30 units from the pivot towards a random truncated (psi 0.5) W sample.

The tuned generator is stored as its difference from the base generator (`save_diff`): an npz
of float16 arrays (no pickle), with the base checkpoint's SHA-256 and the settings in a JSON
record. `load_diff` checks both before anything is applied; `tuned_decoder` turns a base model
and a difference into a decode-only E4E whose decodes are the tuned generator's.

The loss networks live in the training package; callers pass the LPIPS module in (`PTI(...,
lpips=train.lossnets.load_lpips())`), so this module imports nothing above the library layer.
"""
from __future__ import annotations

import contextlib
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
from .projection import PROJECTION_LR, PROJECTION_STEPS, check_dtype, project_w

# the reference's configs/hyperparameters.py
DEFAULT_STEPS = 350
DEFAULT_LR = 3e-4
DEFAULT_LPIPS_STOP = 0.06
L2_WEIGHT = 1.0
LPIPS_WEIGHT = 1.0
PIVOTS = ("e4e", "w")
# the locality regularizer (PTI's regulizer_* settings; one sample every step)
LOCALITY_ALPHA = 30.0
LOCALITY_L2_WEIGHT = 0.1
LOCALITY_LPIPS_WEIGHT = 0.1
LOCALITY_TRUNCATION = 0.5
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
    pivot: str = "e4e"  # or "w": the W projection
    pivot_steps: int = PROJECTION_STEPS
    locality: bool = False
    resolution: Optional[int] = None  # the faster variant: tune the blocks up to this size only
    seed: int = 0  # of the projection's and the locality samples' random numbers

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
        r = self.resolution
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 8 or r & (r - 1)):
            raise E4EError(f"--pti-resolution must be a power of two >= 8, got {r!r}", exit_code=USAGE)
        if self.pivot not in PIVOTS:
            raise E4EError(f"--pivot must be one of {', '.join(PIVOTS)}, got {self.pivot!r}", exit_code=USAGE)
        if isinstance(self.pivot_steps, bool) or not isinstance(self.pivot_steps, int) or self.pivot_steps < 1:
            raise E4EError(f"--pivot-steps must be a whole number >= 1, got {self.pivot_steps!r}",
                           exit_code=USAGE)
        return self

    def record(self) -> dict:
        rec = {"steps": self.steps, "lr": self.lr, "lpips_stop": self.lpips_stop, "pivot": self.pivot,
               "l2_weight": L2_WEIGHT, "lpips_weight": LPIPS_WEIGHT, "noise": "fixed", "locality": self.locality,
               "precision": self.precision}
        if self.pivot == "w":
            rec.update(pivot_steps=self.pivot_steps, pivot_lr=PROJECTION_LR, pivot_distance="lpips-alex")
        if self.locality:
            rec.update(locality_alpha=LOCALITY_ALPHA, locality_l2_weight=LOCALITY_L2_WEIGHT,
                       locality_lpips_weight=LOCALITY_LPIPS_WEIGHT, locality_truncation=LOCALITY_TRUNCATION)
        if self.pivot == "w" or self.locality:
            rec["seed"] = self.seed
        if self.resolution is not None:
            rec["resolution"] = self.resolution
        return rec


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


@contextlib.contextmanager
def trainable(generator):
    """The parameters PTI moves (`tuned_parameters`) with gradients on and every other one off,
    for a tuning loop; on the way out all are off again and their gradients dropped."""
    params = tuned_parameters(generator)
    for p in generator.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    try:
        yield params
    finally:
        for p in generator.parameters():
            p.requires_grad_(False)
            p.grad = None


def tune_generator(generator, codes: torch.Tensor, target: torch.Tensor, lpips, *, settings: PTISettings,
                   crop: Optional[tuple[int, int]] = None, impl: str = "ref",
                   on_step: Optional[Callable[[int, tuple], None]] = None,
                   base=None, w_avg: Optional[torch.Tensor] = None, dtype: Optional[torch.dtype] = None) -> TuneLog:
    """Tune `generator` (float32, changed in place) so that codes [1,n,512] decode to target
    [1,3,H,W] (in [-1,1]; rows `crop` of the decode when given). `lpips(x, y)` -> [N].
    With `settings.locality`: `base` is the untouched generator and `w_avg` [512] W's mean
    (the truncation centre of the locality samples). `dtype` (bfloat16) runs the convolutions in
    that precision under float32 parameters, losses and Adam (None: float32 throughout); it
    needs impl="fast" (the reference ops compute in their inputs' dtype)."""
    settings.check()
    check_dtype(dtype, impl)
    ball = None
    if settings.locality:
        if base is None or w_avg is None:
            raise ValueError("the locality regularizer needs the original generator (base=) and W's mean (w_avg=)")
        ball = LocalityBall(base, codes.detach().float(), w_avg, lpips, seed=settings.seed, dtype=dtype)
    codes = codes.detach().float()
    target = target.detach().float()
    stop_at = tuned_resolution(generator, settings.resolution)
    if stop_at is not None:  # the faster variant: the skip image at that size against the photo's
        crop = None if crop is None else (crop[0] * stop_at // generator.size, crop[1] * stop_at // generator.size)
        target = downsample(target, stop_at / generator.size)
    log = TuneLog()
    with trainable(generator) as params:
        opt = torch.optim.Adam(list(params.values()), lr=settings.lr)
        t0 = time.perf_counter()
        try:
            for _ in range(settings.steps):
                with torch.enable_grad():
                    img = generator.synthesize(codes, impl=impl, dtype=dtype, stop_at=stop_at).float()
                    if crop is not None:
                        img = img[:, :, crop[0]:crop[1], :]
                    l2 = F.mse_loss(img, target)
                    lp = lpips(img, target).mean()
                    loss = L2_WEIGHT * l2 + LPIPS_WEIGHT * lp
                    if ball is not None:  # logged losses stay the photo's (the early stop reads its LPIPS)
                        loss = loss + ball.loss(generator, impl=impl, stop_at=stop_at)
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
            log.seconds = time.perf_counter() - t0
    return log


def tuned_resolution(generator, resolution: Optional[int]) -> Optional[int]:
    """The size at which a tuning with `resolution` compares (None: the full decode). Only the
    blocks up to that size get a gradient, so only they move (the difference holds only them)."""
    if resolution is None or resolution >= generator.size:
        return None
    return int(resolution)


def downsample(img: torch.Tensor, factor: float) -> torch.Tensor:
    """[N,C,H,W] -> [N,C,H*factor,W*factor] by box averaging ('area'), factor a power of 1/2."""
    h, w = round(img.shape[2] * factor), round(img.shape[3] * factor)
    return F.interpolate(img, size=(h, w), mode="area")


class LocalityBall:
    """PTI's locality regularizer: keep the tuned generator equal to the original one on codes
    around the pivot. Each call draws one z, maps it to W with truncation 0.5 about `w_avg`, moves
    LOCALITY_ALPHA (30) from the pivot towards it (the distance measured over all n x 512 entries)
    and compares both generators' decodes there, with zero noise (the reference's noise_mode
    'none'): 0.1 x L2 + 0.1 x LPIPS. The reference draws with numpy's unseeded global generator;
    ours is seeded (`seed`), so a tuning can be repeated."""

    def __init__(self, base, pivot: torch.Tensor, w_avg: torch.Tensor, lpips, *, seed: int = 0,
                 dtype: Optional[torch.dtype] = None):
        self.base = base  # the original generator (float32), never tuned
        self.pivot = pivot  # [1,n,D]
        self.w_avg = w_avg.detach().float().reshape(1, -1).to(pivot.device)  # [1,D]
        self.lpips = lpips
        self.rng = torch.Generator().manual_seed(int(seed))
        self.zeros = [torch.zeros_like(b) for b in base.fixed_noise()]
        self.dtype = dtype

    def code(self) -> torch.Tensor:
        """One regularizer code [1,n,D]."""
        z = torch.randn(1, self.w_avg.shape[1], generator=self.rng).to(self.pivot.device)
        with torch.no_grad():
            w = self.w_avg + LOCALITY_TRUNCATION * (self.base.mapping(z).float() - self.w_avg)  # [1,D]
        towards = w[:, None, :].expand_as(self.pivot) - self.pivot
        return self.pivot + LOCALITY_ALPHA * towards / towards.norm(p=2)

    def loss(self, generator, *, impl: str = "ref", stop_at: Optional[int] = None) -> torch.Tensor:
        w = self.code()
        new = generator.synthesize(w, noise=self.zeros, impl=impl, dtype=self.dtype, stop_at=stop_at).float()
        with torch.no_grad():
            old = self.base.synthesize(w, noise=self.zeros, impl=impl, dtype=self.dtype, stop_at=stop_at).float()
        return LOCALITY_L2_WEIGHT * F.mse_loss(old, new) + LOCALITY_LPIPS_WEIGHT * self.lpips(old, new).mean()


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
        if settings.resolution is not None and settings.resolution > model.size:
            raise E4EError(f"--pti-resolution {settings.resolution} is larger than the generator ({model.size} px)",
                           exit_code=USAGE)
        self.impl = impl
        self.base_sha256 = base_sha256(model)
        # bfloat16 convolutions where the model runs in it (`auto` on a CPU with native bf16, or
        # asked for); float16 has too little range for gradients without loss scaling: float32
        self.tune_dtype = torch.bfloat16 if model.precision == torch.bfloat16 else None
        self.tune_impl = "fast" if self.tune_dtype is not None else impl

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
               **self.settings.record(), "tune_precision": "bf16" if self.tune_dtype is not None else "fp32"}
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
        crop = domains.partial_rows(self.domain, self.size)
        targets = batch.targets.to(self.device)
        codes = self.model.encode(batch.x) if self.settings.pivot == "e4e" else self.project(targets, crop=crop)
        base = None
        if self.settings.locality:  # the untouched generator, in float32 (Module.float() converts in place)
            g = self.model.generator
            base = g if next(g.parameters()).dtype == torch.float32 else copy.deepcopy(g).float()
        images, tuned = [], []
        for j in range(codes.shape[0]):
            gen = copy.deepcopy(self.model.generator).float()
            bar = progress.bar(total=self.settings.steps, desc=desc, unit="step")
            try:
                log = tune_generator(gen, codes[j:j + 1].clone(), targets[j:j + 1], self.lpips,
                                     settings=self.settings, crop=crop, impl=self.tune_impl,
                                     on_step=lambda i, l: (bar.update(1), bar.set_postfix_str(f"lpips {l[1]:.4f}")),
                                     base=base, w_avg=self.w_avg() if base is not None else None,
                                     dtype=self.tune_dtype)
            finally:
                bar.close()
            diff = difference(gen, self.model.generator, precision=self.settings.precision)
            del gen
            stored = {k: torch.from_numpy(v.astype(np.float32)) for k, v in diff.items()}
            dec = tuned_decoder(self.model, apply_diff(self.model.generator, stored))
            images.append(dec.decode(codes[j:j + 1]))
            tuned.append(Tuned(diff=diff, log=log))
        return PTIRefined(codes=codes, image=torch.cat(images), tuned=tuned)

    def project(self, targets: torch.Tensor, *, crop=None) -> torch.Tensor:
        """W pivots [B,n,D] of targets [B,3,H,W] (`project_w`, one photo at a time)."""
        out = []
        for j in range(targets.shape[0]):
            bar = progress.bar(total=self.settings.pivot_steps, desc="projecting into W", unit="step")
            try:
                code, _ = project_w(self.model.generator, targets[j:j + 1], self.lpips, steps=self.settings.pivot_steps,
                                    seed=self.settings.seed, crop=crop, impl=self.tune_impl, dtype=self.tune_dtype,
                                    on_step=lambda i, d: (bar.update(1), bar.set_postfix_str(f"lpips {d:.4f}")))
            finally:
                bar.close()
            out.append(code)
        return torch.cat(out).to(self.device)

    def w_avg(self) -> torch.Tensor:
        """W's mean [D]: the checkpoint's latent_avg when its codes start from it, else the
        generator's mapped mean (the truncation centre of the locality samples)."""
        if self.model.info.start_from_latent_avg:
            return self.model.latent_avg.reshape(-1, self.model.latent_avg.shape[-1])[0].float()
        return self.model.generator.mean_latent().to(self.device)

    def write_result(self, d: Path, tuned: Tuned) -> tuple[dict, dict]:
        """Write one photo's difference into folder `d`: (meta.json's "refine", {name: path})."""
        rec = self.record(tuned.log)
        path = save_diff(d / DIFF_NAME, tuned.diff, meta=rec)
        return dict(rec, diff_bytes=path.stat().st_size), {"tuned_generator": str(path)}
