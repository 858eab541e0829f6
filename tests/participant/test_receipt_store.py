"""The participant verifies receipts before storing them and halts on any failed check."""

from __future__ import annotations

from pathlib import Path

import pytest

from participant.receipt_store import ReceiptStore
from protocols.errors import ReceiptVerificationError
from protocols.merkle import verify_inclusion
from protocols.receipts import (
    RoundReceipt,
    build_receipt,
    parse_receipt,
    proof_for,
    receipt_hash,
)
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


def test_missing_proof_is_derived_from_the_signed_leaves(tmp_path: Path) -> None:
    """A resumed simulation's coordinator cannot name our new node id: it sends no proof."""
    store = ReceiptStore(tmp_path)
    receipts = chain(2)
    mine = fingerprint(ME)
    store.accept([r.to_dict() for r in receipts], [None, None],
                 coordinator_key=COORDINATOR.public_key(), own_fingerprint=mine,
                 submitted={r.round: next(x.update_digest for x in r.leaves
                                          if x.participant_fingerprint == mine) or ""
                            for r in receipts},
                 received_global_model_digest=receipts[-1].model_digest_after)
    assert store.rounds() == [1, 2] and store.halted() is None
    assert [store.proof(r.round) for r in receipts] == [proof_for(r, mine) for r in receipts]


def test_omitted_submission_without_a_proof_still_halts(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    (receipt,) = chain(1)
    stranger = fingerprint(key(77).public_key())  # a fingerprint with no leaf here
    with pytest.raises(ReceiptVerificationError) as err:
        store.accept([receipt.to_dict()], [None], coordinator_key=COORDINATOR.public_key(),
                     own_fingerprint=stranger, submitted={1: "7" * 64},
                     received_global_model_digest=receipt.model_digest_after)
    assert err.value.check == "inclusion" and store.rounds() == []


def test_dropped_receipt_breaks_the_participants_chain(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    receipts = chain(3)
    _deliver(store, receipts[:1])
    with pytest.raises(ReceiptVerificationError) as err:
        _deliver(store, receipts[2:])  # round 2 withheld
    assert err.value.check == "chain"


def test_own_inclusion_proofs_are_kept_and_verify_after_restart(tmp_path: Path) -> None:
    receipts = chain(2)
    _deliver(ReceiptStore(tmp_path), receipts)
    reopened = ReceiptStore(tmp_path)  # a restarted daemon resumes from disk alone
    assert reopened.last() == (2, receipt_hash(receipts[1]))
    for r in receipts:
        proof = reopened.proof(r.round)
        assert proof is not None and proof == proof_for(r, fingerprint(ME))
        stored = parse_receipt((tmp_path / "receipts" / f"receipt-{r.round:06d}.json").read_bytes())
        own = next(x for x in stored.leaves if x.participant_fingerprint == fingerprint(ME))
        verify_inclusion(own.leaf_bytes(), proof.leaf_index, proof.tree_size,
                         [bytes.fromhex(h) for h in proof.path], bytes.fromhex(stored.merkle_root))
    assert reopened.proof(3) is None


def test_rewritten_history_is_refused_and_never_overwrites(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    honest = chain(2)
    _deliver(store, honest)
    before = sorted((p.name, p.read_bytes()) for p in (tmp_path / "receipts").iterdir())
    rewritten = chain(2, n_members=2)  # same rounds, other contents, validly signed
    with pytest.raises(ReceiptVerificationError) as err:
        _deliver(store, rewritten[:1])
    assert err.value.check == "round-monotone"
    after = sorted((p.name, p.read_bytes()) for p in (tmp_path / "receipts").iterdir())
    assert after == before


def test_latest_verified_head_is_recorded(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    assert store.head() is None
    receipts = chain(3)
    _deliver(store, receipts[:2])
    _deliver(store, receipts[1:])
    head = ReceiptStore(tmp_path).head()  # survives a restart
    assert head is not None and (head.federation_id, head.round, head.receipt_hash) == (
        "fed", 3, receipt_hash(receipts[2]))


def test_unverified_receipt_never_moves_the_head(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    receipts = chain(2)
    _deliver(store, receipts[:1])
    with pytest.raises(ReceiptVerificationError):
        _deliver(store, receipts[1:], global_digest="9" * 64)
    head = store.head()
    assert head is not None and head.round == 1 and head.receipt_hash == receipt_hash(receipts[0])


@pytest.mark.parametrize("deleted", [[3], [1, 2, 3]])
def test_truncated_store_halts_instead_of_accepting_a_fork(tmp_path: Path,
                                                           deleted: list[int]) -> None:
    store = ReceiptStore(tmp_path)
    receipts = chain(3)
    _deliver(store, receipts)
    for r in deleted:  # the last receipt, or all of them, deleted
        (tmp_path / "receipts" / f"receipt-{r:06d}.json").unlink()
    last = receipts[deleted[0] - 1]
    fork = build_receipt(  # a different, validly signed round 3 that chains on round 2
        federation_id="fed", round=last.round, issued_at=last.issued_at,
        previous_receipt_hash=last.previous_receipt_hash,
        model_digest_before=last.model_digest_before, model_digest_after="e" * 64,
        config_digest=last.config_digest, leaves=last.leaves[1:], coordinator_key=COORDINATOR)
    with pytest.raises(ReceiptVerificationError) as err:
        _deliver(store, [fork], submitted={})
    assert err.value.check == "chain"
    halt = store.halted()
    assert halt is not None and halt.check == "chain" and halt.round == 3


def test_stray_file_in_the_store_is_not_taken_for_a_receipt(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path)
    receipts = chain(2)
    _deliver(store, receipts[:1])
    (tmp_path / "receipts" / "receipt-copy.json").write_bytes(b"{}")
    (tmp_path / "receipts" / "receipt-2.json").write_bytes(receipts[1].canonical_bytes())
    assert store.rounds() == [1]
    _deliver(store, receipts[1:])
    assert store.rounds() == [1, 2] and store.halted() is None


@pytest.mark.parametrize(("field", "value"), [("federation_id", "another-federation"),
                                              ("config_digest", "9" * 64)])
def test_receipt_for_another_federation_or_config_halts(tmp_path: Path, field: str,
                                                        value: str) -> None:
    # the chain factory's receipts are federation "fed" under config "d" * 64
    store = ReceiptStore(tmp_path)
    receipts = chain(1)
    mine = fingerprint(ME)
    instruction = {"federation_id": "fed", "config_digest": "d" * 64, field: value}
    with pytest.raises(ReceiptVerificationError) as err:
        store.accept([r.to_dict() for r in receipts],
                     [None if (p := proof_for(r, mine)) is None else p.to_dict()
                      for r in receipts],
                     coordinator_key=COORDINATOR.public_key(), own_fingerprint=mine,
                     submitted={1: receipts[0].leaves[0].update_digest or ""},
                     received_global_model_digest=receipts[0].model_digest_after,
                     **instruction)
    assert err.value.check == "instruction"
    store2 = ReceiptStore(tmp_path / "ok")
    store2.accept([r.to_dict() for r in receipts],
                  [None if (p := proof_for(r, mine)) is None else p.to_dict() for r in receipts],
                  coordinator_key=COORDINATOR.public_key(), own_fingerprint=mine,
                  submitted={r.round: next(x.update_digest for x in r.leaves
                                           if x.participant_fingerprint == mine) or ""
                             for r in receipts},
                  received_global_model_digest=receipts[0].model_digest_after,
                  federation_id="fed", config_digest="d" * 64)
    assert store2.rounds() == [1]
