"""Streaming aggregation: properties against a float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.aggregation import StreamingMean, aggregate, group_of
from coordinator.server_opt import ServerOptimizer
from protocols.errors import AdmissionError

SHAPES = {"trunk.0.weight": (3, 2), "heads.a.bias": (1,), "heads.b.bias": (1,)}


def _deltas(seed: int, k: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}
            for _ in range(k)]


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
        ref = np.average(np.stack([d[name].astype(np.float64) for d in deltas]), axis=0,
                         weights=weights)
        assert np.allclose(a[name], ref, atol=1e-6)
        assert np.allclose(a[name], b[name], atol=1e-7)


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
        np.testing.assert_allclose(got[name], ref, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(shuffled[name], got[name], rtol=1e-6, atol=1e-7)


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
