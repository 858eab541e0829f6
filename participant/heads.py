"""The site's private parameters on disk: heads only this member holds.

In flwr 1.41 every message runs in a fresh ``flwr-clientapp`` process and a
SuperNode restart loses ``context.state``, so private heads live in the state
directory. They are written atomically and never leave the site.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from protocols.errors import IntegrityError

__all__ = ["PrivateHeadStore"]


class PrivateHeadStore:
    """``<state>/private_heads.npz``: name -> array for parameters kept local."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "private_heads.npz"

    def load(self) -> dict[str, np.ndarray]:
        """The stored private parameters, or an empty mapping on first use."""
        if not self.path.exists():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise IntegrityError(
                "the private-head file cannot be read", got=f"{self.path}: {exc}",
                fix="restore it from backup, or delete it to start the private heads afresh",
            ) from exc

    def save(self, params: Mapping[str, np.ndarray]) -> None:
        """Replace the stored parameters atomically (temp file, fsync, rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".private_heads-", suffix=".npz", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                arrays: dict[str, Any] = {k: np.asarray(v) for k, v in params.items()}
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
