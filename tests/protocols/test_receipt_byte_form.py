"""A signed receipt has exactly one byte form (docs/receipts.md §1, §4): every mutant is refused.

The coordinator's signature is the one field it does not sign, so any leniency in how it is
parsed (upper-case hex, say) would give one signed receipt many byte forms, each with its own
receipt hash: two members holding different forms would disagree on the chain head.
"""

from __future__ import annotations

import json
import time

import pytest

from protocols.canonical import strict_json_loads
from protocols.errors import MessageValidationError
from protocols.messages import check_digest, check_fingerprint
from protocols.receipts import (
    GENESIS_HASH,
    ReceiptLeaf,
    RoundReceipt,
    build_receipt,
    parse_receipt,
    receipt_hash,
    verify_chain,
)
from protocols.signing import Ed25519PrivateKey
from tests.protocols.factories import COORDINATOR, chain
from tests.protocols.receipt_example import COORDINATOR_SEED

PUB = COORDINATOR.public_key()


def small_receipt() -> tuple[bytes, Ed25519PrivateKey]:
    """A real one-leaf receipt as the coordinator stores it (991 bytes)."""
    coordinator = Ed25519PrivateKey.from_private_bytes(COORDINATOR_SEED)
    receipt = build_receipt(
        federation_id="demo", round=1, issued_at="2026-11-22T12:00:00Z",
        previous_receipt_hash=GENESIS_HASH, model_digest_before="aa" * 32,
        model_digest_after="bb" * 32, config_digest="cc" * 32,
        leaves=[ReceiptLeaf(participant_fingerprint="node:7", status="dropped", reason="timeout")],
        coordinator_key=coordinator)
    return receipt.canonical_bytes(), coordinator


def _accepted(mutants: list[bytes], key: Ed25519PrivateKey) -> list[bytes]:
    pub = key.public_key()
    return [m for m in mutants if verify_chain([m], coordinator_key=pub).ok]


def test_every_single_byte_mutant_is_rejected() -> None:
    """Exhaustive: each of the 255 other values at each of the file's bytes (~250k mutants)."""
    raw, coordinator = small_receipt()
    assert verify_chain([raw], coordinator_key=coordinator.public_key()).ok
    start, accepted, tried = time.monotonic(), [], 0
    for i in range(len(raw)):
        head, tail = raw[:i], raw[i + 1:]
        mutants = [head + bytes((b,)) + tail for b in range(256) if b != raw[i]]
        tried += len(mutants)
        accepted += _accepted(mutants, coordinator)
        assert time.monotonic() - start < 600, "bounded: the mutation loop is stuck"
    assert tried == 255 * len(raw)
    assert accepted == []


def test_every_single_byte_deletion_and_insertion_is_rejected() -> None:
    raw, coordinator = small_receipt()
    deletions = [raw[:i] + raw[i + 1:] for i in range(len(raw))]
    insertions = [raw[:i] + c + raw[i:] for i in range(len(raw) + 1)
                  for c in (b" ", b"\n", b"\t", b"0", b"a", b"A", b'"', b"\\", b",")]
    assert _accepted(deletions, coordinator) == []
    assert _accepted(insertions, coordinator) == []


def test_uppercase_signature_hex_is_rejected() -> None:
    receipts = chain(3)
    raw = [r.canonical_bytes() for r in receipts]
    signature = receipts[-1].signature
    at = raw[-1].index(signature.encode())
    upper = [i for i, c in enumerate(signature) if c in "abcdef"]
    assert upper, "the fixture's signature has letters to upper-case"
    for i in upper:
        mutant = bytearray(raw[-1])
        mutant[at + i] = ord(signature[i].upper())
        with pytest.raises(MessageValidationError, match="signature"):
            parse_receipt(bytes(mutant))
        report = verify_chain([*raw[:-1], bytes(mutant)], coordinator_key=PUB)
        assert not report.ok and report.first_bad_index == 2
        assert report.head_hash == receipt_hash(receipts[1])  # the head never moves to a variant
    whole = raw[-1].replace(signature.encode(), signature.upper().encode())
    assert not verify_chain([*raw[:-1], whole], coordinator_key=PUB).ok


def test_uppercase_participant_signature_in_a_leaf_is_refused() -> None:
    obj = chain(1)[0].to_dict()
    leaf = next(x for x in obj["leaves"] if x["participant_signature"])
    leaf["participant_signature"] = leaf["participant_signature"].upper()
    with pytest.raises(MessageValidationError, match="participant_signature"):
        RoundReceipt.from_dict(obj)


