"""Top-level research commands: ``fedadmet baseline`` and ``fedadmet simulate``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the research commands to the root CLI."""
