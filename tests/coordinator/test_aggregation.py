"""Streaming aggregation: properties against a float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.aggregation import StreamingMean, aggregate, error_bound, group_of
from coordinator.server_opt import ServerOptimizer
from protocols.errors import AdmissionError

SHAPES = {"trunk.0.weight": (3, 2), "heads.a.bias": (1,), "heads.b.bias": (1,)}


def _deltas(seed: int, k: int, shapes: dict[str, tuple[int, ...]] = SHAPES
            ) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}
            for _ in range(k)]


def _reference(deltas: list[dict[str, np.ndarray]], weights: list[float], name: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """float64 weighted mean and the float32 error allowance ``bound * sum w|x| / sum w``."""
    x = np.stack([d[name].astype(np.float64) for d in deltas])
    w = np.asarray(weights, dtype=np.float64).reshape(-1, *([1] * (x.ndim - 1)))
    mean = (w * x).sum(axis=0) / w.sum()
    allowance = error_bound(len(deltas)) * (w * np.abs(x)).sum(axis=0) / w.sum()
    return mean, allowance


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 1000), st.integers(1, 8), st.randoms())
def test_permutation_invariant_and_matches_float64_reference(seed: int, k: int,
                                                             rnd: object) -> None:
    deltas = _deltas(seed, k)
    weights = list(np.random.default_rng(seed + 1).integers(1, 100, size=k).astype(float))
    agg = StreamingMean(SHAPES)
    for d, w in zip(deltas, weights, strict=True):
        agg.add(d, weight=w)
    order = list(range(k))
    rnd.shuffle(order)  # type: ignore[attr-defined]
    shuffled = StreamingMean(SHAPES)
    for i in order:
        shuffled.add(deltas[i], weight=weights[i])
    a, b = agg.result(), shuffled.result()
    for name in SHAPES:
        ref, allowance = _reference(deltas, weights, name)
        assert np.all(np.abs(a[name] - ref) <= allowance)
        # float32 sums differ by order only within the rounding allowance
        assert np.all(np.abs(a[name].astype(np.float64) - b[name]) <= 2 * allowance)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 120), st.sampled_from([1.0, 1e-4, 1e4]),
       st.booleans())
def test_blocked_float32_sum_stays_within_the_rounding_bound(seed: int, k: int,
                                                            scale: float, equal: bool) -> None:
    # 70_001 elements span two cache blocks plus a ragged tail; mixed signs and
    # magnitudes make cancellation, where a float32 sum is weakest.
    shapes = {"trunk.0.weight": (70_001,), "heads.a.bias": (3,)}
    rng = np.random.default_rng(seed)
    deltas = [{n: (rng.standard_cauchy(s) * scale).astype(np.float32)
               for n, s in shapes.items()} for _ in range(k)]
    weights = [1.0] * k if equal else [float(w) for w in rng.integers(1, 50_000, size=k)]
    got = aggregate(deltas, weights)
    for name in shapes:
        ref, allowance = _reference(deltas, weights, name)
        assert got[name].dtype == np.float32
        assert np.all(np.abs(got[name] - ref) <= allowance)

@given(st.integers(0, 1000), st.integers(1, 6))
def test_identical_deltas_aggregate_to_that_delta(seed: int, k: int) -> None:
    d = _deltas(seed, 1)[0]
    agg = StreamingMean(SHAPES)
    for i in range(k):
        agg.add(d, weight=float(i + 1))
    assert all(np.allclose(agg.result()[n], d[n], atol=1e-6) for n in SHAPES)


def test_equal_weighting_differs_from_example_count_weighting() -> None:
    d1, d2 = _deltas(0, 2)
    eq, by_n = StreamingMean(SHAPES), StreamingMean(SHAPES)
    eq.add(d1, weight=1.0)
    eq.add(d2, weight=1.0)
    by_n.add(d1, weight=900.0)
    by_n.add(d2, weight=100.0)
    n = "trunk.0.weight"
    assert np.allclose(eq.result()[n], (d1[n] + d2[n]) / 2, atol=1e-6)
    assert np.allclose(by_n.result()[n], 0.9 * d1[n] + 0.1 * d2[n], atol=1e-6)


def test_heads_average_over_members_that_hold_the_endpoint() -> None:
    d1, d2 = _deltas(3, 2)
    agg = StreamingMean(SHAPES)
    agg.add(d1, weight=10.0, group_weights={"heads.b": 0.0})
    agg.add(d2, weight=10.0)
    assert np.allclose(agg.result()["heads.b.bias"], d2["heads.b.bias"])
    assert group_of("heads.b.weight") == "heads.b" and group_of("trunk.2.bias") == "trunk"


def test_wrong_tensor_set_is_refused() -> None:
    with pytest.raises(AdmissionError):
        StreamingMean(SHAPES).add({"trunk.0.weight": np.zeros((3, 2), np.float32)}, weight=1)


def test_wrong_shape_is_refused_before_anything_is_added() -> None:
    agg = StreamingMean(SHAPES)
    bad = {n: np.ones(s, np.float32) for n, s in SHAPES.items()}
    bad["trunk.0.weight"] = np.ones((2, 3), np.float32)  # same size, transposed
    with pytest.raises(AdmissionError, match="wrong-shape"):
        agg.add(bad, weight=1.0)
    assert agg.count == 0 and all(w == 0 for w in agg.group_weights().values())
    assert not np.any(agg.result()["heads.a.bias"])


def test_negative_or_nan_weight_is_refused_and_leaves_the_sum_untouched() -> None:
    d1, d2 = _deltas(0, 2)
    agg, clean = StreamingMean(SHAPES), StreamingMean(SHAPES)
    for a in (agg, clean):
        a.add(d1, weight=2.0)
    for w, groups in ((-1.0, None), (float("nan"), None), (float("inf"), None),
                      (1.0, {"heads.a": -2.0}), (1.0, {"heads.b": float("nan")})):
        with pytest.raises(AdmissionError, match="bad-weight"):
            agg.add(d2, weight=w, group_weights=groups)
    assert agg.count == 1 and agg.group_weights() == clean.group_weights()
    got, want = agg.result(), clean.result()
    assert all(np.array_equal(got[n], want[n]) for n in SHAPES)


def test_a_delta_after_the_mean_was_taken_is_refused() -> None:
    d1, d2 = _deltas(5, 2)
    agg = StreamingMean(SHAPES)
    agg.add(d1, weight=1.0)
    first = {n: a.copy() for n, a in agg.result().items()}
    with pytest.raises(AdmissionError, match="round-closed"):
        agg.add(d2, weight=1.0)
    again = agg.result()  # not divided a second time
    assert all(np.array_equal(first[n], again[n]) for n in SHAPES)
    np.testing.assert_array_equal(again["trunk.0.weight"], d1["trunk.0.weight"])


def test_fedadam_matches_a_hand_computation() -> None:
    opt = ServerOptimizer(name="fedadam", learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    w = {"x": np.array([1.0], np.float32)}
    d = {"x": np.array([0.5], np.float32)}
    out = opt.apply(w, d)
    m = 0.1 * 0.5
    v = 0.99 * 1e-6 + 0.01 * 0.25
    assert out["x"][0] == pytest.approx(1.0 + 0.1 * m / (np.sqrt(v) + 1e-3), rel=1e-6)
    state = opt.state_dict()
    again = ServerOptimizer(name="fedadam", learning_rate=0.1)
    again.load_state_dict(state)
    assert np.allclose(again.apply(out, d)["x"], opt.apply(out, d)["x"])


def test_fedyogi_and_fedavg() -> None:
    w = {"x": np.array([1.0], np.float32)}
    d = {"x": np.array([0.5], np.float32)}
    assert ServerOptimizer(name="fedavg", learning_rate=1.0).apply(w, d)["x"][0] == 1.5
    y = ServerOptimizer(name="fedyogi", learning_rate=0.1, tau=1e-3)
    v = 1e-6 - 0.01 * 0.25 * np.sign(1e-6 - 0.25)
    assert y.apply(w, d)["x"][0] == pytest.approx(1.0 + 0.1 * 0.05 / (np.sqrt(v) + 1e-3),
                                                  rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 1000), st.integers(1, 8), st.permutations(range(8)))
def test_aggregate_streams_a_generator_and_matches_np_average(seed: int, k: int,
                                                              perm: list[int]) -> None:
    deltas = _deltas(seed, k)
    weights = [float(w) for w in np.random.default_rng(seed + 2).integers(1, 500, size=k)]
    got = aggregate((d for d in deltas), iter(weights))
    order = [i for i in perm if i < k]
    shuffled = aggregate((deltas[i] for i in order), [weights[i] for i in order])
    for name in SHAPES:
        ref = np.average(np.stack([d[name].astype(np.float64) for d in deltas]), axis=0,
                         weights=weights)
        _, allowance = _reference(deltas, weights, name)
        assert np.all(np.abs(got[name] - ref) <= allowance)
        assert np.all(np.abs(shuffled[name].astype(np.float64) - got[name]) <= 2 * allowance)


def test_aggregate_equal_weighting_ignores_example_counts() -> None:
    deltas = _deltas(3, 2)
    eq = aggregate(deltas, [1.0, 1000.0], weighting="equal")
    by_n = aggregate(deltas, [1.0, 1000.0])
    ref = (deltas[0]["trunk.0.weight"].astype(np.float64) + deltas[1]["trunk.0.weight"]) / 2
    np.testing.assert_allclose(eq["trunk.0.weight"], ref, rtol=1e-6)
    assert not np.allclose(by_n["trunk.0.weight"], ref)


def test_aggregate_refuses_nothing_and_zero_weight() -> None:
    with pytest.raises(AdmissionError, match="no-updates"):
        aggregate([], [])
    with pytest.raises(AdmissionError, match="zero-weight"):
        aggregate(_deltas(0, 2), [0.0, 0.0])
