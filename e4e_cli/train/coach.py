"""The training loop of `e4e train`: one process, or several under torchrun (DDP).

Per step (the e4e recipe): the latent discriminator learns W codes (the mapping network's)
from the encoder's active codes; then the encoder learns to reconstruct the batch through the
frozen generator (L2 + LPIPS + identity) while its deltas are kept small (delta penalty) and
its codes look like W to the discriminator. Deltas are switched on one layer at a time
(progressive stages); a delta that is not on yet is not computed at all, so its head gets no
gradient and the optimizer's state for it starts when it switches on. Training renders with
fresh noise per image (inference and the held-out numbers use the generator's fixed noise).
Every random draw (batch order, flips, z for real codes, noise) comes from a seed per step, so
a resumed run, or the same global batch split over processes, sees the same data.
"""
from __future__ import annotations

import hashlib
import json
import random
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import dist, domains, progress
from ..checkpoint import Architecture, released_payload, split_state_dict
from ..devices import resolve_device, resolve_precision
from ..errors import E4EError
from ..fsutil import atomic_save_image, ensure_dir
from ..nn.networks import Encoder4Editing
from . import checkpoints
from .data import Batches, list_images, readable, split
from .discriminator import CodePool, LatentDiscriminator, d_loss, delta_penalty, g_adv_loss, r1_step_loss
from .generators import load_generator
from .options import DATASET_TYPES, TrainOptions
from .ranger import Ranger


