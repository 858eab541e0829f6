"""The update-norm bound derived from the DP plan: honest DP-SGD passes, 2x does not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coordinator.update_bound import plan_noise, plan_update_norm_bound
from participant.calibration import calibrate
from tests.coordinator.grid_simulator import DP, N_EXAMPLES, ROUNDS, honest_delta, initial

PLAN = {"max_grad_norm": DP["max-grad-norm"], "learning_rate": DP["learning-rate"],
        "batch_size": DP["batch-size"], "local_epochs": DP["local-epochs"], "rounds": ROUNDS,
        "target_epsilon": DP["target-epsilon"], "delta": DP["delta"], "accountant": "rdp",
        "optimizer": "sgd", "unsafe_no_dp": False}


def _norm(delta: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.dot(v.ravel().astype(np.float64), v.ravel())) for v in
                         delta.values()))


def test_inflated_update_norm_is_rejected_by_the_plan_bound() -> None:
    d = sum(v.size for v in initial().values())
    bound = plan_update_norm_bound(**PLAN, num_params=d, max_examples=N_EXAMPLES)
    for seed in range(3):  # real DP-SGD rounds (participant.dp.local_round)
        honest = _norm(honest_delta(seed=seed))
        assert honest <= bound < 2 * honest


def test_bound_grows_with_the_example_cap() -> None:
    # taking the bound at the enrolled cap covers every smaller site
    d = sum(v.size for v in initial().values())
    bounds = [plan_update_norm_bound(**PLAN, num_params=d, max_examples=n)
              for n in (32, 128, 1024, 4096)]
    assert bounds == sorted(bounds)


@pytest.mark.parametrize("n", [32, 4096])
def test_plan_noise_is_no_smaller_than_what_a_site_calibrates(n: int) -> None:
    steps, sigma = plan_noise(batch_size=32, local_epochs=1, rounds=ROUNDS, target_epsilon=8.0,
                              delta=1e-5, accountant="rdp", unsafe_no_dp=False, n_examples=n)
    site = calibrate(n_examples=n, batch_size=32, rounds=ROUNDS, local_epochs=1,
                     target_epsilon=8.0, delta=1e-5, max_epsilon=math.inf)
    assert steps == site.steps_per_round and sigma >= site.noise_multiplier


def test_unsafe_no_dp_bound_has_no_noise_term() -> None:
    steps, sigma = plan_noise(batch_size=32, local_epochs=2, rounds=3, target_epsilon=8.0,
                              delta=1e-5, accountant="rdp", unsafe_no_dp=True, n_examples=640)
    assert (steps, sigma) == (40, 0.0)
