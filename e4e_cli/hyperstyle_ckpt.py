"""Reading released HyperStyle checkpoints and their W-encoders safely (parity/hyperstyle/SPEC.md).

A HyperStyle file (`hyperstyle_ffhq.pt`, ...) is a `torch.save` dict: `state_dict` with
`hypernet.*` (the hypernetwork) and `decoder.*` (the StyleGAN2 generator, e4e's key names),
`latent_avg` and `opts` (the training options). Its W-encoder is a second file (pSp layout,
`encoder.*`). Everything this module knows of the format is here: the options read, the
aliases of the shared hypernet (saved under ten names, one tensor) and the strict key checks.
Files are opened with `weights_only=True` and memory-mapped; modules take the mapped tensors
(`assign=True`), so the ~1.5 GB are never copied and only the pages a forward touches are read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import domains
from .checkpoint import load_into, read_checkpoint, skeleton
from .errors import E4EError
from .nn.hypernet import SHARED_LAYERS, HyperNet, WEncoder, n_outputs_for
from .nn.networks import Generator

SUPPORTED_ENCODER = "SharedWeightsHyperNetResNet"
SHARED_KEYS = ("w1", "b1", "w2", "b2")
#: the reference's `dataset_type` -> our domain name (`"cars" in dataset_type` switches on the cars crop)
DATASET_DOMAINS = {"ffhq_hypernet": "ffhq", "cars_hypernet": "cars", "afhq_wild_hypernet": "wild"}
#: iterations at inference: the test option's default (the training value in opts does not apply)
DEFAULT_N_ITERS = 5


@dataclass
class HyperStyleParts:
    """What a HyperStyle checkpoint holds, loaded: the hypernet (eval mode, weights memory-mapped),
    the decoder's tensors (keys without `decoder.`) and latent_avg [n_styles,512]."""

    path: str
    size: int  # generator output side: 1024 / 512 / 256
    n_styles: int
    n_outputs: int  # delta indices: 26 / 23 / 20
    dataset_type: str
    domain: str  # "ffhq", "cars", "wild" (afhq_wild), else dataset_type without "_hypernet"
    wide: bool  # cars: 192x256 input, rows 64:448 of the 512 output
    layers_to_tune: tuple[int, ...]  # delta indices with a refinement block
    n_iters: int
    hypernet: HyperNet
    decoder_state: dict[str, torch.Tensor]
    latent_avg: torch.Tensor  # [n_styles,512] float32
    w_encoder_hint: str | None = None  # opts' w_encoder_checkpoint_path (a path on the trainer's machine)
    opts: dict = field(default_factory=dict)

    def generator(self) -> Generator:
        """The decoder as a new `Generator` (eval mode), its parameters the checkpoint's mapped tensors."""
        return load_generator(self.decoder_state, size=self.size, path=self.path)


def load_generator(decoder_state: dict[str, torch.Tensor], *, size: int, path: str | os.PathLike) -> Generator:
    """A `Generator` holding `decoder_state`'s tensors (no copy); strict, as the reference loads it."""
    with skeleton():  # no random initial values: every tensor is the checkpoint's
        g = Generator(size)
    load_into(g, dict(decoder_state), prefix="decoder.", path=path, what="the HyperStyle decoder")
    return _frozen(g)


def read_hyperstyle(path: str | os.PathLike, *, mmap: bool = True) -> HyperStyleParts:
    """Load a HyperStyle checkpoint (released layout) or raise a one-line E4EError."""
    return hyperstyle_from_checkpoint(read_checkpoint(path, mmap=mmap, kind="HyperStyle"), path=path)