def progressive_stage(step: int, *, start: int, every: int, n_styles: int) -> int:
    """How many deltas are active at `step`: 0 (w0 only) before `start`, then one more every `every` steps."""
    if step < start:
        return 0
    return min(1 + (step - start) // max(1, every), n_styles - 1)


def delta_mask(stage: int, n_styles: int, device=None) -> torch.Tensor:
    """[n_styles-1] of 0/1: delta i (layer i, 1-based) is active when i <= stage."""
    return (torch.arange(1, n_styles, device=device) <= stage).float()


class ActiveEncoder(nn.Module):
    """The encoder as training runs it at a progressive stage: w0 and only the `stage` active
    deltas (the FPN's lateral layers only once a delta needs them). Heads that are not on yet
    never run, so their gradients stay None and the optimizer leaves them alone, as in the
    reference. forward(x [N,3,H,W], stage) -> (w0 [N,D], deltas [N,stage,D])."""

    def __init__(self, encoder: Encoder4Editing):
        super().__init__()
        self.encoder = encoder

    def forward(self, x, stage: int):
        return self.encoder(x, n_deltas=stage)


def _seed(*parts) -> int:
    """A 63-bit seed from a few integers (for per-image noise)."""
    return int.from_bytes(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest(), "little") >> 1


class Trainer:
    def __init__(self, opts: TrainOptions, *, resume: Optional[dict] = None, log: Callable[[str], None] = print,
                 bn_groups: int = 1):
        self.opts, self.log, self.bn_groups = opts, log, max(1, bn_groups)
        self.device = resolve_device(opts.device, local_rank=dist.local_rank() if dist.world_size() > 1 else None)
        self.dist = dist.Group(backend="nccl" if self.device.type == "cuda" else "gloo")
        if opts.batch_size % self.dist.world:
            raise E4EError(f"--batch-size {opts.batch_size} does not split over {self.dist.world} processes")
        self.local_batch = opts.batch_size // self.dist.world
        if self.dist.active and self.bn_groups > 1:
            raise E4EError("--bn-groups imitates several processes in one: not under torchrun")
        self.dtype = resolve_precision(opts.precision, self.device)  # the inference vocabulary, auto included
        if self.dtype == torch.float16 and self.device.type != "cuda":
            raise E4EError("--precision fp16 needs a CUDA GPU (use bf16 or fp32 on a CPU)")

        # everything a user can get wrong is checked before RUN_DIR is touched
        gen = load_generator(opts.generator, size=(opts.extra or {}).get("size"))
        self.G, self.size = gen.generator.to(self.device), gen.size
        self.n_styles, self.style_dim = self.G.n_styles, self.G.style_dim
        self.latent_avg = gen.latent_avg.to(self.device)
        self._choose_domain(gen)
        root = Path(opts.images)
        files = readable(list_images(root), warn=self.log if self.dist.rank == 0 else None)
        self.train_files, self.val_files = split(files, root, opts.val_fraction)
        h = domains.image_hw(opts.domain, opts.input_size)[0]
        self.input_hw = (h, opts.input_size)
        self.batches = Batches(self.train_files, batch_size=opts.batch_size, size_hw=self.input_hw, seed=opts.seed,
                               flip=opts.flip)
        self.lpips = self._lpips() if opts.lpips_lambda > 0 else None
        self.id_loss = self._id_loss() if opts.id_weight() > 0 else None

        torch.manual_seed(opts.seed)  # the same initial weights on every rank
        self.encoder = Encoder4Editing(n_styles=self.n_styles, widths=tuple(opts.encoder_widths),
                                       units=tuple(opts.encoder_units), style_dim=self.style_dim,
                                       input_size=opts.input_size).to(self.device)
        if resume is None:
            self._init_encoder()
        self.disc = LatentDiscriminator(self.style_dim).to(self.device) if opts.w_discriminator_lambda > 0 else None
        self.opt_e = Ranger(self.encoder.parameters(), lr=opts.lr)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=opts.w_discriminator_lr) if self.disc else None
        self.real_pool = CodePool(opts.w_pool_size, random.Random(opts.seed * 2 + 1 + 1000 * self.dist.rank))
        self.fake_pool = CodePool(opts.w_pool_size, random.Random(opts.seed * 2 + 2 + 1000 * self.dist.rank))
        self.step = 0
        if resume is not None:
            self._load(resume)
        self.active = ActiveEncoder(self.encoder)
        self.enc, self.dsc = self.active, self.disc
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            with warnings.catch_warnings():  # broadcast_buffers=False is what we mean (rank-local BN statistics)
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", UserWarning)
                # heads that are not on yet get no gradient (None on every rank: DDP leaves them so)
                self.enc = DDP(self.active, device_ids=ids, broadcast_buffers=False, find_unused_parameters=True)
            # the discriminator is small: its gradients are averaged by hand (_sync_grads)

    # ---- pieces -----------------------------------------------------------------------

    def _choose_domain(self, gen) -> None:
        """Settle the dataset type (which identity network and crops): explicit, or the face
        recipe by default, with a warning when the generator looks like another domain's. One
        log line says what is used; opts.dataset_type records it (checkpoints, options.json)."""
        opts = self.opts
        rank0 = self.dist.rank == 0
        if not opts.dataset_type:
            opts.dataset_type = DATASET_TYPES["ffhq"]
            hint = gen.domain_hint
            evidence = (f"its checkpoint was trained as {hint}" if hint and hint != "ffhq" else
                        f"it is {self.size}x{self.size} (e4e's face generator is 1024x1024)" if self.size != 1024 else "")
            if evidence and rank0:  # the CLI shows it as one `e4e: note:` line
                warnings.warn(f"no --domain given: training with the face recipe (ArcFace identity loss, face "
                              f"crops), but {evidence}; for another domain pass --domain cars|horse|church", stacklevel=2)
        elif opts.dataset_type not in DATASET_TYPES.values():
            raise E4EError(f"unknown dataset type {opts.dataset_type!r}: choose from {', '.join(DATASET_TYPES.values())}")
        if rank0:
            ident = {"arcface": "ArcFace IR-SE50", "moco": "MoCo-v2 ResNet-50"}[domains.identity_loss(opts.domain)]
            ident = f"{ident} x {opts.id_weight():g}" if opts.id_weight() > 0 else "off"
            h = domains.image_hw(opts.domain, opts.input_size)[0]
            rows = domains.image_hw(opts.domain, opts.loss_size)[0]
            crop = f", losses on the {rows}-row crop" if rows != opts.loss_size else ""
            self.log(f"domain {opts.domain} ({opts.dataset_type}): identity loss {ident}, "
                     f"input {h}x{opts.input_size}{crop}")

    def _init_encoder(self) -> None:
        """The reference starts the encoder's backbone from the IR-SE50 face-recognition weights
        (every domain) and refuses to start without them; --encoder-init random opts out."""
        opts = self.opts
        if not opts.irse50_init:
            if self.dist.rank == 0:
                self.log("encoder starts from random weights (--encoder-init random)")
            return
        if tuple(opts.encoder_widths) != (64, 128, 256, 512) or tuple(opts.encoder_units) != (3, 4, 14, 3):
            raise E4EError("--encoder-init irse50 needs the released encoder (widths 64,128,256,512, units 3,4,14,3): "
                           "add --encoder-init random for another architecture")
        from .lossnets import irse50_encoder_init

        init = irse50_encoder_init(weights_dir=opts.weights_dir)
        missing, _ = self.encoder.load_state_dict(init, strict=False)
        if any(k.startswith(("input_layer.", "body.")) for k in missing):
            raise E4EError("the IR-SE50 weights do not cover the encoder's backbone")
        if self.dist.rank == 0:
            self.log("encoder backbone initialised from the IR-SE50 face-recognition weights")

    def _lpips(self):
        from .lossnets import load_lpips

        return load_lpips(weights_dir=self.opts.weights_dir).to(self.device)

    def _id_loss(self):
        from .lossnets import load_identity_loss

        return load_identity_loss(domain=self.opts.domain, weights_dir=self.opts.weights_dir).to(self.device)

    def stage(self, step: int) -> int:
        return progressive_stage(step, start=self.opts.progressive_start, every=self.opts.progressive_step_every,
                                 n_styles=self.n_styles)

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def codes(self, x: torch.Tensor, stage: int, *, module=None) -> torch.Tensor:
        """Encoder output with only the active deltas, plus latent_avg: [N,n_styles,D] (layers
        above the stage are w0's). With `bn_groups` > 1 the batch goes through the encoder in
        that many chunks (BatchNorm then sees the statistics that each of as many processes would)."""
        enc = module or self.enc
        stage = min(stage, self.n_styles - 1)
        parts = [enc(c, stage) for c in (x.chunk(self.bn_groups) if self.bn_groups > 1 else [x])]
        w0 = torch.cat([p[0] for p in parts]).float()
        deltas = torch.cat([p[1] for p in parts]).float()  # [N,stage,D]
        zero = torch.zeros_like(w0)[:, None]
        rest = zero.expand(-1, self.n_styles - 1 - stage, -1)
        return self.latent_avg[None, None] + w0[:, None] + torch.cat([zero, deltas, rest], dim=1)

    def train_noise(self, step: int, rows: slice) -> list[torch.Tensor]:
        """Fresh noise for every image and layer, as the reference renders in training
        (randomize_noise): per layer [n,1,r,r]. Drawn from a seed per (run, step, image of the
        global batch), so one process and several see the same noise for the same image."""
        per_image = [self.G.random_noise(1, torch.Generator().manual_seed(_seed(self.opts.seed, step, i)))
                     for i in range(rows.start, rows.stop)]
        return [torch.cat(layer).to(self.device) for layer in zip(*per_image)]

    def render(self, codes: torch.Tensor, *, noise: Optional[list] = None) -> torch.Tensor:
        """Generator output pooled to the loss size: [N,3,S,S] (cars: its 3/4-height crop).
        `noise` None: the generator's fixed noise (held-out numbers, pictures)."""
        img = self.G.synthesize(codes, noise=noise, impl="ref")
        s = self.opts.loss_size
        if img.shape[-1] != s:
            img = F.adaptive_avg_pool2d(img, (s, s))
        top, bottom = domains.crop_rows(self.opts.domain, s)
        img = img[:, :, top:bottom]
        return img

    def target(self, x: torch.Tensor) -> torch.Tensor:
        s = self.opts.loss_size
        hw = domains.image_hw(self.opts.domain, s)
        return x if tuple(x.shape[-2:]) == hw else F.interpolate(x, size=hw, mode="bilinear", align_corners=False)

    def real_codes(self, step: int) -> torch.Tensor:
        z = torch.randn(self.opts.batch_size, self.style_dim, generator=torch.Generator().manual_seed(self.opts.seed * 31 + step))
        z = z[self.dist.rank * self.local_batch : (self.dist.rank + 1) * self.local_batch].to(self.device)
        with torch.no_grad():
            return self.G.mapping(z)

    # ---- one step ---------------------------------------------------------------------

    def train_step(self) -> dict:
        opts, step = self.opts, self.step
        stage = self.stage(step)
        rows = slice(self.dist.rank * self.local_batch, (self.dist.rank + 1) * self.local_batch)
        x = self.batches.batch(step, rows=rows).to(self.device)
        logs: dict = {"step": step, "stage": stage}
        if self.disc is not None:
            logs.update(self._disc_step(x, stage, step))
        self.encoder.train()
        with self._autocast():
            codes = self.codes(x, stage)
            y_hat = self.render(codes, noise=self.train_noise(step, rows)).float()
        y = self.target(x)
        loss_l2 = F.mse_loss(y_hat, y)
        total = opts.l2_lambda * loss_l2
        logs["l2"] = float(loss_l2.detach())
        if self.lpips is not None:
            # the batch mean, as the reference's criterion returns (DDP's averaging keeps it the global mean)
            loss_lpips = self.lpips(y_hat, y).mean()
            total = total + opts.lpips_lambda * loss_lpips
            logs["lpips"] = float(loss_lpips.detach())
        if self.id_loss is not None:
            loss_id, info = self.id_loss(y_hat, y, x)
            total = total + opts.id_weight() * loss_id
            logs.update(id=float(loss_id.detach()), **info)
        if opts.delta_norm_lambda > 0:
            loss_delta = delta_penalty(codes, stage, opts.delta_norm)
            total = total + opts.delta_norm_lambda * loss_delta
            logs["delta"] = float(loss_delta.detach())
        if self.disc is not None:
            fake = codes[:, : stage + 1].reshape(-1, self.style_dim)
            loss_adv = g_adv_loss(self.dsc(fake))
            total = total + opts.w_discriminator_lambda * loss_adv
            logs["adv"] = float(loss_adv.detach())
        self.opt_e.zero_grad(set_to_none=True)
        total.backward()
        self.opt_e.step()
        logs["loss"] = float(total.detach())
        self.step += 1
        logs["step"] = self.step  # steps done
        return logs

    def disc_fakes(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """The discriminator's fake codes, as the reference picks them: one per image, a random
        one of its active codes (w0 + latent_avg, then the active deltas') through the fake pool,
        or its first code alone when the pool is off: [N,D]."""
        with torch.no_grad():
            codes = self.codes(x, stage)[:, : stage + 1]
        return self.fake_pool.query(codes)

    def _disc_step(self, x, stage: int, step: int) -> dict:
        """One discriminator step (and its lazy R1 step). D is trainable only here: the encoder's
        adversarial loss computes no gradients for it, as in the reference."""
        self.disc.requires_grad_(True)
        try:
            return self._disc_update(x, stage, step)
        finally:
            self.disc.requires_grad_(False)

    def _disc_update(self, x, stage: int, step: int) -> dict:
        opts = self.opts
        fake = self.disc_fakes(x, stage)
        real = self.real_pool.query(self.real_codes(step))
        loss = d_loss(self.dsc(real), self.dsc(fake))
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self._sync_grads(self.disc)
        self.opt_d.step()
        out = {"d_loss": float(loss.detach())}
        if step % opts.d_reg_every == 0:
            loss, r1 = r1_step_loss(self.dsc, real, r1=opts.r1, every=opts.d_reg_every)
            self.opt_d.zero_grad(set_to_none=True)
            loss.backward()
            self._sync_grads(self.disc)
            self.opt_d.step()
            out["r1"] = float(r1.detach())
        return out

    def _sync_grads(self, module) -> None:
        """Average `module`'s gradients over the processes (a missing gradient counts as zero)."""
        if not self.dist.active:
            return
        for p in module.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= self.dist.world

    # ---- outputs ------------------------------------------------------------------------

    def checkpoint_payload(self) -> dict:
        o = self.opts
        arch = Architecture(encoder_widths=tuple(o.encoder_widths), encoder_units=tuple(o.encoder_units),
                            input_size=o.input_size, style_dim=self.style_dim, n_mlp=len(self.G.style) - 1,
                            generator_channels=dict(self.G.channels))
        payload = released_payload(encoder_state=self.encoder.state_dict(), generator_state=self.G.state_dict(),
                                   latent_avg=self.latent_avg, size=self.size, dataset_type=o.dataset_type,
                                   architecture=arch, extra_opts={"e4e_train": o.to_dict()})
        payload["train_state"] = {
            "step": self.step,
            "encoder_opt": self.opt_e.state_dict(),
            "disc": self.disc.state_dict() if self.disc else {},
            "disc_opt": self.opt_d.state_dict() if self.opt_d else {},
            "real_pool": self.real_pool.state_dict(),
            "fake_pool": self.fake_pool.state_dict(),
        }
        return payload

    def _load(self, obj: dict) -> None:
        enc, _ = split_state_dict(obj["state_dict"])
        self.encoder.load_state_dict(enc)
        st = obj["train_state"]
        self.step = int(st["step"])
        self.opt_e.load_state_dict(st["encoder_opt"])
        if self.disc is not None and st.get("disc"):
            self.disc.load_state_dict(st["disc"])
            self.opt_d.load_state_dict(st["disc_opt"])
        self.real_pool.load_state_dict(st["real_pool"])
        self.fake_pool.load_state_dict(st["fake_pool"])

    def save(self) -> Optional[Path]:
        path = None
        if self.dist.rank == 0:
            path = checkpoints.save(self.opts.out, self.step, self.checkpoint_payload(), keep_last=self.opts.keep_last)
        self.dist.barrier()
        return path

    @torch.no_grad()
    def validate(self) -> dict:
        """Held-out reconstruction: MSE (pixels in [0,1]), LPIPS and identity similarity when those
        networks are loaded. Encoder in inference mode (running BatchNorm statistics)."""
        files = self.val_files[: self.opts.val_images] or self.train_files[: self.opts.val_images]
        held = Batches(files, batch_size=len(files), size_hw=self.input_hw, seed=0, flip=False)
        x = held.batch(0).to(self.device)
        self.encoder.eval()
        stage = self.stage(self.step)
        mse, lp, ids = [], [], []
        for chunk in x.split(8):
            y_hat = self.render(self.codes(chunk, stage, module=self.active)).float()
            y = self.target(chunk)
            mse.append(((y_hat.clamp(-1, 1) - y) / 2).pow(2).mean(dim=(1, 2, 3)))
            if self.lpips is not None:
                lp.append(self.lpips(y_hat, y))
            if self.id_loss is not None:
                ids.append(self.id_loss(y_hat, y, chunk)[1]["id_similarity"])
        self.encoder.train()
        out = {"val_mse": float(torch.cat(mse).mean()), "val_images": len(files)}
        if lp:
            out["val_lpips"] = float(torch.cat(lp).mean())
        if ids:
            out["val_id_similarity"] = sum(ids) / len(ids)
        return out

    @torch.no_grad()
    def picture(self) -> Path:
        """input | reconstruction | an edit (the generator's first SeFa direction, +3 on every
        layer) for up to 4 held-out images, as one PNG."""
        import numpy as np
        from PIL import Image

        from ..editing import sefa_directions

        files = (self.val_files or self.train_files)[:4]
        x = Batches(files, batch_size=len(files), size_hw=self.input_hw, seed=0, flip=False).batch(0).to(self.device)
        self.encoder.eval()
        codes = self.codes(x, self.stage(self.step), module=self.active)
        self.encoder.train()
        dirs, _ = sefa_directions(self.G, list(range(self.n_styles)))
        edit = codes + 3.0 * dirs[0].to(codes)[None, None]
        rows = []
        for a, b, c in zip(self.target(x), self.render(codes), self.render(edit)):
            row = torch.cat([a, b.clamp(-1, 1), c.clamp(-1, 1)], dim=2)
            rows.append(row)
        grid = ((torch.cat(rows, dim=1) + 1) / 2).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
        path = Path(self.opts.out) / "images" / f"step_{self.step:07d}.png"
        ensure_dir(path.parent)
        atomic_save_image(Image.fromarray(np.ascontiguousarray(grid)), path)
        return path

    def close(self):
        self.dist.close()


def append_log(run_dir, row: dict) -> None:
    """One JSON line per logged step (log.jsonl) and the same as CSV (log.csv, columns of the first row)."""
    run = Path(run_dir)
    with open(run / "log.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    csv_path = run / "log.csv"
    if not csv_path.exists():
        csv_path.write_text(",".join(row) + "\n")
    cols = csv_path.read_text().splitlines()[0].split(",")
    with open(csv_path, "a") as fh:
        fh.write(",".join(str(row.get(c, "")) for c in cols) + "\n")


def run(opts: TrainOptions, *, resume: bool = False, log: Callable[[str], None] = print, progress: bool = True,
        bn_groups: int = 1, stop_after: Optional[int] = None,
        on_params: Optional[Callable[[str, int, dict], None]] = None) -> dict:
    """Train until `opts.max_steps` (or `stop_after` steps in this call). Returns the last logs."""
    run_dir = Path(opts.out)
    state = None
    if resume:
        state = checkpoints.load_for_resume(run_dir)
        saved = TrainOptions.from_dict(state["opts"].get("e4e_train", {}))
        if opts.max_steps is not None:  # else the run's own target
            saved.max_steps = opts.max_steps
        saved.out = opts.out
        opts = saved
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise E4EError(f"{run_dir} already holds a run: continue it with --resume, or choose another --out")
    if opts.max_steps is None:
        opts.max_steps = TrainOptions().max_steps
    trainer = Trainer(opts, resume=state, log=log, bn_groups=bn_groups)
    rank0 = trainer.dist.rank == 0

    def dump_params(tag: str) -> None:
        if on_params is not None:
            on_params(tag, trainer.dist.rank, {k: v.detach().cpu().clone() for k, v in trainer.encoder.named_parameters()})

    dump_params("_start")
    if rank0:
        ensure_dir(run_dir)
        (run_dir / "options.json").write_text(json.dumps(opts.to_dict(), indent=2) + "\n")
        log(f"training an e4e encoder for a {trainer.size}px generator ({trainer.n_styles} codes): "
            f"{len(trainer.train_files)} training / {len(trainer.val_files)} held-out images, global batch "
            f"{opts.batch_size} ({trainer.local_batch} x {trainer.dist.world} process(es)), step {trainer.step} of {opts.max_steps}")
        if trainer.step == 0 and opts.val_every:
            v = trainer.validate()  # the baseline the held-out numbers improve on
            append_log(run_dir, {"step": 0, **v})
    trainer.dist.barrier()
    last: dict = {}
    end = opts.max_steps if stop_after is None else min(opts.max_steps, trainer.step + stop_after)
    bar = _Bar(progress and rank0, trainer.step, opts.max_steps)
    interrupted = False
    old = signal.getsignal(signal.SIGINT)
    try:
        t0, s0 = time.perf_counter(), trainer.step
        while trainer.step < end:
            logs = trainer.train_step()
            step = trainer.step
            if step % opts.log_every == 0 or step == end:
                logs = {k: (trainer.dist.mean(v) if isinstance(v, float) else v) for k, v in logs.items()}
                logs["steps_per_s"] = (step - s0) / max(1e-9, time.perf_counter() - t0)
                if rank0:
                    append_log(run_dir, logs)
                last = logs
            bar.update(step, logs)
            if opts.val_every and step % opts.val_every == 0 and rank0:
                v = trainer.validate()
                append_log(run_dir, {"step": step, **v})
                last.update(v)
            if opts.image_every and step % opts.image_every == 0 and rank0:
                trainer.picture()
            if opts.save_every and step % opts.save_every == 0:
                trainer.save()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        signal.signal(signal.SIGINT, old)
    dump_params("")
    try:
        path = trainer.save()
        if rank0:
            if not (opts.val_every and trainer.step % opts.val_every == 0 and "val_mse" in last):
                v = trainer.validate()
                append_log(run_dir, {"step": trainer.step, **v})
                last.update(v)
            if not interrupted:
                trainer.picture()
            log(f"{'interrupted: ' if interrupted else ''}saved {path} (step {trainer.step}); "
                + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.startswith("val_") and isinstance(v, float)))
    finally:
        trainer.close()
    if interrupted:
        raise KeyboardInterrupt
    return last


class _Bar:
    """The training bar (rank 0, when enabled): steps, steps/s, time left and the current losses."""

    def __init__(self, enabled: bool, start: int, total: int):
        self.bar = progress.bar(total=total, initial=start, desc="training", unit="step", leave=True,
                                wanted=enabled and sys.stderr.isatty())
        self.step = start

    def update(self, step: int, logs: dict):
        losses = " ".join(f"{k} {logs[k]:.3g}" for k in ("loss", "l2", "lpips", "id", "delta", "adv", "d_loss")
                          if isinstance(logs.get(k), float))
        self.bar.update(step - self.step)
        self.step = step
        self.bar.set_postfix_str(losses)

    def close(self):
        self.bar.close()


__all__ = ["Trainer", "run", "progressive_stage", "delta_mask"]
