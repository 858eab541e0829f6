"""``fedadmet coordinator``: commands the consortium operator types."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run the consortium coordinator (SuperLink + ServerApp).",
                  no_args_is_help=True)
