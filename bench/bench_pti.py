"""Pivotal tuning on the CPU (issue 32): `make bench` runs it (or `python bench/bench_pti.py`).

Per size (256 church, 512 cars, 1024 ffhq synthetic checkpoints) and per-op implementation of
the differentiable generator (`ref`, what the tuning uses; `fast`, each op's own fast path inside
the same structure): seconds per tuning step (forward + LPIPS + backward + Adam; the median of
the steps after the first), the e4e pivot and the final tuned decode, and the seconds per photo
at the defaults extrapolated honestly as pivot + 350 steps + decode (the early stop cannot be
predicted on synthetic weights: the step where it fired within the measured steps, if it did,
is printed). Peak RSS of each size in a fresh process. Tuning runs in float32 whatever
`--precision` says (`auto` is float32 on a CPU without native bfloat16); the precision only
changes the decodes. Writes bench/results_pti.json.
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


def one(size: int, *, steps: int, impl: str, precision: str, weights: Path) -> dict:
    """Measure one size in this process (run by `main` in a fresh process per size)."""
    import copy

    import torch
    from PIL import Image

    from e4e_cli import domains
    from e4e_cli.model import E4E
    from e4e_cli.pti import PTISettings, tune_generator
    from e4e_cli.synthetic import parity_dir, synthetic_checkpoint
    from e4e_cli.train.lossnets import load_lpips

    domain, seed, photo = CASES[size]
    model = E4E.from_checkpoint(synthetic_checkpoint(size, seed, domain, log=log), device="cpu", precision=precision)
    lpips = load_lpips(weights_dir=weights)
    image = Image.open(parity_dir() / "images" / photo).convert("RGB")
    from e4e_cli.model import preprocess_images

    t0 = time.perf_counter()
    codes = model.encode(model.preprocess([image]))
    t_pivot = time.perf_counter() - t0
    target = preprocess_images([image], model.output_size)
    top, bottom = domains.crop_rows(model.domain, model.size)
    crop = None if (top, bottom) == (0, model.size) else (top, bottom)
    gen = copy.deepcopy(model.generator).float()
    stamps = []
    log_ = tune_generator(gen, codes.clone(), target, lpips, settings=PTISettings(steps=steps), crop=crop, impl=impl,
                          on_step=lambda i, l: stamps.append(time.perf_counter()))
    stamps.append(time.perf_counter() - 0)  # the end of the last step
    per_step = [b - a for a, b in zip(stamps, stamps[1:])]
    step_s = statistics.median(per_step[1:]) if len(per_step) > 1 else per_step[0]
    t0 = time.perf_counter()
    model.decode(codes)  # the tuned decode costs what a plain one does
    t_decode = time.perf_counter() - t0
    return {"size": size, "domain": domain, "impl": impl, "precision": precision, "steps_measured": log_.steps,
            "first_step_s": per_step[0], "step_s": step_s, "pivot_s": t_pivot, "decode_s": t_decode,
            "per_photo_350_s": t_pivot + 350 * step_s + t_decode,
            "early_stop_step": len(log_.losses) - 1 if log_.stopped_early else None,
            "lpips_first": log_.losses[0][1], "lpips_last": log_.losses[-1][1],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--steps", type=int, default=4, help="tuning steps measured per size (the first is a warm-up)")
    ap.add_argument("--impls", default="ref,fast")
    ap.add_argument("--precisions", default="fp32,auto")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="ref", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        import torch

        from e4e_cli.nn.runtime import configure_threads

        configure_threads()
        print(json.dumps(one(args.one, steps=args.steps, impl=args.impl, precision=args.precision,
                             weights=args.weights)))
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
        for impl in args.impls.split(","):
            for prec in precisions:
                log(f"{size} px, {impl}, {prec}: {args.steps} steps ...")
                p = subprocess.run([sys.executable, __file__, "--one", str(size), "--steps", str(args.steps),
                                    "--impl", impl, "--precision", prec, "--weights", str(weights)],
                                   capture_output=True, text=True, env=dict(os.environ, E4E_NO_PROGRESS="1"))
                if p.returncode != 0:
                    log(p.stderr[-2000:])
                    continue
                rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    print(f"PTI on the CPU ({cpu}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}):")
    print(f"{'size':>5} {'impl':>5} {'prec':>5} {'s/step':>8} {'1st step':>9} {'pivot s':>8} {'decode s':>9} "
          f"{'s/photo@350':>12} {'stop@':>6} {'RSS MB':>8}")
    for r in rows:
        stop = "-" if r["early_stop_step"] is None else str(r["early_stop_step"])
        print(f"{r['size']:>5} {r['impl']:>5} {r['precision']:>5} {r['step_s']:>8.2f} {r['first_step_s']:>9.2f} "
              f"{r['pivot_s']:>8.2f} {r['decode_s']:>9.2f} {r['per_photo_350_s']:>12.0f} {stop:>6} "
              f"{r['peak_rss_mb']:>8.0f}")
    print("s/photo@350 = pivot + 350 x s/step + decode (the defaults without an early stop; it stops sooner when "
          "LPIPS reaches 0.06). stop@: the step where the early stop fired within the measured steps.")
    (BENCH / "results_pti.json").write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
