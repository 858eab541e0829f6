"""Run the real ``fedadmet`` entry point (``fedadmet.cli.main.main``) in a subprocess.

Typer's runner calls the app without ``main``'s error handling; a subprocess
sees what a user sees: the exit status and the one-paragraph ``error:`` line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def fedadmet(*args: str, cwd: Path, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """``fedadmet ARGS`` from this checkout; bounded in time."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FEDADMET_TRACEBACKS", None)
    return subprocess.run([sys.executable, "-m", "fedadmet", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
