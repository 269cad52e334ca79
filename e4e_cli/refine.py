"""HyperStyle refinement: a W inversion made faithful by per-image offsets of the generator's weights.

HyperStyle (Alaluf et al., CVPR 2022) keeps the edits on the code and moves the generator
instead: a W-encoder gives the code (one vector for every layer, plus the checkpoint's
`latent_avg`), and a hypernetwork that sees the photo beside the current reconstruction adds
relative offsets to the generator's convolution weights, N times (5 by default), each time
decoding again. Edits change the code and decode it with the same offsets.

The loop (../shared/parity/hyperstyle/SPEC.md "Inference loop"): the code is computed once;
the offsets accumulate (the sum of every pass's output); every decode uses the fixed noise;
the hypernetwork's second input is the full decode average-pooled to its input size (cars:
the 384x512 crop pooled to 192x256), not clipped. The intermediate decodes are full size:
pooling the 1024 image is not the 256 block's image (the later blocks add their own RGB), so
stopping early would change what the hypernetwork sees.

Offsets are kept compact: layers whose offsets are one value per (out, in) channel pair hold
[B,O,I,1,1], which the generator broadcasts over the kernel; the nine shared-hypernet layers
hold [B,512,512,3,3]. `save_offsets` / `load_offsets` write them without pickle.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import domains, npzfiles
from .checkpoint import CheckpointInfo
from .devices import resolve_device, resolve_precision
from .digests import content_sha256
from .errors import USAGE, E4EError
from .fsutil import atomic_write
from .hyperstyle_ckpt import HyperStyleParts, read_hyperstyle, read_w_encoder
from .model import E4E, preprocess_images

DEFAULT_STEPS = 5  # the reference's test option n_iters_per_batch
OFFSETS_FORMAT = "e4e-weight-offsets/1"
OFFSET_PRECISIONS = {"fp16": np.float16, "fp32": np.float32}


@dataclass
class Refined:
    """What a refinement gives, per batch: `codes` [B,n,512] (the edits apply to these),
    `offsets` {layer: [B,O,I,k,k] or [B,O,I,1,1]} accumulated over the steps, the last
    full-resolution `image` [B,3,H,W] (cropped for cars) and, with `keep_steps`, the pooled
    reconstruction after every step (`steps[0]` is the W-only inversion)."""

    codes: torch.Tensor
    offsets: dict
    image: torch.Tensor
    steps: list = field(default_factory=list)

    def offsets_of(self, i: int) -> dict:
        """Image `i`'s offsets, without the batch dimension (what `save_offsets` and an edit take)."""
        return {k: v[i] for k, v in self.offsets.items()}


