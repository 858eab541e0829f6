"""The participant verifies receipts before storing them and halts on any failed check."""

from __future__ import annotations

from pathlib import Path

import pytest

from participant.receipt_store import ReceiptStore
from protocols.errors import ReceiptVerificationError
from protocols.receipts import RoundReceipt, proof_for
from protocols.signing import fingerprint
from tests.protocols.factories import COORDINATOR, MEMBERS, chain, key

ME = MEMBERS[0]


def _deliver(store: ReceiptStore, receipts: list[RoundReceipt], *, global_digest: str | None = None,
             coordinator: object = None, submitted: dict[int, str] | None = None) -> None:
    mine = fingerprint(ME)
    if submitted is None:
        submitted = {r.round: next(x.update_digest for x in r.leaves
                                   if x.participant_fingerprint == mine) or "" for r in receipts}
    proofs = [proof_for(r, mine) for r in receipts]
    store.accept([r.to_dict() for r in receipts],
                 [None if p is None else p.to_dict() for p in proofs],
                 coordinator_key=(coordinator or COORDINATOR.public_key()),  # type: ignore[arg-type]
                 own_fingerprint=mine, submitted=submitted,
                 received_global_model_digest=global_digest or receipts[-1].model_digest_after)


def test_receipts_are_verified_stored_and_chained(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    receipts = chain(3)
    _deliver(store, receipts[:2])
    _deliver(store, receipts[1:])  # re-delivery of round 2 is skipped, round 3 chains on
    assert store.rounds() == [1, 2, 3]
    assert (tmp_path / "receipts" / "receipt-000003.json").read_bytes() == \
        receipts[2].canonical_bytes()
    assert store.halted() is None


def test_coordinator_swapping_global_model_halts_training(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    with pytest.raises(ReceiptVerificationError) as err:
        _deliver(store, chain(1), global_digest="9" * 64)
    assert err.value.check == "model-digest"
    halt = store.halted()
    assert halt is not None and halt.check == "model-digest" and halt.round == 1
    assert store.rounds() == []  # nothing unverified is stored


def test_receipt_from_another_coordinator_halts(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    with pytest.raises(ReceiptVerificationError):
        _deliver(store, chain(1), coordinator=key(66).public_key())
    halt = store.halted()
    assert halt is not None and halt.check == "signature"


def test_omitted_submission_halts(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    with pytest.raises(ReceiptVerificationError):
        _deliver(store, chain(1), submitted={1: "7" * 64})
    halt = store.halted()
    assert halt is not None and halt.check == "inclusion"


def test_dropped_receipt_breaks_the_participants_chain(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    receipts = chain(3)
    _deliver(store, receipts[:1])
    with pytest.raises(ReceiptVerificationError) as err:
        _deliver(store, receipts[2:])  # round 2 withheld
    assert err.value.check == "chain"
