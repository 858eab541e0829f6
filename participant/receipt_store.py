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

The latest verified chain head (round and receipt hash) is also recorded
apart from the receipts, in ``receipt_head.json``: the receipts alone cannot
show that their last one was deleted, the pin can. ``fedadmet participant
budget`` prints it for ``fedadmet audit verify --expect-head``, and a store
whose receipts end before the pin halts instead of re-accepting a fork.

If any check fails the site writes ``HALTED.json`` naming the check and the
round, and refuses to train until an operator investigates and removes it:
a coordinator that cannot account for our updates gets no more of them.

Silence is not consent either: the site trains or evaluates again only once
it holds a receipt for every earlier round it spent ε in (:meth:`missing`),
and it counts the rounds whose receipt marks its spent update ``dropped``, and
separately ``late`` (:meth:`dropped_after_submit`); the site halts at a configured
number of either.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocols.atomic_files import create_new, write_bytes, write_json
from protocols.canonical import canonical_json, strict_json_loads
from protocols.errors import MessageValidationError, ProtocolError, ReceiptVerificationError
from protocols.messages import check_digest
from protocols.receipts import (
    InclusionProof,
    RoundReceipt,
    parse_receipt,
    proof_for,
    receipt_filename,
    receipt_hash,
    round_of_receipt_filename,
    verify_receipt_for_participant,
)
from protocols.signing import Ed25519PublicKey

__all__ = ["ChainHead", "Halt", "ReceiptStore"]


@dataclass(frozen=True)
class Halt:
    """Why this site stopped training."""

    check: str
    round: int | None
    message: str


@dataclass(frozen=True)
class ChainHead:
    """The newest receipt this site verified: pin it with ``audit verify --expect-head``."""

    federation_id: str
    round: int
    receipt_hash: str


class ReceiptStore:
    """Append-only store of verified receipts under ``<state>/receipts``."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "receipts"
        self.halt_file = Path(state_dir) / "HALTED.json"
        self.head_file = Path(state_dir) / "receipt_head.json"

    # ---------------------------------------------------------------- state
    def rounds(self) -> list[int]:
        """Rounds with a stored receipt, ascending (names other than ours are not receipts)."""
        return sorted(r for p in self.dir.glob("receipt-*.json")
                      if (r := round_of_receipt_filename(p.name)) is not None)

    def last(self) -> tuple[int, str | None]:
        """(last round held, its receipt hash), or (0, None) before the first receipt.

        Raises :class:`ReceiptVerificationError` (``chain``) if the receipts
        end before the recorded head: deleted receipts must not let a forked
        round be accepted in their place.
        """
        rounds = self.rounds()
        held: tuple[int, str | None] = (0, None)
        if rounds:
            receipt = parse_receipt(self._path(rounds[-1]).read_bytes())
            held = (receipt.round, receipt_hash(receipt))
        head = self.head()
        if head is not None and (head.round > held[0] or (
                head.round == held[0] and head.receipt_hash != held[1])):
            raise ReceiptVerificationError(
                "chain", "stored receipts end before, or differ from, the recorded chain head",
                round=head.round, got=held, expected=(head.round, head.receipt_hash),
                fix="restore the missing receipt files from a backup; never delete receipts")
        return held

    def head(self) -> ChainHead | None:
        """The latest verified chain head recorded, or None before the first receipt."""
        if not self.head_file.exists():
            return None
        d = strict_json_loads(self.head_file.read_bytes(), what=str(self.head_file))
        if (not isinstance(d, dict) or set(d) != {"federation_id", "receipt_hash", "round"}
                or not isinstance(d["federation_id"], str) or type(d["round"]) is not int):
            raise MessageValidationError(f"{self.head_file} is malformed", got=d,
                                         expected="federation_id, receipt_hash and round")
        check_digest("ChainHead", "receipt_hash", d["receipt_hash"])
        return ChainHead(federation_id=d["federation_id"], round=d["round"],
                         receipt_hash=d["receipt_hash"])

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
        return self.dir / receipt_filename(round)

    def get(self, round: int) -> RoundReceipt | None:
        """The stored (verified) receipt of ``round``, if held."""
        path = self._path(round)
        return parse_receipt(path.read_bytes()) if path.exists() else None

    def missing(self, federation_id: str, spent: Collection[tuple[str, int]], *,
                before: int) -> list[int]:
        """Rounds below ``before`` of ``federation_id`` in ``spent`` (federation, round)
        with no verified receipt of that federation held."""
        out = []
        for fid, r in sorted(spent):
            if fid != federation_id or r >= before:
                continue
            receipt = self.get(r)
            if receipt is None or receipt.federation_id != federation_id:
                out.append(r)
        return out

    def dropped_after_submit(self, own_fingerprint: str, spent: Collection[tuple[str, int]],
                             *, status: str = "dropped") -> list[int]:
        """Rounds whose verified receipt marks our leaf ``status`` (``dropped``, or ``late``:
        the round closed before our reply; no digest) although this site spent ε on an
        update for it (``spent``: (federation, round))."""
        out = []
        for r in self.rounds():
            receipt = self.get(r)
            if receipt is None or (receipt.federation_id, r) not in spent:
                continue
            if any(leaf.participant_fingerprint == own_fingerprint and leaf.status == status
                   and leaf.update_digest is None for leaf in receipt.leaves):
                out.append(r)
        return out

    def halt(self, check: str, round: int | None, message: str) -> None:
        """Record a halt: the site refuses every instruction until an operator clears it."""
        self._halt(check, round, message)

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
            create_new(proof_path, proof.canonical_bytes())
        create_new(self._path(receipt.round), receipt.canonical_bytes())  # append-only
        # After the receipt: a crash in between leaves the pin one round behind, never ahead.
        write_bytes(self.head_file, canonical_json({
            "federation_id": receipt.federation_id, "receipt_hash": receipt_hash(receipt),
            "round": receipt.round}))

    def _halt(self, check: str, round: int | None, message: str) -> None:
        write_json(self.halt_file, {"check": check, "round": round, "message": message},
                   indent=2)
