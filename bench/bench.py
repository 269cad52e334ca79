"""Speed and memory benchmark: `make bench` (prints a table, writes bench/results.json).

What it measures, on the synthetic 1024 FFHQ checkpoint (same format and size as the released
file; built with the parity folder's make_checkpoint.py into .cache/ when missing):

- per-image time of invert (encode + decode), edit (decode only) and encode, batch 1 and 4,
  for the fast path in float32 and bfloat16, for this package's reference path (impl="ref"),
  and for the reference implementation's way of computing (impl="ref" with its FIR layout:
  per-sample weights in one grouped convolution, zero-insertion FIR with every channel a
  single-channel image, float32), all in the same run and interleaved, so the speed-ups are
  measured ratios;
- an ablation of the generator's fast path (which step buys what);
- bfloat16's error against float32 (codes, and the image in 8-bit levels);
- peak resident memory of a separate process that loads the checkpoint and inverts one image
  (and of the real `e4e invert --no-align`, when the command works);
- `e4e --help` start-up time, face alignment time (bench/align_bench.py, when present);
- achieved GFLOP/s against the machine's measured float32 (and bfloat16) convolution peak.

Best and median of a few interleaved rounds after one warm-up: the whole run takes about
five minutes on 2 cores. This shared machine's memory-bound timings drift by 10% and more
over minutes (its compute-bound convolution peak much less): the load average is recorded.

    .venv/bin/python bench/bench.py [--quick] [--checkpoint PATH] [--out bench/results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from e4e_cli.synthetic import parity_dir  # noqa: E402
from timing import best_of  # noqa: E402  (bench/timing.py, beside this script)

PARITY = parity_dir()
PY = sys.executable


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_checkpoint(path: str | None) -> Path:
    if path:
        return Path(path)
    from e4e_cli.errors import E4EError
    from e4e_cli.synthetic import synthetic_checkpoint

    try:
        return synthetic_checkpoint(1024, 1, "ffhq", log=log)  # the same file the parity tests use
    except E4EError as exc:
        sys.exit(f"bench: {exc}")


def load_avg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------
# machine


def conv_peak(torch, F, dtype, repeat: int = 5) -> float:
    """GFLOP/s of a large 3x3 convolution ([1,512,64,64] x [512,512,3,3]), channels-last."""
    cl = torch.channels_last
    x = torch.randn(1, 512, 64, 64).to(dtype).contiguous(memory_format=cl)
    w = torch.randn(512, 512, 3, 3).to(dtype).contiguous(memory_format=cl)
    flops = 2 * 64 * 64 * 512 * 512 * 9
    t = best_of(lambda: F.conv2d(x, w, padding=1), repeat)
    return flops / t / 1e9


def count_flops(model, torch, x, codes) -> tuple[float, float]:
    """FLOPs (torch.utils.flop_counter, convolutions and matmuls) of one encode and one decode
    on the reference path: the model's nominal work, whatever a fast path skips or adds."""
    from torch.utils.flop_counter import FlopCounterMode

    params = [p for p in list(model.encoder.parameters()) + list(model.generator.parameters())]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    impl = model.impl
    try:
        model.impl = "ref"
        with torch.no_grad():
            fc = FlopCounterMode(display=False)
            with fc:
                model.encode(x)
            enc = fc.get_total_flops()
            fc = FlopCounterMode(display=False)
            with fc:
                model.decode(codes)
            dec = fc.get_total_flops()
    finally:
        model.impl = impl
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    return enc / x.shape[0], dec / codes.shape[0]


# ------------------------------------------------------------------------------------------
# speed


# (impl, precision, reference FIR layout): see FastOptions.fir_layout (e4e_cli.nn.engine)
REFERENCE_WAY = ("ref", "fp32", "per_channel")
PATH_NAMES = {
    REFERENCE_WAY: "reference's way",
    ("ref", "fp32", "depthwise"): "ref fp32",
    ("fast", "fp32", "depthwise"): "fast fp32",
    ("fast", "bf16", "depthwise"): "fast bf16",
}


