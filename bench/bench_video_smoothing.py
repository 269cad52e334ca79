"""Does smoothing the codes over time (`--smooth-codes SIGMA`) steady a video edit? Measured with
`e4e evaluate SOURCE EDITED` (TL-ID, TG-ID, flicker ratio) on one clip edited at several sigmas.

The clip: the fixture face photo drifting across a textured background, 360p at 30 frames/s,
with a hand-held wobble (up to 2 px a frame) and sensor noise, so consecutive crops differ the way
a real clip's do. The checkpoint and the identity network are the synthetic ones of the parity
fixtures (church 256, IR-SE50 from `lossnets/make_lossnets.py`): the numbers compare settings on
the same clip, they are not what real weights give on real faces. Results go to
bench/results_video_smoothing.json.

    python bench/bench_video_smoothing.py [--frames 24] [--sigmas 0,1,2,4]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_clip(path: Path, frames: int) -> None:
    from bench.bench_video import make_clip as drifting_face

    drifting_face(path, frames, size=(640, 360), start=60, speed=3, wobble=2, noise=3.0, audio=False, crf=18)


def e4e(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "e4e_cli", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, "E4E_NO_PROGRESS": "1"})
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--sigmas", default="0,1,2,4")
    ap.add_argument("--strength", default="3")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results_video_smoothing.json")
    args = ap.parse_args()

    import torch

    from e4e_cli import synthetic

    ckpt = synthetic.synthetic_checkpoint(256, 3, "church")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        weights = d / "weights"
        weights.mkdir()
        subprocess.run([sys.executable, str(synthetic.parity_dir() / "lossnets" / "make_lossnets.py"), "--seed", "1",
                        str(weights)], check=True, capture_output=True)
        clip = d / "clip.mp4"
        make_clip(clip, args.frames)
        for sigma in [float(s) for s in args.sigmas.split(",")]:
            out = d / f"s{sigma:g}"
            t0 = time.perf_counter()
            # codes are made once per folder: copy the first run's folder so each sigma only decodes
            if rows:
                import shutil

                shutil.copytree(d / f"s{rows[0]['codes_sigma']:g}" / "clip", out / "clip",
                                ignore=shutil.ignore_patterns("clip_*"))
            e4e("edit", clip, "--direction", "sefa:0", "--strength", args.strength, "--checkpoint", ckpt,
                "--smooth-codes", sigma, "--out", out, "--device", "cpu")
            secs = time.perf_counter() - t0
            edited = next((out / "clip").glob("clip_sefa-0_*.mp4"))
            e4e("evaluate", clip, edited, "--weights-dir", weights, "--out", d / f"eval{sigma:g}", "--device", "cpu")
            rec = json.loads(next((d / f"eval{sigma:g}").glob("*_temporal.json")).read_text())
            rows.append({"codes_sigma": sigma, "tl_id": rec["tl_id"], "tg_id": rec["tg_id"],
                         "flicker_source": rec["flicker_source"], "flicker_edited": rec["flicker_edited"],
                         "flicker_ratio": rec["flicker_ratio"], "edit_seconds": round(secs, 1)})
            r = rows[-1]
            print(f"sigma {sigma:>4g}: TL-ID {r['tl_id']:.4f}  TG-ID {r['tg_id']:.4f}  flicker {r['flicker_edited']:.2f} "
                  f"(source {r['flicker_source']:.2f}, ratio {r['flicker_ratio']:.3f})  {secs:.0f} s", flush=True)
    result = {"machine": {"cpu": platform.processor() or platform.machine(),
                          "capability": torch.backends.cpu.get_cpu_capability()},
              "frames": args.frames, "strength": float(args.strength), "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
