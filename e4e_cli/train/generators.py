"""The frozen StyleGAN2 generator that `e4e train` inverts into, read from any of three layouts.

- rosinality: `{"g_ema": state_dict, "latent_avg": [style_dim]}` (what the reference trainer reads);
- e4e: a released-layout e4e checkpoint (`state_dict` with `decoder.*`), via `e4e_cli.checkpoint`;
- stylegan2-ada: a NVlabs `.pkl` (`{"G_ema": ...}`) pickled with `torch_utils.persistence`, which
  embeds module source code. We read it with a restricted unpickler that never imports or runs
  that code: persistent objects come back as plain `_PersistentState` records of their pickled
  attributes, and anything outside a short whitelist is refused.

Size, style_dim, n_mlp and the channel table are inferred from the weights, so narrow
generators work too.

ADA conversion: tests/test_train_generators.py reads a 64 px snapshot pickle written by NVlabs'
own code (shared/parity/ada) and matches its mapping and images. Refused: c_dim > 0, non-RGB,
synthesis architectures other than 'skip', non-lrelu activations, StyleGAN3 networks.
`conv_clamp` is kept: ADA clamps every layer's output (after bias, activation and gain) to
+-conv_clamp*gain in any dtype, float32 included, and so does the `ClampedGenerator` an ADA
pickle becomes (its checkpoints' rosinality layout cannot record the clamp).
"""
from __future__ import annotations

import io
import logging
import math
import pickle
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint import load_untrusted, read_checkpoint, split_state_dict
from ..errors import E4EError
from ..fsutil import atomic_write, read_head
from ..nn import ops
from ..nn.networks import Generator, default_channels

log = logging.getLogger(__name__)


@dataclass
class LoadedGenerator:
    generator: Generator  # float32, eval(), all requires_grad False
    latent_avg: torch.Tensor  # [style_dim] float32, mean W (w_avg)
    size: int  # output resolution
    channel_multiplier: Optional[int]  # 1, 2, 4..., None if channels match no multiplier
    kind: str  # "rosinality" | "e4e" | "stylegan2-ada"
    domain_hint: Optional[str] = None  # ffhq, cars, horse, church: what an e4e checkpoint was trained on


# --------------------------------------------------------------------------------------
# public API


def load_generator(path, *, size: Optional[int] = None) -> LoadedGenerator:
    """Read a generator file of any supported layout; E4EError (one line) on any bad file or size mismatch."""
    p = Path(path)
    head = _check_file(p)
    if head[:2] == b"PK" or zipfile.is_zipfile(p):
        loaded = _load_torch_file(p)
    elif head[:1] == b"\x80":  # a plain pickle stream (protocol >= 2): .pkl from NVlabs, or a legacy torch.save
        loaded = _load_pickle_file(p)
    else:
        raise E4EError(f"generator {p} is neither a PyTorch checkpoint nor a pickle (first bytes {head[:8]!r})")
    if size is not None and int(size) != loaded.size:
        raise E4EError(f"generator {p} is {loaded.size}x{loaded.size}, but size {int(size)} was asked for")
    return loaded


def save_rosinality_checkpoint(path, *, generator: Generator, latent_avg: torch.Tensor) -> Path:
    """Write `{"g_ema": state_dict, "latent_avg": [style_dim]}` atomically (what the reference trainer reads)."""
    sd = OrderedDict((k, v.detach().cpu().clone()) for k, v in generator.state_dict().items())
    obj = {"g_ema": sd, "latent_avg": latent_avg.detach().reshape(-1)[: generator.style_dim].float().cpu().clone()}
    return atomic_write(path, lambda fh: torch.save(obj, fh))


# --------------------------------------------------------------------------------------
# file checks shared by all layouts


def _check_file(p: Path) -> bytes:
    return read_head(p, what="generator", hint="fetch it again")


def _load_torch_file(p: Path, *, legacy: bool = False) -> LoadedGenerator:
    """A torch.save file (zip, or the legacy format): rosinality dict, or a released e4e checkpoint."""
    is_zip = zipfile.is_zipfile(p)
    if not is_zip and not legacy:
        raise E4EError(f"generator {p} is truncated or corrupt (incomplete zip archive)")
    try:
        obj = load_untrusted(p, what="generator", mmap=is_zip)  # 1.2 GB e4e files: no RAM copy
    except pickle.UnpicklingError:
        raise E4EError(f"generator {p} was refused: it holds Python objects that would run code when unpickled") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, AttributeError, TypeError, KeyError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise E4EError(f"generator {p} is truncated or corrupt ({first})") from None
    return _from_object(obj, p)


