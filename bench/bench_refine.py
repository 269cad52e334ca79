"""HyperStyle refinement on the CPU (issue 23): `make bench` runs it (or `python bench/bench_refine.py`).

Per size (1024 ffhq with the released layer list, 512 cars with every layer) and precision
(fp32, and `auto` where it differs): seconds per image of a refined invert (W-encoder, the
initial decode, 5 hypernetwork passes and 5 decodes with the offsets) against a plain e4e
invert of the same size in the same run (the synthetic e4e checkpoint whose generator is the
HyperStyle checkpoint's, bit for bit), and the parts timed apart: the W-encoder, one
hypernetwork pass, one decode with offsets. Peak RSS of `e4e invert --refine hyperstyle` on one
photo in a fresh process. Best of a few rounds after a warm-up; the CPU is named.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for p in (str(ROOT), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

from timing import best_of  # noqa: E402

CASES = {1024: ("ffhq", 1, None), 512: ("cars", 2, "")}  # domain, seed, layers_to_tune (None: released)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_rss_mb(cmd: list[str]) -> tuple[float, int]:
    """Peak RSS (MB) of `cmd` in a fresh process (the children's rusage), and its exit status."""
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
            "print('MAXRSS_kB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r)")
    p = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True,
                       env=dict(os.environ, E4E_NO_PROGRESS="1"))
    for line in p.stdout.splitlines():
        if line.startswith("MAXRSS_kB"):
            _, kb, rc = line.split()
            return int(kb) / 1024.0, int(rc)
    return float("nan"), p.returncode or 1


def bench_size(size: int, *, repeat: int, precisions: list[str]) -> dict:
    import torch

    from e4e_cli.model import E4E
    from e4e_cli.refine import HyperStyle
    from e4e_cli.synthetic import synthetic_checkpoint, synthetic_hyperstyle

    domain, seed, layers = CASES[size]
    hs_path, we_path = synthetic_hyperstyle(size, seed, domain, *(() if layers is None else (layers,)), log=log)
    e4e_path = synthetic_checkpoint(size, seed, domain, log=log)
    out: dict = {"domain": domain, "layers": "released" if layers is None else "all", "rows": {}}
    for prec in precisions:
        hs = HyperStyle.from_files(hs_path, we_path, device="cpu", precision=prec)
        plain = E4E.from_checkpoint(e4e_path, device="cpu", precision=prec)
        h, w = hs.input_size
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
        with torch.inference_mode():
            codes = hs.encode_w(x)
            y = hs.pool(hs.decode(codes))
            x6 = torch.cat([x, y], 1)
            compact = hs.hypernet.forward_compact(x6)
            off = {i: (d if d.ndim == 5 else d[..., None, None]) for i, d in enumerate(compact) if d is not None}
            t_plain = best_of(lambda: plain.decode(plain.encode(x)), repeat)
            t_plain_dec = best_of(lambda: plain.decode(codes), repeat)
            t_refine = best_of(lambda: hs.refine(x), max(1, repeat - 1))
            t_w = best_of(lambda: hs.encode_w(x), repeat)
            t_hyper = best_of(lambda: hs.hypernet.forward_compact(x6), repeat)
            t_dec_off = best_of(lambda: hs.decode(codes, offsets=off), repeat)
        row = {
            "precision": str(hs.decoder.precision).replace("torch.", ""),
            "plain_invert_s": round(t_plain, 3), "plain_decode_s": round(t_plain_dec, 3),
            "refined_invert_s": round(t_refine, 3), "ratio": round(t_refine / t_plain, 2),
            "w_encoder_s": round(t_w, 3), "hypernet_pass_s": round(t_hyper, 3),
            "decode_with_offsets_s": round(t_dec_off, 3),
            "sum_of_parts_s": round(t_w + 6 * t_dec_off + 5 * t_hyper, 3),
        }
        out["rows"][prec] = row
        log(f"{size} {prec}: {json.dumps(row)}")
        hs = plain = None  # free both before the next precision loads
    # peak memory of the real command on one photo, in a fresh process (fp32)
    e4e = Path(sys.executable).parent / "e4e"
    photo = ROOT.parent / "shared" / "parity" / "images" / "car_img.jpg"
    if e4e.exists() and photo.is_file():
        with tempfile.TemporaryDirectory(prefix="e4e-bench-refine-") as tmp:
            mb, rc = peak_rss_mb([str(e4e), "invert", str(photo), "--refine", "hyperstyle", "--refiner", str(hs_path),
                                  "--w-encoder", str(we_path), "--no-align", "--device", "cpu", "--precision", "fp32",
                                  "--out", tmp])
            out["invert_refine_peak_rss_mb"] = round(mb, 1) if rc == 0 else f"failed (exit {rc})"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,512")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(BENCH / "results_refine.json"))
    args = ap.parse_args(argv)
    from e4e_cli.nn import runtime

    runtime.tune_process()
    from e4e_cli.nn.runtime import isa_summary, native_bf16

    isa = isa_summary()
    precisions = ["fp32"] + (["auto"] if native_bf16() else [])
    res = {"cpu": isa["cpu"], "aten_capability": isa["aten_capability"], "flags": isa["flags"],
           "load_avg_start": list(os.getloadavg()), "sizes": {}}
    log(f"CPU: {isa['cpu']}; ATen {isa['aten_capability']}; precisions {precisions}")
    for size in (int(s) for s in args.sizes.split(",")):
        res["sizes"][str(size)] = bench_size(size, repeat=args.repeat, precisions=precisions)
    res["load_avg_end"] = list(os.getloadavg())
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print_table(res)
    return 0


def print_table(res: dict) -> None:
    print(f"\nHyperStyle refinement, CPU: {res['cpu']} ({res['aten_capability']})")
    print(f"{'size':>5} {'prec':>9} {'plain s':>8} {'refined s':>10} {'ratio':>6} {'W-enc':>7} {'hyper':>7} {'dec+off':>8} {'RSS MB':>8}")
    for size, r in res["sizes"].items():
        for prec, row in r["rows"].items():
            print(f"{size:>5} {row['precision']:>9} {row['plain_invert_s']:>8.2f} {row['refined_invert_s']:>10.2f} "
                  f"{row['ratio']:>6.2f} {row['w_encoder_s']:>7.2f} {row['hypernet_pass_s']:>7.2f} "
                  f"{row['decode_with_offsets_s']:>8.2f} {str(r.get('invert_refine_peak_rss_mb', '')):>8}")


if __name__ == "__main__":
    sys.exit(main())
