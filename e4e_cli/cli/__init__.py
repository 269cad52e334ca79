"""The `e4e` command line: `app.py` holds the Typer app and `main`, one module per command."""
from .app import app, main  # noqa: F401
