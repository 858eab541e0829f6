"""The participant's verified receipts, and the halt switch a failed check throws.

Every instruction may carry receipts the site has not seen yet. Each one is
checked (:func:`protocols.receipts.verify_receipt_for_participant`: signature
against the pinned coordinator key, chain link, inclusion of our own
submission, model digest, monotone rounds) *before* it is stored, and stored
append-only (``receipts/receipt-NNNNNN.json``, the same bytes and names as the
coordinator's log, so ``fedadmet audit verify`` works on either copy). The
site's own inclusion proof for a round is kept next to it as
``proof-NNNNNN.json`` (canonical JSON of :class:`InclusionProof`), so the site
can later show an auditor that its update is in the signed tree.

If any check fails the site writes ``HALTED.json`` naming the check and the
round, and refuses to train until an operator investigates and removes it:
a coordinator that cannot account for our updates gets no more of them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocols.errors import ProtocolError, ReceiptVerificationError
from protocols.receipts import (
    InclusionProof,
    RoundReceipt,
    parse_receipt,
    proof_for,
    receipt_hash,
    verify_receipt_for_participant,
)
from protocols.signing import Ed25519PublicKey

__all__ = ["Halt", "ReceiptStore"]


@dataclass(frozen=True)
class Halt:
    """Why this site stopped training."""

    check: str
    round: int | None
    message: str


class ReceiptStore:
    """Append-only store of verified receipts under ``<state>/receipts``."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "receipts"
        self.halt_file = Path(state_dir) / "HALTED.json"

    # ---------------------------------------------------------------- state
    def rounds(self) -> list[int]:
        """Rounds with a stored receipt, ascending."""
        return sorted(int(p.stem.removeprefix("receipt-")) for p in self.dir.glob("receipt-*.json"))

    def last(self) -> tuple[int, str | None]:
        """(last round held, its receipt hash), or (0, None) before the first receipt."""
        rounds = self.rounds()
        if not rounds:
            return 0, None
        receipt = parse_receipt(self._path(rounds[-1]).read_bytes())
        return receipt.round, receipt_hash(receipt)

    def halted(self) -> Halt | None:
        """The recorded halt, if a check ever failed."""
        if not self.halt_file.exists():
            return None
        d = json.loads(self.halt_file.read_text(encoding="utf-8"))
        return Halt(check=d["check"], round=d.get("round"), message=d["message"])

    def proof(self, round: int) -> InclusionProof | None:
        """This site's stored inclusion proof for ``round``, if it had a leaf there."""
        path = self.dir / f"proof-{round:06d}.json"
        if not path.exists():
            return None
        return InclusionProof.from_dict(json.loads(path.read_bytes()))

    def _path(self, round: int) -> Path:
        return self.dir / f"receipt-{round:06d}.json"

    # ---------------------------------------------------------------- intake
    def accept(self, receipts: Sequence[Mapping[str, Any]],
               proofs: Sequence[Mapping[str, Any] | None], *, coordinator_key: Ed25519PublicKey,
               own_fingerprint: str, submitted: Mapping[int, str],
               received_global_model_digest: str, federation_id: str | None = None,
               config_digest: str | None = None) -> list[RoundReceipt]:
        """Verify and store delivered receipts, oldest first.

        ``submitted`` maps a round to the update digest this site sent in it.
        Receipts at or below the last stored round are skipped if identical to
        the stored copy (re-delivery) and are a failure otherwise.
        Raises :class:`ReceiptVerificationError` after recording the halt.
        """
        stored: list[RoundReceipt] = []
        try:
            last_round, last_hash = self.last()
            for i, (raw, raw_proof) in enumerate(zip(receipts, proofs, strict=True)):
                receipt = parse_receipt(raw)
                if receipt.round <= last_round:
                    existing = self._path(receipt.round)
                    if existing.exists() and existing.read_bytes() == receipt.canonical_bytes():
                        continue
                    raise ReceiptVerificationError(
                        "round-monotone", "a different receipt for a round already held",
                        round=receipt.round)
                proof = None if raw_proof is None else InclusionProof.from_dict(raw_proof)
                if proof is None and submitted.get(receipt.round) is not None:
                    # The coordinator sends no proof to a node it cannot name (simulation
                    # node ids change when a resumed run restarts). Every leaf is in the
                    # signed receipt, so our proof follows from it; no leaf, no proof.
                    proof = proof_for(receipt, own_fingerprint)
                newest = i == len(receipts) - 1
                verify_receipt_for_participant(
                    receipt, proof, coordinator_key=coordinator_key,
                    last_receipt_hash=last_hash, last_round=last_round,
                    own_fingerprint=own_fingerprint,
                    own_update_digest=submitted.get(receipt.round),
                    received_global_model_digest=received_global_model_digest if newest else None,
                    federation_id=federation_id, config_digest=config_digest)
                self._write(receipt, proof)
                stored.append(receipt)
                last_round, last_hash = receipt.round, receipt_hash(receipt)
        except ReceiptVerificationError as exc:
            self._halt(exc.check, exc.round, exc.diagnostics())
            raise
        except ProtocolError as exc:
            self._halt("malformed", None, exc.diagnostics())
            raise ReceiptVerificationError("malformed", exc.message) from exc
        return stored

    def _write(self, receipt: RoundReceipt, proof: InclusionProof | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if proof is not None:
            # Proof first: a crash in between leaves a proof without its receipt, and the
            # receipt (which decides the last round held) is simply fetched again.
            proof_path = self.dir / f"proof-{receipt.round:06d}.json"
            if proof_path.exists():
                proof_path.unlink()  # left by a crash before its receipt was stored
            _atomic_create(proof_path, proof.canonical_bytes())
        _atomic_create(self._path(receipt.round), receipt.canonical_bytes())

    def _halt(self, check: str, round: int | None, message: str) -> None:
        self.halt_file.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"check": check, "round": round, "message": message}, indent=2)
        fd, tmp = tempfile.mkstemp(prefix=".halt-", dir=self.halt_file.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.halt_file)


def _atomic_create(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``; never overwrite (append-only)."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        os.unlink(tmp)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the new directory entry durable (POSIX: fsync the directory itself)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
