"""The `e4e` command line: `app.py` holds the Typer app and `main`, one module per command."""
from .app import main  # noqa: F401  (the console script's entry point: e4e_cli.cli.app:main)
