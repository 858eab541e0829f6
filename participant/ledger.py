"""The site's persistent privacy ledger.

Every DP release this site makes is one entry: the mechanism's parameters
(``noise_multiplier``, ``sample_rate``, ``steps``), the round it belongs to,
and the cumulative (ε, δ) after it, computed by Opacus's accountant over the
whole history (RDP: Mironov 2017, "Rényi Differential Privacy"; sampled
Gaussian mechanism: Mironov, Talwar & Zhang 2019; PRV: Gopi, Lee & Wutschitz
2021). The accountant's state (its history) is stored with the entries.

Contract with the ClientApp:

- :meth:`PrivacyLedger.preview` is pure: what ε would be after a release;
- :meth:`PrivacyLedger.commit` refuses a release that would pass
  ``max_epsilon`` (the file stays byte-identical) and otherwise writes the new
  entry atomically (temp file, fsync, rename, directory fsync) *before* the
  update leaves the process;
- committing the same (federation, round) with the same parameters again is a
  no-op returning the stored entry (a retried round resends the stored update
  and costs nothing more); different parameters for a committed round raise.

So a ``kill -9`` at any point leaves either the old or the new file: spend is
never lost and never counted twice.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from opacus.accountants import PRVAccountant, RDPAccountant

from protocols.atomic_files import write_json
from protocols.errors import CheckpointError, PrivacyBudgetExceeded

__all__ = ["LedgerEntry", "PrivacyLedger", "epsilon_for"]

Accountant = Literal["rdp", "prv"]
_FORMAT = 1


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    """One DP release: a round of local DP-SGD, or a round's evaluation metrics."""

    federation_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_after: float
    delta: float
    committed_at: float
    # "train" (the round's update) or "evaluate" (its noised held-out metrics); entries
    # written before evaluation was charged have no field and are training rounds.
    release: str = "train"

    def same_mechanism(self, other: LedgerEntry) -> bool:
        """Same release parameters (the timestamp and ε may differ)."""
        return (self.noise_multiplier, self.sample_rate, self.steps) == (
            other.noise_multiplier, other.sample_rate, other.steps)


def epsilon_for(history: list[tuple[float, float, int]], *, delta: float,
                accountant: Accountant = "rdp") -> float:
    """Cumulative ε at ``delta`` of a history of (noise_multiplier, sample_rate, steps)."""
    releases = [(s, q, n) for s, q, n in history if n > 0]
    if not releases:
        return 0.0
    if any(s == 0 for s, _, _ in releases):
        return math.inf
    # RDP is additive in steps, so equal mechanisms merge exactly; this keeps the
    # cost of ε per commit flat however many rounds the ledger holds.
    merged: dict[tuple[float, float], int] = {}
    for s, q, n in releases:
        merged[(float(s), float(q))] = merged.get((float(s), float(q)), 0) + int(n)
    acct = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acct.history = [(s, q, n) for (s, q), n in merged.items()]
    return float(acct.get_epsilon(delta=delta))


