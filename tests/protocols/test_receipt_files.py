"""Stored chains: each file named for its round, no strays, and an end a member can pin."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocols.receipts import (
    RoundReceipt,
    build_receipt,
    receipt_filename,
    receipt_hash,
    round_of_receipt_filename,
    sort_receipt_filenames,
    verify_stored_chain,
)
from tests.protocols.factories import COORDINATOR, chain

PUB = COORDINATOR.public_key()


def _files(receipts: list[RoundReceipt]) -> dict[str, bytes]:
    return {receipt_filename(r.round): r.canonical_bytes() for r in receipts}


def test_honest_directory_verifies_and_reports_its_head() -> None:
    receipts = chain(4)
    report = verify_stored_chain(_files(receipts), coordinator_key=PUB)
    assert report.ok and report.verified == 4 and report.head_round == 4
    assert report.head_hash == receipt_hash(receipts[-1])


def test_renamed_receipt_file_is_rejected() -> None:
    files = _files(chain(11))
    files["receipt-000011.json"] = files.pop("receipt-000010.json")  # round 10 under 11's name
    report = verify_stored_chain(files, coordinator_key=PUB)
    assert not report.ok and report.first_bad_name == "receipt-000011.json"
    assert report.first_bad_round == 10 and "misnamed" in (report.reason or "")
    assert "receipt-000010.json" in (report.reason or "")


def test_all_files_renamed_one_up_are_rejected() -> None:
    receipts = chain(4)
    files = {receipt_filename(r.round + 1): r.canonical_bytes() for r in receipts}
    report = verify_stored_chain(files, coordinator_key=PUB)
    assert not report.ok and report.first_bad_index == 0
    assert report.first_bad_name == "receipt-000002.json" and "misnamed" in (report.reason or "")


def test_unpadded_receipt_name_is_a_stray() -> None:
    files = _files(chain(10))
    files["receipt-10.json"] = files.pop("receipt-000010.json")
    report = verify_stored_chain(files, coordinator_key=PUB)
    assert not report.ok and report.first_bad_name == "receipt-10.json"
    assert "stray" in (report.reason or "")


def test_stray_receipt_files_are_refused() -> None:
    for stray in ("receipt-000000.json", "receipt-0000003.json", "receipt-copy.json",
                  "receipt-.json", "receipt-00000a.json", "receipt-\uff10\uff10\uff10\uff10"
                  "\uff10\uff13.json"):
        files = _files(chain(2))
        files[stray] = files["receipt-000002.json"]
        report = verify_stored_chain(files, coordinator_key=PUB)
        assert not report.ok and report.first_bad_name == stray, stray
        assert "stray" in (report.reason or "")


def test_truncated_chain_is_detected_with_expect_head() -> None:
    receipts = chain(5)
    pinned = receipt_hash(receipts[-1])  # the member verified round 5
    files = _files(receipts)
    assert verify_stored_chain(files, coordinator_key=PUB, expect_head=pinned).ok
    del files["receipt-000005.json"]  # the operator drops the last receipt
    assert verify_stored_chain(files, coordinator_key=PUB).ok  # undetectable from files alone
    report = verify_stored_chain(files, coordinator_key=PUB, expect_head=pinned)
    assert not report.ok and "truncated" in (report.reason or "")
    assert report.verified == 4 and report.head_round == 4


def test_truncated_chain_is_detected_with_rounds() -> None:
    files = _files(chain(5))
    assert verify_stored_chain(files, coordinator_key=PUB, expect_rounds=5).ok
    del files["receipt-000005.json"]
    report = verify_stored_chain(files, coordinator_key=PUB, expect_rounds=5)
    assert not report.ok and "truncated" in (report.reason or "") and "5" in (report.reason or "")


def test_chain_longer_than_expected_rounds_fails() -> None:
    report = verify_stored_chain(_files(chain(5)), coordinator_key=PUB, expect_rounds=4)
    assert not report.ok and "longer" in (report.reason or "")


def test_chain_that_extends_the_pinned_head_verifies() -> None:
    receipts = chain(5)
    report = verify_stored_chain(_files(receipts), coordinator_key=PUB,
                                 expect_head=receipt_hash(receipts[2]))
    assert report.ok and report.expected_head_round == 3 and report.head_round == 5


def test_forked_head_is_detected_with_expect_head() -> None:
    receipts = chain(3)
    pinned = receipt_hash(receipts[-1])  # the member verified this round 3
    last = receipts[-1]
    other = build_receipt(  # a second, validly signed round 3 that leaves a member out
        federation_id=last.federation_id, round=3, issued_at=last.issued_at,
        previous_receipt_hash=last.previous_receipt_hash,
        model_digest_before=last.model_digest_before, model_digest_after="e" * 64,
        config_digest=last.config_digest, leaves=last.leaves[1:], coordinator_key=COORDINATOR)
    files = _files([*receipts[:2], other])
    assert verify_stored_chain(files, coordinator_key=PUB).ok
    report = verify_stored_chain(files, coordinator_key=PUB, expect_head=pinned)
    assert not report.ok and "forked" in (report.reason or "")


@given(st.integers(min_value=1, max_value=10**9))
def test_file_name_rule_is_a_bijection_on_rounds(round_: int) -> None:
    name = receipt_filename(round_)
    assert round_of_receipt_filename(name) == round_
    digits = name.removeprefix("receipt-").removesuffix(".json")
    for other in ("0" + digits, digits.lstrip("0"), digits + " ", digits.upper() + "x"):
        if other != digits:
            assert round_of_receipt_filename(f"receipt-{other}.json") is None


def test_rounds_past_six_digits_sort_by_round_not_by_name() -> None:
    names, strays = sort_receipt_filenames(["receipt-1000000.json", "receipt-999999.json"])
    assert names == ["receipt-999999.json", "receipt-1000000.json"] and strays == []
