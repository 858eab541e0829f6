"""Admission: one test per rejection reason, named after the attack."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.admission import (
    AdmissionPolicy,
    Admitted,
    Member,
    Rejected,
    RoundExpectations,
    admit,
    admit_many,
)
from protocols.canonical import canonical_json, sha256_hex, tensors_digest
from protocols.messages import UpdateSubmission
from protocols.signing import Ed25519PrivateKey, fingerprint, sign

ALICE = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
MALLORY = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)
SHAPES = {"trunk.0.weight": (3, 4), "heads.logd.bias": (1,)}
BASE = "a" * 64


def _delta(scale: float = 0.01) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: (rng.normal(size=s) * scale).astype(np.float32) for k, s in SHAPES.items()}


def _submit(delta: dict[str, np.ndarray], *, signer: Ed25519PrivateKey = ALICE,
            claimed_by: Ed25519PrivateKey | None = None, **fields: object) -> UpdateSubmission:
    d: dict[str, object] = {
        "protocol_version": "fedadmet/1", "federation_id": "fed", "round": 4,
        "participant_fingerprint": fingerprint(claimed_by or signer),
        "base_model_digest": BASE, "delta_digest": tensors_digest(delta), "num_examples": None,
        "claimed_epsilon": 2.0, "delta": 1e-5, "metrics_digest": "f" * 64}
    d.update(fields)
    unsigned = UpdateSubmission(**d)  # type: ignore[arg-type]
    return UpdateSubmission.from_dict({**unsigned.to_dict(),
                                       "signature": sign(signer, unsigned.signing_payload())})


def _expect(**overrides: object) -> RoundExpectations:
    d: dict[str, object] = {
        "federation_id": "fed", "round": 4, "base_model_digest": BASE, "shapes": SHAPES,
        "members": {fingerprint(ALICE): Member(name="alice", receipt_key=ALICE.public_key(),
                                               max_epsilon=8.0)},
        "endpoints": ("logd",)}
    d.update(overrides)
    return RoundExpectations(**d)  # type: ignore[arg-type]


def _decide(sub: UpdateSubmission, delta: dict[str, np.ndarray],
            **overrides: object) -> Admitted | Rejected:
    return admit(sub, delta, policy=AdmissionPolicy(max_update_norm=1.0),
                 expected=_expect(**overrides))


def _reason(result: Admitted | Rejected) -> str:
    assert isinstance(result, Rejected), result
    return result.reason


def test_honest_update_is_admitted() -> None:
    delta = _delta()
    result = _decide(_submit(delta), delta)
    assert isinstance(result, Admitted) and result.member == "alice" and result.norm < 1.0


def test_non_enrolled_participant_is_rejected() -> None:
    delta = _delta()
    assert _reason(_decide(_submit(delta, signer=MALLORY), delta)) == "not-enrolled"


def test_submission_signed_by_other_member_is_rejected() -> None:
    delta = _delta()
    forged = _submit(delta, signer=MALLORY, claimed_by=ALICE)
    assert _reason(_decide(forged, delta)) == "bad-signature"


def test_replayed_round_is_rejected() -> None:
    delta = _delta()
    assert _reason(_decide(_submit(delta, round=3), delta)) == "wrong-round"


def test_stale_update_from_another_global_model_is_rejected() -> None:
    delta = _delta()
    assert _reason(_decide(_submit(delta, base_model_digest="b" * 64), delta)) == \
        "wrong-base-model"


def test_wrong_federation_is_rejected() -> None:
    delta = _delta()
    assert _reason(_decide(_submit(delta, federation_id="other"), delta)) == "wrong-federation"


def test_missing_or_extra_tensor_is_rejected() -> None:
    delta = _delta()
    delta["heads.private.weight"] = np.zeros(2, np.float32)  # leaking a private head
    assert _reason(_decide(_submit(delta), delta)) == "wrong-tensor-set"


def test_wrong_shape_is_rejected() -> None:
    delta = _delta()
    delta["trunk.0.weight"] = np.zeros((4, 3), np.float32)
    assert _reason(_decide(_submit(delta), delta)) == "wrong-shape"


def test_wrong_dtype_is_rejected() -> None:
    delta = _delta()
    delta["heads.logd.bias"] = delta["heads.logd.bias"].astype(np.float64)
    assert _reason(_decide(_submit(delta), delta)) == "wrong-dtype"


def test_swapped_arrays_after_signing_are_rejected() -> None:
    delta = _delta()
    sub = _submit(delta)
    tampered = {k: v * 2 for k, v in delta.items()}
    assert _reason(_decide(sub, tampered)) == "delta-digest-mismatch"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_update_is_rejected(bad: float) -> None:
    delta = _delta()
    delta["trunk.0.weight"][0, 0] = bad
    assert _reason(_decide(_submit(delta), delta)) == "non-finite"


def test_model_poisoning_by_oversized_update_is_rejected() -> None:
    delta = _delta(scale=10.0)
    result = _decide(_submit(delta), delta)
    assert _reason(result) == "norm-exceeded"


def test_participant_over_declared_budget_is_rejected() -> None:
    delta = _delta()
    assert _reason(_decide(_submit(delta, claimed_epsilon=9.5), delta)) == "over-budget"


def test_claimed_epsilon_of_1e300_is_rejected_against_the_plan() -> None:
    # a member enrolled without a maximum is still held to the plan's target ε
    delta = _delta()
    members = {fingerprint(ALICE): Member(name="alice", receipt_key=ALICE.public_key())}
    policy = AdmissionPolicy(max_update_norm=1.0, max_epsilon=8.0)
    sub = _submit(delta, claimed_epsilon=1e300)
    assert _reason(admit(sub, delta, policy=policy, expected=_expect(members=members))) == \
        "over-budget"
    honest = _submit(delta, claimed_epsilon=8.0)
    assert isinstance(admit(honest, delta, policy=policy, expected=_expect(members=members)),
                      Admitted)


def test_example_count_under_uniform_weighting_is_rejected() -> None:
    # uniform weighting: the site sends no count; one that does is not following the plan
    delta = _delta()
    assert _reason(_decide(_submit(delta, num_examples=64), delta)) == "bad-count"


@pytest.mark.parametrize("count", [None, 1000, 2**41])
def test_unbucketed_or_absurd_count_under_capped_weighting_is_rejected(
        count: int | None) -> None:
    delta = _delta()
    policy = AdmissionPolicy(max_update_norm=1.0, weighting="capped")
    result = admit(_submit(delta, num_examples=count), delta, policy=policy, expected=_expect())
    assert _reason(result) == "bad-count"
    ok = admit(_submit(delta, num_examples=1024), delta, policy=policy, expected=_expect())
    assert isinstance(ok, Admitted)


def _with_metrics(delta: dict[str, np.ndarray], metrics: dict[str, float]
                  ) -> UpdateSubmission:
    return _submit(delta, metrics_digest=sha256_hex(canonical_json(metrics)))


def test_honest_metrics_matching_the_signed_digest_are_admitted() -> None:
    delta, metrics = _delta(), {"n.logd": 1.0}
    result = admit(_with_metrics(delta, metrics), delta, metrics=metrics,
                   policy=AdmissionPolicy(max_update_norm=1.0), expected=_expect())
    assert isinstance(result, Admitted)


@pytest.mark.parametrize(("metrics", "reason"), [
    ({f"junk{i}": 0.0 for i in range(2000)}, "undeclared-metric"),
    ({"n.secret-endpoint": 1.0}, "undeclared-metric"),
    ({"train-loss": 0.5}, "undeclared-metric"),  # an un-noised loss never leaves a site
    ({"num-examples": 1e308}, "inconsistent-counts"),  # the signed count says otherwise
    ({"num-examples": -1.0}, "inconsistent-counts"),
    ({"steps": 10.0}, "undeclared-metric"),
])
def test_signed_junk_train_metrics_are_rejected(metrics: dict[str, float], reason: str) -> None:
    delta = _delta()
    result = admit(_with_metrics(delta, metrics), delta, metrics=metrics,
                   policy=AdmissionPolicy(max_update_norm=1.0), expected=_expect())
    assert _reason(result) == reason


def test_metrics_swapped_after_signing_are_rejected() -> None:
    delta = _delta()
    sub = _with_metrics(delta, {"n.logd": 50.0, "num-examples": 64.0})
    result = admit(sub, delta, metrics={"n.logd": 50.0, "num-examples": 128.0},
                   policy=AdmissionPolicy(max_update_norm=1.0), expected=_expect())
    assert _reason(result) == "metrics-digest-mismatch"


@pytest.mark.parametrize(("count", "claimed"), [(2.0, None), (-1.0, None), (65.0, 64),
                                               (1.0, 64)])
def test_head_weight_inflation_by_endpoint_count_is_rejected(count: float,
                                                             claimed: int | None) -> None:
    # n.<endpoint> weights that endpoint's head: more labels than examples is a lie
    # (under uniform the count is 1, under capped the signed bucket); and num-examples,
    # when sent, must be the signed count
    metrics = {"n.logd": count} if count != 1.0 else {"num-examples": 32.0}
    delta = _delta()
    policy = AdmissionPolicy(max_update_norm=1.0,
                             weighting="uniform" if claimed is None else "capped")
    sub = _submit(delta, num_examples=claimed,
                  metrics_digest=sha256_hex(canonical_json(metrics)))
    result = admit(sub, delta, metrics=metrics, policy=policy, expected=_expect())
    assert _reason(result) == "inconsistent-counts"


def test_non_finite_metrics_are_rejected_not_raised() -> None:
    delta = _delta()
    result = admit(_submit(delta), delta, metrics={"n.logd": float("nan")},
                   policy=AdmissionPolicy(max_update_norm=1.0), expected=_expect())
    assert _reason(result) == "non-finite"


def test_double_submission_to_double_weight_is_rejected() -> None:
    delta = _delta()
    sub = _submit(delta)
    out = admit_many([(sub, delta), (sub, delta)], policy=AdmissionPolicy(max_update_norm=1.0),
                     expected=_expect())
    assert _reason(out[fingerprint(ALICE)]) == "duplicate-submission"


def test_admit_many_decides_per_participant() -> None:
    delta = _delta()
    honest, forged = _submit(delta), _submit(delta, signer=MALLORY)
    out = admit_many([(honest, delta), (forged, delta)],
                     policy=AdmissionPolicy(max_update_norm=1.0), expected=_expect())
    assert isinstance(out[fingerprint(ALICE)], Admitted)
    assert _reason(out[fingerprint(MALLORY)]) == "not-enrolled"
