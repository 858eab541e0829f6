"""Admission: the pure checks every signed reply must pass before it counts.

A rejection never raises and never crashes a round: it is a value with a
machine-readable ``reason`` (recorded in the round receipt) and a human
``detail`` (the coordinator's log only). Checks run cheapest and most
fundamental first, and the first failure decides.

Every signed message (submission or refusal, :func:`authenticate`):

1. ``not-enrolled``: the signing key is not in the member list;
2. ``bad-signature``: the Ed25519 signature does not verify (before trusting any field);
3. ``wrong-federation`` (another protocol version never gets this far: the wire
   message refuses to parse, and the round records the reply as malformed);
4. ``wrong-round``: replayed, stale or future message.

Then a submission (:func:`admit`):

5. ``wrong-base-model``: started from another global model;
6. ``wrong-tensor-set`` / ``wrong-shape`` / ``wrong-dtype``;
7. ``delta-digest-mismatch``: the arrays are not the ones that were signed;
8. ``non-finite``: NaN or Inf;
9. ``norm-exceeded``: global L2 norm above the member's bound
   (:mod:`coordinator.update_bound`);
10. ``bad-count``: an example count where the weighting wants none, or a missing,
    unbucketed (not a power of two) or oversized one where it wants one;
11. ``metrics-digest-mismatch``; ``undeclared-metric`` (a key outside
    :data:`TRAIN_METRICS` and ``n.<consortium endpoint>``); ``metric-out-of-range``;
    ``inconsistent-counts`` (``n.<endpoint>`` outside [0, the count]);
12. ``over-budget``: claimed cumulative ε above the plan's target or the member's
    enrolled maximum.

The model and featurisation specs are not checked here: the site refuses an
instruction whose specs it cannot reproduce (``spec-mismatch``) and its update is
bound to the base model digest, which the specs determine.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from protocols.canonical import canonical_json, sha256_hex, tensors_digest
from protocols.errors import MessageValidationError, SignatureError
from protocols.messages import Signed, UpdateSubmission
from protocols.signing import Ed25519PublicKey, verify

__all__ = ["EVAL_ENDPOINT_METRICS", "EVAL_METRICS", "TRAIN_METRICS", "AdmissionPolicy",
           "Admitted", "Member", "Rejected", "RoundExpectations", "admit", "authenticate",
           "check_evaluate_metrics"]

# The declared train-metric keys and their ranges; ``n.<endpoint>`` for consortium
# endpoints is declared separately (its range depends on the count). One table, so a key
# leaving the wire (as train-loss did) is one line.
TRAIN_METRICS: Mapping[str, tuple[float, float]] = {
    "num-examples": (1.0, float(2**40)),
}
# the relative slack on the plan's target ε (the sites' calibration tolerance is 1e-2 in ε
# but the committed total never exceeds the goal; this only absorbs float rounding)
EPSILON_SLACK = 1e-9


@dataclass(frozen=True, kw_only=True)
class Member:
    """An enrolled member as admission sees it."""

    name: str
    receipt_key: Ed25519PublicKey
    max_epsilon: float = math.inf
    # example cap fixed at enrolment (None: the federation's admission.max-num-examples)
    max_examples: int | None = None


@dataclass(frozen=True, kw_only=True)
class AdmissionPolicy:
    """Bounds from the federation config and the DP plan."""

    max_update_norm: float
    # per-member bounds (fingerprint -> norm) override ``max_update_norm``
    member_norm_bounds: Mapping[str, float] | None = None
    weighting: str = "uniform"
    # The count a member may claim under capped weighting (its weight is clipped at its
    # enrolled cap anyway; this only refuses absurd claims).
    max_num_examples: int = 2**40
    # the plan's target ε; inf under unsafe-no-dp (the sites then claim no guarantee)
    max_epsilon: float = math.inf


@dataclass(frozen=True, kw_only=True)
class RoundExpectations:
    """What a valid submission for this round must match."""

    federation_id: str
    round: int
    base_model_digest: str
    shapes: Mapping[str, tuple[int, ...]]
    members: Mapping[str, Member]
    dtype: str = "float32"
    endpoints: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Admitted:
    """The update may be aggregated."""

    member: str
    norm: float


@dataclass(frozen=True, kw_only=True)
class Rejected:
    """The reply is refused; ``reason`` goes into the receipt."""

    reason: str
    detail: str


def authenticate(message: Signed, *, expected: RoundExpectations) -> Member | Rejected:
    """The enrolled member that signed ``message`` for this federation and round."""
    fpr: str = getattr(message, "participant_fingerprint", "")
    member = expected.members.get(fpr)
    if member is None:
        return Rejected(reason="not-enrolled", detail=f"{fpr} is not an enrolled member")
    try:
        verify(member.receipt_key, message.signing_payload(), message.signature,
               what=f"{message.KIND} from {member.name}")
    except SignatureError as exc:
        return Rejected(reason="bad-signature", detail=exc.message)
    federation, round_ = getattr(message, "federation_id", None), getattr(message, "round", None)
    if federation != expected.federation_id:
        return Rejected(reason="wrong-federation", detail=str(federation))
    if round_ != expected.round:
        kind = "replayed" if isinstance(round_, int) and round_ < expected.round else "future"
        return Rejected(reason="wrong-round",
                        detail=f"{kind} {message.KIND} for round {round_}, "
                        f"this is round {expected.round}")
    return member


def _check_count(submission: UpdateSubmission, policy: AdmissionPolicy) -> Rejected | None:
    n = submission.num_examples
    if policy.weighting == "uniform":
        if n is not None:
            return Rejected(reason="bad-count", detail="uniform weighting: no count is sent")
        return None
    if n is None or n & (n - 1) or n > policy.max_num_examples:
        return Rejected(reason="bad-count",
                        detail=f"capped weighting needs a power-of-two count <= "
                        f"{policy.max_num_examples}, got {n}")
    return None


def _check_metrics(submission: UpdateSubmission, metrics: Mapping[str, float],
                   expected: RoundExpectations) -> Rejected | None:
    try:
        digest = sha256_hex(canonical_json(dict(metrics)))
    except MessageValidationError as exc:  # NaN, Inf: no canonical form
        return Rejected(reason="non-finite", detail=f"metrics: {exc.message}")
    if digest != submission.metrics_digest:
        return Rejected(reason="metrics-digest-mismatch",
                        detail="metrics do not match the signed metrics digest")
    heads = {f"n.{e}" for e in expected.endpoints}
    undeclared = sorted(set(metrics) - set(TRAIN_METRICS) - heads)
    if undeclared:
        return Rejected(reason="undeclared-metric",
                        detail=f"{len(undeclared)} undeclared key(s), e.g. {undeclared[:3]}")
    count = submission.num_examples or 1
    if "num-examples" in metrics and metrics["num-examples"] != count:
        return Rejected(reason="inconsistent-counts",
                        detail=f"num-examples {metrics['num-examples']} != signed {count}")
    for key, value in metrics.items():
        if key in heads:
            if not 0 <= value <= count:
                return Rejected(reason="inconsistent-counts",
                                detail=f"{key} = {value} outside [0, {count}]")
            continue
        lo, hi = TRAIN_METRICS[key]
        if not lo <= value <= hi:
            return Rejected(reason="metric-out-of-range",
                            detail=f"{key} = {value:.4g} outside [{lo:g}, {hi:g}]")
    return None


def admit(submission: UpdateSubmission, delta: Mapping[str, np.ndarray], *,
          policy: AdmissionPolicy, expected: RoundExpectations,
          metrics: Mapping[str, float] | None = None) -> Admitted | Rejected:
    """Decide on one submission. Pure: no I/O, no exceptions for bad input.

    ``metrics`` are the reply's aggregate metrics; when given they must match the
    signed ``metrics_digest``, use only the declared keys, and keep the per-endpoint
    counts (``n.<endpoint>``, which weight the heads) within the signed count.
    """
    member = authenticate(submission, expected=expected)
    if isinstance(member, Rejected):
        return member
    if submission.base_model_digest != expected.base_model_digest:
        return Rejected(reason="wrong-base-model",
                        detail="update was computed from another global model")
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
    bound = (policy.member_norm_bounds or {}).get(submission.participant_fingerprint,
                                                  policy.max_update_norm)
    if norm > bound:
        return Rejected(reason="norm-exceeded", detail=f"L2 norm {norm:.4g} > bound {bound:.4g}")
    bad = _check_count(submission, policy)
    if bad is None and metrics is not None:
        bad = _check_metrics(submission, metrics, expected)
    if bad is not None:
        return bad
    limit = min(policy.max_epsilon * (1 + EPSILON_SLACK), member.max_epsilon)
    if submission.claimed_epsilon > limit:
        return Rejected(reason="over-budget",
                        detail=f"claimed ε {submission.claimed_epsilon:.4g} > min(plan target "
                        f"{policy.max_epsilon:.4g}, enrolled {member.max_epsilon:.4g})")
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


# Declared evaluate-metric keys: global ones, and ``<endpoint>.<name>`` per consortium
# endpoint. Evaluate metrics are unsigned and advisory (they never touch the model), so a
# bad set is dropped from the round's evaluation with a reason, never admitted.
# Sites release per endpoint a DP-noised, clipped MAE or Brier score and a noised count
# (participant/private_evaluation.py); nothing global.
EVAL_METRICS: Mapping[str, tuple[float, float]] = {}
EVAL_ENDPOINT_METRICS: Mapping[str, tuple[float, float]] = {
    "n": (0.0, float(2**40)),
    "mae": (0.0, 1e6),
    "brier": (0.0, 1.0),
}


def check_evaluate_metrics(metrics: Mapping[str, float], *, endpoints: Iterable[str]
                           ) -> Rejected | None:
    """None if ``metrics`` is a declared, finite, in-range evaluate reply."""
    names = set(endpoints)
    for key, value in metrics.items():
        endpoint, _, name = key.rpartition(".")
        if key in EVAL_METRICS:
            lo, hi = EVAL_METRICS[key]
        elif endpoint in names and name in EVAL_ENDPOINT_METRICS:
            lo, hi = EVAL_ENDPOINT_METRICS[name]
        else:
            return Rejected(reason="undeclared-metric", detail=f"evaluate key {key[:80]!r}")
        if not (math.isfinite(value) and lo <= value <= hi):
            return Rejected(reason="metric-out-of-range",
                            detail=f"evaluate {key} = {value!r} outside [{lo:g}, {hi:g}]")
    return None