def test_duplicate_member_names_are_refused_not_last_one_wins() -> None:
    raw = chain(1)[0].canonical_bytes()
    # json.loads would keep the last "round"; a verifier that did so sees a valid receipt.
    doubled = b'{"round":7,' + raw[1:]
    assert json.loads(doubled)["round"] == 1
    with pytest.raises(MessageValidationError, match="duplicate"):
        parse_receipt(doubled)
    with pytest.raises(MessageValidationError, match="duplicate"):
        strict_json_loads(b'{"a":1,"a":1}', what="test")


@pytest.mark.parametrize("text", [b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}'])
def test_nan_and_infinity_are_not_json(text: bytes) -> None:
    with pytest.raises(MessageValidationError, match="not valid JSON"):
        strict_json_loads(text, what="test")


def test_receipt_in_another_unicode_encoding_is_refused() -> None:
    raw = chain(1)[0].canonical_bytes()
    for other in (raw.decode().encode("utf-16"), b"\xef\xbb\xbf" + raw):  # UTF-16, UTF-8 BOM
        with pytest.raises(MessageValidationError):
            parse_receipt(other)


def test_non_canonical_bytes_name_the_first_difference() -> None:
    raw = chain(1)[0].canonical_bytes()
    spaced = raw.replace(b'":', b'": ', 1)
    with pytest.raises(MessageValidationError) as err:
        parse_receipt(spaced)
    assert "canonical" in err.value.message and f"byte {spaced.index(b' ')}" in str(err.value)


def test_trailing_newline_does_not_pass_a_hex_field() -> None:
    # `$` matches before a final newline; the validators must match the whole string.
    with pytest.raises(MessageValidationError):
        check_digest("T", "d", "a" * 64 + "\n")
    with pytest.raises(MessageValidationError):
        check_fingerprint("T", "f", "sha256:" + "a" * 64 + "\n")
    obj = chain(1)[0].to_dict()
    obj["signature"] += "\n"
    with pytest.raises(MessageValidationError, match="signature"):
        RoundReceipt.from_dict(obj)


@pytest.mark.parametrize("stamp", [
    "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-22T24:00:00Z",
    "2026-11-22T12:00:00.5Z", "2026-11-22 12:00:00Z", "2026-11-22T12:00:00+00:00",
    "2026-11-22t12:00:00z", "\uff12026-11-22T12:00:00Z", "2026-11-22T12:00Z", "Z",
])
def test_timestamp_in_another_form_is_refused(stamp: str) -> None:
    obj = chain(1)[0].to_dict()
    obj["issued_at"] = stamp
    with pytest.raises(MessageValidationError, match="issued_at"):
        RoundReceipt.from_dict(obj)


@pytest.mark.parametrize(("field", "value"), [
    ("reason", 1), ("reason", ["norm-exceeded"]), ("reason", ""),
    ("participant_signature", "22" * 63), ("participant_signature", ""),
])
def test_leaf_field_of_the_wrong_type_or_encoding_is_refused(field: str, value: object) -> None:
    obj = chain(1)[0].to_dict()
    leaf = obj["leaves"][0]
    leaf.update(status="rejected", reason="norm-exceeded", weight=0)
    leaf[field] = value
    with pytest.raises(MessageValidationError, match=field):
        RoundReceipt.from_dict(obj)


def test_leaves_that_are_not_an_array_are_refused() -> None:
    obj = chain(1)[0].to_dict()
    obj["leaves"] = {}
    with pytest.raises(MessageValidationError, match="leaves"):
        RoundReceipt.from_dict(obj)


def test_late_leaf_has_one_known_byte_form() -> None:
    leaf = ReceiptLeaf(participant_fingerprint="node:7", status="late", reason="round-closed")
    assert leaf.leaf_bytes() == (
        b'{"claimed_epsilon":null,"kind":"receipt-leaf","participant_fingerprint":"node:7",'
        b'"participant_signature":null,"reason":"round-closed","status":"late",'
        b'"update_digest":null,"weight":0}')
    assert ReceiptLeaf.from_dict(json.loads(leaf.leaf_bytes())) == leaf


@pytest.mark.parametrize("status", ["Late", "late ", "LATE", "delayed", ""])
def test_status_outside_the_enum_is_refused(status: str) -> None:
    obj = chain(1)[0].to_dict()
    obj["leaves"][0].update(status=status, reason="round-closed", weight=0)
    with pytest.raises(MessageValidationError, match="status"):
        RoundReceipt.from_dict(obj)


@pytest.mark.parametrize("change", [{"reason": None}, {"weight": 0.5}])
def test_late_leaf_needs_a_reason_and_zero_weight(change: dict[str, object]) -> None:
    fields: dict[str, object] = {"kind": "receipt-leaf", "participant_fingerprint": "node:7",
                                 "status": "late",
                                 "reason": "round-closed", **change}
    with pytest.raises(MessageValidationError, match="reason and zero weight"):
        ReceiptLeaf.from_dict(fields)
