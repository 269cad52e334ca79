"""`e4e directions` (list), `e4e directions fit`, `pca` and `show`: thin wrappers over `jobs.directions`.

Heavy modules (torch, numpy, scikit-learn) are imported inside the functions so `e4e --help` is fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import options

app = typer.Typer(
    name="directions",
    help="List the editing directions, or make your own: fit (InterFaceGAN from labels), pca (GANSpace), relevance (StyleCLIP), show.",
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

DOMAIN_HELP = "ffhq, cars, horse or church: whose checkpoint (in the weights folder) to use."


@app.callback()
def directions_callback(
    ctx: typer.Context,
    weights_dir: Optional[Path] = options.weights_dir_option(),
):
    """List the editing directions (also `e4e directions list`); make your own with fit, pca and show."""
    if ctx.invoked_subcommand is None:
        directions_command(weights_dir)


@app.command("list")
def list_command(
    weights_dir: Optional[Path] = options.weights_dir_option(),
):
    """List the editing directions: presets, what they do, whether their files are present, and yours."""
    directions_command(weights_dir)


def directions_command(weights_dir: Optional[Path] = None) -> None:
    """Print the table of presets, the other kinds of direction, and the files in the weights folder's
    directions/. The names are what `-d` takes, so they are never cut: the other columns fold first."""
    from rich.console import Console
    from rich.table import Table

    from ..editing import PRESETS
    from ..jobs.directions import directions_dir, user_directions
    from ..weights.locate import asset_path

    rows = []  # (direction, domain, default strength, what it does, file)
    missing = False
    for p in PRESETS.values():
        present = asset_path(p.asset, weights_dir).is_file()
        missing |= not present
        rows.append((p.name, p.domain, f"{p.strength:g}", p.description, "present" if present else "missing"))
    rows.append(("FILE.npy / FILE.pt", "any", "", "your own [512], [n,512] or [1,n,512] direction", ""))
    rows.append(("ganspace:C:START:END", "ffhq, cars", "", "any of the 80 PCA components on layers START..END-1 "
                 "(strength = target coordinate); --pca FILE for other generators", "PCA file"))
    rows.append(("sefa:K[:LAYERS]", "any", "3", "K-th closed-form direction of the generator (SeFa); LAYERS e.g. 0-3",
                 "from the checkpoint"))
    for p in user_directions(weights_dir):
        rows.append((p.stem, "yours", "", "made with e4e directions fit", str(p)))
    folder = directions_dir(weights_dir)
    for p in sorted(folder.glob("*_pca.pt")) if folder.is_dir() else []:
        rows.append(("ganspace:C:START:END", "yours", "", f"made with e4e directions pca: --pca {p}", str(p)))
    table = Table(title="Editing directions (e4e edit -d DIRECTION)")
    table.add_column("direction", no_wrap=True, min_width=max(len(r[0]) for r in rows))
    table.add_column("domain", no_wrap=True)
    table.add_column("strength", justify="right", no_wrap=True)
    table.add_column("what it does", overflow="fold", ratio=2)
    table.add_column("file", overflow="fold", ratio=1)
    for r in rows:
        table.add_row(*r)
    console = Console()
    console.print(table)
    if missing:
        console.print("missing preset files: run `e4e download-weights directions`", highlight=False, markup=False)


@app.command("fit")
@options.interruptible()
def fit_command(
    labels: Optional[Path] = typer.Argument(None, help="CSV of path,label rows: path is a latent (.npy/.pt), an e4e invert folder or a photo; label 0/1 or a score."),
    name: str = typer.Option(..., "--name", help="Writes NAME.npy and NAME.json."),
    positive: Optional[Path] = typer.Option(None, "--positive", help="Instead of LABELS: a folder of latents, invert folders or photos that have the attribute (not searched recursively)."),
    negative: Optional[Path] = typer.Option(None, "--negative", help="... and one of those that do not."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: the weights folder's directions/, where e4e ui finds it)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="W+ layers to fit on and edit, e.g. 0-5 (default: all; the code is their mean)."),
    condition: Optional[List[Path]] = typer.Option(None, "--condition", help="A direction to keep unchanged (the result is made orthogonal to it); may repeat."),
    ratio: float = typer.Option(0.02, "--ratio", help="Real-valued labels: fit on the top and the bottom RATIO of the codes (InterFaceGAN: 0.02)."),
    split: float = typer.Option(0.7, "--split", help="Share of each class to train on; the rest measures the accuracy (1 = no validation)."),
    svm_c: float = typer.Option(1.0, "--svm-c", help="The linear SVM's C (smaller = more regularised)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/validation split."),
    domain: Optional[str] = typer.Option(None, "--domain", help="Photos: " + DOMAIN_HELP),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Photos: the e4e checkpoint to invert them with."),
    invert_out: Path = typer.Option(Path("e4e-out/fit-inversions"), "--invert-out",
                                    help="Photos: where their inversions go, one folder per photo named by its content "
                                         "(reused by later fits; apart from `e4e invert`'s e4e-out/, so `e4e edit` with "
                                         "no source still edits your last invert)."),
    no_align: bool = typer.Option(False, "--no-align", help="Photos: do not align faces."),
    device: str = options.device_option(),
    precision: str = options.precision_option(),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing NAME.npy / NAME.json."),
    weights_dir: Optional[Path] = options.weights_dir_option(),
):
    """Fit an InterFaceGAN direction (linear SVM) to labelled latents or photos."""
    from ..jobs import directions as job

    options.check_domain(domain)
    src = job.CodeSource(domain=domain, checkpoint=checkpoint, device=device, precision=precision,
                         weights_dir=weights_dir, invert_out=invert_out, align=not no_align)
    res = job.fit_direction(job.FitJob(name=name, labels=labels, positive=positive, negative=negative, out=out,
                                       layers=layers, ratio=ratio, split=split, svm_c=svm_c, seed=seed,
                                       conditions=list(condition or []), overwrite=overwrite, source=src,
                                       weights_dir=weights_dir))
    c, acc = res.info["counts"], res.info["accuracy"]
    val = "no validation set" if acc["validation"] is None else f"validation accuracy {100 * acc['validation']:.1f}%"
    typer.echo(f"{res.direction.stem}: {val} (train {100 * acc['train']:.1f}%) on {c['positive']} positive and "
               f"{c['negative']} negative codes ({c['validation']} held out)")
    typer.echo(f"wrote {res.direction} and {res.record.name}; edit with: e4e edit --direction {res.direction}")


@app.command("pca")
@options.interruptible()
def pca_command(
    generator: Optional[Path] = typer.Option(None, "--generator", help="A generator: rosinality .pt, e4e checkpoint or StyleGAN2-ADA .pkl."),
    domain: Optional[str] = typer.Option(None, "--domain", help=DOMAIN_HELP),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="An e4e checkpoint (its generator)."),
    out: Optional[Path] = typer.Option(None, "--out", help="The PCA file (.pt; default: the weights folder's directions/<name>_pca.pt)."),
    samples: int = typer.Option(1_000_000, "--samples", help="z samples through the mapping network (GANSpace: 1,000,000)."),
    components: int = typer.Option(80, "--components", help="Components to keep (GANSpace: 80)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = options.device_option(),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing PCA file."),
    weights_dir: Optional[Path] = options.weights_dir_option(),
):
    """GANSpace: PCA of W for any generator, written as the released *_pca.pt files (use with --pca FILE)."""
    from ..jobs import sampled as job

    options.check_domain(domain)
    path, info = job.pca_direction_file(job.PcaJob(
        source=job.GeneratorSource(generator=generator, domain=domain, checkpoint=checkpoint, weights_dir=weights_dir),
        out=out, samples=samples, components=components, seed=seed, device=device, overwrite=overwrite))
    typer.echo(f"wrote {path} ({components} components of {samples} samples, {info['seconds']:g} s); "
               f"edit with: e4e edit --direction ganspace:COMPONENT:START:END --pca {path}")


@app.command("relevance")
@options.interruptible()
def relevance_command(
    generator: Optional[Path] = typer.Option(None, "--generator", help="A generator: rosinality .pt, e4e checkpoint or StyleGAN2-ADA .pkl."),
    domain: Optional[str] = typer.Option(None, "--domain", help=DOMAIN_HELP),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="An e4e checkpoint (its generator)."),
    out: Optional[Path] = typer.Option(None, "--out", help="The relevance file (.npz; default: the weights folder's directions/<name>_relevance.npz)."),
    samples: int = typer.Option(100, "--samples", help="Samples per channel (StyleCLIP: 100); two decodes each."),
    stats_samples: int = typer.Option(100_000, "--stats-samples", help="Samples for the channels' mean and std."),
    channels: Optional[str] = typer.Option(None, "--channels", metavar="START:END", help="Only these StyleSpace channels (a later run adds the others to the same file)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per decode."),
    seed: int = typer.Option(0, "--seed"),
    device: str = options.device_option(),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again instead of resuming an existing file."),
    weights_dir: Optional[Path] = options.weights_dir_option(),
):
    """StyleCLIP's channel relevance (fs3) for any generator, for `e4e edit --text ... --relevance FILE`.
    Resumable (rerun the same command); torchrun splits the channels over processes."""
    from ..jobs import relevance as job

    options.check_domain(domain)
    path, info = job.compute_relevance(job.RelevanceJob(
        source=job.GeneratorSource(generator=generator, domain=domain, checkpoint=checkpoint, weights_dir=weights_dir),
        out=out, samples=samples, stats_samples=stats_samples, seed=seed, channels=job.parse_channels(channels),
        batch=batch_size, device=device, overwrite=overwrite))
    from ..dist import is_main

    if not is_main():  # torchrun: the first process reports the merged file
        return
    typer.echo(f"wrote {path}: {info['computed']} of {info['channels']} channels computed ({info['computed_now']} now, "
               f"{info['seconds_per_channel_and_sample']:g} s per channel and sample); "
               f"edit with: e4e edit SOURCE --text TARGET --relevance {path}")


def _strengths(text: Optional[str]) -> Optional[list]:
    if text is None:
        return None
    from ..editing import parse_sweep

    return parse_sweep(text)


@app.command("show")
@options.interruptible()
def show_command(
    name: str = typer.Argument(..., help="A direction file, NAME in the weights folder's directions/, a preset, ganspace:C:S:E, sefa:K, or text:TARGET (StyleCLIP; the strengths are α)."),
    neutral: Optional[str] = typer.Option(None, "--neutral", help="text:TARGET: the neutral text."),
    beta: float = typer.Option(0.15, "--beta", help="text:TARGET: the threshold β."),
    relevance: Optional[Path] = typer.Option(None, "--relevance", help="text:TARGET: the relevance file (`e4e directions relevance`)."),
    generator: Optional[Path] = typer.Option(None, "--generator", help="A generator file (default: the domain's e4e checkpoint)."),
    domain: Optional[str] = typer.Option(None, "--domain", help=DOMAIN_HELP),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="An e4e checkpoint (its generator)."),
    latent: Optional[List[Path]] = typer.Option(None, "--latent", help="Latents (or e4e invert folders) to show it on, instead of random samples; may repeat."),
    samples: int = typer.Option(3, "--samples", help="Random samples (rows)."),
    seed: int = typer.Option(0, "--seed"),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="START:STOP:N strengths (columns; default -3:3:5)."),
    truncation: float = typer.Option(0.7, "--truncation", help="Random samples: W truncation towards the mean."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Pixels per image (default: min(256, generator size))."),
    pca: Optional[Path] = typer.Option(None, "--pca", help="PCA file for ganspace:C:START:END."),
    out: Optional[Path] = typer.Option(None, "--out", help="The PNG (default: e4e-out/<name>_strip.png)."),
    device: str = options.device_option(),
    precision: str = options.precision_option(),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing strip."),
    weights_dir: Optional[Path] = options.weights_dir_option(),
):
    """A strip image: the direction at a few strengths (columns, labelled in the first row) on a few samples (rows)."""
    from ..jobs import sampled as job

    options.check_domain(domain)
    path = job.show_strip(job.ShowJob(
        direction=name, source=job.GeneratorSource(generator=generator, domain=domain, checkpoint=checkpoint,
                                                   weights_dir=weights_dir),
        out=out, latents=list(latent or []), samples=samples, seed=seed, strengths=_strengths(sweep),
        truncation=truncation, tile=tile, pca=pca, device=device, overwrite=overwrite, precision=precision,
        text={"neutral": neutral, "beta": beta, "relevance": relevance}))
    typer.echo(f"wrote {path}")
