"""Machine-specific tuning for the CPU, in one place, with its measured effect.

Nothing here changes a result; each item only changes how fast or how lean the same numbers
are computed, and each can be switched off:

- transparent huge pages for torch's CPU allocator (`THP_MEM_ALLOC_ENABLE=1`, set by
  `tune_process()` before torch is imported: the allocator reads it once, at its first
  allocation; `THP_MEM_ALLOC_ENABLE=0` opts out): the 1024
  generator's large activations cost far fewer page faults. Measured about 10% faster invert
  at 1024 on the AMX machine (Xeon, 2 cores), same peak memory. On the Zen 4 EPYC machine
  (2 cores, a VM with about 7 GB of free huge pages, so no compaction stalls) it was not
  faster: 10 inverts at 1024, twice, median 2.03-2.06 s with it and 1.92-1.96 s without in
  float32 (bfloat16: 1.22-1.28 vs 1.18-1.22 s), and the decode's spread was wider with it
  (0.82-1.30 s vs 0.94-1.08 s). The best times were equal or a little better with it. Kept on
  (one machine each way); THP_MEM_ALLOC_ENABLE=0 turns it off where it does not pay;
- one intra-op thread per physical core (`configure_threads`; `E4E_NUM_THREADS` overrides):
  oneDNN's convolutions gain nothing from hyper-threads;
- glibc heap reuse for the float32 generator's large activations (`HeapReuse`;
  `E4E_HEAP_REUSE=0` turns it off): ~0.15 s less system time per 1024 image and a steadier
  invert on the AMX machine (1.28 -> 1.19 s median); on the AMD EPYC (Zen 4) machine see
  bench/results.json (`heap_reuse` rows) and docs/speed.md;
- releasing the memory-mapped encoder weights' pages before decoding (`release_file_pages`):
  keeps `e4e invert` at 1024 under 2 GB resident;
- native bfloat16 detection (`native_bf16`) for `--precision auto`: bfloat16 only where the CPU
  has it in hardware; oneDNN emulates it elsewhere, 7x slower than float32 on an AVX2-only EPYC;
- matrix-engine detection (`matrix_engine`: AMX, SME) for the generator's up-sampling in reduced
  precision: fused (polyphase) only there; Zen 4's AVX512-BF16 decodes 1.6x faster unfused.

Importing this module changes nothing and does not import torch: the process is tuned by
`tune_process()`, which the CLI's `main` calls first thing and `e4e_cli.model` calls when
imported (before it imports torch), and by `configure_threads()` when a model is loaded.
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import threading
from typing import TYPE_CHECKING, Iterable

from .. import settings

if TYPE_CHECKING:
    import torch

# what tune_process has done: the environment once; torch's thread count once torch is imported
_TUNED = {"env": False, "threads": None}
_THREADS_SET = False


def tune_process() -> None:
    """Tune this process for e4e; idempotent and cheap (imports nothing heavy).

    - `THP_MEM_ALLOC_ENABLE=1` unless set, but only while torch is not imported yet: torch's CPU
      allocator reads it once, at its first allocation, so later it would change nothing for this
      process and only be inherited by its children;
    - once torch is imported, notes its thread count, so that `configure_threads` can leave a
      count the user set after that alone.
    """
    if not _TUNED["env"]:
        _TUNED["env"] = True
        if "torch" not in sys.modules:
            os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if _TUNED["threads"] is None and "torch" in sys.modules:
        _TUNED["threads"] = sys.modules["torch"].get_num_threads()


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once); at least 1."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
    cores = set()
    for c in cpus:
        base = f"/sys/devices/system/cpu/cpu{c}/topology/"
        try:
            with open(base + "core_id") as fh:
                core = fh.read().strip()
            with open(base + "physical_package_id") as fh:
                pkg = fh.read().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((pkg, core))
    return max(1, len(cores))


def configure_threads() -> int:
    """Use one intra-op thread per physical core (oneDNN's convolutions gain nothing from
    hyper-threads), unless the user chose: E4E_NUM_THREADS (used as given), OMP_NUM_THREADS or
    MKL_NUM_THREADS set, or torch.set_num_threads changed since `tune_process` first saw torch
    (for a library user: since e4e_cli.model was imported). Returns the thread count in use."""
    global _THREADS_SET
    import torch

    tune_process()
    env = settings.num_threads()
    if env.isdigit() and int(env) > 0:
        torch.set_num_threads(int(env))
    elif (not _THREADS_SET and not os.environ.get("OMP_NUM_THREADS") and not os.environ.get("MKL_NUM_THREADS")
          and torch.get_num_threads() == _TUNED["threads"]):
        n = physical_cores()
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    _THREADS_SET = True
    return torch.get_num_threads()


class HeapReuse:
    """glibc malloc tuning for the float32 generator's large activations on the CPU.

    By default glibc gives every block over its mmap threshold (32 MB at most) its own fresh
    mapping and unmaps it on free, so each of the generator's big activations (up to 134 MB
    at 1024 in float32) is faulted in page by page, kernel-zeroed, on every layer. While
    `hold()` is active, large blocks come from the heap (M_MMAP_MAX 0) and freed memory stays
    there (M_TRIM_THRESHOLD high): later layers, and back-to-back decodes, reuse the same
    pages. Measured at 1024 on the 2-core test machine: ~0.15 s less system time per image
    and a steadier invert, same peak memory. Afterwards mmap is allowed again with a fixed
    32 MB threshold (glibc's own dynamic limit) and the heap's free top is handed back above
    64 MB (twice that, glibc's dynamic rule). A no-op where the C library is not glibc;
    E4E_HEAP_REUSE=0 turns it off.
    """

    # mallopt parameters (glibc's malloc.h)
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
    _lib = None
    _lock = threading.Lock()
    held = 0

    @classmethod
    def _libc(cls):
        if cls._lib is None:
            cls._lib = False
            if sys.platform.startswith("linux") and settings.heap_reuse():
                try:
                    import ctypes
                    import platform

                    if platform.libc_ver()[0] == "glibc":
                        lib = ctypes.CDLL("libc.so.6")
                        lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                        cls._lib = lib
                except (OSError, AttributeError, ValueError):
                    cls._lib = False
        return cls._lib

    @classmethod
    @contextlib.contextmanager
    def hold(cls):
        lib = cls._libc()
        with cls._lock:
            if lib and cls.held == 0:
                lib.mallopt(cls.M_MMAP_MAX, 0)  # no mmap for large blocks
                lib.mallopt(cls.M_TRIM_THRESHOLD, 1 << 30)  # keep freed memory
            cls.held += 1
        try:
            yield
        finally:
            with cls._lock:
                cls.held -= 1
                if lib and cls.held == 0:
                    lib.mallopt(cls.M_MMAP_MAX, 65536)  # glibc's default
                    lib.mallopt(cls.M_MMAP_THRESHOLD, 32 << 20)
                    lib.mallopt(cls.M_TRIM_THRESHOLD, 64 << 20)
                    if settings.heap_trim():
                        lib.malloc_trim(0)  # hand the held pages back before the encoder's weights return


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (/proc/cpuinfo `flags`, or `Features` on Arm);
    empty where that file does not exist."""
    global _FLAGS
    if _FLAGS is None:
        found: set[str] = set()
        try:
            with open("/proc/cpuinfo") as fh:
                for line in fh:
                    key, _, value = line.partition(":")
                    if key.strip() in ("flags", "Features"):
                        found.update(value.split())
                        break
        except OSError:
            pass
        _FLAGS = frozenset(found)
    return _FLAGS


_FLAGS: frozenset[str] | None = None


def native_bf16() -> bool:
    """True when this CPU computes bfloat16 dot products in hardware (AVX512-BF16 or AMX-BF16 on
    x86, BF16 on Arm). oneDNN also *accepts* bfloat16 on plain AVX2/AVX-512 CPUs
    (`torch.ops.mkldnn._is_mkldnn_bf16_supported()` may say yes there) but emulates it: measured
    7x slower than float32 on an AVX2-only EPYC. E4E_NATIVE_BF16=0/1 overrides the detection."""
    override = settings.native_bf16()
    if override is not None:
        return override
    flags = cpu_flags()
    if flags:
        return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    import torch

    try:  # no /proc/cpuinfo (macOS, Windows): trust oneDNN
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def matrix_engine() -> bool:
    """True when this CPU has a bfloat16 matrix engine (Intel AMX; Arm SME): reduced-precision
    convolutions are then so cheap that the generator's fused up-sampling (4x the multiply-adds,
    one pass less over memory) pays. With AVX512-BF16 only (AMD Zen 4) it does not: decode at
    1024 in bfloat16 took 0.68 s fused and 0.43 s unfused (bench ablation, 2 cores).
    E4E_MATRIX_ENGINE=0/1 overrides the detection."""
    override = settings.matrix_engine()
    if override is not None:
        return override
    return bool(cpu_flags() & {"amx_bf16", "amx_tile", "sme"})


def isa_summary() -> dict:
    """What the benchmark prints about this CPU: model, ATen's kernel level, the vector and
    matrix extensions that matter here, and whether bfloat16 is native."""
    import torch

    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        capability = "unknown"
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "avx_vnni")
    return {"cpu": model, "aten_capability": capability, "flags": [f for f in wanted if f in cpu_flags()],
            "native_bf16": native_bf16(), "matrix_engine": matrix_engine(), "cores": physical_cores(),
            "threads": torch.get_num_threads()}


def _file_mappings(path: str) -> list[tuple[int, int]]:
    """(start, end) of this process's mappings of `path` (from /proc/self/maps); [] elsewhere."""
    try:
        st = os.stat(path)
        out = []
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split(None, 5)
                if len(parts) < 6:
                    continue
                dev_inode = int(parts[4])
                if dev_inode != st.st_ino or os.path.realpath(parts[5].strip()) != os.path.realpath(path):
                    continue
                lo, hi = (int(v, 16) for v in parts[0].split("-"))
                out.append((lo, hi))
        return out
    except (OSError, ValueError):
        return []


def release_file_pages(tensors: Iterable["torch.Tensor"], path: str) -> int:
    """Drop the resident pages of memory-mapped `tensors` from this process (madvise DONTNEED).

    Only pages that lie wholly inside a tensor and inside a mapping of the checkpoint file
    `path` are touched: those are clean private file pages (the weights are never written),
    so the kernel re-reads them from the file (usually the page cache) on the next use. Anonymous
    memory is never advised (that would lose data). Returns the number of bytes advised; 0
    where this is not Linux or madvise is unavailable.
    """
    maps = _file_mappings(path)
    if not maps:
        return 0
    try:
        import ctypes
        import mmap as _mmap

        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        madvise.restype = ctypes.c_int
        page = _mmap.PAGESIZE
        dontneed = getattr(_mmap, "MADV_DONTNEED", 4)
    except (OSError, AttributeError):
        return 0
    spans = []
    for t in tensors:
        if t.device.type != "cpu" or t.numel() == 0:
            continue
        lo = t.data_ptr()
        hi = lo + t.numel() * t.element_size()
        lo = (lo + page - 1) // page * page  # inward: never a page shared with something else
        hi = hi // page * page
        if hi > lo and any(a <= lo and hi <= b for a, b in maps):
            spans.append((lo, hi))
    spans.sort()
    merged: list[list[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    total = 0
    for lo, hi in merged:
        if madvise(lo, hi - lo, dontneed) == 0:
            total += hi - lo
    return total
