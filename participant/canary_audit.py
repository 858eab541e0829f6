"""Canary audit of the DP-SGD implementation: an empirical lower bound on ε.

Following Jagielski, Ullman and Oprea 2020 ("Auditing Differentially Private
Machine Learning"), ``k`` canary records are crafted: in-distribution
structures (compounds of the site's own held-out set) with an
out-of-distribution label (a regression value ``CANARY_SHIFT`` training
standard deviations above the mean, or a flipped class). The site's training
data is trained on through the production path,
``participant.dp.local_round.train_dp_round`` (hence ``participant.dp.training.dp_train``:
Poisson sampling, per-sample clipping, noise), ``runs`` times with the
canaries and ``runs`` times without, from the same initial weights. Each
run's score is :func:`canary_score` of the trained model; the
threshold test on those scores gives the ε lower bound of
:mod:`participant.epsilon_lower_bound`.

The k canaries differ from the clean data in k records, so the claim they are
held to is the accountant's ε under group privacy: ``(k ε, k e^{(k-1) ε} δ)``
(Dwork and Roth 2014, Theorem 2.2). A sound implementation keeps the lower
bound below that claim. ``unsafe_disable_noise`` trains with
``noise_multiplier = 0`` while the claim stays the calibrated one: an
implementation that forgot its noise. The audit must flag it, and that is
the test that it can.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from chem.models import MultiTaskMLP, masked_loss
from participant.dp.local_round import train_dp_round
from participant.epsilon_lower_bound import DistinguishingBound, distinguishing_bound
from participant.ledger import Accountant, epsilon_for
from participant.membership_inference import per_example_losses

__all__ = [
    "CANARY_SHIFT",
    "MARKER_COLUMNS",
    "Canaries",
    "CanaryAuditResult",
    "DPMechanism",
    "canary_score",
    "craft_canaries",
    "group_claim",
    "run_canary_audit",
]

log = logging.getLogger(__name__)

CANARY_SHIFT = 8.0  # training standard deviations: far outside any real assay's range
MARKER_COLUMNS = 32


@dataclass(frozen=True, kw_only=True)
class DPMechanism:
    """What one audited training run is: the DP-SGD parameters, in Opacus's vocabulary."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    lr: float
    delta: float
    optimizer: Literal["sgd", "adam"] = "sgd"
    accountant: Accountant = "rdp"

    def epsilon(self) -> float:
        """The accountant's ε for one run (one record)."""
        return epsilon_for([(self.noise_multiplier, self.sample_rate, self.steps)],
                           delta=self.delta, accountant=self.accountant)


@dataclass(frozen=True, kw_only=True)
class CanaryAuditResult:
    """The lower bound next to the claim it is held to."""

    canaries: int
    runs: int
    claimed_epsilon: float  # the accountant's ε for the group of canaries
    claimed_delta: float
    record_epsilon: float   # the accountant's ε for one record
    bound: DistinguishingBound
    noise_multiplier_used: float
    unsafe_noise_disabled: bool
    scores_with: list[float]
    scores_without: list[float]
    seconds: float

    @property
    def epsilon_lower_bound(self) -> float:
        """The empirical ε lower bound."""
        return self.bound.epsilon

    @property
    def flagged(self) -> bool:
        """The bound exceeds the claim: the implementation does not give the ε it claims."""
        return self.bound.epsilon > self.claimed_epsilon

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"canaries": self.canaries, "runs": self.runs,
                "claimed_epsilon": self.claimed_epsilon, "claimed_delta": self.claimed_delta,
                "record_epsilon": self.record_epsilon,
                "epsilon_lower_bound": self.epsilon_lower_bound, "flagged": self.flagged,
                "bound": self.bound.to_dict(),
                "noise_multiplier_used": self.noise_multiplier_used,
                "unsafe_noise_disabled": self.unsafe_noise_disabled,
                "scores_with": self.scores_with, "scores_without": self.scores_without,
                "seconds": self.seconds}


