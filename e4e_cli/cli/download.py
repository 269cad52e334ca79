"""`e4e download-weights`: fetch (or import) the weights into the weights folder, verified.

Heavy imports (requests, tqdm, rich) happen inside the command so `e4e --help` stays fast.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import E4EError
from . import options

_NAMES_HELP = "ffhq, cars, horse, church, directions, landmarks, all (default: ffhq + directions)"


def _where(weights_dir: Optional[Path]) -> str:
    """Why the weights folder is where it is (shown to the user)."""
    from .. import settings
    from ..weights.locate import source_checkout_weights

    if weights_dir is not None:
        return "from --weights-dir"
    if settings.weights_dir() is not None:
        return "from E4E_WEIGHTS_DIR"
    if source_checkout_weights() is not None:
        return "the source checkout's weights/ folder"
    return "the user cache folder; set E4E_WEIGHTS_DIR or --weights-dir to change it"


def _print_table(names: Optional[List[str]], folder: Path, verify: bool, where: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..weights.locate import list_assets
    from ..weights.registry import expand_names, human_size

    wanted = set(expand_names(names)) if names else None
    rows = [r for r in list_assets(folder, verify=verify) if wanted is None or r.name in wanted]
    console = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=f"weights in {folder} ({where})", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("file", overflow="fold")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("state", overflow="fold")
    table.add_column("path", overflow="fold")
    table.add_column("description", overflow="fold")
    table.add_column("licence", overflow="fold")
    for r in rows:
        style = "green" if r.present else ("yellow" if r.state.startswith("missing") else "red")
        table.add_row(r.name, r.filename, human_size(r.size) if r.size else "?", f"[{style}]{r.state}[/]", str(r.path),
                      r.description, r.licence or "?")
    console.print(table)
    missing = [r for r in rows if not r.present]
    if missing:
        console.print(f"{len(missing)} of {len(rows)} missing: run `e4e download-weights NAME...` to fetch them")


@options.interruptible(lambda kwargs: "the same command resumes the download (from the .part file)")
def download_weights_command(
    names: Optional[List[str]] = typer.Argument(None, help=_NAMES_HELP, show_default=False),
    list_: bool = typer.Option(
        False, "--list", help="Print a table of every asset (present, missing, size, path, licence) and download nothing."
    ),
    weights_dir: Optional[Path] = options.weights_dir_option(),
    verify: bool = typer.Option(
        False, "--verify", help="Check the SHA-256 of files already present (re-download on mismatch)."
    ),
    base_url: Optional[str] = typer.Option(
        None, "--base-url", help="Fetch URL/<file name> for every asset instead of the built-in sources (a mirror)."
    ),
    from_: Optional[Path] = typer.Option(
        None, "--from", help="Import the files from this local folder after checking their SHA-256."
    ),
) -> None:
    """Download the e4e checkpoints, edit directions and face landmarks, verified by SHA-256.

    Downloads resume after a dropped connection and fall back to other sources; nothing
    lands under its final name before its size and hash are checked.
    """
    from ..weights import fetch
    from ..weights.locate import resolve_weights_dir
    from ..weights.registry import expand_names

    names = list(names or [])
    asset_names = expand_names(names)  # unknown names fail before anything else
    folder = resolve_weights_dir(weights_dir)
    where = _where(weights_dir)

    if list_:
        _print_table(names, folder, verify, where)
        return

    if base_url is not None:
        base_url = base_url.strip()
        if not base_url.lower().startswith(("http://", "https://")):
            raise E4EError(f"--base-url must start with http:// or https:// (got {base_url!r})")
    if from_ is not None and not from_.expanduser().is_dir():
        raise E4EError(f"--from folder {from_} does not exist")

    def log(message: str) -> None:
        typer.echo(message, err=True)

    results = fetch.download_assets(
        asset_names, weights_dir=folder, base_url=base_url, from_dir=from_, verify=verify, log=log,
    )
    width = max((len(r.filename) for r in results), default=0)
    for r in results:
        if r.ok:
            status = "verified" if r.source == "verified" else r.status
            typer.echo(f"{r.filename:<{width}}  {status:<10}  {r.path}")
    done = sum(r.ok for r in results)
    typer.echo(f"{done} of {len(results)} files in {folder} ({where})")
    fetch.raise_on_failures(results)
