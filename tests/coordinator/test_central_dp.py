"""Central (participant-level) DP: clipping, noise scale, RDP accounting, state."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.supercore.differential_privacy import compute_clip_model_update, compute_stdv
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from coordinator.central_dp import CentralDP, clip_delta, noise_std
from protocols.errors import ConfigError


def _norm(d: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in d.values())))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.floats(1e-3, 10.0), st.floats(1e-3, 100.0))
def test_clipping_never_increases_the_norm_and_respects_the_bound(seed: int, c: float,
                                                                  scale: float) -> None:
    rng = np.random.default_rng(seed)
    d = {"a": (rng.normal(size=(4, 3)) * scale).astype(np.float32),
         "b": (rng.normal(size=5) * scale).astype(np.float32)}
    out = clip_delta(d, clipping_norm=c)
    assert _norm(out) <= _norm(d) * (1 + 1e-6)
    assert _norm(out) <= c * (1 + 1e-5)


def test_clipping_matches_flowers_fixed_clipping() -> None:
    rng = np.random.default_rng(1)
    old = [rng.normal(size=(3, 3)).astype(np.float32), rng.normal(size=2).astype(np.float32)]
    new = [o + rng.normal(size=o.shape).astype(np.float32) * 3 for o in old]
    flwr_new = [a.copy() for a in new]
    compute_clip_model_update(flwr_new, old, 0.5)
    ours = clip_delta({"a": new[0] - old[0], "b": new[1] - old[1]}, clipping_norm=0.5)
    np.testing.assert_allclose(ours["a"], flwr_new[0] - old[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours["b"], flwr_new[1] - old[1], rtol=1e-5, atol=1e-6)


def test_noise_std_is_flowers_and_the_empirical_std_matches() -> None:
    std = noise_std(noise_multiplier=1.2, clipping_norm=0.5, num_sampled=4)
    assert std == compute_stdv(1.2, 0.5, 4) == pytest.approx(0.15)
    dp = CentralDP(noise_multiplier=1.2, clipping_norm=0.5, num_total=10, delta=1e-5)
    out = dp.privatize({"w": np.zeros(200_000, np.float32)}, num_sampled=4,
                       rng=np.random.default_rng(0))
    assert out["w"].dtype == np.float32
    assert float(np.std(out["w"])) == pytest.approx(0.15, rel=0.01)


def test_epsilon_equals_opacus_rdp_over_rounds_and_survives_a_checkpoint() -> None:
    dp = CentralDP(noise_multiplier=1.0, clipping_norm=1.0, num_total=20, delta=1e-5)
    assert dp.epsilon() == 0.0
    rng = np.random.default_rng(0)
    for _ in range(5):
        dp.privatize({"w": np.zeros(3, np.float32)}, num_sampled=5, rng=rng)
    ref = RDPAccountant()
    for _ in range(5):
        ref.step(noise_multiplier=1.0, sample_rate=0.25)
    assert dp.epsilon() == pytest.approx(ref.get_epsilon(1e-5))
    resumed = CentralDP(noise_multiplier=1.0, clipping_norm=1.0, num_total=20, delta=1e-5)
    resumed.load_state_dict(dp.state_dict())
    assert resumed.epsilon() == dp.epsilon() > 0


def test_bad_parameters_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        CentralDP(noise_multiplier=0.0, clipping_norm=1.0, num_total=5, delta=1e-5)
    dp = CentralDP(noise_multiplier=1.0, clipping_norm=1.0, num_total=5, delta=1e-5)
    with pytest.raises(ConfigError):
        dp.privatize({"w": np.zeros(1, np.float32)}, num_sampled=6,
                     rng=np.random.default_rng(0))