def read_w_encoder(path: str | os.PathLike, *, mmap: bool = True) -> WEncoder:
    """Load a W-encoder checkpoint's `encoder.*` (eval mode) or raise a one-line E4EError. Its
    decoder, latent_avg and opts are not used: HyperStyle completes w with its own latent_avg."""
    return w_encoder_from_checkpoint(read_checkpoint(path, mmap=mmap, kind="W-encoder"), path=path)


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _split(sd: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {p: {} for p in prefixes}
    for k, v in sd.items():
        if isinstance(k, str) and isinstance(v, torch.Tensor):
            head, _, rest = k.partition(".")
            if head in out and rest:
                out[head][rest] = v
    return out


def parse_layers(value: Any, n_outputs: int, *, path: str | os.PathLike) -> tuple[int, ...]:
    """opts `layers_to_tune` -> sorted delta indices: '' = all; indices >= n_outputs are ignored
    (a 1024 list used at 512 names 23 and 24), as the reference does."""
    if value is None or value == "" or value == []:
        return tuple(range(n_outputs))
    try:
        items = value.split(",") if isinstance(value, str) else list(value)
        wanted = {int(str(v).strip()) for v in items}
    except (TypeError, ValueError, AttributeError):
        raise E4EError(f"checkpoint {path}: opts.layers_to_tune is {value!r}, not a comma list of layer numbers") from None
    return tuple(sorted(i for i in wanted if 0 <= i < n_outputs))


def _decoder_size(dec: dict[str, torch.Tensor]) -> int | None:
    n_rgb = len({k.split(".")[1] for k in dec if k.startswith("to_rgbs.")})
    return 2 ** (n_rgb + 2) if n_rgb else None


def _size(opts: dict, dec: dict[str, torch.Tensor], *, path) -> int:
    """opts `output_size`, cross-checked with the decoder's number of ToRGB layers."""
    from_dec = _decoder_size(dec)
    size = opts.get("output_size", from_dec)
    try:
        size = int(size)
    except (TypeError, ValueError):
        raise E4EError(f"checkpoint {path}: opts.output_size is {size!r}, not an integer") from None
    if size not in (256, 512, 1024):
        raise E4EError(f"checkpoint {path}: unsupported HyperStyle output size {size} (released: 1024, 512)")
    if from_dec is not None and from_dec != size:
        raise E4EError(f"checkpoint {path}: opts.output_size is {size} but its decoder is a {from_dec} px generator")
    n = opts.get("n_hypernet_outputs")
    if n is not None and str(n) != str(n_outputs_for(size)):
        raise E4EError(f"checkpoint {path}: opts.n_hypernet_outputs is {n!r}, a {size} px generator has {n_outputs_for(size)}")
    return size


def _latent_avg(value: Any, n_styles: int, *, path) -> torch.Tensor:
    """[n_styles,512], or [512] / [1,512] (the training code's fallback) repeated on every row."""
    if not isinstance(value, torch.Tensor):
        raise E4EError(f"checkpoint {path} has no latent_avg tensor: not a HyperStyle checkpoint")
    avg = value.detach().float().reshape(-1, value.shape[-1]) if value.dim() else value
    if avg.dim() != 2 or avg.shape[1] != 512 or avg.shape[0] not in (1, n_styles):
        raise E4EError(f"checkpoint {path}: latent_avg has shape {tuple(value.shape)}, expected [{n_styles}, 512] or [512]")
    return avg.expand(n_styles, 512).clone() if avg.shape[0] == 1 else avg.clone()


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is b:
        return True
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if (a.device == b.device and a.device.type != "meta" and a.stride() == b.stride()
            and a.storage_offset() == b.storage_offset()
            and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()):
        return True  # one storage saved under two names (what torch.save does with the shared module)
    return a.device.type != "meta" and bool(torch.equal(a, b))


def _take_aliases(hyper: dict[str, torch.Tensor], tuned: tuple[int, ...], *, path) -> dict[str, torch.Tensor]:
    """The hypernet's tensors without the aliases `refinement_blocks.<i>.hypernet.*` of the shared
    hypernet (each must be present for a tuned shared layer i and equal the canonical tensor)."""
    rest = dict(hyper)
    missing, differ = [], []
    for i in tuned:
        if i not in SHARED_LAYERS:
            continue
        for name in SHARED_KEYS:
            key = f"refinement_blocks.{i}.hypernet.{name}"
            if key not in rest:
                missing.append("hypernet." + key)
                continue
            alias = rest.pop(key)
            canonical = hyper.get(f"shared_weight_hypernet.{name}")
            if canonical is not None and not _same_tensor(alias, canonical):
                differ.append("hypernet." + key)
    if missing:
        raise E4EError(f"checkpoint {path} does not fit the HyperStyle hypernetwork: {len(missing)} missing key(s): "
                       + ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else ""))
    if differ:
        raise E4EError(f"checkpoint {path}: {', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''} differ(s) from "
                       "hypernet.shared_weight_hypernet.*, which every shared layer uses: the file is corrupt")
    return rest


