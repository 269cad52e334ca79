"""The Python API: `E4E.from_checkpoint(path)` with `encode`, `decode` and image helpers.

Speed and memory (issue 9; numbers in bench/bench.py): impl="fast" (the default) runs the
networks' fast paths (nn/fast_encoder.py, nn/fast_generator.py, chosen here; `fast_options`
says how, `plans` keeps their derived tensors), precision="bf16" runs their convolutions in
bfloat16 (AMX/AVX512-BF16 CPUs; styles, demodulation and the RGB image stay float32), the
memory-mapped encoder weights leave resident memory before decoding (`release_encoder_memory`),
one thread per physical core, torch's CPU allocator uses transparent huge pages when this module
is the first to import torch, and the float32 generator's large activations reuse freed memory
(`runtime.HeapReuse`; every machine-specific trick is in nn/runtime.py). `compile()` opts in to
torch.compile (for GPUs).

    model = E4E.from_checkpoint("weights/e4e_ffhq_encode.pt", device="auto")
    codes = model.encode([pil_image])          # [B, n_styles, 512], latent_avg included
    images = model.decode(codes)               # [B, 3, H, W] in about [-1, 1]
    model.to_pil(images)[0].save("out.png")

`delta_scale` moves a code between pure W (0: w0 on every layer, the most editable) and
e4e's W+ code (1); values above 1 exaggerate the per-layer deltas.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .nn import runtime

# The library's start: torch's CPU allocator is set up (runtime.tune_process) before torch is
# imported, as the CLI's main does; a no-op when that has happened already.
runtime.tune_process()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from . import domains, settings  # noqa: E402
from .checkpoint import Architecture, CheckpointInfo, infer_info, load_into, read_checkpoint, skeleton, split_state_dict  # noqa: E402
from .devices import resolve_device, resolve_precision  # noqa: E402
from .errors import E4EError  # noqa: E402
from .nn import fast_encoder, fast_generator, ops  # noqa: E402
from .nn.engine import FastOptions, Plans  # noqa: E402
from .nn.networks import Encoder4Editing, Generator  # noqa: E402
from .nn.runtime import HeapReuse, configure_threads, native_bf16, physical_cores, release_file_pages  # noqa: E402,F401

runtime.tune_process()  # torch is imported now: notes its thread count (see configure_threads)

_HeapReuse = HeapReuse  # the name tests and older callers use


def _available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable); large where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 40


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A RuntimeWarning shown once per process (the CLI prints it as one `e4e: note:` line)."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


@dataclass
class EncoderOutput:
    """w0 [B,D], deltas [B,n-1,D] and latent_avg [n,D]: codes = latent_avg + w0 + scale * deltas."""

    w0: torch.Tensor
    deltas: torch.Tensor
    latent_avg: torch.Tensor

    def codes(self, delta_scale: float = 1.0) -> torch.Tensor:
        b, d = self.w0.shape
        deltas = torch.cat([self.deltas.new_zeros(b, 1, d), self.deltas], dim=1)  # layer 0 has none
        return self.w0[:, None, :] + float(delta_scale) * deltas + self.latent_avg[None]


class E4E:
    """An e4e encoder and its StyleGAN2 generator, loaded from one checkpoint.

    Runs them by the reference path (impl="ref": the modules themselves) or the fast paths
    (impl="fast"), as `fast_options` (nn.engine.FastOptions) say; the fast paths' derived tensors
    are kept in `plans`, per model (`clear_fast_cache()` after changing parameters in place).
    """

    def __init__(self, encoder: Encoder4Editing | None, generator: Generator, latent_avg: torch.Tensor, info: CheckpointInfo,
                 *, device: torch.device, impl: str = "fast", precision: torch.dtype = torch.float32, path: str | None = None,
                 fast_options: FastOptions | None = None):
        self.encoder = None if encoder is None else encoder.eval()  # None: a decoder only (HyperStyle's generator)
        self.generator = generator.eval()
        self.latent_avg = latent_avg  # [n,D]
        self.info = info
        self.device = device
        self.impl = impl
        self.precision = precision
        self.path = path
        self.fast_options = FastOptions() if fast_options is None else fast_options
        self.plans = Plans()
        # memory: a memory-mapped checkpoint's encoder pages (about 85% of the file) are dropped
        # from the process before decoding (`release_encoder_memory`); see `low_memory`
        self.low_memory = True
        self._mmap_path: str | None = None
        self._encoder_hot = False
        self._versions: dict[int, int] = {}
        self._compiled: dict[str, object] = {}

    # ---- construction ---------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: str = "auto", impl: str = "fast",
                        precision: str | torch.dtype | None = None, mmap: bool = True,
                        fast_options: FastOptions | None = None) -> "E4E":
        """Load a released (or synthetic, same format) e4e checkpoint without copying its weights."""
        ckpt = read_checkpoint(path, mmap=mmap)
        info = infer_info(ckpt, path=path)
        enc_sd, dec_sd = split_state_dict(ckpt["state_dict"])
        arch = Architecture.from_opts(info.opts)
        with skeleton():
            encoder = Encoder4Editing(n_styles=info.n_styles, **arch.encoder_kwargs())
            generator = Generator(info.size, **arch.generator_kwargs())
        load_into(encoder, enc_sd, prefix="encoder.", path=path)
        load_into(generator, dec_sd, prefix="decoder.", path=path)
        dev = resolve_device(device)
        encoder.to(dev)
        generator.to(dev)
        latent_avg = cls._latent_avg(ckpt, info, generator, path)
        if not info.start_from_latent_avg:
            latent_avg = torch.zeros_like(latent_avg)
        if dev.type == "cpu":
            configure_threads()
        prec = resolve_precision(precision, dev)
        if dev.type == "cpu" and prec == torch.bfloat16 and not native_bf16():
            _warn_once("bf16 was asked for, but this CPU has no native bfloat16 (AVX512-BF16/AMX): "
                       "it is emulated and several times slower than fp32 (--precision auto picks fp32 here)")
        model = cls(encoder, generator, latent_avg.to(dev), info, device=dev, impl=impl,
                    precision=prec, path=str(path), fast_options=fast_options)
        if dev.type == "cuda" and settings.compile_on_cuda():
            model.compile()
        if mmap and dev.type == "cpu":
            model._mmap_path = str(path)
            model._versions = {id(t): t._version for t in model._encoder_tensors()}
        return model

    def compile(self, **options) -> "E4E":
        """Opt in to torch.compile for the fast paths (encoder and generator); `options` go to
        torch.compile. Meant for GPUs, where fusing the elementwise work may pay; on this
        project's 2-core test CPU compiling takes about half a minute even for a tiny model,
        and it was not measured on a GPU. Returns self. E4E_COMPILE=1 does this at load on CUDA.
        """
        self._compiled = {
            "encoder": torch.compile(fast_encoder.encode, **options),
            "generator": torch.compile(fast_generator.synthesize, **options),
        }
        return self

    def clear_fast_cache(self) -> None:
        """Forget the fast paths' derived tensors (call after changing the networks' parameters in place)."""
        self.plans.clear()

    def _engine(self, impl: str | None) -> str:
        """The path for this call, "fast" or "ref" (an unknown impl warns and runs the reference)."""
        return ops.check_impl(impl or self.impl, "E4E")

    # ---- memory ---------------------------------------------------------------------

    def _encoder_tensors(self) -> list[torch.Tensor]:
        if self.encoder is None:
            return []
        return [t for t in list(self.encoder.parameters()) + list(self.encoder.buffers()) if t.device.type == "cpu"]

    def release_encoder_memory(self) -> int:
        """Drop the encoder's memory-mapped weight pages from this process's resident memory.

        Safe at any time: they are clean pages of the checkpoint file and come back (from the
        page cache) on the next `encode`. Tensors changed in place since loading are skipped.
        Returns the bytes released (0 when the checkpoint was not memory-mapped).
        """
        self._encoder_hot = False
        return self._release_pages(self._encoder_tensors())

    def _release_pages(self, tensors) -> int:
        if not self._mmap_path or not self.low_memory:
            return 0
        tensors = [t for t in tensors if self._versions.get(id(t)) == t._version]
        return release_file_pages(tensors, self._mmap_path)

    @staticmethod
    def _latent_avg(ckpt, info: CheckpointInfo, generator: Generator, path) -> torch.Tensor:
        avg = ckpt.get("latent_avg")
        if avg is None:
            # e.g. a checkpoint trained without start_from_latent_avg: use the mapping network's mean
            return generator.mean_latent(10_000, seed=0).to(torch.float32)[None].repeat(info.n_styles, 1)
        if not isinstance(avg, torch.Tensor):
            raise E4EError(f"checkpoint {path}: latent_avg is a {type(avg).__name__}, not a tensor")
        avg = avg.detach().to("cpu", torch.float32)
        if avg.ndim == 1:
            avg = avg[None]
        if avg.ndim == 3 and avg.shape[0] == 1:
            avg = avg[0]
        if avg.ndim != 2 or avg.shape[-1] != generator.style_dim or avg.shape[0] not in (1, info.n_styles):
            raise E4EError(f"checkpoint {path}: latent_avg has shape {tuple(avg.shape)}, expected [{info.n_styles},512]")
        return avg.expand(info.n_styles, -1).clone()

    def with_domain(self, domain: str) -> "E4E":
        """This model (the same networks, not copied) with `domain` in place of the one its
        checkpoint records: the user's explicit --domain decides alignment and crops (a trained
        checkpoint may record the wrong one)."""
        if domain == self.info.domain:
            return self
        other = copy.copy(self)
        other.info = dataclasses.replace(self.info, domain=domain)
        return other

    # ---- facts ------------------------------------------------------------------------

    @property
    def n_styles(self) -> int:
        return self.info.n_styles

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def domain(self) -> str:
        return self.info.domain

    @property
    def input_size(self) -> tuple[int, int]:
        """Encoder input (height, width): 256x256, cars 192x256."""
        s = int((self.info.opts or {}).get("input_size") or 256)  # 256 for every released checkpoint
        return domains.image_hw(self.domain, s)

    @property
    def output_size(self) -> tuple[int, int]:
        """Decoded image (height, width) after the domain's crop (cars: 384x512)."""
        return domains.image_hw(self.domain, self.size)

    def default_batch_size(self) -> int:
        """Images per forward pass when the user does not choose: keeps `e4e invert` at 1024 under
        2 GB resident on a CPU. Measured peak RSS of `e4e invert --no-align` on 5 images at 1024
        (AMD EPYC Zen 4, 2 cores): float32 1.70 GB at batch 1, 1.88 at 2, 2.29 at 4; bfloat16
        1.32 / 1.40 / 1.41 GB. Float32 gains nothing from batching on a CPU (the large layers run
        one image at a time), so it gets 1 at 1024; smaller generators and bfloat16 get 4, and a
        machine with under 4 GB available gets 1. GPUs get 16."""
        if self.device.type == "cuda":
            return 16
        if self.device.type != "cpu":
            return 4
        if _available_memory() < 4 << 30:
            return 1
        if self.size >= 1024 and self.precision == torch.float32:
            return 1
        return 4

    # ---- images -----------------------------------------------------------------------

    def preprocess(self, images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> encoder input [B,3,H,W]: bilinear resize, (pixel/255 - 0.5)/0.5."""
        return preprocess_images(images, self.input_size)

    @staticmethod
    def to_uint8(images: torch.Tensor) -> np.ndarray:
        """[B,3,H,W] in [-1,1] -> uint8 [B,H,W,3] with clip((x+1)/2, 0, 1) * 255."""
        x = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1) * 255
        return x.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def to_pil(self, images: torch.Tensor) -> list[Image.Image]:
        return [Image.fromarray(a) for a in self.to_uint8(images)]

    # ---- inference --------------------------------------------------------------------

    @torch.inference_mode()
    def encode_parts(self, images) -> EncoderOutput:
        """Run the encoder: w0 and the per-layer deltas kept apart (see `EncoderOutput`)."""
        if self.encoder is None:
            raise E4EError("this model has no e4e encoder (a generator loaded for decoding only)")
        x = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        h, w = self.input_size
        if x.ndim != 4 or x.shape[1] != 3:
            raise E4EError(f"encoder input must be [B,3,H,W], got {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != (h, w):
            raise E4EError(f"encoder input must be {h}x{w} for the {self.domain} checkpoint, got {x.shape[-2]}x{x.shape[-1]}")
        impl = self._engine(None)
        cdt = self.precision if impl == "fast" and self.precision != torch.float32 else None
        # float32 (and the reference) read the memory-mapped weights on every call; the reduced
        # precision fast path works from its own copies (their sources left memory as it built them)
        self._encoder_hot = self._encoder_hot or cdt is None
        x = x.to(self.device, torch.float32)
        if impl == "fast":
            run = self._compiled.get("encoder", fast_encoder.encode)
            w0, deltas = run(self.encoder, x, dtype=cdt, plans=self.plans, release=self._release_pages)
        else:
            w0, deltas = self.encoder(x)
        return EncoderOutput(w0=w0, deltas=deltas, latent_avg=self.latent_avg)

    def prepare_encoder(self) -> None:
        """Build the encoder fast path's weight copies now rather than in the first `encode`
        (about 0.4 s at 1024 on a 2-core CPU): `e4e invert` does it while its first photo is
        still being aligned. Nothing to do for the reference path or a compiled encoder."""
        if self._engine(None) != "fast" or "encoder" in self._compiled:
            return
        cdt = self.precision if self.precision != torch.float32 else None
        fast_encoder.prepare(self.encoder, device=self.device, dtype=cdt, plans=self.plans, release=self._release_pages)

    def encode(self, images, *, delta_scale: float = 1.0) -> torch.Tensor:
        """Images (PIL list or preprocessed [B,3,H,W]) -> codes [B,n_styles,512], latent_avg included."""
        return self.encode_parts(images).codes(delta_scale)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, *, noise: str = "fixed", seed: int | None = None, crop: bool = True,
               impl: str | None = None, precision: str | torch.dtype | None = None, offsets=None,
               size: int | None = None, should_stop=None, style_offsets=None) -> torch.Tensor:
        """codes [B,n,512] (or [n,512]) -> images [B,3,H,W], float32, cropped for cars.

        noise: "fixed" uses the checkpoint's noise buffers (deterministic, as the reference
        inverts and edits); "random" draws new noise (from `seed` when given).
        offsets: per-layer weight offsets ({layer: tensor}, `Generator.check_offsets`; HyperStyle's
        refinement of one image, or per image with a batch dimension).
        size: a preview resolution (a power of two up to the model's): the synthesis stops after
        that block and returns its running RGB image, exactly the full decode's partial sum.
        should_stop: a callable (or a threading.Event) asked before each up-sampling block; when
        it says stop, `errors.Cancelled` is raised there (a page cancels a stale full decode
        without waiting for its largest blocks).
        style_offsets: StyleSpace offsets [C] or [B,C] added to the convolutions' styles
        (`Generator.check_style_offsets`; StyleCLIP's text edits).
        """
        codes = torch.as_tensor(codes)
        if codes.ndim == 2:
            codes = codes[None]
        if codes.ndim != 3 or tuple(codes.shape[1:]) != (self.n_styles, self.generator.style_dim):
            raise E4EError(f"latent has shape {tuple(codes.shape)}; this checkpoint needs [{self.n_styles},512] per image")
        if not torch.isfinite(codes).all():
            raise E4EError("latent holds NaN or infinite values")
        codes = codes.to(self.device, torch.float32)
        if self._encoder_hot and self.low_memory:
            self.release_encoder_memory()  # the generator's large activations get that room
        if noise == "fixed":
            nz = None
        elif noise == "random":
            gen = torch.Generator().manual_seed(seed) if seed is not None else None
            nz = self.generator.random_noise(codes.shape[0], gen)
        else:
            raise E4EError(f"unknown noise mode {noise!r} (fixed or random)")
        dtype = resolve_precision(precision, self.device) if precision is not None else self.precision
        impl = self._engine(impl)
        if type(self.generator).synthesize is not Generator.synthesize:
            impl = "ref"  # a generator with its own synthesis (train's ClampedGenerator) keeps it
        dt = dtype if dtype != torch.float32 else None
        try:
            off = self.generator.check_offsets(offsets, batch=codes.shape[0])
            self.generator.blocks_until(size)
            if style_offsets is not None:
                style_offsets = torch.as_tensor(style_offsets).to(self.device, torch.float32)
                self.generator.check_style_offsets(style_offsets, batch=codes.shape[0])
        except ValueError as exc:
            raise E4EError(str(exc)) from None
        off = {k: v.to(self.device) for k, v in off.items()}
        stop = getattr(should_stop, "is_set", should_stop)  # an Event, or a callable
        more = {} if stop is None else {"should_stop": stop}  # a generator with its own synthesis may lack it
        if style_offsets is not None:
            more["style_offsets"] = style_offsets
        # float32 fast path on the CPU: reuse the large activations' pages (bfloat16's, half
        # the size, measured no faster that way; the reference path is left as it is)
        hold = self.device.type == "cpu" and impl == "fast" and dt is None
        with HeapReuse.hold() if hold else contextlib.nullcontext():
            if impl == "fast":
                run = self._compiled.get("generator", fast_generator.synthesize)
                img = run(self.generator, codes, nz, dtype=dt, options=self.fast_options, plans=self.plans,
                          offsets=off or None, stop_at=size, **more)
            else:
                with ops.reference_fir_layout(self.fast_options.fir_layout):
                    img = self.generator.synthesize(codes, noise=nz, dtype=dt, offsets=off or None, stop_at=size,
                                                    **more)
        top, bottom = domains.crop_rows(self.domain, img.shape[-1])
        if crop and (top, bottom) != (0, img.shape[-2]):
            img = img[:, :, top:bottom, :]
        return img.float()

    def invert(self, images, *, delta_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode then decode: (codes [B,n,512], images [B,3,H,W])."""
        codes = self.encode(images, delta_scale=delta_scale)
        return codes, self.decode(codes)

    @torch.inference_mode()
    def sample_w(self, n: int, *, seed: int = 0) -> torch.Tensor:
        """n W vectors from the mapping network: [n,512]."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.generator.style_dim, generator=gen).to(self.device)
        return self.generator.mapping(z)


def preprocess_images(images: Image.Image | Sequence[Image.Image], size_hw: tuple[int, int]) -> torch.Tensor:
    """PIL images -> encoder input [B,3,H,W] of size_hw: bilinear resize, (pixel/255 - 0.5)/0.5
    (SPEC "Encoder"; also used by worker processes that have no model)."""
    if isinstance(images, Image.Image):
        images = [images]
    h, w = size_hw
    arrs = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        arrs.append(np.asarray(im, dtype=np.uint8))
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float() / 255.0
    return ((x - 0.5) / 0.5).contiguous()


def pool256(images: torch.Tensor) -> torch.Tensor:
    """adaptive_avg_pool2d to 256x256, as the reference's face_pool (and the fixtures)."""
    return F.adaptive_avg_pool2d(images, (256, 256))


# --------------------------------------------------------------------------------------
# One model per (checkpoint, device, precision) in a process


@dataclass
class ModelOptions:
    domain: Optional[str] = None  # None: the checkpoint's record (ffhq's file without --checkpoint)
    checkpoint: Optional[Path] = None
    device: str = "auto"
    precision: Optional[str] = None
    weights_dir: Optional[Path] = None


_MODELS: dict = {}


def load_model(opts: ModelOptions):
    """The E4E model for `opts` (cached per process): --checkpoint, else the domain's file in the
    weights folder. An explicit domain wins over what a given checkpoint records (with a note when
    they differ): a trained checkpoint may record the wrong one, and the user knows their photos."""
    if opts.checkpoint is not None:
        path = Path(opts.checkpoint)
        if not path.is_file():
            raise E4EError(f"checkpoint {path} not found")
    else:
        from .weights.locate import checkpoint_path

        path = checkpoint_path(opts.domain or domains.DEFAULT, opts.weights_dir)
    key = (str(Path(path).resolve()), opts.device, opts.precision)
    if key not in _MODELS:
        _MODELS[key] = E4E.from_checkpoint(path, device=opts.device, precision=opts.precision)
    model = _MODELS[key]
    if opts.domain is None or opts.domain == model.domain:
        return model
    if opts.checkpoint is None:
        raise E4EError(f"{path} is a {model.domain} checkpoint, but --domain {opts.domain} was asked for")
    import warnings

    warnings.warn(f"{path.name} records the {model.domain} domain; using --domain {opts.domain} as asked", stacklevel=2)
    return model.with_domain(opts.domain)
