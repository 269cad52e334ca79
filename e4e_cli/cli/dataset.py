"""`e4e invert-dataset`: a thin wrapper over `jobs.dataset.invert_dataset` (runs under torchrun too)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import E4EError
from . import options


@options.interruptible(lambda kwargs: "the same command resumes from the finished shards")
def invert_dataset_command(
    root: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Prefix of the outputs: PREFIX-00000.npz ..., PREFIX.index.json, PREFIX.failures.jsonl."),
    domain: Optional[str] = options.domain_option(),
    checkpoint: Optional[Path] = options.checkpoint_option(),
    shard_size: int = typer.Option(1000, "--shard-size", help="Images per shard file."),
    batch_size: Optional[int] = options.batch_option(),
    workers: int = typer.Option(2, "--workers", help="Processes that read (and align) images."),
    no_align: bool = typer.Option(False, "--no-align", help="Do not align faces (ffhq images are aligned by default)."),
    delta_scale: float = typer.Option(1.0, "--delta-scale", help="0 = pure W, 1 = e4e."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again: replace an index made with another checkpoint or options and redo every shard."),
    device: str = options.device_option(),
    precision: str = options.precision_option(),
    weights_dir: Optional[Path] = options.weights_dir_option(),
):
    """Invert a whole folder into latent shards: sharded, resumable, on torchrun for several processes."""
    import sys

    from .. import dist
    from ..jobs import dataset
    from ..editing import check_delta_scale
    from ..model import ModelOptions, load_model

    options.check_domain(domain)
    if workers < 0:
        raise E4EError(f"--workers must be >= 0, got {workers}")
    options.check_batch_size(batch_size)
    check_delta_scale(delta_scale)
    rank = dist.rank()
    if dist.world_size() > 1 and device in ("auto", "cuda"):
        from ..devices import resolve_device

        device = str(resolve_device(device, local_rank=dist.local_rank()))  # each process its own GPU
    model = load_model(ModelOptions(domain=domain, checkpoint=checkpoint, device=device, precision=precision,
                                    weights_dir=weights_dir))
    opts = dataset.DatasetOptions(root=root, prefix=out, shard_size=shard_size, batch_size=batch_size, workers=workers,
                                  align=not no_align, delta_scale=delta_scale, overwrite=overwrite)

    def log(msg: str) -> None:
        if rank == 0:
            typer.echo(msg, err=True)

    index = dataset.invert_dataset(model, opts, log=log, progress=sys.stderr.isatty())
    if rank != 0:
        return
    if index["n_ok"] == 0:
        raise E4EError(f"none of the {index['n_images']} images could be inverted (see {out}.failures.jsonl)")
    run = index["this_run"]
    msg = (f"{index['n_ok']} of {index['n_images']} images inverted into {len(index['shards'])} shard(s): "
           f"{out}.index.json ({run['shards_done']} shard(s) done now, {run['shards_skipped']} already done")
    if run["shards_done"]:
        msg += f", {run['images_per_s']:.2f} images/s on rank 0"
    msg += ")"
    if index["n_failed"]:
        msg += f"; {index['n_failed']} failed, listed in {out}.failures.jsonl"
    typer.echo(msg)
