"""``fedadmet participant``: commands a member company types."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run a member company's participant daemon.", no_args_is_help=True)
