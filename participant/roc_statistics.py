"""How well a membership score separates members from non-members: pure functions.

A membership-inference attack gives every candidate record a score (higher:
"more likely a member"). Following Carlini et al. 2022 ("Membership Inference
Attacks From First Principles", IEEE S&P), the attack is summarised by its ROC
curve, the area under it, and above all the true-positive rate at a low
false-positive rate (0.1 % and 1 %): an attack that confidently identifies a
few compounds matters more than one that is slightly better than chance on
all of them.

Confidence intervals are percentile bootstraps (Efron and Tibshirani 1993),
resampling members and non-members separately so each replicate keeps both
classes. The bootstrap's randomness only estimates an interval; it protects
nothing, so it is seeded for reproducible reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

__all__ = ["AttackMetrics", "Interval", "attack_metrics", "roc_auc", "roc_curve", "tpr_at_fpr"]

LOW_FPRS = (0.001, 0.01)


@dataclass(frozen=True, kw_only=True)
class Interval:
    """A point estimate with a (lower, upper) confidence interval."""

    value: float
    lower: float
    upper: float

    def contains(self, x: float) -> bool:
        """Whether ``x`` lies inside the closed interval."""
        return self.lower <= x <= self.upper

    def to_dict(self) -> dict[str, float]:
        """JSON-ready form."""
        return {"value": self.value, "lower": self.lower, "upper": self.upper}


@dataclass(frozen=True, kw_only=True)
class AttackMetrics:
    """ROC AUC and TPR at low FPR, with bootstrap intervals, and the ROC curve itself."""

    auc: Interval
    tpr_at_fpr: dict[float, Interval]
    fpr: np.ndarray
    tpr: np.ndarray
    members: int
    non_members: int
    confidence: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (the curve is left out: it goes into the plot)."""
        return {"auc": self.auc.to_dict(),
                "tpr_at_fpr": {f"{f:g}": i.to_dict() for f, i in self.tpr_at_fpr.items()},
                "members": self.members, "non_members": self.non_members,
                "confidence": self.confidence}


def _check(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    m = np.asarray(is_member, dtype=bool).ravel()
    if s.shape != m.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape} vs {m.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("membership scores must be finite")
    if m.all() or not m.any():
        raise ValueError("need both members and non-members")
    return s, m


def roc_curve(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1); ties move together."""
    s, m = _check(scores, is_member)
    order = np.argsort(-s, kind="mergesort")
    s, m = s[order], m[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each tie block
    tp = np.cumsum(m)[last]
    fp = np.cumsum(~m)[last]
    return (np.r_[0.0, fp / (~m).sum()], np.r_[0.0, tp / m.sum()])


def roc_auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney U statistic, ties counted half."""
    s, m = _check(scores, is_member)
    ranks = rankdata(s)
    n1, n0 = int(m.sum()), int((~m).sum())
    return float((ranks[m].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, fpr: float) -> float:
    """The highest TPR over thresholds whose FPR is at most ``fpr`` (Carlini et al. 2022)."""
    f, t = roc_curve(scores, is_member)
    return float(t[f <= fpr + 1e-12].max())


def attack_metrics(scores: np.ndarray, is_member: np.ndarray, *, n_bootstrap: int = 200,
                   confidence: float = 0.95, seed: int = 0,
                   fprs: tuple[float, ...] = LOW_FPRS) -> AttackMetrics:
    """AUC and TPR at each of ``fprs``, each with a stratified percentile-bootstrap interval."""
    s, m = _check(scores, is_member)
    rng = np.random.default_rng(seed)
    pos, neg = s[m], s[~m]
    labels = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    boot_auc: list[float] = []
    boot_tpr: dict[float, list[float]] = {f: [] for f in fprs}
    for _ in range(n_bootstrap):
        b = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        boot_auc.append(roc_auc(b, labels))
        for f in fprs:
            boot_tpr[f].append(tpr_at_fpr(b, labels, f))
    lo_q, hi_q = (1 - confidence) / 2, 1 - (1 - confidence) / 2

    def interval(value: float, samples: list[float]) -> Interval:
        if not samples:
            return Interval(value=value, lower=value, upper=value)
        lo, hi = np.quantile(samples, [lo_q, hi_q])
        return Interval(value=value, lower=float(min(lo, value)), upper=float(max(hi, value)))

    fpr_curve, tpr_curve = roc_curve(s, m)
    return AttackMetrics(
        auc=interval(roc_auc(s, m), boot_auc),
        tpr_at_fpr={f: interval(tpr_at_fpr(s, m, f), boot_tpr[f]) for f in fprs},
        fpr=fpr_curve, tpr=tpr_curve, members=int(m.sum()), non_members=int((~m).sum()),
        confidence=confidence)
