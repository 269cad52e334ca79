"""bfloat16 against float32 over many inputs: how far `--precision auto` (bfloat16 on CPUs that
have it natively) moves the codes and the images.

For each synthetic checkpoint of the parity fixtures (ffhq 1024, cars 512, church 256) and each
input (every parity photo, left-right flipped too, and a darker copy), the code and the image
are computed in float32 and in bfloat16 (encoder and decoder, as `e4e invert --precision bf16`
does), and the difference is reported: codes (max and mean absolute), the image in 8-bit gray
levels (mean and max absolute). One line per case, then the spread over all cases; results go to
bench/results_precision.json.

    python bench/bench_precision.py [--cases ffhq_1024_s1,cars_512_s2,church_256_s3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CASES = {"ffhq_1024_s1": (1024, 1, "ffhq"), "cars_512_s2": (512, 2, "cars"), "church_256_s3": (256, 3, "church")}


def inputs(photos):
    """(name, PIL image) for each photo as it is, flipped left-right, and 30% darker."""
    from PIL import Image, ImageEnhance, ImageOps

    for p in photos:
        with Image.open(p) as im:
            im = im.convert("RGB")
        yield p.stem, im
        yield p.stem + "/flip", ImageOps.mirror(im)
        yield p.stem + "/dark", ImageEnhance.Brightness(im).enhance(0.7)


def measure(model, x) -> dict:
    import torch

    model.precision = torch.float32
    c32 = model.encode(x)
    u32 = torch.from_numpy(model.to_uint8(model.decode(c32))).float()
    model.precision = torch.bfloat16
    c16 = model.encode(x)
    u16 = torch.from_numpy(model.to_uint8(model.decode(c16))).float()
    model.precision = torch.float32
    lev = (u16 - u32).abs()
    return {"codes_max_abs": float((c16 - c32).abs().max()), "codes_mean_abs": float((c16 - c32).abs().mean()),
            "image_mean_abs_levels": float(lev.mean()), "image_max_abs_levels": float(lev.max())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results_precision.json")
    args = ap.parse_args(argv)
    import torch

    from e4e_cli import synthetic
    from e4e_cli.model import E4E
    from e4e_cli.nn import runtime

    if not synthetic.parity_available():
        print("bench_precision: needs the parity fixtures (../shared/parity or E4E_PARITY_DIR); skipped")
        return 0
    photos = sorted((synthetic.parity_dir() / "images").glob("*.jpg"))
    rows = []
    print(f"bf16 vs fp32 on {runtime.isa_summary().get('cpu', 'this CPU')} "
          f"(native bf16: {runtime.native_bf16()}, torch capability {torch.backends.cpu.get_cpu_capability()})")
    print(f"{'case':<16}{'input':<22}{'codes max':>11}{'codes mean':>12}{'img mean lv':>13}{'img max lv':>12}")
    for name in args.cases.split(","):
        model = E4E.from_checkpoint(synthetic.synthetic_checkpoint(*CASES[name]), device="cpu")
        with torch.inference_mode():
            for label, im in inputs(photos):
                r = dict(case=name, input=label, **measure(model, model.preprocess(im)))
                rows.append(r)
                print(f"{name:<16}{label:<22}{r['codes_max_abs']:>11.2e}{r['codes_mean_abs']:>12.2e}"
                      f"{r['image_mean_abs_levels']:>13.2f}{r['image_max_abs_levels']:>12.0f}", flush=True)
        del model
    spread = {k: {"max": max(r[k] for r in rows), "median": statistics.median(r[k] for r in rows)}
              for k in ("codes_max_abs", "codes_mean_abs", "image_mean_abs_levels", "image_max_abs_levels")}
    print(f"over {len(rows)} cases: codes max abs up to {spread['codes_max_abs']['max']:.2e} "
          f"(median {spread['codes_max_abs']['median']:.2e}), mean abs up to {spread['codes_mean_abs']['max']:.1e}; "
          f"images {spread['image_mean_abs_levels']['median']:.2f} levels mean (median; up to "
          f"{spread['image_mean_abs_levels']['max']:.2f}), max {spread['image_max_abs_levels']['max']:.0f}")
    args.out.write_text(json.dumps({"rows": rows, "spread": spread, "cpu": runtime.isa_summary()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
