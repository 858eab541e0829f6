"""Federated evaluation metrics released under record-level DP.

A site's held-out split is private data like its training split: an exact
mean error over it, for a model the coordinator chose, is a query on those
labels (three crafted models recover their mean and variance). So the site
releases only a Gaussian-mechanism answer to a bounded query, and the ledger
charges it like any other release.

The query, per consortium endpoint ``e`` the site holds validation labels for:

- ``S_e``, a sum of per-molecule contributions each clipped into ``[0, 1]``:
  regression, ``min(|pred - y| / target_scale, error_bound) / error_bound``
  (``target_scale`` is the endpoint's public scale from the global model
  spec); classification, the Brier term ``(p - y)^2``, already in ``[0, 1]``;
- ``N_e``, the number of labelled molecules.

Adding or removing one molecule moves each ``S_e`` and ``N_e`` it is labelled
for by at most 1, so the L2 sensitivity of the whole vector is
``sqrt(2 k)`` for ``k`` released endpoints. Each coordinate gets
``N(0, (noise_multiplier * sqrt(2 k))^2)``: the Gaussian mechanism (Dwork &
Roth 2014, "The Algorithmic Foundations of Differential Privacy", Thm A.1),
whose Rényi DP is ``alpha / (2 noise_multiplier^2)`` (Mironov 2017, "Rényi
Differential Privacy", Prop. 7). That is one Opacus accountant step at
``sample_rate = 1``, which is how the ledger records it
(:data:`SAMPLE_RATE`, :data:`STEPS`). Everything after the noisy sums (the
ratio, the clamp into the metric's range, the rounded count) is
post-processing and costs nothing more.

Released keys: ``<e>.mae`` (regression; clipped MAE in the endpoint's units)
or ``<e>.brier`` (classification; AUROC is not a sum of per-molecule terms,
so it has no bounded sensitivity), and ``<e>.n`` (the noisy count, rounded,
at least 0), for *every* consortium endpoint, labelled here or not: which
keys are present must not depend on the data. Nothing is released for
private endpoints.

The noise comes from the OS CSPRNG (:class:`secrets.SystemRandom`): nothing
about it can be searched for. A seeded ``random.Random`` is for tests only.
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SAMPLE_RATE", "STEPS", "EndpointBound", "exact_metrics", "release_metrics"]

# One release of the whole vector: an accountant step with every record present.
SAMPLE_RATE = 1.0
STEPS = 1
DEFAULT_ERROR_BOUND = 2.0  # regression errors count up to 2 target scales (then clip)


@dataclass(frozen=True, kw_only=True)
class EndpointBound:
    """A consortium endpoint as the release sees it: name, task, public scale."""

    name: str
    task: str
    target_scale: float = 1.0


def metric_name(task: str) -> str:
    """The released metric for a task (``mae`` or ``brier``)."""
    return "brier" if task == "classification" else "mae"


def _contributions(y: np.ndarray, pred: np.ndarray, e: EndpointBound, *,
                   error_bound: float) -> np.ndarray:
    """Each labelled molecule's term, in [0, 1].

    A non-finite prediction (a model crafted to overflow on chosen molecules) counts as the
    worst term, 1: a NaN would otherwise make the whole noisy sum NaN whatever the noise.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        if e.task == "classification":
            raw = np.clip((pred - y) ** 2, 0.0, 1.0)
        else:
            raw = np.minimum(np.abs(pred - y) / e.target_scale, error_bound) / error_bound
    return np.asarray(np.where(np.isfinite(raw), raw, 1.0), dtype=np.float64)


def _sums(y: np.ndarray, pred: np.ndarray, mask: np.ndarray,
          endpoints: Sequence[EndpointBound], *, error_bound: float
          ) -> dict[str, tuple[float, int]]:
    out: dict[str, tuple[float, int]] = {}
    for j, e in enumerate(endpoints):
        sel = mask[:, j] > 0
        terms = _contributions(y[sel, j].astype(np.float64), pred[sel, j].astype(np.float64),
                               e, error_bound=error_bound)
        out[e.name] = (float(terms.sum()), int(sel.sum()))
    return out


def _finish(e: EndpointBound, s: float, n: float, *, error_bound: float) -> float:
    mean = min(1.0, max(0.0, s / n)) if n >= 1.0 else 1.0
    return mean * error_bound * e.target_scale if e.task == "regression" else mean


def exact_metrics(y: np.ndarray, pred: np.ndarray, mask: np.ndarray,
                  endpoints: Sequence[EndpointBound], *,
                  error_bound: float = DEFAULT_ERROR_BOUND) -> dict[str, float]:
    """The same metrics without noise: for the site's own log, never for the wire."""
    out: dict[str, float] = {}
    for name, (s, n) in _sums(y, pred, mask, endpoints, error_bound=error_bound).items():
        e = next(x for x in endpoints if x.name == name)
        out[f"{name}.{metric_name(e.task)}"] = _finish(e, s, n, error_bound=error_bound)
        out[f"{name}.n"] = float(n)
    return out


def release_metrics(y: np.ndarray, pred: np.ndarray, mask: np.ndarray,
                    endpoints: Sequence[EndpointBound], *, noise_multiplier: float,
                    error_bound: float = DEFAULT_ERROR_BOUND,
                    rng: random.Random | None = None) -> dict[str, float]:
    """The DP release described in the module docstring.

    ``y``, ``pred`` and ``mask`` are (molecules, endpoints) in ``endpoints``'
    order, predictions in original units (probabilities for classification).
    """
    if not noise_multiplier > 0 or not math.isfinite(noise_multiplier):
        raise ValueError(f"noise_multiplier must be positive and finite, got {noise_multiplier}")
    if not error_bound > 0:
        raise ValueError(f"error_bound must be positive, got {error_bound}")
    draw = rng if rng is not None else secrets.SystemRandom()
    std = noise_multiplier * math.sqrt(2 * len(endpoints))
    out: dict[str, float] = {}
    for name, (s, n) in _sums(y, pred, mask, endpoints, error_bound=error_bound).items():
        e = next(x for x in endpoints if x.name == name)
        noisy_s = s + draw.gauss(0.0, std)
        noisy_n = n + draw.gauss(0.0, std)
        out[f"{name}.{metric_name(e.task)}"] = _finish(e, noisy_s, noisy_n,
                                                       error_bound=error_bound)
        out[f"{name}.n"] = float(max(0, round(noisy_n)))
    return out
