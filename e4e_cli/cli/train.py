"""`e4e train`: a thin wrapper over `e4e_cli.train.coach.run` (torch is imported inside)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import E4EError
from . import options


def _ints(text: Optional[str], what: str, n: int) -> Optional[tuple]:
    if text is None:
        return None
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise E4EError(f"{what} must be {n} comma-separated integers, got {text!r}") from None
    if len(vals) != n or min(vals) < 1:
        raise E4EError(f"{what} must be {n} comma-separated positive integers, got {text!r}")
    return vals


def train_command(
    images: Optional[Path] = typer.Argument(None, help="Folder of training images (not needed with --resume)."),
    size: Optional[int] = typer.Option(None, "--size", help="Expected generator resolution (a mismatch is an error)."),
    generator: Optional[Path] = typer.Option(None, "--generator", "-g", help="StyleGAN2 generator: rosinality checkpoint ({'g_ema','latent_avg'}) or an e4e checkpoint."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints/, images/, log.jsonl, log.csv."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    domain: Optional[str] = typer.Option(None, "--domain", help="ffhq, cars, horse or church: the identity loss (ArcFace for ffhq, MoCo-v2 otherwise) and crops (cars: 192x256). Default: ffhq, the face recipe."),
    dataset_type: Optional[str] = typer.Option(None, "--dataset-type", help="The reference's name for --domain: ffhq_encode, cars_encode, horse_encode, church_encode."),
    encoder_init: str = typer.Option("irse50", "--encoder-init", help="irse50: start the encoder's backbone from the IR-SE50 weights (the reference; required); random: from random weights."),
    batch_size: int = typer.Option(8, "--batch-size", help="Global batch (split over torchrun processes)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Default 500000; with --resume, the run's own target."),
    lr: float = typer.Option(1e-4, "--lr", help="Ranger learning rate."),
    l2_lambda: float = typer.Option(1.0, "--l2-lambda"),
    lpips_lambda: float = typer.Option(0.8, "--lpips-lambda", help="0 trains without LPIPS (no weights needed)."),
    id_lambda: Optional[float] = typer.Option(None, "--id-lambda", help="Default 0.1 for faces, 0.5 otherwise; 0 trains without it."),
    delta_norm_lambda: float = typer.Option(2e-4, "--delta-norm-lambda"),
    w_discriminator_lambda: float = typer.Option(0.1, "--w-discriminator-lambda", help="0 trains without the latent discriminator."),
    w_discriminator_lr: float = typer.Option(2e-5, "--w-discriminator-lr"),
    r1: float = typer.Option(10.0, "--r1"),
    d_reg_every: int = typer.Option(16, "--d-reg-every"),
    w_pool_size: int = typer.Option(50, "--w-pool-size"),
    progressive_start: int = typer.Option(20000, "--progressive-start"),
    progressive_step_every: int = typer.Option(2000, "--progressive-step-every"),
    save_every: int = typer.Option(5000, "--save-every"),
    keep_last: int = typer.Option(3, "--keep-last", help="Checkpoints to keep."),
    image_every: int = typer.Option(1000, "--image-every", help="Every N steps a PNG grid: input | reconstruction | an edit."),
    val_every: int = typer.Option(5000, "--val-every"),
    log_every: int = typer.Option(50, "--log-every"),
    seed: int = typer.Option(0, "--seed"),
    precision: str = typer.Option("fp32", "--precision", help="fp32 (default: the recipe's numbers), bf16 or fp16 autocast (fp16 on CUDA only), or auto (as e4e invert)."),
    device: str = typer.Option("auto", "--device"),
    loss_size: int = typer.Option(256, "--loss-size", hidden=True),
    input_size: int = typer.Option(256, "--input-size", hidden=True),
    encoder_widths: Optional[str] = typer.Option(None, "--encoder-widths", hidden=True, help="e.g. 16,16,32,64 (the last is the style dimension)."),
    encoder_units: Optional[str] = typer.Option(None, "--encoder-units", hidden=True, help="e.g. 1,1,1,1."),
    bn_groups: int = typer.Option(1, "--bn-groups", hidden=True, help="BatchNorm statistics over this many chunks of the batch (as that many processes)."),
    val_fraction: float = typer.Option(0.05, "--val-fraction"),
    weights_dir: Optional[Path] = options.weights_dir_option(),
):
    """Train an e4e encoder for a StyleGAN2 generator (the paper's recipe; torchrun for several processes)."""
    import sys

    from .. import dist
    from ..train.coach import run
    from ..train.options import DATASET_TYPES, TrainOptions

    if not resume and (images is None or generator is None):
        raise E4EError("give IMAGES_DIR and --generator G (or --resume to continue the run in --out)")
    for name, value in (("--batch-size", batch_size), ("--max-steps", max_steps), ("--d-reg-every", d_reg_every),
                        ("--keep-last", keep_last)):
        if value is not None and value < 1:
            raise E4EError(f"{name} must be >= 1, got {value}")
    if encoder_init not in ("irse50", "random"):
        raise E4EError(f"--encoder-init must be irse50 or random, got {encoder_init!r}")
    if domain is not None and domain not in DATASET_TYPES:
        raise E4EError(f"--domain must be one of {', '.join(DATASET_TYPES)}, got {domain!r}")
    if dataset_type is not None and dataset_type not in DATASET_TYPES.values():
        raise E4EError(f"--dataset-type must be one of {', '.join(DATASET_TYPES.values())}, got {dataset_type!r}")
    if domain and dataset_type and DATASET_TYPES[domain] != dataset_type:
        raise E4EError(f"--domain {domain} and --dataset-type {dataset_type} disagree (give one)")
    if resume and (domain or dataset_type):
        raise E4EError("--resume keeps the run's domain: drop --domain / --dataset-type")
    chosen = DATASET_TYPES[domain] if domain else (dataset_type or "")
    if not 0 <= val_fraction < 1:
        raise E4EError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    opts = TrainOptions(
        images=str(images or ""), generator=str(generator or ""), out=str(out), dataset_type=chosen,
        batch_size=batch_size, max_steps=max_steps, lr=lr, l2_lambda=l2_lambda, lpips_lambda=lpips_lambda,
        id_lambda=id_lambda, delta_norm_lambda=delta_norm_lambda, w_discriminator_lambda=w_discriminator_lambda,
        w_discriminator_lr=w_discriminator_lr, r1=r1, d_reg_every=d_reg_every, w_pool_size=w_pool_size,
        progressive_start=progressive_start, progressive_step_every=progressive_step_every, save_every=save_every,
        keep_last=keep_last, image_every=image_every, val_every=val_every, log_every=log_every, seed=seed,
        precision=precision, device=device, loss_size=loss_size, input_size=input_size, val_fraction=val_fraction,
        weights_dir=str(weights_dir) if weights_dir else None, irse50_init=encoder_init == "irse50",
    )
    opts.extra = {"size": size} if size else {}
    w = _ints(encoder_widths, "--encoder-widths", 4)
    u = _ints(encoder_units, "--encoder-units", 4)
    if w:
        opts.encoder_widths = w
    if u:
        opts.encoder_units = u
    quiet = not dist.is_main()

    def log(msg: str) -> None:
        if not quiet:
            typer.echo(msg, err=True)

    try:
        run(opts, resume=resume, log=log, progress=sys.stderr.isatty(), bn_groups=bn_groups)
    except KeyboardInterrupt:
        log(f"e4e: interrupted; continue with: e4e train --resume --out {out}")
        raise typer.Exit(130)