def _from_object(obj: Any, p: Path) -> LoadedGenerator:
    if not isinstance(obj, dict):
        raise E4EError(f"generator {p} holds a {type(obj).__name__}, not a generator checkpoint dict")
    if isinstance(obj.get("g_ema"), dict):
        avg = obj.get("latent_avg")
        return _build(obj["g_ema"], avg if isinstance(avg, torch.Tensor) else None, p, kind="rosinality")
    if isinstance(obj.get("state_dict"), dict):
        ckpt = read_checkpoint(p, mmap=False)
        _, dec = split_state_dict(ckpt["state_dict"])
        if not dec:
            raise E4EError(f"generator {p} is an e4e checkpoint without decoder.* weights")
        avg = ckpt.get("latent_avg")
        if isinstance(avg, torch.Tensor) and avg.ndim == 2:
            avg = avg[0]  # released checkpoints repeat w_avg on every row
        loaded = _build(dec, avg if isinstance(avg, torch.Tensor) else None, p, kind="e4e")
        opts = ckpt.get("opts") if isinstance(ckpt.get("opts"), dict) else {}
        dataset_type = opts.get("dataset_type")
        if isinstance(dataset_type, str) and dataset_type:
            loaded.domain_hint = dataset_type.split("_")[0]
        return loaded
    if "G_ema" in obj:
        return _from_ada(obj["G_ema"], p)
    keys = ", ".join(sorted(str(k) for k in obj)[:6]) or "none"
    raise E4EError(f"generator {p} has no generator weights ('g_ema', 'state_dict' or 'G_ema'; keys found: {keys})")


# --------------------------------------------------------------------------------------
# building our Generator from a rosinality-layout state dict


def _infer_arch(sd: dict[str, torch.Tensor], p: Path) -> tuple[int, int, int, dict[int, int]]:
    """(size, style_dim, n_mlp, channels {res: ch}) from the tensor names and shapes."""
    if "input.input" not in sd or "conv1.conv.weight" not in sd:
        raise E4EError(f"generator {p} does not look like a StyleGAN2 generator (no input.input / conv1 weights)")
    n_rgb = len({k.split(".")[1] for k in sd if k.startswith("to_rgbs.")})
    size = 2 ** (n_rgb + 2)
    n_mlp = len({k.split(".")[1] for k in sd if re.match(r"style\.\d+\.weight$", k)})
    style_dim = int(sd["conv1.conv.modulation.weight"].shape[1])
    channels = {4: int(sd["input.input"].shape[1])}
    for k in range(n_rgb):
        key = f"convs.{2 * k}.conv.weight"
        if key not in sd:
            raise E4EError(f"generator {p} misses {key}")
        channels[2 ** (k + 3)] = int(sd[key].shape[1])
    return size, style_dim, n_mlp, channels


def _channel_multiplier(size: int, channels: dict[int, int]) -> Optional[int]:
    for cm in (1, 2, 4, 8):
        if default_channels(size, cm) == channels:
            return cm
    return None


def _build(sd: dict[str, torch.Tensor], latent_avg: Optional[torch.Tensor], p: Path, *, kind: str,
           clamps: Optional[dict] = None) -> LoadedGenerator:
    """`clamps` (ADA): {"conv": [per StyledConv], "rgb": [per ToRGB]} of conv_clamp values or None."""
    sd = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    size, style_dim, n_mlp, channels = _infer_arch(sd, p)
    if clamps and any(c is not None for c in clamps["conv"] + clamps["rgb"]):
        g = ClampedGenerator(size, style_dim=style_dim, n_mlp=n_mlp, channels=channels, conv_clamps=clamps["conv"],
                             rgb_clamps=clamps["rgb"])
    else:
        g = Generator(size, style_dim=style_dim, n_mlp=n_mlp, channels=channels)
    expected = g.state_dict()
    # blur kernels are fixed buffers; older files may omit them
    for k, v in expected.items():
        if k.endswith("kernel") and k not in sd:
            sd[k] = v
    missing = [k for k in expected if k not in sd]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        what = f"missing {', '.join(missing[:3])}" if missing else f"wrong shape for {', '.join(wrong[:3])}"
        raise E4EError(f"generator {p} does not fit a {size}px StyleGAN2 generator: {what}")
    g.load_state_dict({k: sd[k].float() for k in expected}, strict=True)
    g.eval().requires_grad_(False)
    if latent_avg is None:
        log.warning("generator %s has no latent_avg: using the mean of 10,000 mapping outputs", p)
        latent_avg = g.mean_latent(10_000)
    latent_avg = latent_avg.detach().float().reshape(-1)
    if latent_avg.numel() != style_dim:
        raise E4EError(f"generator {p}: latent_avg has {latent_avg.numel()} values, expected {style_dim}")
    return LoadedGenerator(generator=g, latent_avg=latent_avg.clone(), size=size,
                           channel_multiplier=_channel_multiplier(size, channels), kind=kind)