@dataclass(frozen=True, kw_only=True)
class Canaries:
    """Crafted records, and the feature columns only they set (empty: none were free)."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    marker_columns: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


def group_claim(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """(k ε, k e^{(k-1) ε} δ): the guarantee for k records from one for a single record."""
    return k * epsilon, min(1.0, k * math.exp((k - 1) * epsilon) * delta)


def craft_canaries(model: MultiTaskMLP, x_pool: np.ndarray, mask_pool: np.ndarray, *, k: int,
                   x_train: np.ndarray, rng: np.random.Generator,
                   markers: int = MARKER_COLUMNS) -> Canaries:
    """``k`` pool structures, each labelled on one endpoint only, with an impossible label.

    Each canary also sets up to ``markers`` feature columns that no training
    row sets (Nasr et al. 2021's crafted-input canary): the weights that read
    them move only with the canary, so without noise its inclusion shows
    plainly. A DP guarantee covers any record, crafted ones included.
    """
    labelled = np.flatnonzero(mask_pool.any(axis=1))
    if len(labelled) < k:
        raise ValueError(f"need {k} labelled structures for canaries, have {len(labelled)}")
    rows = rng.choice(labelled, size=k, replace=False)
    x = np.array(x_pool[rows], dtype=np.float32)
    unused = np.flatnonzero(~(np.asarray(x_train) != 0).any(axis=0))
    per = min(markers, len(unused) // k) or min(markers, len(unused))
    used: list[int] = []
    y = np.zeros((k, mask_pool.shape[1]), np.float32)
    mask = np.zeros_like(y)
    for i, r in enumerate(rows):
        j = int(np.flatnonzero(mask_pool[r])[0])
        e = model.spec.endpoints[j]
        # Regression: far above the mean; classification: a positive label on a structure
        # the model puts at the base rate (the loss drops only if the canary was seen).
        y[i, j] = (e.target_offset + CANARY_SHIFT * e.target_scale
                   if e.task == "regression" else 1.0)
        mask[i, j] = 1.0
        cols = unused[(i * per) % max(len(unused), 1):][:per]
        x[i, cols] = 1.0
        used += [int(c) for c in cols]
    return Canaries(x=x, y=y, mask=mask, marker_columns=np.unique(np.asarray(used, np.int64)))


def _input_weights(model: MultiTaskMLP) -> list[torch.Tensor]:
    return [mod.weight for mod in model.modules()
            if isinstance(mod, torch.nn.Linear) and mod.in_features == model.spec.input_dim]


def canary_score(model: MultiTaskMLP, initial: MultiTaskMLP, canaries: Canaries) -> float:
    """How much the trained model shows the canaries (higher: more likely trained on them).

    With marker columns: the squared displacement from the initial weights of
    the input weights that read them, a white-box score on the released
    weights (Nasr et al. 2021). Without: minus the canaries' mean loss.
    """
    cols = torch.as_tensor(canaries.marker_columns, dtype=torch.long)
    if len(cols) == 0:
        return -float(per_example_losses(model, canaries.x, canaries.y, canaries.mask).mean())
    with torch.no_grad():
        return float(sum(float((w[:, cols] - w0[:, cols]).square().sum())
                         for w, w0 in zip(_input_weights(model), _input_weights(initial),
                                          strict=True)))


def run_canary_audit(initial: MultiTaskMLP, data: tuple[np.ndarray, np.ndarray, np.ndarray],
                     canaries: Canaries, *,
                     mechanism: DPMechanism, runs: int, alpha: float = 0.05,
                     trainable: list[str] | None = None, unsafe_disable_noise: bool = False,
                     on_run: Callable[[int], None] | None = None) -> CanaryAuditResult:
    """Train ``runs`` times with and without the canaries; bound ε from the scores."""
    t0 = time.perf_counter()
    k = len(canaries)
    if runs < 4 or k < 1:
        raise ValueError(f"need runs >= 4 and at least one canary, got runs={runs}, k={k}")
    sigma = mechanism.noise_multiplier
    if unsafe_disable_noise:
        log.warning("UNSAFE: canary audit with noise_multiplier 0 (claim kept at σ=%.3f): "
                    "this run demonstrates that the audit detects missing noise", sigma)
        sigma = 0.0
    x, y, m = data

    def tensors(*arrays: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, b, c = (torch.from_numpy(np.ascontiguousarray(v, np.float32)) for v in arrays)
        return a, b, c

    with_c = tensors(*(np.concatenate([a, c]) for a, c in
                       zip((x, y, m), (canaries.x, canaries.y, canaries.mask), strict=True)))
    without = tensors(x, y, m)
    # One sample rate in both worlds: the datasets differ only in the k canaries.
    spec = initial.spec
    scores: dict[bool, list[float]] = {True: [], False: []}
    for r in range(2 * runs):
        inserted = r % 2 == 0  # interleaved, so drift in machine load hits both alike
        model = copy.deepcopy(initial)
        train_dp_round(
            model, with_c if inserted else without,
            loss_fn=lambda pred, yb, mb: masked_loss(pred, yb, mb, spec, reduction="none"),
            max_grad_norm=mechanism.max_grad_norm, noise_multiplier=sigma,
            sample_rate=mechanism.sample_rate, steps=mechanism.steps, lr=mechanism.lr,
            optimizer=mechanism.optimizer, trainable=trainable)
        scores[inserted].append(canary_score(model, initial, canaries))
        if on_run is not None:
            on_run(r)
    record_eps = mechanism.epsilon()
    claim_eps, claim_delta = group_claim(record_eps, mechanism.delta, k)
    bound = distinguishing_bound(np.array(scores[True]), np.array(scores[False]),
                                 delta=claim_delta, alpha=alpha)
    return CanaryAuditResult(
        canaries=k, runs=runs, claimed_epsilon=claim_eps, claimed_delta=claim_delta,
        record_epsilon=record_eps, bound=bound, noise_multiplier_used=sigma,
        unsafe_noise_disabled=unsafe_disable_noise, scores_with=scores[True],
        scores_without=scores[False], seconds=time.perf_counter() - t0)
