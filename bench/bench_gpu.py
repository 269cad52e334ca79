"""GPU benchmark (run on a lent CUDA machine): invert throughput at 1024 and HyperStyle refinement.

    python bench/bench_gpu.py --out results_gpu.json [--budget 420]

Rows: images/s of invert (encode + decode) and of decode alone, per precision (fp32, fp16, bf16)
and batch (1, 16, 64), on the synthetic 1024 FFHQ checkpoint (the released layout, random
weights: the same work as the real file); the opt-in torch.compile path for one configuration;
and a refined invert (W-encoder, 6 decodes, 5 hypernetwork passes) at 1024 with the hypernet and
the decodes timed apart, against plain e4e in the same run. fp32 runs with PyTorch's defaults
(TF32 off for matrix products, on for cuDNN convolutions), which are recorded. Each row is
guarded: an error is recorded and the next row runs. Synchronised wall time, the best of a few
repeats after a warm-up; peak GPU memory per row.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(torch, fn, *, repeat: int, min_s: float = 0.3) -> float:
    """Best seconds per call of `fn` (synchronised) over `repeat` rounds of at least `min_s`."""
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if dt >= min_s:
                break
        best = min(best, dt / n)
    return best


def parity_rows(torch, res: dict, parity: Path) -> None:
    """HyperStyle's parity cases refined on the GPU in float32 with TF32 off, then on: the errors
    against the reference's CPU outputs (codes, pooled steps, final image in 8-bit levels)."""
    import numpy as np

    from e4e_cli.refine import HyperStyle
    from e4e_cli.synthetic import synthetic_hyperstyle

    cases = {"ffhq_1024_s1": (1024, 1, "ffhq", None), "cars_512_s2": (512, 2, "cars", "")}
    for name, (size, seed, domain, layers) in cases.items():
        try:
            paths = synthetic_hyperstyle(size, seed, domain, *(() if layers is None else (layers,)))
            data = np.load(parity / "hyperstyle" / "cases" / f"{name}.npz")
            for tf32 in (False, True):
                torch.backends.cuda.matmul.allow_tf32 = tf32
                torch.backends.cudnn.allow_tf32 = tf32
                hs = HyperStyle.from_files(*paths, device="cuda", precision="fp32")
                r = hs.refine(torch.from_numpy(data["input"]), keep_steps=True)
                steps = [float((y.cpu().double() - torch.from_numpy(data[f"y_hat/{k}"]).double()).norm()
                               / torch.from_numpy(data[f"y_hat/{k}"]).double().norm()) for k, y in enumerate(r.steps)]
                img = (((r.image[0].float().cpu() + 1) / 2).clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
                diff = np.abs(img.astype(int) - data["image_uint8"].astype(int))
                row = dict(kind="parity", case=name, tf32=tf32,
                           codes_max_abs=float((r.codes.cpu() - torch.from_numpy(data["codes"])).abs().max()),
                           y_hat_rel_l2_max=max(steps), image_max_levels=int(diff.max()),
                           image_frac_differing=float((diff > 0).mean()))
                res["rows"].append(row)
                log(json.dumps(row))
                del hs
        except Exception as exc:  # noqa: BLE001
            res["errors"].append(f"parity {name}: {type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's defaults again
    torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results_gpu.json")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds: rows that would start later are skipped")
    ap.add_argument("--batches", default="1,16,64", help="for the first precision; the others run the last batch")
    ap.add_argument("--precisions", default="bf16,fp16,fp32")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--no-refine", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--parity", default=None, help="the parity folder: check HyperStyle's cases on the GPU first")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    import torch

    from e4e_cli.model import E4E
    from e4e_cli.synthetic import synthetic_checkpoint, synthetic_hyperstyle

    if not torch.cuda.is_available():
        log("bench_gpu: no CUDA device")
        return 2
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    res: dict = {
        "gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "rows": [], "errors": [],
    }
    t0 = time.perf_counter()
    ckpt = synthetic_checkpoint(1024, 1, "ffhq", log=log)
    res["checkpoint_build_s"] = round(time.perf_counter() - t0, 1)
    log(f"checkpoint ready after {time.perf_counter() - t_start:.1f} s")

    def left() -> float:
        return args.budget - (time.perf_counter() - t_start)

    def row(**kw):
        kw["at_s"] = round(time.perf_counter() - t_start, 1)
        res["rows"].append(kw)
        log(json.dumps(kw))
        save()

    def save():
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")  # after every row: a killed run keeps its rows

    if args.parity:
        parity_rows(torch, res, Path(args.parity))

    batches = [int(b) for b in args.batches.split(",")]
    for prec in args.precisions.split(","):
        if left() < 30:
            res["errors"].append(f"skipped {prec}: out of time")
            continue
        try:
            model = E4E.from_checkpoint(ckpt, device="cuda", precision=prec)
            for b in (batches if prec == args.precisions.split(",")[0] else batches[-1:]):
                if left() < 15:
                    break
                x = torch.randn(b, 3, 256, 256, device=dev).clamp(-1, 1)
                torch.cuda.reset_peak_memory_stats()
                with torch.inference_mode():
                    codes = model.encode(x)
                    t_inv = timed(torch, lambda: model.decode(model.encode(x)), repeat=2)
                    t_dec = timed(torch, lambda: model.decode(codes), repeat=2)
                    t_enc = timed(torch, lambda: model.encode(x), repeat=2)
                row(kind="invert", precision=prec, batch=b, invert_img_s=round(b / t_inv, 1),
                    decode_img_s=round(b / t_dec, 1), encode_img_s=round(b / t_enc, 1),
                    invert_ms_per_batch=round(t_inv * 1e3, 2),
                    peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
            del model
            torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001  (a row's failure is recorded, the others run)
            res["errors"].append(f"{prec}: {type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}")

    # a reference-path row (the modules themselves, per-sample weights in grouped convolutions)
    if not args.no_reference and left() > 60:
        try:
            model = E4E.from_checkpoint(ckpt, device="cuda", precision="fp16", impl="ref")
            x = torch.randn(16, 3, 256, 256, device=dev).clamp(-1, 1)
            with torch.inference_mode():
                t = timed(torch, lambda: model.decode(model.encode(x)), repeat=2)
            row(kind="invert_reference_path", precision="fp16", batch=16, invert_img_s=round(16 / t, 1))
            del model
        except Exception as exc:  # noqa: BLE001
            res["errors"].append(f"ref: {type(exc).__name__}: {exc}")

    if not args.no_compile and left() > 150:
        try:
            model = E4E.from_checkpoint(ckpt, device="cuda", precision="bf16").compile()
            b = 64 if 64 in batches else batches[-1]
            x = torch.randn(b, 3, 256, 256, device=dev).clamp(-1, 1)
            t0 = time.perf_counter()
            with torch.inference_mode():
                model.decode(model.encode(x))
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - t0
                t = timed(torch, lambda: model.decode(model.encode(x)), repeat=2)
            row(kind="invert_compiled", precision="bf16", batch=b, invert_img_s=round(b / t, 1),
                first_call_s=round(compile_s, 1))
            del model
        except Exception as exc:  # noqa: BLE001
            res["errors"].append(f"compile: {type(exc).__name__}: {exc}")

    if not args.no_refine and left() > 90:
        try:
            from e4e_cli.refine import HyperStyle

            t0 = time.perf_counter()
            hs_path, we_path = synthetic_hyperstyle(1024, 1, "ffhq")
            res["hyperstyle_build_s"] = round(time.perf_counter() - t0, 1)
            for prec in ("bf16", "fp32"):
                if left() < 30:
                    break
                hs = HyperStyle.from_files(hs_path, we_path, device="cuda", precision=prec)
                plain = E4E.from_checkpoint(ckpt, device="cuda", precision=prec)
                for b in (1, 8):
                    x = torch.randn(b, 3, 256, 256, device=dev).clamp(-1, 1)
                    torch.cuda.reset_peak_memory_stats()
                    with torch.inference_mode():
                        t_ref = timed(torch, lambda: hs.refine(x), repeat=2, min_s=0.2)
                        codes = hs.encode_w(x)
                        y = hs.pool(hs.decode(codes))
                        x6 = torch.cat([x, y], 1)
                        t_hyper = timed(torch, lambda: hs.hypernet.forward_compact(x6), repeat=2)
                        out = hs.hypernet.forward_compact(x6)
                        off = {i: (d if d.ndim == 5 else d[..., None, None]) for i, d in enumerate(out) if d is not None}
                        t_dec_off = timed(torch, lambda: hs.decode(codes, offsets=off), repeat=2)
                        t_plain = timed(torch, lambda: plain.decode(plain.encode(x)), repeat=2)
                    row(kind="refine", precision=prec, batch=b, refine_s_per_img=round(t_ref / b, 4),
                        plain_invert_s_per_img=round(t_plain / b, 4), ratio=round(t_ref / t_plain, 2),
                        hypernet_s_per_pass=round(t_hyper, 4), decode_with_offsets_s=round(t_dec_off, 4),
                        peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
                del hs, plain
                torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001
            res["errors"].append(f"refine: {type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}")

    res["total_s"] = round(time.perf_counter() - t_start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    log(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("E4E_NO_PROGRESS", "1")
    sys.exit(main())