class ClampedGenerator(Generator):
    """Our generator plus StyleGAN2-ADA's `conv_clamp`: every StyledConv's output (after noise,
    bias, lrelu and its sqrt(2) gain) and every ToRGB's conv + bias (before the up-sampled skip
    is added) clamped to +-conv_clamp, in any dtype, as ADA's bias_act does. Same parameters
    and state dict as `Generator`; the clamped synthesis always runs the plain ("ref") path.

    conv_clamps: one value or None per StyledConv (conv1, convs...); rgb_clamps: per ToRGB
    (to_rgb1, to_rgbs...)."""

    def __init__(self, size: int, *, conv_clamps: list, rgb_clamps: list, **kw):
        super().__init__(size, **kw)
        if len(conv_clamps) != 1 + len(self.convs) or len(rgb_clamps) != 1 + len(self.to_rgbs):
            raise ValueError("one clamp per StyledConv and per ToRGB")
        self.conv_clamps = [None if c is None else float(c) for c in conv_clamps]
        self.rgb_clamps = [None if c is None else float(c) for c in rgb_clamps]

    @staticmethod
    def _clamp(x, c):
        return x if c is None else x.clamp(-c, c)

    def _rgb(self, layer, x, code, skip, c, impl, offset=None):
        out = self._clamp(layer.conv(x, code, impl, offset=offset) + layer.bias.to(x.dtype), c)
        if skip is not None:
            out = out + ops.upfirdn2d(skip, layer.upsample.kernel, up=2, pad=(2, 1), impl=impl)
        return out.float()

    def synthesize(self, codes, *, noise: Optional[list] = None, impl: str = "ref", dtype=None,
                   offsets=None, stop_at: Optional[int] = None):
        """codes [B,n_styles,D] -> image [B,3,size,size], clamped layer by layer (offsets and
        stop_at as `Generator.synthesize`)."""
        if codes.ndim != 3 or codes.shape[1] != self.n_styles or codes.shape[2] != self.style_dim:
            raise ValueError(f"codes must be [B,{self.n_styles},{self.style_dim}], got {tuple(codes.shape)}")
        noise = self.fixed_noise() if noise is None else noise
        off = self.check_offsets(offsets, batch=codes.shape[0])
        last = self.blocks_until(stop_at)
        impl, cc, rc = "ref", self.conv_clamps, self.rgb_clamps
        x = self.input.input.expand(codes.shape[0], -1, -1, -1).to(dtype or codes.dtype)
        x = self._clamp(self.conv1(x, codes[:, 0], noise[0], impl, offset=off.get(0)), cc[0])
        skip = self._rgb(self.to_rgb1, x, codes[:, 1], None, rc[0], impl, off.get(1))
        for k in range(last):
            x = self._clamp(self.convs[2 * k](x, codes[:, 1 + 2 * k], noise[1 + 2 * k], impl, offset=off.get(2 + 3 * k)),
                            cc[1 + 2 * k])
            x = self._clamp(self.convs[2 * k + 1](x, codes[:, 2 + 2 * k], noise[2 + 2 * k], impl, offset=off.get(3 + 3 * k)),
                            cc[2 + 2 * k])
            skip = self._rgb(self.to_rgbs[k], x, codes[:, 3 + 2 * k], skip, rc[1 + k], impl, off.get(4 + 3 * k))
        return skip


# --------------------------------------------------------------------------------------
# StyleGAN2-ADA pickles: a restricted unpickler


