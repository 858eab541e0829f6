"""Empirical lower bounds on ε from a distinguishing test: pure functions.

If a mechanism is (ε, δ)-DP, every test that tells "trained with the canary"
(positive) from "trained without" (negative) has false-positive and
false-negative rates with

    FPR + e^ε FNR >= 1 - δ   and   FNR + e^ε FPR >= 1 - δ

(Kairouz, Oh and Viswanath 2015). Jagielski, Ullman and Oprea 2020
("Auditing Differentially Private Machine Learning: How Private is Private
SGD?", NeurIPS, Algorithm 2) turn observed rates into a lower bound that
holds with confidence ``1 - alpha``: replace each rate by its Clopper-Pearson
upper bound (1934) and take

    ε_LB = max(log((1 - δ - FPR_upper) / FNR_upper),
               log((1 - δ - FNR_upper) / FPR_upper)),

clamped at 0. Each upper bound is the upper end of a two-sided ``1 - alpha``
interval, so both hold together with probability at least ``1 - alpha``.

The threshold of the test is chosen on one half of the runs and the bound is
computed on the other half, so choosing it does not bias the counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

__all__ = ["DistinguishingBound", "clopper_pearson", "distinguishing_bound",
           "epsilon_lower_bound", "max_epsilon_lower_bound"]


def clopper_pearson(successes: int, trials: int, *, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided ``1 - alpha`` binomial interval (Clopper and Pearson 1934)."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, trials >= 1; got {successes}/{trials}")
    lo = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(
        beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return lo, hi


def epsilon_lower_bound(*, false_positives: int, negatives: int, false_negatives: int,
                        positives: int, delta: float, alpha: float = 0.05) -> float:
    """Jagielski et al. 2020's ε lower bound from a test's error counts (0 if none)."""
    fpr = clopper_pearson(false_positives, negatives, alpha=alpha)[1]
    fnr = clopper_pearson(false_negatives, positives, alpha=alpha)[1]
    best = 0.0
    for a, b in ((fpr, fnr), (fnr, fpr)):
        if b > 0 and 1 - delta - a > 0:
            best = max(best, math.log((1 - delta - a) / b))
    return best


def max_epsilon_lower_bound(*, runs: int, delta: float, alpha: float = 0.05) -> float:
    """The largest bound ``runs`` positive and ``runs`` negative trials can show (no errors)."""
    return epsilon_lower_bound(false_positives=0, negatives=runs, false_negatives=0,
                               positives=runs, delta=delta, alpha=alpha)


@dataclass(frozen=True, kw_only=True)
class DistinguishingBound:
    """A threshold test's counts on the held-back half, and the ε lower bound they give."""

    epsilon: float
    threshold: float
    false_positives: int
    negatives: int
    false_negatives: int
    positives: int
    ceiling: float  # the bound these counts could give with no errors at all

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready form."""
        return dict(self.__dict__)


def _counts(pos: np.ndarray, neg: np.ndarray, t: float) -> tuple[int, int]:
    return int((neg >= t).sum()), int((pos < t).sum())


def distinguishing_bound(positive_scores: np.ndarray, negative_scores: np.ndarray, *,
                         delta: float, alpha: float = 0.05) -> DistinguishingBound:
    """Choose "positive if score >= t" on the first half of each class, bound on the second.

    Scores are one per training run (higher: more like "trained with the
    canary"). Runs are independent, so any fixed split is valid.
    """
    pos = np.asarray(positive_scores, dtype=np.float64).ravel()
    neg = np.asarray(negative_scores, dtype=np.float64).ravel()
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError("need at least two runs with and two without the canaries")
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(neg))):
        raise ValueError("canary scores must be finite")
    p_fit, p_test = pos[: len(pos) // 2], pos[len(pos) // 2:]
    n_fit, n_test = neg[: len(neg) // 2], neg[len(neg) // 2:]
    candidates = np.unique(np.r_[p_fit, n_fit])
    # Midpoints between neighbouring fitted scores (plus the ends) generalise better than
    # the scores themselves, which sit on the boundary of one class.
    thresholds = np.r_[candidates[0] - 1.0, (candidates[1:] + candidates[:-1]) / 2,
                       candidates[-1] + 1.0]
    best_t, best_eps = float(thresholds[0]), -1.0
    for t in thresholds:
        fp, fn = _counts(p_fit, n_fit, float(t))
        eps = epsilon_lower_bound(false_positives=fp, negatives=len(n_fit), false_negatives=fn,
                                  positives=len(p_fit), delta=delta, alpha=alpha)
        if eps > best_eps:
            best_t, best_eps = float(t), eps
    fp, fn = _counts(p_test, n_test, best_t)
    return DistinguishingBound(
        epsilon=epsilon_lower_bound(false_positives=fp, negatives=len(n_test),
                                    false_negatives=fn, positives=len(p_test), delta=delta,
                                    alpha=alpha),
        threshold=best_t, false_positives=fp, negatives=len(n_test), false_negatives=fn,
        positives=len(p_test),
        ceiling=epsilon_lower_bound(false_positives=0, negatives=len(n_test),
                                    false_negatives=0, positives=len(p_test), delta=delta,
                                    alpha=alpha))
