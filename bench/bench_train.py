"""Seconds per `e4e train` step on this machine (issue 14), for `make bench`.

The full recipe's networks (the released encoder, the generator of a synthetic e4e checkpoint
of that size as the frozen generator, the latent discriminator; LPIPS and identity losses off,
their weights cannot be downloaded here), batch 2, float32, one timed step after one warm-up (the benchmark's time budget).
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def seconds_per_step(size: int, *, steps: int = 3, batch: int = 2) -> float:
    import torch
    from PIL import Image

    from e4e_cli import synthetic
    from e4e_cli.train.coach import Trainer
    from e4e_cli.train.options import TrainOptions

    domain = {1024: "ffhq", 512: "cars", 256: "church"}[size]
    seed = {1024: 1, 512: 2, 256: 3}[size]
    ckpt = synthetic.synthetic_checkpoint(size, seed, domain)
    tmp = Path(tempfile.mkdtemp(prefix="e4e-bench-train-"))
    try:
        (tmp / "img").mkdir()
        photo = synthetic.parity_dir() / "images" / "church_img.jpg"
        for i in range(batch * 2):
            Image.open(photo).convert("RGB").resize((256, 256)).rotate(3 * i).save(tmp / "img" / f"{i}.png")
        opts = TrainOptions(images=str(tmp / "img"), generator=str(ckpt), out=str(tmp / "run"),
                            dataset_type=f"{domain}_encode", batch_size=batch, lpips_lambda=0.0, id_lambda=0.0,
                            val_fraction=0.0, device="cpu", progressive_start=0, irse50_init=False)
        tr = Trainer(opts, log=lambda m: None)
        tr.train_step()  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.train_step()
        dt = (time.perf_counter() - t0) / steps
        tr.close()
        del tr
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        return dt
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_train(*, quick: bool = False) -> dict:
    out = {"what": "s/step, batch 2, float32, full encoder + frozen generator + latent discriminator (LPIPS/ID off)"}
    for size in ((256,) if quick else (256, 1024)):
        try:
            out[f"train_{size}_s_per_step"] = round(seconds_per_step(size, steps=1), 3)
        except Exception as exc:  # noqa: BLE001  (report, never abort the benchmark)
            out[f"train_{size}_s_per_step"] = f"failed: {type(exc).__name__}: {exc}"
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(bench_train(quick="--quick" in sys.argv), indent=2))
