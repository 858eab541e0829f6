"""The outbox: each round's outgoing update, stored before its spend is committed.

A DP release must be counted once and only once. If the daemon is killed
after training, the coordinator may ask for the same round again (it resumes
from its checkpoint). Training again would draw fresh noise, a *second*
release of the same round, which the ledger would have to charge again.
Instead the site stores the exact update it is about to send, commits the
spend, and on a retried round resends the stored bytes: no new release, no
double count, no lost spend.

Order of operations in the ClientApp (crash-safe at every step):

1. ``Outbox.put`` (atomic directory rename);
2. ``PrivacyLedger.commit`` for the round (atomic, idempotent);
3. return the reply.

A retry finds the entry at step 1 and goes straight to 2 and 3.

An entry is also what the receipt check compares the coordinator's signed
leaf against (its delta digest), so it is kept until that round's receipt
is verified, however late it comes: :meth:`Outbox.prune` drops only rounds
with a verified receipt, and only beyond the newest ``keep``. The site
trains no new round while an older one lacks its receipt, so at most one
unverified entry per federation waits here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocols.atomic_files import staged_directory
from protocols.canonical import tensors_digest
from protocols.errors import IntegrityError

__all__ = ["Outbox", "OutboxEntry"]


@dataclass(frozen=True, kw_only=True)
class OutboxEntry:
    """One stored update: the delta arrays and the JSON-ready reply fields."""

    round: int
    base_model_digest: str
    delta: dict[str, np.ndarray]
    payload: dict[str, Any]


class Outbox:
    """Per-round update store under ``<state>/outbox/round-NNNNNN``."""

    def __init__(self, state_dir: Path, *, keep: int = 10) -> None:
        self.root = Path(state_dir) / "outbox"
        self.keep = keep

    def _dir(self, round: int) -> Path:
        return self.root / f"round-{round:06d}"

    def get(self, round: int, *, base_model_digest: str) -> OutboxEntry | None:
        """The stored update for ``round`` started from ``base_model_digest``, if any."""
        path = self._dir(round)
        if not path.is_dir():
            return None
        meta = json.loads((path / "entry.json").read_text(encoding="utf-8"))
        if meta["base_model_digest"] != base_model_digest:
            # Same round number, different global model: not a retry of this release.
            return None
        with np.load(path / "delta.npz", allow_pickle=False) as npz:
            delta = {k: npz[k] for k in npz.files}
        if tensors_digest(delta) != meta["delta_digest"]:
            raise IntegrityError(
                f"outbox entry for round {round} does not match its recorded digest",
                got=tensors_digest(delta), expected=meta["delta_digest"],
                fix=f"delete {path} so the round is trained afresh (its spend stays in the ledger)",
            )
        return OutboxEntry(round=round, base_model_digest=base_model_digest, delta=delta,
                           payload=dict(meta["payload"]))

    def submitted(self) -> dict[int, str]:
        """Round -> delta digest of every update still in the outbox."""
        out: dict[int, str] = {}
        for path in self.root.glob("round-*"):
            meta = path / "entry.json"
            if meta.exists():
                d = json.loads(meta.read_text(encoding="utf-8"))
                out[int(d["round"])] = str(d["delta_digest"])
        return out

    def put(self, entry: OutboxEntry) -> None:
        """Store an entry atomically; an existing entry for the round is replaced."""
        with staged_directory(self._dir(entry.round)) as stage:
            with open(stage / "delta.npz", "wb") as f:
                arrays: dict[str, Any] = dict(entry.delta)
                np.savez(f, **arrays)
            meta = {
                "round": entry.round,
                "base_model_digest": entry.base_model_digest,
                "delta_digest": tensors_digest(entry.delta),
                "payload": entry.payload,
            }
            (stage / "entry.json").write_text(json.dumps(meta, sort_keys=True),
                                              encoding="utf-8")

    def prune(self, *, verified: Collection[int]) -> None:
        """Drop entries older than the newest ``keep``, but only for ``verified`` rounds."""
        rounds = sorted(p for p in self.root.glob("round-*") if p.is_dir())
        for old in rounds[: max(0, len(rounds) - self.keep)]:
            if int(old.name.removeprefix("round-")) in verified:
                shutil.rmtree(old, ignore_errors=True)


def as_float32(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """C-contiguous float32 copies, the dtype every delta travels in."""
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
