"""Wire messages: validated at construction, one parse path, exact round trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import MessageValidationError, SignatureError
from protocols.messages import DPPlan, Refusal, RoundInstruction, UpdateSubmission
from protocols.signing import verify
from tests.protocols.factories import MEMBERS, instruction, plan, submission


@given(st.integers(1, 10_000), st.floats(0.01, 100), st.integers(1, 512))
def test_round_trip_is_exact(round: int, eps: float, batch: int) -> None:
    msg = instruction(round)
    d = msg.to_dict()
    d["dp_plan"]["target_epsilon"] = eps
    d["dp_plan"]["batch_size"] = batch
    parsed = RoundInstruction.from_dict(json.loads(json.dumps(d)))
    assert parsed.to_dict() == d
    assert parsed.canonical_bytes() == RoundInstruction.from_dict(d).canonical_bytes()


def test_unknown_missing_and_wrong_version_fields_are_refused() -> None:
    d = instruction().to_dict()
    with pytest.raises(MessageValidationError):
        RoundInstruction.from_dict({**d, "extra": 1})
    missing = dict(d)
    del missing["round"]
    with pytest.raises(MessageValidationError):
        RoundInstruction.from_dict(missing)
    with pytest.raises(MessageValidationError) as err:
        RoundInstruction.from_dict({**d, "protocol_version": "fedadmet/0"})
    assert "fedadmet/1" in str(err.value)
    with pytest.raises(MessageValidationError):
        UpdateSubmission.from_dict(d)  # wrong kind


@pytest.mark.parametrize(("field", "value"), [
    ("max_grad_norm", 0.0), ("rounds", 0), ("delta", 1.5), ("target_epsilon", float("nan")),
    ("accountant", "moments"), ("batch_size", True),
])
def test_dp_plan_validation_names_the_field(field: str, value: object) -> None:
    d = plan().to_dict()
    d[field] = value
    with pytest.raises(MessageValidationError) as err:
        DPPlan.from_dict(d)
    assert field in str(err.value)


def test_submission_signature_covers_every_field() -> None:
    sub = submission(MEMBERS[0])
    verify(MEMBERS[0].public_key(), sub.signing_payload(), sub.signature, what="t")
    forged = UpdateSubmission.from_dict({**sub.to_dict(), "num_examples": 10_000})
    with pytest.raises(SignatureError):
        verify(MEMBERS[0].public_key(), forged.signing_payload(), forged.signature, what="t")


def test_refusal_reasons_are_machine_readable() -> None:
    fpr = submission(MEMBERS[0]).participant_fingerprint
    ok = Refusal(protocol_version="fedadmet/1", federation_id="fed", round=2,
                 participant_fingerprint=fpr, reason="budget-exhausted").signed(MEMBERS[0])
    assert Refusal.from_dict(ok.to_dict()) == ok
    verify(MEMBERS[0].public_key(), ok.signing_payload(), ok.signature, what="refusal")
    with pytest.raises(MessageValidationError):
        Refusal(protocol_version="fedadmet/1", federation_id="fed", round=2,
                participant_fingerprint=fpr, reason="tired")


def test_refusal_carries_no_free_text() -> None:
    fpr = submission(MEMBERS[0]).participant_fingerprint
    with pytest.raises(MessageValidationError, match="unknown fields"):
        Refusal.from_dict({"kind": "refusal", "protocol_version": "fedadmet/1",
                           "federation_id": "fed", "round": 2, "participant_fingerprint": fpr,
                           "reason": "data-error", "detail": "row 17: CCO is toxic",
                           "signature": "0" * 128})


@given(st.integers(min_value=1, max_value=2**40))
def test_count_bucket_is_the_next_power_of_two(n: int) -> None:
    from protocols.messages import count_bucket

    b = count_bucket(n)
    assert b >= n and b & (b - 1) == 0 and (b == 1 or b // 2 < n)
