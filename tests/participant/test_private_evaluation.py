"""The evaluation release: bounded per-molecule terms, Gaussian noise at the stated scale."""

from __future__ import annotations

import math
import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from participant.private_evaluation import EndpointBound, _sums, exact_metrics, release_metrics

REG = EndpointBound(name="logd", task="regression", target_scale=1.5)
CLS = EndpointBound(name="herg", task="classification")


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.stack([rng.normal(size=n) * 3, rng.integers(0, 2, n)], axis=1)
    pred = np.stack([rng.normal(size=n), rng.uniform(size=n)], axis=1)
    mask = (rng.uniform(size=(n, 2)) < 0.8).astype(np.float32)
    return y, pred, mask


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 40), seed=st.integers(0, 10_000), outlier=st.floats(-1e6, 1e6),
       drop=st.integers(0, 39))
def test_one_outlier_molecule_moves_the_query_by_at_most_its_sensitivity(
        n: int, seed: int, outlier: float, drop: int) -> None:
    """An attacker-chosen label (any size) moves each sum and count by at most 1."""
    y, pred, mask = _data(n, seed)
    y[drop % n, 0] = outlier
    mask[drop % n] = 1.0
    keep = np.arange(n) != drop % n
    a = _sums(y, pred, mask, [REG, CLS], error_bound=2.0)
    b = _sums(y[keep], pred[keep], mask[keep], [REG, CLS], error_bound=2.0)
    diff = [a[e][i] - b[e][i] for e in a for i in (0, 1)]
    assert math.sqrt(sum(d * d for d in diff)) <= math.sqrt(2 * 2) + 1e-9


def test_noise_has_the_calibrated_scale() -> None:
    """Std of the released count is noise_multiplier * sqrt(2 k) (k = 2 endpoints here)."""
    y, pred, mask = _data(2000)
    rng = random.Random(7)  # unsafe, seeded: tests only
    counts = [release_metrics(y, pred, mask, [REG, CLS], noise_multiplier=3.0, rng=rng)
              ["logd.n"] for _ in range(2000)]
    assert abs(float(np.std(counts)) - 3.0 * 2.0) < 0.1 * 6.0
    assert abs(float(np.mean(counts)) - mask[:, 0].sum()) < 1.0


def test_every_consortium_endpoint_is_released_labelled_or_not() -> None:
    """Which keys are present must not reveal whether the site holds any label."""
    y, pred, mask = _data(50)
    mask[:, 1] = 0.0
    out = release_metrics(y, pred, mask, [REG, CLS], noise_multiplier=1.0)
    assert set(out) == {"logd.mae", "logd.n", "herg.brier", "herg.n"}
    assert all(math.isfinite(v) for v in out.values())
    assert 0.0 <= out["herg.brier"] <= 1.0 and 0.0 <= out["logd.mae"] <= 2.0 * 1.5


def test_exact_metrics_match_a_direct_clipped_mae() -> None:
    y, pred, mask = _data(300)
    sel = mask[:, 0] > 0
    err = np.minimum(np.abs(pred[sel, 0] - y[sel, 0]), 2.0 * 1.5)
    out = exact_metrics(y, pred, mask, [REG, CLS], error_bound=2.0)
    assert abs(out["logd.mae"] - float(err.mean())) < 1e-9
    sel = mask[:, 1] > 0
    assert abs(out["herg.brier"] - float(((pred[sel, 1] - y[sel, 1]) ** 2).mean())) < 1e-9


def test_noise_is_fresh_os_entropy_by_default() -> None:
    y, pred, mask = _data(100)
    a = release_metrics(y, pred, mask, [REG], noise_multiplier=1.0)
    b = release_metrics(y, pred, mask, [REG], noise_multiplier=1.0)
    assert a != b


def test_crafted_nan_prediction_cannot_zero_the_released_metric() -> None:
    # One NaN prediction made the sum NaN, and max(0, NaN) released exactly 0.0 whatever the
    # noise: a membership oracle. It now counts as the worst term.
    endpoints = [EndpointBound(name="logs", task="regression", target_scale=1.0)]
    y = np.array([[0.0], [1.0], [2.0]])
    mask = np.ones_like(y)
    pred = np.array([[0.5], [float("nan")], [2.5]])
    worst = np.array([[0.5], [1.0 + 2.0], [2.5]])  # an error at the bound
    got = exact_metrics(y, pred, mask, endpoints, error_bound=2.0)
    assert math.isfinite(got["logs.mae"])
    assert got == exact_metrics(y, worst, mask, endpoints, error_bound=2.0)
    released = release_metrics(y, pred, mask, endpoints, noise_multiplier=1.0,
                               rng=random.Random(0))
    assert all(math.isfinite(v) for v in released.values())
