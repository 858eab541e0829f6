"""Receipts: chain verification and the participant's five checks, attack by attack."""

from __future__ import annotations

import json

import pytest

from protocols.errors import MessageValidationError, ReceiptVerificationError, SignatureError
from protocols.messages import UpdateSubmission
from protocols.receipts import (
    GENESIS_HASH,
    InclusionProof,
    RoundReceipt,
    build_receipt,
    proof_for,
    receipt_hash,
    verify_chain,
    verify_receipt_for_participant,
)
from protocols.signing import fingerprint, verify
from tests.protocols.factories import COORDINATOR, MEMBERS, chain, key, submission

PUB = COORDINATOR.public_key()


def _bytes(receipts: list[RoundReceipt]) -> list[bytes]:
    return [r.canonical_bytes() for r in receipts]


def test_honest_chain_verifies() -> None:
    receipts = chain(5)
    report = verify_chain(_bytes(receipts), coordinator_key=PUB)
    assert report.ok and report.verified == 5
    assert report.head_hash == receipt_hash(receipts[-1])


def test_tampered_receipt_is_rejected() -> None:
    raw = _bytes(chain(4))
    obj = json.loads(raw[2])
    obj["leaves"][0]["claimed_epsilon"] = 0.5  # understate a member's privacy spend
    raw[2] = RoundReceipt.from_dict(obj).canonical_bytes()
    report = verify_chain(raw, coordinator_key=PUB)
    assert not report.ok and report.first_bad_index == 2 and report.first_bad_round == 3
    assert "signature" in (report.reason or "")


def test_changed_byte_is_detected_even_outside_json_values() -> None:
    raw = _bytes(chain(3))
    raw[1] = raw[1].replace(b'{"', b'{ "', 1)
    report = verify_chain(raw, coordinator_key=PUB)
    assert not report.ok and report.first_bad_index == 1 and "changed" in (report.reason or "")


def test_dropped_receipt_is_detected() -> None:
    raw = _bytes(chain(5))
    del raw[2]
    report = verify_chain(raw, coordinator_key=PUB)
    assert not report.ok and report.first_bad_index == 2 and "removed" in (report.reason or "")


def test_reordered_receipts_are_detected() -> None:
    raw = _bytes(chain(4))
    raw[1], raw[2] = raw[2], raw[1]
    report = verify_chain(raw, coordinator_key=PUB)
    assert not report.ok and report.first_bad_index == 1


def test_forked_chain_is_detected() -> None:
    honest = chain(3)
    fork = build_receipt(federation_id="fed", round=3, issued_at="2026-11-22T13:00:00Z",
                         previous_receipt_hash=receipt_hash(honest[1]),
                         model_digest_before=honest[2].model_digest_before,
                         model_digest_after="9" * 64, config_digest="d" * 64,
                         leaves=honest[2].leaves, coordinator_key=COORDINATOR)
    report = verify_chain(_bytes([*honest, fork]), coordinator_key=PUB)
    assert not report.ok and report.first_bad_index == 3 and "fork" in (report.reason or "")


def test_inserted_receipt_is_detected() -> None:
    honest = chain(3)
    inserted = build_receipt(federation_id="fed", round=3, issued_at="2026-11-22T13:00:00Z",
                             previous_receipt_hash="7" * 64,
                             model_digest_before="1" * 64, model_digest_after="2" * 64,
                             config_digest="d" * 64, leaves=honest[2].leaves,
                             coordinator_key=COORDINATOR)
    report = verify_chain(_bytes([*honest[:2], inserted]), coordinator_key=PUB)
    assert not report.ok and report.first_bad_index == 2


def test_receipt_signed_by_another_key_is_rejected() -> None:
    raw = _bytes(chain(2))
    report = verify_chain(raw, coordinator_key=key(99).public_key())
    assert not report.ok and report.first_bad_index == 0


def _participant_check(receipt: RoundReceipt, member_index: int = 0, **overrides: object) -> None:
    member = MEMBERS[member_index]
    leaf = next(x for x in receipt.leaves if x.participant_fingerprint == fingerprint(member))
    kwargs: dict[str, object] = {
        "coordinator_key": PUB, "last_receipt_hash": None, "last_round": 0,
        "own_fingerprint": fingerprint(member), "own_update_digest": leaf.update_digest,
        "received_global_model_digest": receipt.model_digest_after,
    }
    kwargs.update(overrides)
    verify_receipt_for_participant(receipt, proof_for(receipt, fingerprint(member)),
                                   **kwargs)  # type: ignore[arg-type]


def test_participant_accepts_an_honest_receipt() -> None:
    receipts = chain(2)
    _participant_check(receipts[0])
    _participant_check(receipts[1], last_receipt_hash=receipt_hash(receipts[0]), last_round=1)


def test_coordinator_swapping_global_model_is_detected() -> None:
    receipt = chain(1)[0]
    with pytest.raises(ReceiptVerificationError) as err:
        _participant_check(receipt, received_global_model_digest="5" * 64)
    assert err.value.check == "model-digest"


def test_participant_detects_omitted_submission() -> None:
    receipt = chain(1)[0]
    with pytest.raises(ReceiptVerificationError) as err:
        _participant_check(receipt, own_update_digest="8" * 64)
    assert err.value.check == "inclusion"


def test_participant_detects_broken_chain_link() -> None:
    receipts = chain(2)
    with pytest.raises(ReceiptVerificationError) as err:
        _participant_check(receipts[1], last_receipt_hash="3" * 64, last_round=1)
    assert err.value.check == "chain"