def time_rounds(model, torch, x, configs, rounds: int) -> list[dict]:
    """Per-image seconds of invert (encode + decode), edit (decode only) and encode for each
    (impl, precision, FIR layout) in `configs` on x's batch, best and median of `rounds`.

    The configurations are interleaved (each round times every one once, after one warm-up
    each), so a slow spell of this shared machine hits them alike and the ratios between
    them stay fair; timed one after the other they drifted by up to 10%.
    """
    b = x.shape[0]
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    samples = {c: {"invert": [], "edit": [], "encode": []} for c in configs}
    codes = {}
    saved = model.fast_options

    def use(c):
        model.impl, model.precision = c[0], dtypes[c[1]]
        model.fast_options = saved.replace(fir_layout=c[2])

    try:
        for c in configs:
            use(c)
            codes[c] = model.encode(x)
            model.decode(codes[c])
        for _ in range(rounds):
            for c in configs:
                s = samples[c]
                use(c)
                s["invert"].append(best_of(lambda: model.decode(model.encode(x)), 1, warmup=0))
                s["edit"].append(best_of(lambda c=c: model.decode(codes[c]), 1, warmup=0))
                s["encode"].append(best_of(lambda: model.encode(x), 1, warmup=0))
    finally:
        model.fast_options = saved
    rows = []
    for c in configs:
        row = {"impl": c[0], "precision": c[1], "fir_layout": c[2], "batch": b, "rounds": rounds,
               "path": PATH_NAMES.get(c, f"{c[0]} {c[1]}")}
        for k, v in samples[c].items():
            row[f"{k}_s"] = min(v) / b
            row[f"{k}_median_s"] = statistics.median(v) / b
        rows.append(row)
    return rows


def ablation(model, torch, codes, repeat: int, *, bf16: bool = True) -> dict:
    """Decode times of the generator's reference path, each op's fast path alone, and the fast
    path with one choice changed at a time (FastOptions), all on the model's own plans."""
    from e4e_cli.nn import fast_generator
    from e4e_cli.nn.engine import FastOptions

    g = model.generator

    def fast(dtype=None, **options):
        opts = FastOptions(**options)
        return lambda: fast_generator.synthesize(g, codes, dtype=dtype, options=opts, plans=model.plans)

    out = {}
    with torch.inference_mode():
        out["ref (grouped per-sample weights)"] = best_of(lambda: g.synthesize(codes), repeat)
        # the reference's structure with each op's fast path (the first fast path: modulated conv
        # without per-sample weights, FIR up-sampling as a transposed conv)
        out["ops fast only (shared weight, scaled activations)"] = best_of(lambda: g.synthesize(codes, impl="fast"), repeat)
        for prec, dt in (("fp32", None), ("bf16", torch.bfloat16))[: 2 if bf16 else 1]:
            for up in ("transpose", "polyphase"):
                out[f"fast {prec}, up={up}"] = best_of(fast(dt, up_mode=up), repeat)
            out[f"fast {prec}, all layers activation mode"] = best_of(fast(dt, mode="activation"), repeat)
        out["fast fp32, 3x3 convs direct (no Winograd)"] = best_of(fast(conv3x3="direct"), repeat)
        out["fast fp32, 3x3 convs auto (Winograd where it pays)"] = best_of(fast(), repeat)
        if bf16:  # (the fused conv + lrelu only runs after a polyphase layer)
            out["fast bf16, up=polyphase, without fused conv+lrelu (noise channels)"] = best_of(
                fast(torch.bfloat16, up_mode="polyphase", fused_lrelu=False), repeat)
    return out


def bf16_errors(model, torch, x) -> dict:
    model.impl = "fast"
    model.precision = torch.float32
    c32 = model.encode(x)
    i32 = model.decode(c32)
    model.precision = torch.bfloat16
    c16 = model.encode(x)
    i16 = model.decode(c16)  # bf16 end to end (codes and image)
    i16_dec = model.decode(c32)  # bf16 decoder only, from the float32 codes
    model.precision = torch.float32
    u32 = torch.from_numpy(model.to_uint8(i32)).float()
    lev = lambda a: torch.from_numpy(model.to_uint8(a)).float().sub(u32).abs()  # noqa: E731
    e_inv, e_dec = lev(i16), lev(i16_dec)
    return {
        "codes_max_abs": float((c16 - c32).abs().max()),
        "codes_mean_abs": float((c16 - c32).abs().mean()),
        "codes_rms_of_fp32": float(c32.pow(2).mean().sqrt()),
        "invert_image_mean_abs_levels": float(e_inv.mean()),
        "invert_image_max_abs_levels": float(e_inv.max()),
        "decode_image_mean_abs_levels": float(e_dec.mean()),
        "decode_image_max_abs_levels": float(e_dec.max()),
    }


