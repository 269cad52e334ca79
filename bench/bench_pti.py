"""Pivotal tuning on the CPU (issue 32): `make bench` runs it (or `python bench/bench_pti.py`).

Per size (256 church, 512 cars, 1024 ffhq synthetic checkpoints) and per-op implementation of
the differentiable generator (`ref`, what the tuning uses; `fast`, each op's own fast path inside
the same structure): seconds per tuning step (forward + LPIPS + backward + Adam; the median of
the steps after the first), the e4e pivot and the final tuned decode, and the seconds per photo
at the defaults extrapolated honestly as pivot + 350 steps + decode (the early stop cannot be
predicted on synthetic weights: the step where it fired within the measured steps, if it did,
is printed). Peak RSS of each size in a fresh process. `--precision auto` tunes with bfloat16
convolutions on a CPU with native bfloat16 (AVX512-BF16/AMX), float32 elsewhere (its rows are
then the fp32 rows). The faster variant (`--pti-resolution`: the blocks up to 1/4 of the size
tuned, compared at that size) gets its own rows, with the full-size LPIPS of the tuned decode
after the measured steps beside the default's.

The floor: the FLOPs of one step (torch's FlopCounterMode over forward and backward) divided by
the best rate this CPU reached on one large convolution in any row (forward, 3x3, 256 channels): no
implementation of the same arithmetic can take less, so 350 x floor is the least a photo can
take at the defaults on this machine. Writes bench/results_pti.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CASES = {256: ("church", 3, "church_img.jpg"), 512: ("cars", 2, "car_img.jpg"), 1024: ("ffhq", 1, "input_img.jpg")}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def lpips_weights(folder: Path) -> Path:
    """The weights folder's LPIPS files when present, else the parity fixtures' synthetic ones."""
    from e4e_cli.synthetic import parity_dir
    from e4e_cli.weights.locate import resolve_weights_dir

    real = resolve_weights_dir(None)
    if (real / "alexnet-owt-7be5be79.pth").is_file() and (real / "lpips_alex_v0.1.pth").is_file():
        return real
    if not (folder / "lpips_alex_v0.1.pth").is_file():
        script = parity_dir() / "lossnets" / "make_lossnets.py"
        for only in ("alexnet", "lpips_alex"):
            subprocess.run([sys.executable, str(script), "--seed", "1", "--only", only, str(folder)], check=True)
        (folder / "alex.pth").rename(folder / "lpips_alex_v0.1.pth")
    return folder


def conv_rate(dtype_name: str) -> float:
    """The best GFLOP/s of a [1,256,64,64] x [256,256,3,3] convolution on this CPU (forward)."""
    import torch
    import torch.nn.functional as F

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    x = torch.randn(1, 256, 64, 64, dtype=dtype)
    w = torch.randn(256, 256, 3, 3, dtype=dtype)
    flops = 2 * 256 * 256 * 9 * 64 * 64
    best = float("inf")
    with torch.no_grad():
        for _ in range(12):
            t0 = time.perf_counter()
            F.conv2d(x, w, padding=1)
            best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def step_flops(gen, codes, target, lpips, *, crop, impl, dtype, resolution) -> float:
    """GFLOP of one tuning step (forward, LPIPS and backward) counted by torch."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    from e4e_cli.pti import PTISettings, tune_generator

    g = copy.deepcopy(gen)
    with FlopCounterMode(display=False) as counter:
        tune_generator(g, codes.clone(), target, lpips, settings=PTISettings(steps=1, resolution=resolution),
                       crop=crop, impl=impl, dtype=dtype)
    return counter.get_total_flops() / 1e9


