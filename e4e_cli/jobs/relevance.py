"""`e4e directions relevance`: StyleCLIP's channel relevance `fs3` for any generator (issue 33).

For every StyleSpace channel c (or those of `channels`) and each of `samples` truncated samples,
the channel is first set to its mean, then moved by ±5 standard deviations, both images are
decoded and CLIP-encoded; the normalised embeddings' difference is normalised, averaged over
the samples and normalised again: fs3[c] [D]. Two decodes per channel and sample: the channels
are batched (`batch` images per decode), the output `.npz` (fs3 [C,D], mean and std [C],
`computed` [C]) is rewritten after each batch, so an interrupted run resumes where it stopped,
and a later run with other `channels` adds to the same file. Under torchrun each process takes
every world-th batch into its own `<out>.rank<R>.npz`; the first merges them at the end.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .. import dist, progress
from ..devices import resolve_device
from ..digests import content_sha256
from ..errors import USAGE, E4EError
from ..fsutil import atomic_write, ensure_dir, safe_name
from .directions import directions_dir
from .outputs import write_json
from .sampled import GeneratorSource, load_any_generator

STEP_STDS = 5.0  # the reference moves each channel by ±5 standard deviations
TRUNCATION, CUTOFF = 0.7, 8


@dataclass
class RelevanceJob:
    source: GeneratorSource = field(default_factory=GeneratorSource)
    out: Optional[Path] = None
    samples: int = 100  # the reference's
    stats_samples: int = 100_000  # for the channels' mean and std (the reference's)
    seed: int = 0
    channels: Optional[tuple] = None  # (start, end): a range of StyleSpace channels (default: all)
    batch: int = 8  # images per decode
    device: str = "auto"
    overwrite: bool = False
    show_progress: bool = True


def parse_channels(text: Optional[str]) -> Optional[tuple]:
    """"START:END" -> (START, END); None -> None. Bad text: a usage error."""
    if text is None:
        return None
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise E4EError(f"--channels {text!r}: give START:END (e.g. 0:512)", exit_code=USAGE) from None
    if not 0 <= a < b:
        raise E4EError(f"--channels {text!r}: START:END with 0 <= START < END", exit_code=USAGE)
    return a, b


def _unit(x):
    """x / |x| along the last axis; a zero vector stays zero (a channel that changes nothing)."""
    n = x.norm(dim=-1, keepdim=True)
    return x / n.clamp_min(1e-12)


def _settings(job: RelevanceJob, gpath: Path, clip_file: Path) -> dict:
    return {"generator_sha256": content_sha256(gpath), "clip_sha256": content_sha256(clip_file),
            "samples": job.samples, "stats_samples": job.stats_samples, "seed": job.seed,
            "step_stds": STEP_STDS, "truncation": TRUNCATION}


def _read_state(path: Path, settings: dict) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            state = {k: z[k] for k in z.files}
        have = {k: (v.item() if v.ndim == 0 else None) for k, v in state.items() if k in settings}
    except (OSError, ValueError) as exc:
        raise E4EError(f"cannot read {path} to resume it: {exc}; pass --overwrite to start again") from None
    if have != {k: settings[k] for k in have} or set(have) != set(settings):
        raise E4EError(f"{path} holds a relevance computed another way (another generator, CLIP, samples or seed): "
                       "pass --overwrite to replace it, or --out FILE")
    return state


def _write_state(path: Path, fs3, mean, std, computed, settings: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, fs3=fs3, mean=mean, std=std, computed=computed,
             **{k: np.asarray(v) for k, v in settings.items()})
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def compute_relevance(job: RelevanceJob, *, weights_dir=None) -> tuple[Path, dict]:
    """Run (or resume) the relevance; returns (the .npz, a summary with the cost)."""
    import torch

    from ..nn import fast_generator
    from ..nn.engine import Plans
    from ..styleclip import style_stats
    from ..textedit import load_clip_model
    from ..weights.locate import require_asset

    src = job.source
    if job.samples < 1 or job.batch < 1:
        raise E4EError("--samples and --batch must be 1 or more", exit_code=USAGE)
    loaded, gpath = load_any_generator(src)
    device = resolve_device(job.device)
    g = loaded.generator.to(device)
    n_ch = g.n_style_channels
    start, end = job.channels or (0, n_ch)
    if end > n_ch:
        raise E4EError(f"--channels {start}:{end}: this generator's StyleSpace has {n_ch} channels (0:{n_ch})",
                       exit_code=USAGE)
    if job.out is not None:
        out = Path(job.out)
    else:
        out = directions_dir(src.weights_dir) / f"{safe_name(gpath.stem, 'generator')}_relevance.npz"
    if out.suffix.lower() != ".npz":
        raise E4EError(f"--out {out}: the relevance is written as an .npz file")
    clip = load_clip_model(src.weights_dir or weights_dir, device=device)
    settings = _settings(job, gpath, require_asset("clip_vit_b32", src.weights_dir or weights_dir))
    group = dist.Group()
    state_path = out if group.world == 1 else out.with_name(f"{out.stem}.rank{group.rank}.npz")
    ensure_dir(out.parent)
    if job.overwrite and group.rank == 0:
        for p in [out, *out.parent.glob(f"{out.stem}.rank*.npz")]:
            p.unlink(missing_ok=True)
    group.barrier()
    states = [s for s in (_read_state(p, settings) for p in [out, *sorted(out.parent.glob(f"{out.stem}.rank*.npz"))])
              if s is not None]
    if states:
        fs3 = states[0]["fs3"].astype(np.float32)
        computed = np.zeros(n_ch, bool)
        for s in states:
            fs3[s["computed"]] = s["fs3"][s["computed"]]
            computed |= s["computed"]
        mean, std = torch.from_numpy(states[0]["mean"]), torch.from_numpy(states[0]["std"])
    else:
        mean, std = style_stats(g, loaded.latent_avg.to(device), n=job.stats_samples, seed=job.seed + 1,
                                psi=TRUNCATION, cutoff=CUTOFF)
        fs3 = np.zeros((n_ch, clip.model.config.projection_dim), np.float32)
        computed = np.zeros(n_ch, bool)
    # the samples: truncated as the statistics are
    with torch.no_grad():
        z = torch.randn(job.samples, g.style_dim, generator=torch.Generator().manual_seed(job.seed)).to(device)
        w = g.mapping(z)
        codes = w[:, None].repeat(1, g.n_styles, 1)
        k = min(CUTOFF, g.n_styles)
        avg = loaded.latent_avg.to(device).reshape(1, 1, -1)
        codes[:, :k] = avg + TRUNCATION * (codes[:, :k] - avg)
        s0 = g.styles(codes)  # [N,C]
    todo = [c for c in range(start, end) if not computed[c]]
    per_batch = max(1, job.batch // (2 * job.samples))  # channels per decode batch
    batches = [todo[i : i + per_batch] for i in range(0, len(todo), per_batch)][group.rank :: group.world]
    plans = Plans()
    t0 = time.time()
    n_done = 0
    bar = progress.bar(total=sum(len(b) for b in batches), desc="relevance", unit="ch",
                       wanted=job.show_progress and group.rank == 0)
    with bar:
        for chans in batches:
            rows = []
            for c in chans:
                feats = []
                for sign in (-1.0, 1.0):
                    off = torch.zeros(job.samples, n_ch, device=device)
                    off[:, c] = mean[c] - s0[:, c] + sign * STEP_STDS * std[c]
                    imgs = []
                    for i in range(0, job.samples, max(1, job.batch)):
                        with torch.no_grad():
                            imgs.append(fast_generator.synthesize(g, codes[i : i + job.batch], plans=plans,
                                                                  style_offsets=off[i : i + job.batch]))
                    feats.append(_unit(clip.image_features(torch.cat(imgs))))  # [N,D]
                diff = _unit(feats[1] - feats[0])
                rows.append(_unit(diff.mean(dim=0)))
            fs3[chans] = torch.stack(rows).cpu().numpy()
            computed[chans] = True
            _write_state(state_path, fs3, mean.cpu().numpy(), std.cpu().numpy(), computed, settings)
            n_done += len(chans)
            bar.update(len(chans))
    seconds = time.time() - t0
    group.barrier()
    if group.world > 1 and group.rank == 0:  # merge the ranks' files into `out`
        parts = [_read_state(p, settings) for p in sorted(out.parent.glob(f"{out.stem}.rank*.npz"))]
        for s in parts:
            fs3[s["computed"]] = s["fs3"][s["computed"]]
            computed |= s["computed"]
        _write_state(out, fs3, mean.cpu().numpy(), std.cpu().numpy(), computed, settings)
        for p in out.parent.glob(f"{out.stem}.rank*.npz"):
            p.unlink(missing_ok=True)
    info = {"kind": "styleclip_relevance", "generator": {"file": gpath.name, "sha256": settings["generator_sha256"],
                                                          "layout": loaded.kind},
            "channels": n_ch, "computed": int(computed.sum()), "samples": job.samples, "seed": job.seed,
            "stats_samples": job.stats_samples, "step_stds": STEP_STDS, "truncation": TRUNCATION,
            "computed_now": n_done, "seconds": round(seconds, 2),
            "seconds_per_channel_and_sample": round(seconds / max(1, n_done * job.samples), 4),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if group.rank == 0:
        write_json(out.with_suffix(".json"), info)
    group.close()
    return out, info