# ------------------------------------------------------------------------------------------
# memory and start-up (separate processes)

CHILD = r"""
import resource, sys, time
import torch
from PIL import Image
from e4e_cli.model import E4E
ckpt, precision, image = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
m = E4E.from_checkpoint(ckpt, device="cpu", precision=precision)
x = m.preprocess(Image.open(image)) if image != "-" else torch.zeros(1, 3, 256, 256)
codes, img = m.invert(x)
m.to_pil(img)[0]
hwm = [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")]
print("VmHWM_kB", hwm[0] if hwm else "?", "seconds", time.perf_counter() - t0)
"""

# A small launcher runs the measured command and reports getrusage(RUSAGE_CHILDREN).ru_maxrss.
# It exists because Linux carries the forking process's RSS high-water mark over exec into the
# child's ru_maxrss: forked straight from this (large) process, every child would report at
# least this process's own RSS. The launcher is small (~10 MB), so its child's number is clean.
LAUNCHER = r"""
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print("MAXRSS_kB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "RC", rc, flush=True)
"""


def child_peak_rss(cmd: list[str], env=None) -> tuple[float, int, str]:
    """Peak RSS (MB) of `cmd` run in a fresh process, its exit status and its output's tail."""
    p = subprocess.run([PY, "-c", LAUNCHER, *cmd], capture_output=True, text=True, env=env, cwd=str(ROOT))
    text = p.stdout + p.stderr
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("MAXRSS_kB"):
            parts = line.split()
            return int(parts[1]) / 1024.0, int(parts[3]), text[-400:]
    return float("nan"), p.returncode or 1, text[-400:]


def memory(ckpt: Path, image: str) -> dict:
    res = {}
    from e4e_cli.nn.runtime import native_bf16

    for prec in ("fp32", "bf16") if native_bf16() else ("fp32",):
        mb, rc, text = child_peak_rss([PY, "-c", CHILD, str(ckpt), prec, image])
        res[f"load+invert one image ({prec}), peak RSS MB"] = round(mb, 1) if rc == 0 else f"failed: {text.strip()[-200:]}"
    e4e = Path(PY).parent / "e4e"
    if e4e.exists() and image != "-":
        import shutil

        # a folder of 5 photos, so that the default batch size (picked by the CLI) is exercised
        with tempfile.TemporaryDirectory(prefix="e4e-bench-") as tmp:
            folder = Path(tmp) / "in"
            folder.mkdir()
            for i in range(5):
                shutil.copy(image, folder / f"photo{i}{Path(image).suffix}")
            env = dict(os.environ, E4E_NO_PROGRESS="1")
            for label, extra in (("defaults: --precision auto, batch auto", []), ("--precision fp32, batch auto", ["--precision", "fp32"])):
                mb, rc, text = child_peak_rss([str(e4e), "invert", str(folder), "--checkpoint", str(ckpt), "--no-align",
                                               "--device", "cpu", "--out", str(Path(tmp) / "out"), "--overwrite", *extra], env=env)
                res[f"e4e invert --no-align, 5 photos ({label}), peak RSS MB"] = (
                    round(mb, 1) if rc == 0 else f"failed (exit {rc}): {text.strip()[-200:]}")
    return res


def startup() -> dict:
    e4e = Path(PY).parent / "e4e"
    cmd, what = [str(e4e), "--help"], "e4e --help"
    ok = e4e.exists() and subprocess.run(cmd, capture_output=True, cwd=str(ROOT)).returncode == 0
    if not ok:
        cmd, what = [PY, "-c", "import e4e_cli.cli"], "python -c 'import e4e_cli.cli' (e4e --help failed)"
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, cwd=str(ROOT))
        best = min(best, time.perf_counter() - t0)
    heavy = subprocess.run(
        [PY, "-c", "import sys; from e4e_cli.cli.app import _register; _register(); "
                   "print(','.join(m for m in ('torch','numpy','PIL') if m in sys.modules))"],
        capture_output=True, text=True, cwd=str(ROOT)).stdout.strip()
    return {"what": what, "best_of_5_s": best, "heavy_modules_imported_by_cli": heavy or "none"}