class _PersistentState:
    """What a `torch_utils.persistence` object pickled: its attribute dict, its class name. No code runs."""

    def __init__(self, class_name: str, state: dict):
        self.class_name = class_name
        self.state = state if isinstance(state, dict) else {}

    def __setstate__(self, state):  # only reached if a pickle BUILDs on our record; keep it inert
        if isinstance(state, dict):
            self.state.update(state)

    def child(self, name: str) -> "_PersistentState":
        mods = self.state.get("_modules") or {}
        c = mods.get(name)
        if not isinstance(c, _PersistentState):
            raise KeyError(name)
        return c

    def tensor(self, name: str) -> torch.Tensor:
        for group in ("_parameters", "_buffers"):
            t = (self.state.get(group) or {}).get(name)
            if isinstance(t, torch.Tensor):
                return t.detach().float()
        raise KeyError(name)


def _reconstruct_persistent(meta):
    """Stand-in for `torch_utils.persistence._reconstruct_persistent_obj`: ignore module_src, keep the state."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("unexpected persistence record")
    return _PersistentState(str(meta.get("class_name")), meta.get("state") or {})


def _storage_from_bytes(b):
    """Stand-in for `torch.storage._load_from_bytes`, which would run a nested unrestricted torch.load."""
    return load_untrusted(io.BytesIO(b), what="a tensor inside the pickle")


class _PlainDict(dict):
    """Stand-in for `dnnlib.util.EasyDict`: a dict, no attribute tricks."""


class _DtypeRecord:
    """What a pickled numpy dtype said: its name, then (BUILD) its state. A record, not numpy's own
    dtype object: `np.dtype("f4")` is one object shared by the whole process, and a BUILD on it
    would change it for everyone."""

    def __init__(self, name: str):
        self.name = name
        self.byteorder = "="

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
            self.byteorder = state[1]

    def resolve(self):
        import numpy as np

        return np.dtype(self.name).newbyteorder(self.byteorder)


def _numpy_scalar(dtype, *args):
    """Stand-in for numpy's scalar reconstructor (ADA stores gains like 1/np.sqrt(n)); numeric dtypes only."""
    import numpy as np

    if not isinstance(dtype, _DtypeRecord) or len(args) != 1 or not isinstance(args[0], bytes):
        raise pickle.UnpicklingError("numpy scalar of a non-numeric type")
    return np.frombuffer(args[0], dtype=dtype.resolve())[0].item()


def _numpy_dtype(name, *args):
    import numpy as np

    if not isinstance(name, str):
        raise pickle.UnpicklingError("numpy dtype without a name")
    if np.dtype(name).kind not in "biuf":
        raise pickle.UnpicklingError(f"numpy dtype {name!r}")
    return _DtypeRecord(name)


def _rebuild_parameter(data, requires_grad, backward_hooks, *rest):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
    ("dnnlib.util", "EasyDict"): _PlainDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch", "Size"): torch.Size,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
}
for _name in ("FloatStorage", "HalfStorage", "DoubleStorage", "BFloat16Storage", "LongStorage", "IntStorage",
              "ByteStorage", "BoolStorage"):
    if hasattr(torch, _name):
        _ALLOWED[("torch", _name)] = getattr(torch, _name)


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _RefusedChange(pickle.UnpicklingError):
    pass


#: what each opcode that changes an object already on the stack may change: only objects this load
#: made, of these kinds. Anything else (an allowed function or class itself, a shared object) is
#: refused: a BUILD on `_rebuild_tensor_v2` would set its `__defaults__` for the whole process.
_CHANGEABLE = {
    "BUILD": (_PersistentState, _PlainDict, _DtypeRecord),
    "SETITEM": (dict,),  # OrderedDict and _PlainDict are dicts
    "SETITEMS": (dict,),
    "APPEND": (list,),
    "APPENDS": (list,),
    "ADDITEMS": (set,),
}