def one(size: int, *, steps: int, impl: str, precision: str, weights: Path, resolution=None) -> dict:
    """Measure one size in this process (run by `main` in a fresh process per size)."""
    import copy

    import torch
    from PIL import Image

    from e4e_cli import domains
    from e4e_cli.model import E4E, preprocess_images
    from e4e_cli.pti import PTISettings, tune_generator
    from e4e_cli.synthetic import parity_dir, synthetic_checkpoint
    from e4e_cli.train.lossnets import load_lpips

    domain, seed, photo = CASES[size]
    model = E4E.from_checkpoint(synthetic_checkpoint(size, seed, domain, log=log), device="cpu", precision=precision)
    dtype = torch.bfloat16 if model.precision == torch.bfloat16 else None  # as pti.PTI tunes
    impl = "fast" if dtype is not None else impl
    lpips = load_lpips(weights_dir=weights)
    image = Image.open(parity_dir() / "images" / photo).convert("RGB")
    t0 = time.perf_counter()
    codes = model.encode(model.preprocess([image]))
    t_pivot = time.perf_counter() - t0
    target = preprocess_images([image], model.output_size)
    crop = domains.partial_rows(model.domain, model.size)
    gen = copy.deepcopy(model.generator).float()
    gflop = step_flops(gen, codes, target, lpips, crop=crop, impl=impl, dtype=dtype, resolution=resolution)
    stamps = []
    log_ = tune_generator(gen, codes.clone(), target, lpips, settings=PTISettings(steps=steps, resolution=resolution),
                          crop=crop, impl=impl, dtype=dtype, on_step=lambda i, l: stamps.append(time.perf_counter()))
    stamps.append(time.perf_counter() - 0)  # the end of the last step
    per_step = [b - a for a, b in zip(stamps, stamps[1:])]
    step_s = statistics.median(per_step[1:]) if len(per_step) > 1 else per_step[0]
    t0 = time.perf_counter()
    with torch.no_grad():
        final = gen.synthesize(codes.float())  # the tuned decode at full size costs what a plain one does
    t_decode = time.perf_counter() - t0
    if crop is not None:
        final = final[:, :, crop[0]:crop[1], :]
    with torch.no_grad():
        lpips_full = float(lpips(final, target).mean())
    rate = conv_rate("bf16" if dtype is not None else "fp32")
    return {"size": size, "domain": domain, "impl": impl, "precision": precision, "resolution": resolution,
            "tune_dtype": "bf16" if dtype is not None else "fp32", "steps_measured": log_.steps,
            "first_step_s": per_step[0], "step_s": step_s, "pivot_s": t_pivot, "decode_s": t_decode,
            "per_photo_350_s": t_pivot + 350 * step_s + t_decode,
            "gflop_per_step": gflop, "conv_gflops": rate, "floor_step_s": gflop / rate,
            "early_stop_step": len(log_.losses) - 1 if log_.stopped_early else None,
            "lpips_first": log_.losses[0][1], "lpips_last": log_.losses[-1][1], "lpips_full_after": lpips_full,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--steps", type=int, default=4, help="tuning steps measured per size (the first is a warm-up)")
    ap.add_argument("--impls", default="ref,fast")
    ap.add_argument("--precisions", default="fp32,auto")
    ap.add_argument("--variant", action=argparse.BooleanOptionalAction, default=True,
                    help="also the faster variant (--pti-resolution size/4) per size")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="ref", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--resolution", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        from e4e_cli.nn.runtime import configure_threads

        configure_threads()
        print(json.dumps(one(args.one, steps=args.steps, impl=args.impl, precision=args.precision,
                             weights=args.weights, resolution=args.resolution)))
        return
    import torch

    from e4e_cli.devices import resolve_precision

    tmp = Path(tempfile.mkdtemp(prefix="bench-pti-"))
    weights = lpips_weights(tmp)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    precisions = []
    for p in args.precisions.split(","):
        resolved = str(resolve_precision(p, torch.device("cpu"))).replace("torch.", "")
        if p == "fp32" or resolved != "float32":
            precisions.append(p)
        else:
            log(f"--precision {p} is float32 on this CPU: its rows are the fp32 rows")
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        runs = [(impl, prec, None) for impl in args.impls.split(",") for prec in precisions]
        if args.variant:
            runs += [("ref", prec, size // 4) for prec in precisions]
        for impl, prec, res in runs:
            log(f"{size} px, {impl}, {prec}, resolution {res or size}: {args.steps} steps ...")
            cmd = [sys.executable, __file__, "--one", str(size), "--steps", str(args.steps), "--impl", impl,
                   "--precision", prec, "--weights", str(weights)] + (["--resolution", str(res)] if res else [])
            p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, E4E_NO_PROGRESS="1"))
            if p.returncode != 0:
                log(p.stderr[-2000:])
                continue
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    print(f"PTI on the CPU ({cpu}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}):")
    print(f"{'size':>5} {'tuned':>6} {'impl':>5} {'prec':>5} {'GFLOP':>7} {'s/step':>7} {'floor':>6} {'1st':>6} "
          f"{'pivot':>6} {'s/photo@350':>11} {'floor@350':>9} {'LPIPS':>6} {'stop@':>5} {'RSS MB':>7}")
    best = {}  # the machine's rate per dtype: the best any row measured (one measurement is noisy)
    for r in rows:
        best[r["tune_dtype"]] = max(best.get(r["tune_dtype"], 0.0), r["conv_gflops"])
    for r in rows:
        r["floor_step_s"] = r["gflop_per_step"] / best[r["tune_dtype"]]
    for r in rows:
        stop = "-" if r["early_stop_step"] is None else str(r["early_stop_step"])
        tuned = str(r.get("resolution") or r["size"])
        print(f"{r['size']:>5} {tuned:>6} {r['impl']:>5} {r['tune_dtype']:>5} {r['gflop_per_step']:>7.0f} "
              f"{r['step_s']:>7.2f} {r['floor_step_s']:>6.2f} {r['first_step_s']:>6.2f} {r['pivot_s']:>6.2f} "
              f"{r['per_photo_350_s']:>11.0f} {350 * r['floor_step_s']:>9.0f} {r['lpips_full_after']:>6.3f} "
              f"{stop:>5} {r['peak_rss_mb']:>7.0f}")
    rates = sorted((d, round(g)) for d, g in best.items())
    print("s/photo@350 = pivot + 350 x s/step + decode (the defaults without an early stop; it stops sooner when "
          "LPIPS reaches 0.06). floor = GFLOP per step / the best convolution rate measured here "
          f"({', '.join(f'{d} {g} GFLOP/s' for d, g in rates)}): the least any implementation of the same "
          "arithmetic can take. LPIPS: full size, after the measured steps. stop@: where the early stop fired.")
    (BENCH / "results_pti.json").write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
