"""Admission: the pure checks every submitted update must pass before aggregation.

A rejection never raises and never crashes a round: it is a value with a
machine-readable ``reason`` (recorded in the round receipt) and a human
``detail``. Checks run cheapest and most fundamental first, and the first
failure decides:

1. ``not-enrolled``: the signing key is not in the member list;
2. ``bad-signature``: the Ed25519 signature does not verify (before trusting any field);
3. ``wrong-federation`` (another protocol version never gets this far: the wire
   message refuses to parse, and the round records the reply as malformed);
4. ``wrong-round``: replayed or stale update;
5. ``wrong-base-model``: started from another global model;
6. ``wrong-model-spec`` / ``wrong-featurization-spec``: the reply's specs differ;
7. ``wrong-tensor-set`` / ``wrong-shape`` / ``wrong-dtype``;
8. ``delta-digest-mismatch``: the arrays are not the ones that were signed;
9. ``non-finite``: NaN or Inf;
10. ``norm-exceeded``: global L2 norm above the bound;
11. ``over-budget``: claimed cumulative ε above the member's declared budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from protocols.canonical import canonical_json, sha256_hex, tensors_digest
from protocols.errors import MessageValidationError, SignatureError
from protocols.messages import UpdateSubmission
from protocols.signing import Ed25519PublicKey, verify

__all__ = ["AdmissionPolicy", "Admitted", "Member", "Rejected", "RoundExpectations", "admit"]


@dataclass(frozen=True, kw_only=True)
class Member:
    """An enrolled member as admission sees it."""

    name: str
    receipt_key: Ed25519PublicKey
    max_epsilon: float = math.inf


@dataclass(frozen=True, kw_only=True)
class AdmissionPolicy:
    """Bounds from the federation config."""

    max_update_norm: float
    # Under example-count weighting a member's weight is the count it claims, so an
    # unbounded claim would let one member outvote everyone else.
    max_num_examples: int = 1_000_000


@dataclass(frozen=True, kw_only=True)
class RoundExpectations:
    """What a valid submission for this round must match."""

    federation_id: str
    round: int
    base_model_digest: str
    shapes: Mapping[str, tuple[int, ...]]
    members: Mapping[str, Member]
    dtype: str = "float32"
    model_spec_digest: str | None = None
    featurization_spec_digest: str | None = None
    reported_specs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Admitted:
    """The update may be aggregated."""

    member: str
    norm: float


@dataclass(frozen=True, kw_only=True)
class Rejected:
    """The update is refused; ``reason`` goes into the receipt."""

    reason: str
    detail: str


def admit(submission: UpdateSubmission, delta: Mapping[str, np.ndarray], *,
          policy: AdmissionPolicy, expected: RoundExpectations,
          metrics: Mapping[str, float] | None = None) -> Admitted | Rejected:
    """Decide on one submission. Pure: no I/O, no exceptions for bad input.

    ``metrics`` are the reply's aggregate metrics; when given they must match the
    signed ``metrics_digest``, and the per-endpoint counts (``n.<endpoint>``) that
    weight the heads must be finite and no larger than ``num_examples``.
    """
    member = expected.members.get(submission.participant_fingerprint)
    if member is None:
        return Rejected(reason="not-enrolled",
                        detail=f"{submission.participant_fingerprint} is not an enrolled member")
    try:
        verify(member.receipt_key, submission.signing_payload(), submission.signature,
               what=f"submission from {member.name}")
    except SignatureError as exc:
        return Rejected(reason="bad-signature", detail=exc.message)
    if submission.federation_id != expected.federation_id:
        return Rejected(reason="wrong-federation", detail=submission.federation_id)
    if submission.round != expected.round:
        kind = "replayed" if submission.round < expected.round else "future"
        return Rejected(reason="wrong-round",
                        detail=f"{kind} update for round {submission.round}, "
                        f"this is round {expected.round}")
    if submission.base_model_digest != expected.base_model_digest:
        return Rejected(reason="wrong-base-model",
                        detail="update was computed from another global model")
    for name, want in (("model-spec", expected.model_spec_digest),
                       ("featurization-spec", expected.featurization_spec_digest)):
        got = expected.reported_specs.get(name)
        if want is not None and got is not None and got != want:
            return Rejected(reason=f"wrong-{name}", detail=f"{got[:12]} != {want[:12]}")
    if set(delta) != set(expected.shapes):
        missing = sorted(set(expected.shapes) - set(delta))
        extra = sorted(set(delta) - set(expected.shapes))
        return Rejected(reason="wrong-tensor-set", detail=f"missing {missing}, extra {extra}")
    for name, array in delta.items():
        if tuple(array.shape) != tuple(expected.shapes[name]):
            return Rejected(reason="wrong-shape",
                            detail=f"{name}: {tuple(array.shape)} != {expected.shapes[name]}")
        if array.dtype != np.dtype(expected.dtype):
            return Rejected(reason="wrong-dtype", detail=f"{name}: {array.dtype}")
    if tensors_digest(delta) != submission.delta_digest:
        return Rejected(reason="delta-digest-mismatch",
                        detail="arrays do not match the signed delta digest")
    sq = 0.0
    for array in delta.values():
        if not np.isfinite(array).all():
            return Rejected(reason="non-finite", detail="update contains NaN or Inf")
        sq += float(np.dot(array.ravel().astype(np.float64), array.ravel().astype(np.float64)))
    norm = math.sqrt(sq)
    if norm > policy.max_update_norm:
        return Rejected(reason="norm-exceeded",
                        detail=f"L2 norm {norm:.4g} > bound {policy.max_update_norm:.4g}")
    if submission.num_examples > policy.max_num_examples:
        return Rejected(reason="num-examples-exceeded",
                        detail=f"claims {submission.num_examples} examples > bound "
                        f"{policy.max_num_examples} (admission.max-num-examples)")
    if metrics is not None:
        try:
            digest = sha256_hex(canonical_json(dict(metrics)))
        except MessageValidationError as exc:  # NaN, Inf: no canonical form
            return Rejected(reason="non-finite", detail=f"metrics: {exc.message}")
        if digest != submission.metrics_digest:
            return Rejected(reason="metrics-digest-mismatch",
                            detail="metrics do not match the signed metrics digest")
        for key, value in metrics.items():
            if key.startswith("n.") and not (math.isfinite(value)
                                             and 0 <= value <= submission.num_examples):
                return Rejected(reason="inconsistent-counts",
                                detail=f"{key} = {value} outside [0, num_examples = "
                                f"{submission.num_examples}]")
    if submission.claimed_epsilon > member.max_epsilon:
        return Rejected(reason="over-budget",
                        detail=f"claimed ε {submission.claimed_epsilon:.3f} > declared "
                        f"{member.max_epsilon:.3f}")
    return Admitted(member=member.name, norm=norm)


def admit_many(submissions: Iterable[tuple[UpdateSubmission, Mapping[str, np.ndarray]]], *,
               policy: AdmissionPolicy, expected: RoundExpectations
               ) -> dict[str, Admitted | Rejected]:
    """Per-participant decisions, keyed by fingerprint.

    A second submission from the same fingerprint in one round is rejected as
    ``duplicate-submission`` (it would otherwise double that member's weight).
    """
    out: dict[str, Admitted | Rejected] = {}
    for sub, delta in submissions:
        fp = sub.participant_fingerprint
        if fp in out:
            out[fp] = Rejected(reason="duplicate-submission",
                               detail=f"{fp} submitted more than once in round {sub.round}")
            continue
        out[fp] = admit(sub, delta, policy=policy, expected=expected)
    return out
