"""What ``fedadmet participant budget`` shows: the ledger, the receipt head, dropped rounds.

Read-only: the ledger is opened with the accountant it was written with, and nothing
is verified or written here beyond what :class:`ReceiptStore` already checked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from participant.config import ParticipantConfig
from participant.ledger import PrivacyLedger
from participant.receipt_store import ChainHead, ReceiptStore

__all__ = ["SiteBudget", "dropped_rounds", "read_budget"]


@dataclass(frozen=True)
class SiteBudget:
    """A site's privacy spend and receipt chain, as last recorded on disk."""

    ledger: PrivacyLedger
    accountant: Literal["rdp", "prv"]
    head: ChainHead | None
    receipts_dir: Path
    dropped: list[int]


def read_budget(cfg: ParticipantConfig) -> SiteBudget:
    """Open the site's ledger (under its recorded accountant) and receipt store."""
    path = cfg.state_dir / "privacy_ledger.json"
    stored = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    accountant: Literal["rdp", "prv"] = "prv" if stored.get("accountant") == "prv" else "rdp"
    ledger = PrivacyLedger.open(cfg.state_dir, max_epsilon=cfg.max_epsilon, delta=cfg.delta,
                                accountant=accountant)
    store = ReceiptStore(cfg.state_dir)
    return SiteBudget(ledger=ledger, accountant=accountant, head=store.head(),
                      receipts_dir=store.dir, dropped=dropped_rounds(cfg, ledger))


def dropped_rounds(cfg: ParticipantConfig, ledger: PrivacyLedger) -> list[int]:
    """Rounds whose verified receipt drops an update this site spent ε on."""
    from protocols.signing import fingerprint, load_private_key

    if cfg.receipt_key is None or not cfg.receipt_key.exists():
        return []
    own = fingerprint(load_private_key(cfg.receipt_key.read_bytes()))
    return ReceiptStore(cfg.state_dir).dropped_after_submit(own, ledger.spent_rounds())