def test_replayed_old_receipt_fails_round_monotonicity() -> None:
    receipts = chain(2)
    with pytest.raises(ReceiptVerificationError) as err:
        _participant_check(receipts[0], last_receipt_hash=receipt_hash(receipts[1]),
                           last_round=2)
    assert err.value.check == "round-monotone"


def test_participant_rejects_receipt_from_unpinned_coordinator() -> None:
    receipt = chain(1)[0]
    with pytest.raises(ReceiptVerificationError) as err:
        _participant_check(receipt, coordinator_key=key(77).public_key())
    assert err.value.check == "signature"


def test_replayed_submission_is_rejected() -> None:
    # A round-1 submission re-sent for round 2 fails verification of the round-2 claim.
    old = submission(MEMBERS[0], round=1)
    replay = UpdateSubmission.from_dict({**old.to_dict(), "round": 2})
    with pytest.raises(SignatureError):
        verify(MEMBERS[0].public_key(), replay.signing_payload(), replay.signature, what="x")


def test_submission_signed_by_non_enrolled_key_is_rejected() -> None:
    outsider = key(123)
    forged = submission(outsider)
    enrolled = {fingerprint(m): m.public_key() for m in MEMBERS}
    assert forged.participant_fingerprint not in enrolled
    impersonation = UpdateSubmission.from_dict(
        {**forged.to_dict(), "participant_fingerprint": fingerprint(MEMBERS[0])})
    with pytest.raises(SignatureError):
        verify(enrolled[impersonation.participant_fingerprint],
               impersonation.signing_payload(), impersonation.signature, what="x")


def test_leaves_must_be_sorted_and_unique() -> None:
    receipt = chain(1)[0]
    d = receipt.to_dict()
    d["leaves"] = list(reversed(d["leaves"]))
    with pytest.raises(MessageValidationError):
        RoundReceipt.from_dict(d)


def test_genesis_receipt_links_to_zero_hash() -> None:
    assert chain(1)[0].previous_receipt_hash == GENESIS_HASH


def _resign(receipts: list[RoundReceipt], index: int, *, federation_id: str | None = None,
            model_digest_before: str | None = None) -> list[bytes]:
    """Rewrite receipt ``index`` and re-sign and re-link every receipt from there on, as an
    operator holding the coordinator key could: signatures and hash links all check out."""
    out: list[RoundReceipt] = list(receipts[:index])
    prev = receipt_hash(out[-1]) if out else GENESIS_HASH
    for j, r in enumerate(receipts[index:]):
        first = j == 0
        new = build_receipt(
            federation_id=(federation_id or r.federation_id) if first else r.federation_id,
            round=r.round, issued_at=r.issued_at, previous_receipt_hash=prev,
            model_digest_before=(model_digest_before or r.model_digest_before) if first
            else r.model_digest_before,
            model_digest_after=r.model_digest_after, config_digest=r.config_digest,
            leaves=r.leaves, coordinator_key=COORDINATOR)
        out.append(new)
        prev = receipt_hash(new)
    return _bytes(out)


def test_coordinator_swapping_model_between_rounds_is_detected() -> None:
    # A validly signed, correctly linked chain whose round 3 starts from a model that
    # round 2 never produced: the operator substituted the global model in between.
    raw = _resign(chain(4), 2, model_digest_before="9" * 64)
    report = verify_chain(raw, coordinator_key=PUB)
    assert not report.ok and report.first_bad_index == 2 and report.first_bad_round == 3
    assert "swapped global model" in (report.reason or "")


def test_receipt_from_another_federation_is_detected() -> None:
    raw = _resign(chain(3), 1, federation_id="other-consortium")
    report = verify_chain(raw, coordinator_key=PUB)
    assert not report.ok and report.first_bad_index == 1
    assert "foreign receipt" in (report.reason or "")
    first = verify_chain(_bytes(chain(2)), coordinator_key=PUB, federation_id="not-fed")
    assert not first.ok and first.first_bad_index == 0
    assert verify_chain(_bytes(chain(2)), coordinator_key=PUB, federation_id="fed").ok


def test_proof_borrowed_from_another_position_or_tree_is_rejected() -> None:
    """An inclusion proof must describe our own leaf in this very receipt."""
    receipt = chain(1, n_members=4)[0]
    me = fingerprint(MEMBERS[0])
    own = next(x for x in receipt.leaves if x.participant_fingerprint == me)
    honest = proof_for(receipt, me)
    assert honest is not None
    other = proof_for(receipt, fingerprint(MEMBERS[1]))
    assert other is not None and other.leaf_index != honest.leaf_index
    bigger = InclusionProof(round=1, leaf_index=honest.leaf_index,
                            tree_size=honest.tree_size + 1, path=honest.path)
    for proof in (other, bigger, InclusionProof(round=2, leaf_index=honest.leaf_index,
                                                tree_size=honest.tree_size, path=honest.path)):
        with pytest.raises(ReceiptVerificationError) as err:
            verify_receipt_for_participant(
                receipt, proof, coordinator_key=PUB, last_receipt_hash=None, last_round=0,
                own_fingerprint=me, own_update_digest=own.update_digest,
                received_global_model_digest=receipt.model_digest_after)
        assert err.value.check == "inclusion"


@pytest.mark.parametrize("bad", [
    {"round": "1"}, {"leaf_index": -1}, {"tree_size": 0}, {"leaf_index": 5, "tree_size": 5},
    {"path": "ab"}, {"path": ["zz"]},
])
def test_malformed_inclusion_proofs_are_refused(bad: dict[str, object]) -> None:
    d = {"kind": "inclusion-proof", "round": 1, "leaf_index": 0, "tree_size": 2,
         "path": ["a" * 64], **bad}
    with pytest.raises(MessageValidationError):
        InclusionProof.from_dict(d)