class _RestrictedUnpickler(pickle._Unpickler):
    """Resolves only whitelisted globals (to safe stand-ins); anything else stops the load before
    it runs. The Python unpickler (not the C one) so that every opcode that changes an object can
    first check that the object is a record this load made (`_CHANGEABLE`)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, fh):
        super().__init__(fh)
        self._made: dict = {}  # id -> object built by this load (held, so no id is reused meanwhile)

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not used by NVlabs pickles")

    def _check_target(self, opcode: str, target) -> None:
        if id(target) not in self._made or not isinstance(target, _CHANGEABLE[opcode]):
            what = getattr(target, "__qualname__", None) or type(target).__name__
            raise _RefusedChange(f"{opcode} on {what}")


def _builds_new(base):
    """An opcode handler that pushes a new object, remembered as made by this load."""

    def handler(self):
        base(self)
        self._made[id(self.stack[-1])] = self.stack[-1]

    return handler


def _changes(base, opcode: str, depth: int):
    """An opcode handler that changes the object `depth` places below the top of the stack (after
    the mark is popped for the batch opcodes): its target is checked first."""

    def handler(self):
        target = self.stack[-depth] if depth else self.metastack[-1][-1]
        self._check_target(opcode, target)
        base(self)

    return handler


for _op, _name in ((pickle.REDUCE, "load_reduce"), (pickle.NEWOBJ, "load_newobj"), (pickle.NEWOBJ_EX, "load_newobj_ex"),
                   (pickle.EMPTY_DICT, "load_empty_dictionary"), (pickle.DICT, "load_dict"),
                   (pickle.EMPTY_LIST, "load_empty_list"), (pickle.LIST, "load_list"), (pickle.EMPTY_SET, "load_empty_set"),
                   (pickle.INST, "load_inst"), (pickle.OBJ, "load_obj")):
    _RestrictedUnpickler.dispatch[_op[0]] = _builds_new(getattr(pickle._Unpickler, _name))
# BUILD pops the state: the target is below it; SETITEM pops key and value; the batch opcodes act
# on the object just below their mark (depth 0: the top of the stack saved by MARK)
for _op, _name, _opcode, _depth in ((pickle.BUILD, "load_build", "BUILD", 2), (pickle.SETITEM, "load_setitem", "SETITEM", 3),
                                    (pickle.APPEND, "load_append", "APPEND", 2), (pickle.SETITEMS, "load_setitems", "SETITEMS", 0),
                                    (pickle.APPENDS, "load_appends", "APPENDS", 0), (pickle.ADDITEMS, "load_additems", "ADDITEMS", 0)):
    _RestrictedUnpickler.dispatch[_op[0]] = _changes(getattr(pickle._Unpickler, _name), _opcode, _depth)


def _load_pickle_file(p: Path) -> LoadedGenerator:
    try:
        with open(p, "rb") as fh:
            obj = _RestrictedUnpickler(fh).load()
    except _RefusedGlobal as exc:
        raise E4EError(f"refusing to load {p}: the pickle wants to run {exc}") from None
    except _RefusedChange as exc:
        raise E4EError(f"refusing to load {p}: the pickle changes an object it did not make ({exc})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, RuntimeError, TypeError, AttributeError, IndexError,
            KeyError, OSError, MemoryError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0] or type(exc).__name__
        raise E4EError(f"generator {p} is truncated or corrupt ({first})") from None
    if isinstance(obj, int) and not isinstance(obj, bool):  # the magic number of a legacy (pre-1.6) torch.save
        return _load_torch_file(p, legacy=True)
    return _from_object(obj, p)


def _from_ada(g: Any, p: Path) -> LoadedGenerator:
    """Convert a StyleGAN2-ADA G_ema (as `_PersistentState` records) to our rosinality layout."""
    if not isinstance(g, _PersistentState):
        raise E4EError(f"generator {p}: G_ema is not a StyleGAN2-ADA network")
    st = g.state
    if int(st.get("c_dim") or 0) > 0:
        raise E4EError(f"generator {p} is class-conditional (c_dim={st.get('c_dim')}); only unconditional generators can be inverted")
    if int(st.get("img_channels") or 3) != 3:
        raise E4EError(f"generator {p} makes {st.get('img_channels')}-channel images; only RGB is supported")
    try:
        mapping, synth = g.child("mapping"), g.child("synthesis")
        size = int(st.get("img_resolution") or synth.state.get("img_resolution"))
        if size < 8 or 2 ** int(math.log2(size)) != size:
            raise E4EError(f"generator {p} has resolution {size}; only powers of two >= 8 are supported")
        sd: dict[str, torch.Tensor] = {}
        fcs = sorted((k for k in (mapping.state.get("_modules") or {}) if re.fullmatch(r"fc\d+", k)), key=lambda s: int(s[2:]))
        if not fcs:
            raise E4EError(f"generator {p}: the mapping network has no fc layers")
        for i, name in enumerate(fcs):
            _linear(sd, f"style.{i + 1}", mapping.child(name), lr_mul=0.01)
        latent_avg = mapping.tensor("w_avg")
        b4 = synth.child("b4")
        sd["input.input"] = b4.tensor("const")[None]
        clamps: dict = {"conv": [], "rgb": []}
        _styled(sd, "conv1", b4.child("conv1"), "noises.noise_0", p, clamps)
        _to_rgb(sd, "to_rgb1", b4.child("torgb"), p, clamps)
        n = 1
        for k, lvl in enumerate(range(3, int(math.log2(size)) + 1)):
            blk = synth.child(f"b{2 ** lvl}")
            arch = blk.state.get("architecture", "skip")
            if arch != "skip":
                raise E4EError(f"generator {p} uses the '{arch}' synthesis architecture; only 'skip' (StyleGAN2's default) is supported")
            _styled(sd, f"convs.{2 * k}", blk.child("conv0"), f"noises.noise_{n}", p, clamps)
            _styled(sd, f"convs.{2 * k + 1}", blk.child("conv1"), f"noises.noise_{n + 1}", p, clamps)
            _to_rgb(sd, f"to_rgbs.{k}", blk.child("torgb"), p, clamps)
            n += 2
    except KeyError as exc:
        raise E4EError(f"generator {p}: the StyleGAN2-ADA network misses {exc.args[0]!r} (a StyleGAN3 or other architecture?)") from None
    return _build(sd, latent_avg, p, kind="stylegan2-ada", clamps=clamps)


def _linear(sd, prefix: str, fc: "_PersistentState", *, lr_mul: float) -> None:
    """ADA FullyConnectedLayer (raw weight * weight_gain, bias * bias_gain) -> our EqualLinear with `lr_mul`."""
    w, b = fc.tensor("weight"), fc.tensor("bias")
    wg = float(fc.state.get("weight_gain", 1.0 / math.sqrt(w.shape[1])))
    bg = float(fc.state.get("bias_gain", 1.0))
    sd[f"{prefix}.weight"] = w * (wg / (lr_mul / math.sqrt(w.shape[1])))
    sd[f"{prefix}.bias"] = b * (bg / lr_mul)


def _clamp_of(layer: "_PersistentState", p: Path) -> Optional[float]:
    c = layer.state.get("conv_clamp")
    if c is None:
        return None
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not c >= 0:
        raise E4EError(f"generator {p}: conv_clamp {c!r} is not a non-negative number")
    return float(c)


def _styled(sd, prefix: str, layer: "_PersistentState", noise_key: str, p: Path, clamps: dict) -> None:
    """ADA SynthesisLayer -> StyledConv (and its conv_clamp: skip architecture, gain 1). The
    up-sampling conv needs no flip: both transpose-convolve with the unflipped [O,I,k,k] weight
    (stride 2, no padding) and then blur with 1 pixel of padding each side."""
    clamps["conv"].append(_clamp_of(layer, p))
    if str(layer.state.get("activation", "lrelu")) != "lrelu":
        raise E4EError(f"generator {p}: activation {layer.state.get('activation')!r} is not supported")
    _linear(sd, f"{prefix}.conv.modulation", layer.child("affine"), lr_mul=1.0)
    sd[f"{prefix}.conv.weight"] = layer.tensor("weight")[None]  # the scale cancels in demodulation
    sd[f"{prefix}.noise.weight"] = layer.tensor("noise_strength").reshape(1)
    sd[f"{prefix}.activate.bias"] = layer.tensor("bias")
    noise = layer.tensor("noise_const")
    sd[noise_key] = noise.reshape(1, 1, *noise.shape[-2:])


def _to_rgb(sd, prefix: str, layer: "_PersistentState", p: Path, clamps: dict) -> None:
    """ADA ToRGBLayer (styles * 1/sqrt(I)) -> our ToRGB (weight * 1/sqrt(I)): same product, no demodulation."""
    clamps["rgb"].append(_clamp_of(layer, p))
    _linear(sd, f"{prefix}.conv.modulation", layer.child("affine"), lr_mul=1.0)
    w = layer.tensor("weight")
    wg = float(layer.state.get("weight_gain", 1.0 / math.sqrt(w.shape[1])))
    sd[f"{prefix}.conv.weight"] = (w * (wg * math.sqrt(w.shape[1])))[None]
    sd[f"{prefix}.bias"] = layer.tensor("bias").reshape(1, 3, 1, 1)