class PrivacyLedger:
    """``<state>/privacy_ledger.json``: every release, and the running ε."""

    def __init__(self, path: Path, *, max_epsilon: float, delta: float,
                 accountant: Accountant, entries: list[LedgerEntry]) -> None:
        self.path = path
        self.max_epsilon = max_epsilon
        self.delta = delta
        self.accountant: Accountant = accountant
        self._entries = entries

    # ---------------------------------------------------------------- loading
    @classmethod
    def open(cls, state_dir: Path, *, max_epsilon: float, delta: float,
             accountant: Accountant = "rdp") -> PrivacyLedger:
        """Load the ledger (or start an empty one); δ and accountant must not change."""
        path = Path(state_dir) / "privacy_ledger.json"
        if not path.exists():
            return cls(path, max_epsilon=max_epsilon, delta=delta, accountant=accountant,
                       entries=[])
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = [LedgerEntry(**e) for e in data["entries"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError("the privacy ledger cannot be read", got=f"{path}: {exc}",
                                  fix="restore it from backup; never delete it, it records "
                                  "privacy already spent") from exc
        if data.get("delta") != delta or data.get("accountant") != accountant:
            raise CheckpointError(
                "the ledger was kept with another δ or accountant",
                got={"delta": data.get("delta"), "accountant": data.get("accountant")},
                expected={"delta": delta, "accountant": accountant},
                fix="keep δ and the accountant fixed for the life of a site's data")
        ledger = cls(path, max_epsilon=max_epsilon, delta=delta, accountant=accountant,
                     entries=entries)
        recorded = entries[-1].epsilon_after if entries else 0.0
        if entries and abs(ledger.epsilon() - recorded) > 1e-6 * max(1.0, recorded):
            raise CheckpointError("ledger ε does not match its own history",
                                  got=recorded, expected=ledger.epsilon(),
                                  fix="the file was edited; restore it from backup")
        return ledger

    # ---------------------------------------------------------------- queries
    def entries(self) -> list[LedgerEntry]:
        """All releases, oldest first."""
        return list(self._entries)

    def rounds(self) -> list[dict[str, Any]]:
        """One JSON-ready row per committed round, oldest first (for the budget CLI)."""
        return [asdict(e) for e in self._entries]

    def summary(self) -> dict[str, Any]:
        """Budget overview: spent ε, remaining, δ, accountant, number of rounds."""
        return {"epsilon": self.epsilon(), "max_epsilon": self.max_epsilon,
                "remaining": self.remaining(), "delta": self.delta,
                "accountant": self.accountant, "rounds": len(self._entries)}

    def history(self) -> list[tuple[float, float, int]]:
        """Accountant history: (noise_multiplier, sample_rate, steps) per release."""
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self._entries]

    def epsilon(self) -> float:
        """Cumulative ε at the ledger's δ."""
        return epsilon_for(self.history(), delta=self.delta, accountant=self.accountant)

    def remaining(self) -> float:
        """Budget left (may be 0)."""
        return max(0.0, self.max_epsilon - self.epsilon())

    def find(self, federation_id: str, round: int, *, release: str = "train"
             ) -> LedgerEntry | None:
        """The committed entry of kind ``release`` for a round, if any."""
        for e in self._entries:
            if (e.federation_id, e.round, e.release) == (federation_id, round, release):
                return e
        return None

    def spent_rounds(self) -> set[tuple[str, int]]:
        """(federation, round) of every training round this site released an update in."""
        return {(e.federation_id, e.round) for e in self._entries if e.release == "train"}

    def preview(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """ε after one more release with these parameters (no write)."""
        return epsilon_for([*self.history(), (noise_multiplier, sample_rate, steps)],
                           delta=self.delta, accountant=self.accountant)

    # ---------------------------------------------------------------- commit
    def commit(self, *, federation_id: str, round: int, noise_multiplier: float,
               sample_rate: float, steps: int, release: str = "train") -> LedgerEntry:
        """Record a release, or refuse it if it would exceed ``max_epsilon``."""
        candidate = LedgerEntry(federation_id=federation_id, round=round,
                                noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                                steps=steps, epsilon_after=math.nan, delta=self.delta,
                                committed_at=time.time(), release=release)
        existing = self.find(federation_id, round, release=release)
        if existing is not None:
            if existing.same_mechanism(candidate):
                return existing
            raise PrivacyBudgetExceeded(
                f"round {round} of {federation_id} is already committed with other parameters",
                got=asdict(candidate), expected=asdict(existing),
                fix="resend the stored update for this round instead of training again")
        after = self.preview(noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                             steps=steps)
        if after > self.max_epsilon:
            raise PrivacyBudgetExceeded(
                f"round {round} would spend past this site's budget",
                got=f"ε {after:.3f} after the round", expected=f"<= max_epsilon {self.max_epsilon}",
                fix="raise max-epsilon in participant.toml only if your privacy officer agrees")
        entry = LedgerEntry(**{**asdict(candidate), "epsilon_after": after})
        self._write([*self._entries, entry])
        self._entries.append(entry)
        return entry

    def _write(self, entries: list[LedgerEntry]) -> None:
        data: dict[str, Any] = {
            "format": _FORMAT, "delta": self.delta, "accountant": self.accountant,
            "accountant_state": {"mechanism": self.accountant,
                                 "history": [[e.noise_multiplier, e.sample_rate, e.steps]
                                             for e in entries]},
            "epsilon": entries[-1].epsilon_after if entries else 0.0,
            "entries": [asdict(e) for e in entries],
        }
        write_json(self.path, data, indent=1, sort_keys=True)
