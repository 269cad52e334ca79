"""Images per second of `e4e invert-dataset` with 1 and 2 processes on this machine (issue 17).

24 generated 64x64 images, the synthetic church (256) checkpoint, shards of 6, one reader
worker per process, the CLI's default precision; wall-clock time of the whole command
(start-up and model loading included), so the 2-process number shows what torchrun buys on
this many cores.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def bench_dataset(*, n: int = 24) -> dict:
    import numpy as np
    from PIL import Image

    from e4e_cli import synthetic

    ckpt = synthetic.synthetic_checkpoint(256, 3, "church")
    tmp = Path(tempfile.mkdtemp(prefix="e4e-bench-ds-"))
    out = {"what": f"{n} images, church 256 synthetic checkpoint, wall clock incl. start-up"}
    try:
        for i in range(n):
            Image.fromarray((np.random.RandomState(i).rand(64, 64, 3) * 255).astype("uint8")).save(tmp / f"{i:03d}.png")
        base = ["invert-dataset", str(tmp), "--domain", "church", "--checkpoint", str(ckpt), "--shard-size", "6",
                "--workers", "1"]
        env = dict(os.environ, E4E_NO_PROGRESS="1")
        e4e = str(Path(sys.executable).parent / "e4e")
        for procs in (1, 2):
            cmd = ([e4e] if procs == 1 else
                   [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), "-m", "e4e_cli"])
            t0 = time.perf_counter()
            p = subprocess.run(cmd + base + ["--out", str(tmp / f"out{procs}" / "lat")], env=env, capture_output=True,
                               text=True, cwd=str(ROOT))
            dt = time.perf_counter() - t0
            out[f"{procs}_process_images_per_s"] = round(n / dt, 3) if p.returncode == 0 else f"failed: {p.stderr[-200:]}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(bench_dataset(), indent=2))
