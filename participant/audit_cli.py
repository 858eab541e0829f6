"""``fedadmet audit``: offline verification of round receipts."""

from __future__ import annotations

import typer

app = typer.Typer(help="Verify and inspect signed round receipts offline.", no_args_is_help=True)
