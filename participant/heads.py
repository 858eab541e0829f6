"""The site's private parameters on disk: heads only this member holds.

In flwr 1.41 every message runs in a fresh ``flwr-clientapp`` process and a
SuperNode restart loses ``context.state``, so private heads live in the state
directory. They are written atomically and never leave the site.

Crash order (``participant.site``): a round's new heads are first written as
*pending*, then the ledger commits the round's spend, then the pending heads
are promoted. A crash before the commit leaves heads from a round the ledger
does not count: ``settle`` discards them, so no later round trains from them.
A crash after the commit leaves them pending: ``settle`` promotes them. The
file records which rounds trained the heads (``lineage``), which equals the
ledger's rounds once settled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from protocols.atomic_files import replace_file, write_npz
from protocols.errors import IntegrityError

__all__ = ["PrivateHeadStore"]

_LINEAGE = "__lineage__"  # "<federation>:<round>" of every round that trained the heads


class PrivateHeadStore:
    """``<state>/private_heads.npz``: name -> array for parameters kept local."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "private_heads.npz"

    def load(self) -> dict[str, np.ndarray]:
        """The stored private parameters, or an empty mapping on first use."""
        arrays = self._read(self.path)
        arrays.pop(_LINEAGE, None)
        return arrays

    def lineage(self) -> list[tuple[str, int]]:
        """(federation, round) of every committed round the stored heads were trained by."""
        return _lineage(self._read(self.path))

    @property
    def pending_path(self) -> Path:
        return self.path.with_name("private_heads.pending.npz")

    def _read(self, path: Path) -> dict[str, np.ndarray]:
        if not path.exists():
            return {}
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise IntegrityError(
                "the private-head file cannot be read", got=f"{path}: {exc}",
                fix="restore it from backup, or delete it to start the private heads afresh",
            ) from exc

    def save_pending(self, params: Mapping[str, np.ndarray], *, federation_id: str,
                     round: int) -> None:
        """Write a round's new heads beside the current ones; ``settle`` decides their fate."""
        before = [f"{f}:{r}" for f, r in self.lineage()]
        self._write(self.pending_path, {**params, _LINEAGE: np.array(
            [*before, f"{federation_id}:{round}"], dtype=np.str_)})

    def settle(self, committed: Callable[[str, int], bool]) -> None:
        """Promote pending heads whose round the ledger committed; discard any others."""
        pending = self._read(self.pending_path)
        if not pending:
            return
        rounds = _lineage(pending)
        if rounds and committed(*rounds[-1]):
            replace_file(self.pending_path, self.path)
        else:
            self.pending_path.unlink()

    def save(self, params: Mapping[str, np.ndarray]) -> None:
        """Replace the stored parameters atomically (temp file, fsync, rename)."""
        self._write(self.path, params)

    def _write(self, path: Path, params: Mapping[str, np.ndarray]) -> None:
        write_npz(path, params)


def _lineage(arrays: Mapping[str, np.ndarray]) -> list[tuple[str, int]]:
    out = []
    for item in arrays.get(_LINEAGE, np.array([], dtype=np.str_)).tolist():
        federation, _, round_ = str(item).rpartition(":")
        out.append((federation, int(round_)))
    return out
