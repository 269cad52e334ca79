"""The `e4e` command line: thin Typer wrappers over the library.

Every library failure is an `E4EError`; `main()` prints it as one line on stderr and exits
with its code (1 by default, 2 for missing weights). Set `E4E_DEBUG=1` to see tracebacks.
Command modules import torch and friends inside their functions so `e4e --help` is fast.
"""
from __future__ import annotations

import os
import sys
import warnings

import typer

from .errors import E4EError

app = typer.Typer(
    name="e4e",
    help="Edit real photos with StyleGAN2: align a face, invert it with the e4e encoder, edit it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _register() -> None:
    # Each command lives in its own module (one concern per module); registering them here
    # keeps `cli.py` the single place that lists the commands.
    from . import cli_align, cli_download, cli_evaluate, cli_invert

    app.command("download-weights")(cli_download.download_weights_command)
    app.command("align")(cli_align.align_command)
    app.command("invert")(cli_invert.invert_command)
    app.command("edit")(cli_invert.edit_command)
    app.command("directions")(cli_invert.directions_command)
    app.command("evaluate")(cli_evaluate.evaluate_command)


def _note(message, category, filename, lineno, file=None, line=None) -> None:
    typer.echo(f"e4e: note: {message}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code. Usage errors are Typer's (exit 2)."""
    _register()
    debug = os.environ.get("E4E_DEBUG", "") not in ("", "0")
    if not debug:
        warnings.showwarning = _note  # library warnings as one line each, not file:line + source
    try:
        app(args=argv, prog_name="e4e")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except E4EError as exc:
        if debug:
            raise
        typer.echo(f"e4e: error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        typer.echo("e4e: interrupted", err=True)
        return 130
    except Exception as exc:  # a bug: still one line, with a hint to get the traceback
        if debug:
            raise
        typer.echo(f"e4e: internal error: {type(exc).__name__}: {exc} (set E4E_DEBUG=1 for the traceback)", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