class HyperStyle:
    """A HyperStyle checkpoint (hypernetwork + its generator + latent_avg) and the W-encoder it
    starts from. The generator runs through `E4E.decode` (a decode-only E4E), so precision,
    fast paths, crops and memory handling are those of e4e."""

    def __init__(self, parts: HyperStyleParts, w_encoder: torch.nn.Module, *, device: str = "auto",
                 precision: str | torch.dtype | None = None, impl: str = "fast", w_encoder_path: str | None = None):
        dev = resolve_device(device)
        self.parts = parts
        self.hypernet = parts.hypernet.to(dev).eval()
        self.w_encoder = w_encoder.to(dev).eval()
        self.w_encoder_path = w_encoder_path
        info = CheckpointInfo(size=parts.size, n_styles=parts.n_styles, domain=parts.domain,
                              encoder_type="SharedWeightsHyperNetResNet", start_from_latent_avg=True, opts=parts.opts)
        generator = parts.generator().to(dev)
        self.decoder = E4E(None, generator, parts.latent_avg.to(dev), info, device=dev, impl=impl,
                           precision=resolve_precision(precision, dev), path=parts.path)

    @classmethod
    def from_files(cls, refiner: str | os.PathLike, w_encoder: str | os.PathLike, *, device: str = "auto",
                   precision: str | torch.dtype | None = None, impl: str = "fast") -> "HyperStyle":
        """Load a released (or synthetic, same layout) HyperStyle checkpoint and its W-encoder."""
        parts = read_hyperstyle(refiner)
        enc = read_w_encoder(w_encoder)
        return cls(parts, enc, device=device, precision=precision, impl=impl, w_encoder_path=str(w_encoder))

    # ---- facts ----------------------------------------------------------------------------

    @property
    def domain(self) -> str:
        return self.parts.domain

    @property
    def size(self) -> int:
        return self.parts.size

    @property
    def n_styles(self) -> int:
        return self.parts.n_styles

    @property
    def path(self) -> str:
        return self.parts.path

    @property
    def device(self) -> torch.device:
        return self.decoder.device

    @property
    def layers(self) -> tuple[int, ...]:
        """The generator layers the hypernetwork offsets (indices as `Generator.layers()`)."""
        return tuple(self.parts.layers_to_tune)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) the W-encoder and the hypernetwork see: 256x256 (cars 192x256)."""
        return (192, 256) if self.parts.wide else (256, 256)

    def sha256(self) -> str:
        """The refiner file's content digest (cached per file): names the offsets' generator."""
        return content_sha256(self.path)

    def record(self, *, steps: Optional[int] = None) -> dict:
        """What a refinement by this model is recorded as (meta.json's "refine", the offsets
        file's record): the refiner and W-encoder files with the refiner's SHA-256, which names
        the generator the offsets fit, the steps, layers, size and domain."""
        return {"method": "hyperstyle", "refiner": str(Path(self.path).resolve()), "refiner_sha256": self.sha256(),
                "w_encoder": str(Path(self.w_encoder_path).resolve()) if self.w_encoder_path else None,
                "steps": DEFAULT_STEPS if steps is None else steps, "layers": list(self.layers), "size": self.size,
                "domain": self.domain}

    def default_batch_size(self) -> int:
        return 1  # offsets are per image: the decodes run image by image anyway

    def preprocess(self, images) -> torch.Tensor:
        return preprocess_images(images, self.input_size)

    def to_pil(self, images: torch.Tensor):
        return self.decoder.to_pil(images)

    # ---- inference --------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_w(self, x: torch.Tensor) -> torch.Tensor:
        """Input [B,3,H,W] -> codes [B,n_styles,512]: the W-encoder's vector on every row + latent_avg."""
        w = self.w_encoder(x.to(self.device, torch.float32))  # [B,512]
        return w[:, None, :] + self.decoder.latent_avg[None]  # [B,n,512]

    def pool(self, image: torch.Tensor) -> torch.Tensor:
        """A (cropped) full decode -> the hypernetwork's input size, by area averaging."""
        return F.adaptive_avg_pool2d(image, self.input_size)

    @torch.inference_mode()
    def refine(self, images, *, steps: Optional[int] = None, keep_steps: bool = False) -> Refined:
        """Photos (PIL list or preprocessed [B,3,H,W]) -> `Refined`. `steps` hypernetwork passes
        (default the reference's inference default, 5)."""
        n = DEFAULT_STEPS if steps is None else int(steps)
        if n < 0:
            raise E4EError(f"--refine-steps must be >= 0, got {n}")
        x = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != self.input_size:
            h, w = self.input_size
            raise E4EError(f"refiner input must be [B,3,{h},{w}], got {tuple(x.shape)}")
        x = x.to(self.device, torch.float32)
        codes = self.encode_w(x)
        image = self.decoder.decode(codes)
        y_hat = self.pool(image)
        kept = [y_hat] if keep_steps else []
        offsets: dict[int, torch.Tensor] = {}
        for _ in range(n):
            out = self.hypernet.forward_compact(torch.cat([x, y_hat], dim=1))  # input first, reconstruction second
            for i, d in enumerate(out):
                if d is None:
                    continue
                d = d if d.ndim == 5 else d[..., None, None]  # [B,O,I] -> [B,O,I,1,1] (constant over the kernel)
                offsets[i] = d if i not in offsets else offsets[i] + d
            image = self.decoder.decode(codes, offsets=offsets)
            y_hat = self.pool(image)
            if keep_steps:
                kept.append(y_hat)
        return Refined(codes=codes, offsets=offsets, image=image, steps=kept)

    def decode(self, codes: torch.Tensor, *, offsets: Optional[dict] = None, **kw) -> torch.Tensor:
        """Codes decoded by this checkpoint's generator with (one image's or per-image) offsets."""
        return self.decoder.decode(codes, offsets=offsets, **kw)


def find_refiner(domain: str, *, refiner: Optional[Path] = None, w_encoder: Optional[Path] = None,
                 weights_dir: Optional[Path] = None) -> tuple[Path, Path]:
    """(HyperStyle checkpoint, W-encoder): the files given, else the domain's in the weights folder
    (MissingWeightsError, exit 3, naming `e4e download-weights hyperstyle_<domain>`)."""
    from .weights.locate import refiner_paths

    for p, what in ((refiner, "--refiner"), (w_encoder, "--w-encoder")):
        if p is not None and not Path(p).is_file():
            raise E4EError(f"{what} {p}: no such file")
    if refiner is not None and w_encoder is not None:
        return Path(refiner), Path(w_encoder)
    found = refiner_paths(domain, weights_dir)
    return Path(refiner or found[0]), Path(w_encoder or found[1])


# ------------------------------------------------------------------------------------------
# Offsets on disk: an npz of float16 (or float32) arrays and a JSON record, no pickle


def check_offsets_precision(precision: str) -> str:
    """fp16 or fp32, else one E4EError line (the CLI asks before any work, `save_offsets` again)."""
    if precision not in OFFSET_PRECISIONS:
        raise E4EError(f"--offsets-precision must be one of {', '.join(OFFSET_PRECISIONS)}, got {precision!r}",
                       exit_code=USAGE)
    return precision


def save_offsets(path: str | os.PathLike, offsets: dict, *, meta: dict, precision: str = "fp16",
                 latent: Optional[np.ndarray] = None) -> Path:
    """One image's offsets {layer: [O,I,k,k] or [O,I,1,1]} -> `path` (npz, written atomically).

    Offsets constant over the kernel are stored as [O,I]; `meta` (JSON) records what produced
    them (refiner digest, layers, steps). With `latent` ([n_styles,512]) the file also holds the
    code: a refined latent in one file (`load_refined_latent`), what the page's download gives
    and `e4e edit` takes back. Returns the path."""
    dtype = OFFSET_PRECISIONS[check_offsets_precision(precision)]
    arrays = {}
    for i, t in sorted(offsets.items()):
        a = t.detach().float().cpu()
        if a.ndim != 4:
            raise ValueError(f"offset {i}: want [O,I,k,k] or [O,I,1,1], got {tuple(a.shape)}")
        if a.shape[-2:] == (1, 1):
            a = a[:, :, 0, 0]  # [O,I]
        arrays[f"layer_{int(i):02d}"] = a.numpy().astype(dtype)
    record = dict(meta, format=OFFSETS_FORMAT, precision=precision, layers=sorted(int(i) for i in offsets))
    if latent is not None:
        code = np.asarray(latent, dtype=np.float32)
        if code.ndim != 2 or code.shape[1] != 512:
            raise ValueError(f"latent: want [n_styles,512], got {tuple(code.shape)}")
        arrays["latent"] = code
        record["latent"] = list(code.shape)
    arrays["meta"] = np.array(json.dumps(record, sort_keys=True))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write(Path(path), lambda fh: fh.write(buf.getbuffer()))


def load_offsets(path: str | os.PathLike, *, generator=None) -> tuple[dict, dict]:
    """`save_offsets`'s file -> ({layer: float32 [O,I,k,k] or [O,I,1,1]}, meta). One E4EError
    line for a file that is missing, truncated, not ours, holds something unexpected, or (with
    `generator`) does not fit the generator it is about to be applied to."""
    out, meta, _ = _read_offsets_file(Path(path), generator=generator, offsets=True)
    return out, meta


def _read_offsets_file(p: Path, *, generator, offsets: bool) -> tuple[dict, dict, Optional[np.ndarray]]:
    """(offsets {layer: tensor} (empty unless `offsets`), record, code or None) of one offsets
    file, in one opening. Every member's declared size is checked first; the layers stored must
    be the record's (from the headers alone when the offsets are not wanted)."""
    with npzfiles.read_errors(p, what="weight offsets file", advice="invert again"):
        members = npzfiles.layout(p)  # declared sizes first: nothing is inflated that does not fit
        if "meta" not in members:
            raise E4EError(f"{p} is not a weight offsets file written by e4e (no record)")
        _check_offset_members(p, members, generator)
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != OFFSETS_FORMAT:
                raise E4EError(f"{p}: unknown offsets format {meta.get('format')!r} (want {OFFSETS_FORMAT})")
            out, stored = {}, []
            for name in z.files:
                if name == "meta" or (name == "latent" and "latent" in meta):
                    continue
                if not name.startswith("layer_") or not name[6:].isdigit():
                    raise E4EError(f"{p}: unexpected array {name!r}")
                stored.append(int(name[6:]))
                if not offsets:
                    continue
                a = torch.from_numpy(np.asarray(z[name], dtype=np.float32))
                if a.ndim == 2:
                    a = a[:, :, None, None]
                if a.ndim != 4 or not torch.isfinite(a).all():
                    raise E4EError(f"{p}: offsets of layer {int(name[6:])} are malformed")
                out[int(name[6:])] = a
            code = np.asarray(z["latent"], dtype=np.float32) if "latent" in meta and not offsets else None
    if sorted(stored) != sorted(meta.get("layers", [])):
        raise E4EError(f"{p}: the layers stored differ from its record (truncated or edited?)")
    if generator is not None:
        try:
            generator.check_offsets(out)
        except ValueError as exc:
            raise E4EError(f"{p} does not fit this generator ({exc}): it was made for another checkpoint") from None
    return out, meta, code


def _check_offset_members(p: Path, members: dict, generator) -> None:
    """Each member's declared shape against what it may be: the record a short text, the code
    [n_styles,512], each layer's offsets its layer's weight shape (any StyleGAN2 layer's size
    without `generator`)."""
    what = "weight offsets file"
    npzfiles.check(p, members, "meta", shapes=[()], kinds="U", max_itemsize=4 << 20, what=what)
    n_styles = generator.n_styles if generator is not None else None
    if "latent" in members:
        npzfiles.check(p, members, "latent", shapes=[(n_styles, 512)], max_bytes=64 * 512 * 4, what=what)
    layers = generator.layers() if generator is not None else None
    for name in members:
        if name in ("meta", "latent"):
            continue
        index = int(name[6:]) if name.startswith("layer_") and name[6:].isdigit() else -1
        if index < 0 or (layers is not None and index >= len(layers)):
            raise E4EError(f"{p}: unexpected array {name!r}")
        if layers is not None:
            o, c, k, _ = layers[index][0].weight.shape[1:]
            shapes = [(o, c), (o, c, k, k)]
            if members[name].shape not in shapes:
                raise E4EError(f"{p} does not fit this generator (the offsets of layer {index} are "
                               f"{list(members[name].shape)}; the layer's weight is [{o},{c},{k},{k}]): "
                               "it was made for another checkpoint")
        else:
            shapes = [(None, None), (None, None, 3, 3), (None, None, 1, 1)]
        npzfiles.check(p, members, name, shapes=shapes, max_bytes=1024 * 1024 * 9 * 4, what=what)


def load_refined_latent(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """A refined latent in one file (`save_offsets(latent=)`) -> (code [n_styles,512] float32,
    its record). The offsets themselves are read by `load_offsets` on the same file (here only
    their declared shapes and names are checked, nothing of them is inflated). One E4EError line
    for a file without a code or a malformed one."""
    p = Path(path)
    _, meta, code = _read_offsets_file(p, generator=None, offsets=False)
    if code is None:
        raise E4EError(f"{p} holds weight offsets but no latent code (a refined latent file has both)")
    if list(code.shape) != list(meta["latent"]) or code.ndim != 2 or code.shape[1] != 512 or not np.isfinite(code).all():
        raise E4EError(f"{p}: its latent code is malformed")
    return code, meta


_REFINERS: dict = {}


def load_refiner(*, domain: Optional[str] = None, refiner: Optional[Path] = None, w_encoder: Optional[Path] = None,
                 device: str = "auto", precision: Optional[str] = None, weights_dir: Optional[Path] = None) -> HyperStyle:
    """The HyperStyle model for these options (cached per process): the files given, else the
    domain's (ffhq when none) from the weights folder. A refiner whose recorded domain differs
    from an explicit `domain` is refused: its generator, crop and input size are another's."""
    name = domains.get(domain or domains.DEFAULT).name
    hs_path, we_path = find_refiner(name, refiner=refiner, w_encoder=w_encoder, weights_dir=weights_dir)
    key = (str(hs_path.resolve()), str(we_path.resolve()), device, precision)
    if key not in _REFINERS:
        _REFINERS[key] = HyperStyle.from_files(hs_path, we_path, device=device, precision=precision)
    model = _REFINERS[key]
    if domain is not None and model.domain != name:
        raise E4EError(f"refiner {hs_path.name} is a {model.domain} {model.size} px checkpoint, "
                       f"but --domain {name} ({domains.get(name).size} px) was asked for")
    return model