def hyperstyle_from_checkpoint(ckpt: dict[str, Any], *, path: str | os.PathLike = "checkpoint") -> HyperStyleParts:
    """The loaded parts of a checkpoint dict (as `read_checkpoint` returns it); strict: a missing,
    unexpected or misshapen key is a one-line E4EError naming the file and a few keys."""
    opts = ckpt.get("opts") or {}
    if not isinstance(opts, dict):
        opts = {}
    parts = _split(ckpt["state_dict"], ("hypernet", "decoder", "encoder"))
    hyper, dec = parts["hypernet"], parts["decoder"]
    encoder_type = str(opts.get("encoder_type") or SUPPORTED_ENCODER)
    if not hyper:
        what = ("a W-encoder (pass it as the W-encoder)" if encoder_type == "WEncoder" or parts["encoder"]
                else "not a HyperStyle checkpoint")
        raise E4EError(f"checkpoint {path} has no hypernet.* weights: {what}")
    if encoder_type != SUPPORTED_ENCODER:
        raise E4EError(f"checkpoint {path}: encoder_type {encoder_type!r} is not supported "
                       f"(released HyperStyle checkpoints use {SUPPORTED_ENCODER})")
    if not dec:
        raise E4EError(f"checkpoint {path} has no decoder.* weights: not a HyperStyle checkpoint")
    if str(opts.get("input_nc", 6)) != "6":
        raise E4EError(f"checkpoint {path}: opts.input_nc is {opts.get('input_nc')!r}; "
                       "HyperStyle's hypernetwork reads 6 channels")
    size = _size(opts, dec, path=path)
    n_outputs = n_outputs_for(size)
    tuned = parse_layers(opts.get("layers_to_tune", ""), n_outputs, path=path)
    n_styles = domains.n_styles_for(size)
    latent_avg = _latent_avg(ckpt.get("latent_avg"), n_styles, path=path)
    dataset = str(opts.get("dataset_type") or "")
    domain = DATASET_DOMAINS.get(dataset) or dataset.replace("_hypernet", "") or domains.guess_from_size(size)
    with skeleton():  # no random initial values: every tensor is the checkpoint's
        net = HyperNet(size, tuned)
    load_into(net, _take_aliases(hyper, tuned, path=path), prefix="hypernet.", path=path,
              what="the HyperStyle hypernetwork")
    load_generator(dec, size=size, path=path)  # strict key check now, not at the first decode
    hint = opts.get("w_encoder_checkpoint_path")
    return HyperStyleParts(
        path=str(path), size=size, n_styles=n_styles, n_outputs=n_outputs, dataset_type=dataset, domain=domain,
        wide="cars" in dataset, layers_to_tune=tuned, n_iters=DEFAULT_N_ITERS, hypernet=_frozen(net),
        decoder_state=dec, latent_avg=latent_avg, w_encoder_hint=str(hint) if hint else None, opts=dict(opts),
    )


def w_encoder_from_checkpoint(ckpt: dict[str, Any], *, path: str | os.PathLike = "checkpoint") -> WEncoder:
    """The W-encoder of a checkpoint dict, strictly loaded from `encoder.*`."""
    parts = _split(ckpt["state_dict"], ("encoder", "hypernet"))
    enc = parts["encoder"]
    if not enc:
        what = "a HyperStyle checkpoint, not its W-encoder" if parts["hypernet"] else "not a W-encoder checkpoint"
        raise E4EError(f"checkpoint {path} has no encoder.* weights: {what}")
    if any(k.startswith("styles.") for k in enc):
        raise E4EError(f"checkpoint {path} holds an e4e encoder (encoder.styles.*), not a HyperStyle W-encoder")
    with skeleton():  # no random initial values: every tensor is the checkpoint's
        net = WEncoder()
    load_into(net, enc, prefix="encoder.", path=Path(path), what="the HyperStyle W-encoder")
    return _frozen(net)