def _sibling(name: str):
    """Another benchmark script of this folder, as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def first_photo(ckpt: Path, *, quick: bool, avx2: bool) -> dict | str:
    """Issue 25's "first photo" rows, natively and (on an AVX-512 CPU) as on an AVX2-only one."""
    try:
        mod = _sibling("bench_first_photo")
        out = {"native": mod.bench_first_photo(checkpoint=ckpt, runs=1 if quick else 2)}
        if avx2:
            out["avx2"] = mod.bench_first_photo(checkpoint=ckpt, isa="avx2", runs=1 if quick else 2, ui=False)
        return out
    except Exception as exc:  # another script's failure is reported, never aborts the benchmark
        return f"failed: {type(exc).__name__}: {exc}"


def alignment() -> dict | str:
    path = ROOT / "bench" / "align_bench.py"
    if not path.is_file():
        return "skipped (bench/align_bench.py absent)"
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("align_bench", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.bench_alignment()
    except Exception as exc:  # another engineer's module: report, never abort the benchmark
        return f"failed: {type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------------------


_IMAGE = PARITY / "images" / "input_img.jpg"
IMAGE_ARG = str(_IMAGE) if _IMAGE.is_file() else "-"


def bench_inputs(model, torch):
    """The parity fixture's face (zeros without the parity folder) and a batch of 4 with it."""
    if IMAGE_ARG != "-":
        from PIL import Image

        x1 = model.preprocess(Image.open(IMAGE_ARG))
    else:
        x1 = torch.zeros(1, 3, 256, 256)
    gen = torch.Generator().manual_seed(0)
    return x1, torch.cat([x1, (torch.rand(3, 3, 256, 256, generator=gen) * 2 - 1)])


def within_budget(t_start: float, budget_s: float, fraction: float) -> bool:
    """True while less than `fraction` of the time budget is spent (optional parts start only then)."""
    spent = time.perf_counter() - t_start
    if spent < fraction * budget_s:
        return True
    log(f"  skipped: {spent:.0f} s of the {budget_s:.0f} s budget spent")
    return False


ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def isa_child_main(args) -> int:
    """In a process limited to an older ISA: float32 conv peak, the reference's way and the fast
    float32 path (batch 1, interleaved), printed as JSON. Lets one machine show the numbers of
    an AVX2-only CPU (same cores and caches, so only an approximation of a real AVX2 machine)."""
    from e4e_cli.nn.runtime import isa_summary
    from e4e_cli.model import E4E

    import torch
    import torch.nn.functional as F

    model = E4E.from_checkpoint(ensure_checkpoint(args.checkpoint), device="cpu")
    x1, _ = bench_inputs(model, torch)
    with torch.inference_mode():
        rows = time_rounds(model, torch, x1, [REFERENCE_WAY, ("fast", "fp32", "depthwise")], 2)
    out = {"isa": isa_summary(), "conv_peak_fp32_gflops": conv_peak(torch, F, torch.float32), "speed": rows}
    print("ISA", json.dumps(out), flush=True)
    return 0


def isa_child(ckpt: Path, isa: str) -> dict | str:
    env = dict(os.environ, **ISA_ENV[isa])
    cmd = [PY, str(Path(__file__).resolve()), "--isa-child", isa, "--checkpoint", str(ckpt)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    for line in p.stdout.splitlines():
        if line.startswith("ISA "):
            return json.loads(line[4:])
    return f"failed: {(p.stdout + p.stderr).strip()[-300:]}"


def reference_way_child(args) -> int:
    """Time REFERENCE_WAY in this (separate) process and print its rows as JSON: its huge
    single-channel FIR buffers left the allocator in a state that slowed whatever ran after them
    in the same process by up to 1.8x."""
    from e4e_cli.model import E4E

    import torch

    model = E4E.from_checkpoint(ensure_checkpoint(args.checkpoint), device="cpu")
    x1, x4 = bench_inputs(model, torch)
    rows = []
    with torch.inference_mode():
        for x, rounds in ([(x1, 2)] if args.quick else [(x1, 3), (x4, 2)]):
            rows += time_rounds(model, torch, x, [REFERENCE_WAY], rounds)
    print("ROWS", json.dumps(rows), flush=True)
    return 0


def reference_way(ckpt: Path, *, quick: bool, thp: bool) -> list[dict] | str:
    """REFERENCE_WAY's rows, timed in a child process (THP_MEM_ALLOC_ENABLE as given)."""
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1" if thp else "0")
    cmd = [PY, str(Path(__file__).resolve()), "--reference-way-child", "--checkpoint", str(ckpt)] + (["--quick"] if quick else [])
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    for line in p.stdout.splitlines():
        if line.startswith("ROWS "):
            return json.loads(line[5:])
    return f"failed: {(p.stdout + p.stderr).strip()[-300:]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a 1024 e4e checkpoint (default: the synthetic one in .cache/)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    ap.add_argument("--quick", action="store_true", help="batch 1 only, fewer repetitions, no ablation")
    ap.add_argument("--budget-s", type=float, default=540.0,
                    help="time budget: optional parts (ablation, extra baselines) are skipped when it runs short")
    ap.add_argument("--no-first-photo", action="store_true",
                    help="leave the first-photo rows to their own run (make bench runs bench_first_photo.py after this)")
    ap.add_argument("--reference-way-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--isa-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from e4e_cli.nn import runtime

    runtime.tune_process()  # first, as the CLI's main does: torch's allocator as the CLI gets it
    if args.reference_way_child:
        return reference_way_child(args)
    if args.isa_child:
        return isa_child_main(args)

    t_start = time.perf_counter()
    ckpt = ensure_checkpoint(args.checkpoint)
    from e4e_cli.model import E4E

    import torch
    import torch.nn.functional as F

    from e4e_cli.nn.runtime import isa_summary

    isa = isa_summary()
    results: dict = {"machine": {
        "cpu": isa["cpu"] or platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": None, "load_avg_start": load_avg(), "isa": isa,
        "bf16_supported": bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()),
    }, "checkpoint": str(ckpt)}
    # bfloat16 is timed only where the CPU computes it natively: emulated (AVX2-only CPUs) it took
    # 17 s per image and kept the whole benchmark from finishing in 15 minutes
    bf16 = isa["native_bf16"] or os.environ.get("E4E_BENCH_BF16") == "1"
    log(f"CPU: {isa['cpu']}; ATen kernels {isa['aten_capability']}; {' '.join(isa['flags'])}; "
        f"native bf16 {'yes' if isa['native_bf16'] else 'no (bf16 rows skipped)'}")
    log("loading ...")
    t0 = time.perf_counter()
    model = E4E.from_checkpoint(ckpt, device="cpu")
    results["load_s"] = time.perf_counter() - t0
    results["machine"]["threads"] = torch.get_num_threads()
    x1, x4 = bench_inputs(model, torch)

    log("convolution peak ...")
    results["conv_peak_gflops"] = {"fp32": conv_peak(torch, F, torch.float32),
                                   "bf16": conv_peak(torch, F, torch.bfloat16) if bf16 else None}

    log("counting FLOPs ...")
    with torch.inference_mode():
        codes1 = model.encode(x1)
    enc_flops, dec_flops = count_flops(model, torch, x1, codes1)
    results["gflop_per_image"] = {"encode": enc_flops / 1e9, "decode": dec_flops / 1e9, "invert": (enc_flops + dec_flops) / 1e9}

    # The reference's way of computing (REFERENCE_WAY: per-sample grouped modulated convs,
    # zero-insertion FIR with each channel a single-channel image, float32) is the baseline the
    # speed-ups are measured against; "ref fp32" is this package's spec reference path (the same
    # numbers, a faster FIR layout), shown as a second, stricter baseline. The others are timed
    # here, interleaved.
    log("timing the reference's way of computing (separate process) ...")
    rows = reference_way(ckpt, quick=args.quick, thp=True)
    if isinstance(rows, str):
        sys.exit(f"bench: the reference's way: {rows}")
    configs = [("ref", "fp32", "depthwise"), ("fast", "fp32", "depthwise")] + ([("fast", "bf16", "depthwise")] if bf16 else [])
    with torch.inference_mode():
        for x, rounds in ([(x1, 2)] if args.quick else [(x1, 5), (x4, 2)]):
            log(f"timing {', '.join(PATH_NAMES[c] for c in configs)}: batch {x.shape[0]}, {rounds} interleaved rounds ...")
            rows += time_rounds(model, torch, x, configs, rounds)
        model.impl, model.precision = "fast", torch.float32
    results["speed"] = rows
    way = {r["batch"]: r for r in rows if (r["impl"], r["precision"], r["fir_layout"]) == REFERENCE_WAY}
    spec_ref = {r["batch"]: r for r in rows if (r["impl"], r["fir_layout"]) == ("ref", "depthwise")}
    inv_flops = enc_flops + dec_flops
    for r in rows:
        base, sref = way.get(r["batch"]), spec_ref.get(r["batch"])
        r["invert_speedup_vs_ref"] = base["invert_s"] / r["invert_s"] if base else None
        r["edit_speedup_vs_ref"] = base["edit_s"] / r["edit_s"] if base else None
        r["invert_speedup_vs_ref_median"] = base["invert_median_s"] / r["invert_median_s"] if base else None
        r["invert_speedup_vs_spec_ref"] = sref["invert_s"] / r["invert_s"] if sref else None
        r["invert_gflops"] = inv_flops / r["invert_s"] / 1e9
        r["edit_gflops"] = dec_flops / r["edit_s"] / 1e9

    with torch.inference_mode():
        if bf16:
            log("bf16 error against fp32 ...")
            results["bf16_error"] = bf16_errors(model, torch, x1)
    # on an AVX-512 CPU, the AVX2-only numbers come first among the optional parts: they stand
    # for the other kind of CPU users have (the issue's targets are for both kinds)
    if "avx512f" in isa["flags"] and within_budget(t_start, args.budget_s, 0.8):
        log("the same on AVX2 only (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2; separate process) ...")
        results["avx2_only"] = isa_child(ckpt, "avx2")
    with torch.inference_mode():
        if not args.quick and within_budget(t_start, args.budget_s, 0.8):
            log("ablation of the generator's fast path (decode, batch 1) ...")
            results["ablation_decode_s"] = ablation(model, torch, codes1, 3, bf16=bf16)
    del model

    if not args.quick and within_budget(t_start, args.budget_s, 0.55):
        log("the reference's way without huge pages (separate process) ...")
        r = reference_way(ckpt, quick=True, thp=False)
        results["reference_way_without_thp"] = r if isinstance(r, str) else r[0]
    log("memory (separate processes) ...")
    results["memory"] = memory(ckpt, IMAGE_ARG)
    log("start-up ...")
    results["startup"] = startup()
    log("alignment ...")
    results["alignment"] = alignment()
    if not args.no_first_photo and within_budget(t_start, args.budget_s, 0.8):
        log("first photo: cold e4e invert photo.jpg and its parts (bench/bench_first_photo.py) ...")
        results["first_photo"] = first_photo(ckpt, quick=args.quick, avx2="avx512f" in isa["flags"])
    if within_budget(t_start, args.budget_s, 0.75):
        log("dataset inversion, 1 and 2 processes (bench/bench_dataset.py) ...")
        results["dataset"] = _sibling("bench_dataset").bench_dataset(n=12 if args.quick else 24)
    if within_budget(t_start, args.budget_s, 0.8):
        log("training steps (bench/bench_train.py) ...")
        results["train"] = _sibling("bench_train").bench_train(quick=args.quick)
    if within_budget(t_start, args.budget_s, 0.9):
        log("e4e ui preview latency, 256 px and full (bench/bench_preview.py) ...")
        results["ui_preview"] = _sibling("bench_preview").bench_preview(ckpt, moves=10)
    results["machine"]["load_avg_end"] = load_avg()
    results["bench_s"] = time.perf_counter() - t_start

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print_table(results)
    print(f"\nwritten {args.out} ({results['bench_s']:.0f} s)")
    return 0


def print_table(r: dict) -> None:
    m = r["machine"]
    peak = r["conv_peak_gflops"]
    fl = r["gflop_per_image"]
    print(f"\ne4e benchmark: {m['cpu']}, torch {m['torch']}, {m['threads']} threads, load avg {m['load_avg_start']} -> {m.get('load_avg_end')}")
    isa = m.get("isa") or {}
    print(f"ISA: ATen kernels {isa.get('aten_capability')}; flags {' '.join(isa.get('flags', []))}; "
          f"native bf16: {'yes' if isa.get('native_bf16') else 'no'}")
    bf = f"{peak['bf16']:.0f} GFLOP/s" if peak.get("bf16") else "not timed (emulated)"
    print(f"conv peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {bf}; "
          f"work per image: encode {fl['encode']:.1f} + decode {fl['decode']:.1f} = {fl['invert']:.1f} GFLOP "
          f"(float32 floor {fl['invert'] / peak['fp32']:.2f} s)")
    print("\nbest of the interleaved rounds (median in brackets); 'x way': speed-up over the reference's")
    print("way of computing, 'x ref': over this package's reference path; 'x floor': time / float32 floor")
    print(f"{'path':<17}{'batch':>6}{'invert s/img':>20}{'x way':>14}{'x ref':>7}{'GFLOP/s':>9}{'x floor':>9}"
          f"{'edit s/img':>12}{'x way':>7}{'encode s/img':>14}")
    floor = fl["invert"] / peak["fp32"]
    for s in r["speed"]:
        xr = lambda v: f"{v:.2f}" if v else "-"  # noqa: E731
        inv = f"{s['invert_s']:.3f} ({s['invert_median_s']:.3f})"
        xi = f"{xr(s['invert_speedup_vs_ref'])} ({xr(s['invert_speedup_vs_ref_median'])})"
        print(f"{s['path']:<17}{s['batch']:>6}{inv:>20}{xi:>14}{xr(s['invert_speedup_vs_spec_ref']):>7}{s['invert_gflops']:>9.0f}"
              f"{s['invert_s'] / floor:>9.2f}{s['edit_s']:>12.3f}{xr(s['edit_speedup_vs_ref']):>7}{s['encode_s']:>14.3f}")
    e = r.get("bf16_error")
    if e:
        print(f"\nbf16 vs fp32: codes max abs {e['codes_max_abs']:.2e} (mean {e['codes_mean_abs']:.1e}, rms of codes {e['codes_rms_of_fp32']:.2f}); "
              f"image mean abs {e['invert_image_mean_abs_levels']:.2f} levels (max {e['invert_image_max_abs_levels']:.0f}) invert, "
              f"{e['decode_image_mean_abs_levels']:.2f} (max {e['decode_image_max_abs_levels']:.0f}) decode only")
    a2 = r.get("avx2_only")
    if isinstance(a2, dict):
        fl_floor = fl["invert"] / a2["conv_peak_fp32_gflops"]
        rows = {x["path"]: x for x in a2["speed"]}
        way, fast = rows.get("reference's way"), rows.get("fast fp32")
        print(f"\nAVX2 only (same machine, ATen avx2 + oneDNN AVX2): conv peak fp32 {a2['conv_peak_fp32_gflops']:.0f} GFLOP/s, "
              f"float32 floor {fl_floor:.2f} s")
        if way and fast:
            print(f"  reference's way invert {way['invert_s']:.3f} s ({way['invert_median_s']:.3f}); fast fp32 {fast['invert_s']:.3f} s "
                  f"({fast['invert_median_s']:.3f}): {way['invert_s'] / fast['invert_s']:.2f}x "
                  f"({way['invert_median_s'] / fast['invert_median_s']:.2f}x median), {fast['invert_s'] / fl_floor:.2f}x the floor")
    elif a2:
        print(f"\nAVX2 only: {a2}")
    if isinstance(r.get("reference_way_without_thp"), dict):
        v = r["reference_way_without_thp"]["invert_s"]
        fast = {(x["impl"], x["precision"], x["batch"]): x["invert_s"] for x in r["speed"] if x["impl"] == "fast"}
        extra = "".join(f", fast {p} {v / fast[('fast', p, 1)]:.2f}x" for p in ("fp32", "bf16") if ("fast", p, 1) in fast)
        print(f"the reference's way in a process without THP_MEM_ALLOC_ENABLE (as its users run it): invert {v:.3f} s/img (batch 1){extra} against it")
    if "ablation_decode_s" in r:
        print("\ngenerator ablation (decode, batch 1):")
        for k, v in r["ablation_decode_s"].items():
            print(f"  {k:<52}{v:8.3f} s")
    print("\nmemory:")
    for k, v in r["memory"].items():
        print(f"  {k:<52}{v}")
    s = r["startup"]
    print(f"start-up: {s['what']}: {s['best_of_5_s']:.3f} s (best of 5); heavy modules imported by the CLI: {s['heavy_modules_imported_by_cli']}")
    if isinstance(r.get("dataset"), dict):
        print("invert-dataset: " + ", ".join(f"{k} {v}" for k, v in r["dataset"].items()))
    if isinstance(r.get("train"), dict):
        print("training: " + ", ".join(f"{k} {v}" for k, v in r["train"].items()))
    if r.get("ui_preview"):
        print(_sibling("bench_preview").format_rows(r["ui_preview"]))
    a = r["alignment"]
    if isinstance(a, dict):
        print("alignment: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in a.items()))
    else:
        print(f"alignment: {a}")
    if "first_photo" in r:
        print("\n".join(_sibling("bench_first_photo").format_rows(r["first_photo"])))


if __name__ == "__main__":
    sys.exit(main())
