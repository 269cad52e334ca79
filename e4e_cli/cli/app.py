"""The `e4e` command line: thin Typer wrappers over the library.

Every failure, a library `E4EError` or a usage error, is printed as one line on stderr that
starts with `e4e: error:`, and the exit code says which kind (EXIT_CODES). Set `E4E_DEBUG=1`
to see tracebacks.
Command modules import torch and friends inside their functions so `e4e --help` is fast.
"""
from __future__ import annotations

import configparser
import os
import sys
import threading
import warnings
from importlib import metadata
from pathlib import Path

import typer

from .. import settings
from ..errors import EXIT_CODES, FAILURE, INTERRUPTED, USAGE, E4EError  # noqa: F401  (EXIT_CODES: the documented table)

app = typer.Typer(
    name="e4e",
    help="Edit real photos with StyleGAN2: align a face, invert it with the e4e encoder, edit it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


#: each command's pages under docs/, named at the end of its --help
DOCS = {
    "download-weights": ("docs/weights.md",),
    "align": ("docs/editing.md",),
    "invert": ("docs/editing.md", "docs/refinement.md"),
    "edit": ("docs/editing.md", "docs/refinement.md", "docs/videos.md"),
    "directions": ("docs/editing.md",),
    "evaluate": ("docs/editing.md", "docs/refinement.md", "docs/videos.md"),
    "train": ("docs/training.md",),
    "invert-dataset": ("docs/datasets.md",),
    "ui": ("docs/ui.md",),
}


def _epilog(pages: tuple[str, ...]) -> str:
    """Paths relative to the repository: the docs ship with the source, and there is no web site."""
    named = pages[0] if len(pages) == 1 else f"{', '.join(pages[:-1])} and {pages[-1]}"
    return f"Docs: {named} in the e4e repository."


def _register() -> None:
    """Attach every command (once per process): each lives in its own module, and this is the one
    place that lists them and their pages under docs/."""
    if app.registered_commands:
        return
    from . import align, dataset, directions, download, edit, evaluate, invert, train, ui

    commands = {
        "download-weights": download.download_weights_command,
        "align": align.align_command,
        "invert": invert.invert_command,
        "edit": edit.edit_command,
        "evaluate": evaluate.evaluate_command,
        "train": train.train_command,
        "invert-dataset": dataset.invert_dataset_command,
        "ui": ui.ui_command,
    }
    for name, function in commands.items():
        app.command(name, epilog=_epilog(DOCS[name]))(function)
    app.add_typer(directions.app, name="directions", epilog=_epilog(DOCS["directions"]))
    for info in directions.app.registered_commands:  # fit, pca, show, list: the group's page
        info.epilog = info.epilog or _epilog(DOCS["directions"])


def _version() -> str:
    """The installed package's version; a source tree that was never installed reads setup.cfg."""
    try:
        return metadata.version("e4e-cli")
    except metadata.PackageNotFoundError:
        cfg = configparser.ConfigParser()
        cfg.read(Path(__file__).resolve().parents[2] / "setup.cfg")
        return cfg.get("metadata", "version", fallback="unknown")


def _print_version(value: bool) -> None:
    """Eager, so `e4e --version` answers before Click asks for a command."""
    if value:
        typer.echo(f"e4e {_version()}")
        raise typer.Exit(code=0)


@app.callback(epilog=_epilog(("README.md", "docs/")))
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    """Only --version lives here: the help text is the app's, the work is the commands'."""


def _note(message, category, filename, lineno, file=None, line=None) -> None:
    typer.echo(f"e4e: note: {' '.join(str(message).split())}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see EXIT_CODES). Every failure is one line on stderr
    that starts with `e4e: error:`. As the program itself (argv None: the console script,
    `python -m e4e_cli`) the process ends here (`_leave`)."""
    code = _run(argv)
    if argv is None:
        _leave(code)
    return code


def _leave(code: int) -> None:
    """End the process at once, skipping the interpreter's teardown: once torch is imported,
    freeing every module's objects and running its exit handlers took 0.6 s, and 1.3 s after an
    invert at 1024, on a 2-core CPU (longer than writing the results). Every output is already
    written and closed; only the standard streams are flushed. Left to the normal exit when a
    non-daemon thread still runs (the interpreter waits for its work) or E4E_FAST_EXIT=0."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if others or not settings.fast_exit():
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)


def _run(argv: list[str] | None) -> int:
    from ..nn import runtime

    runtime.tune_process()  # first: before any command imports torch
    _register()
    debug = settings.debug()
    if not debug:
        warnings.showwarning = _note  # library warnings as one line each, not file:line + source
    from typer._click import exceptions as click_exc

    try:
        rv = app(args=argv, prog_name="e4e", standalone_mode=False)
    except click_exc.NoArgsIsHelpError as exc:  # plain `e4e`: the help, as `e4e --help` prints it
        typer.echo(exc.format_message())
        return 0
    except click_exc.UsageError as exc:  # bad option value, missing argument, unknown command
        where = exc.ctx.command_path if exc.ctx is not None else "e4e"
        return _fail(f"{_one_line(exc.format_message())} (see '{where} --help')", USAGE)
    except typer.Abort:
        typer.echo("e4e: interrupted", err=True)
        return INTERRUPTED
    except click_exc.ClickException as exc:
        return _fail(_one_line(exc.format_message()), exc.exit_code or FAILURE)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else FAILURE)
    except E4EError as exc:
        if debug:
            raise
        return _fail(_one_line(str(exc)), exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("e4e: interrupted", err=True)
        return INTERRUPTED
    except Exception as exc:  # a bug: still one line, with a hint to get the traceback
        if debug:
            raise
        return _fail(f"internal error: {type(exc).__name__}: {_one_line(str(exc))} (set E4E_DEBUG=1 for the traceback)",
                     FAILURE)
    if rv == INTERRUPTED:  # typer turns a KeyboardInterrupt that left a command into a silent exit 130
        return _fail("interrupted (Ctrl-C)", INTERRUPTED)
    return rv if isinstance(rv, int) else 0


def _one_line(text: str) -> str:
    """Messages from libraries may span lines; the contract is one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _fail(message: str, code: int) -> int:
    typer.echo(f"e4e: error: {message}", err=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
