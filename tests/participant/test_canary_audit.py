"""The canary audit through the real DP-SGD path: sound with noise, flags missing noise."""

from __future__ import annotations

import numpy as np
import pytest

from chem.models import ModelSpec, build_model
from participant.calibration import calibrate
from participant.canary_audit import (
    CANARY_SHIFT,
    DPMechanism,
    craft_canaries,
    group_claim,
    run_canary_audit,
)
from protocols.endpoints import EndpointSpec

D = 64
SPEC = ModelSpec(input_dim=D, hidden_dims=(32,), dropout=0.0,
                 endpoints=(EndpointSpec(name="assay", task="regression", target_offset=1.0,
                                         target_scale=2.0),))
RUNS = 40  # per side: 20 test runs each, so the bound can reach ~1.6


def _site(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.zeros((n, D), np.float32)
    x[:, :40] = rng.random((n, 40)) < 0.3  # columns 40.. are never set by site data
    y = (1.0 + 2.0 * (x[:, :40] @ rng.normal(size=(40, 1)) * 0.3)).astype(np.float32)
    return x, y, np.ones_like(y)


def _audit(*, unsafe_disable_noise: bool):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    x, y, m = _site(rng, 200)
    pool_x, _, pool_m = _site(rng, 20)
    cal = calibrate(n_examples=200, batch_size=100, rounds=1, local_epochs=5,
                    target_epsilon=0.5, delta=1e-5, max_epsilon=10.0)
    mech = DPMechanism(noise_multiplier=cal.noise_multiplier, sample_rate=cal.sample_rate,
                       steps=cal.steps_per_round, max_grad_norm=1.0, lr=1.0, delta=1e-5)
    initial = build_model(SPEC, seed=0)
    canaries = craft_canaries(initial, pool_x, pool_m, k=1, x_train=x, rng=rng)
    return run_canary_audit(initial, (x, y, m), canaries, mechanism=mech, runs=RUNS,
                            unsafe_disable_noise=unsafe_disable_noise)


def test_canaries_carry_an_impossible_label_and_free_marker_columns() -> None:
    rng = np.random.default_rng(0)
    x, _, _ = _site(rng, 50)
    pool_x, _, pool_m = _site(rng, 10)
    c = craft_canaries(build_model(SPEC, seed=0), pool_x, pool_m, k=2, x_train=x, rng=rng)
    assert np.allclose(c.y[:, 0], 1.0 + CANARY_SHIFT * 2.0)
    assert len(c.marker_columns) > 0 and not x[:, c.marker_columns].any()
    assert c.x[:, c.marker_columns].any(axis=1).all()


@pytest.mark.slow  # 80 DP trainings: ~5 s idle, minutes on a loaded shared machine
def test_canary_audit_with_noise_stays_below_the_accountants_epsilon() -> None:
    result = _audit(unsafe_disable_noise=False)
    assert result.bound.ceiling > result.claimed_epsilon  # the claim is refutable here
    assert result.epsilon_lower_bound <= result.claimed_epsilon and not result.flagged
    assert result.claimed_epsilon == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow  # as above
def test_canary_audit_flags_training_without_noise() -> None:
    result = _audit(unsafe_disable_noise=True)
    assert result.noise_multiplier_used == 0.0 and result.unsafe_noise_disabled
    assert result.flagged
    assert result.epsilon_lower_bound > 2.5 * result.claimed_epsilon


def test_group_claim_is_group_privacy() -> None:
    assert group_claim(1.0, 1e-5, 1) == (1.0, 1e-5)
    eps, delta = group_claim(0.5, 1e-5, 3)
    assert eps == 1.5 and delta == pytest.approx(3 * np.exp(1.0) * 1e-5)
