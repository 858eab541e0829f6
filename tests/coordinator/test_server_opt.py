"""Server optimizers against hand-computed steps of Reddi et al. 2021, Algorithm 2."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from coordinator.server_opt import ServerOptimizer, make_server_optimizer
from protocols.errors import ConfigError

W = {"trunk.0.weight": np.array([1.0, -2.0], dtype=np.float32)}
D = {"trunk.0.weight": np.array([0.5, -0.5], dtype=np.float32)}


def _opt(name: str) -> ServerOptimizer:
    return make_server_optimizer(name=name, learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)


def test_fedavg_adds_scaled_delta_in_the_direction_of_new_minus_old() -> None:
    out = make_server_optimizer(name="fedavg", learning_rate=0.5).apply(W, D)
    np.testing.assert_array_equal(out["trunk.0.weight"], np.array([1.25, -2.25], np.float32))
    assert out["trunk.0.weight"].dtype == np.float32


def test_fedadam_first_step_known_value() -> None:
    # m1 = 0.1*0.5 = 0.05; v1 = 0.99*1e-6 + 0.01*0.25 = 0.00250099;
    # step = 0.1 * 0.05 / (sqrt(v1) + 1e-3) = 0.0980201901...
    opt = _opt("fedadam")
    out = opt.apply(W, D)
    step = 0.09802019012094852
    np.testing.assert_allclose(out["trunk.0.weight"], [1.0 + step, -2.0 - step], rtol=1e-6)
    np.testing.assert_allclose(opt.m["trunk.0.weight"], [0.05, -0.05])
    np.testing.assert_allclose(opt.v["trunk.0.weight"], [0.00250099, 0.00250099])
    assert opt.steps == 1


def test_fedyogi_first_step_known_value() -> None:
    # v0 = 1e-6 < d^2, so sign(v0 - d^2) = -1: v1 = 1e-6 + 0.01*0.25 = 0.002501;
    # step = 0.1 * 0.05 / (sqrt(0.002501) + 1e-3) = 0.0980199980...
    opt = _opt("fedyogi")
    out = opt.apply(W, D)
    np.testing.assert_allclose(opt.v["trunk.0.weight"], [0.002501, 0.002501])
    np.testing.assert_allclose(out["trunk.0.weight"][0], 1.0 + 0.09801999800039991, rtol=1e-6)


def test_fedyogi_v_shrinks_toward_small_gradients_additively() -> None:
    opt = _opt("fedyogi")
    opt.load_state_dict({"steps": 3, "m": {"trunk.0.weight": np.zeros(2)},
                         "v": {"trunk.0.weight": np.array([1.0, 1.0])}})
    opt.apply(W, D)
    # v > d^2 so v2 = 1 - 0.01*0.25 (Yogi), where Adam would give 0.99 + 0.0025.
    np.testing.assert_allclose(opt.v["trunk.0.weight"], [0.9975, 0.9975])
    assert opt.steps == 4


def test_state_round_trip_resumes_identically() -> None:
    a, b = _opt("fedadam"), _opt("fedadam")
    x = a.apply(W, D)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    np.testing.assert_array_equal(a.apply(x, D)["trunk.0.weight"], b.apply(x, D)["trunk.0.weight"])


def test_unknown_optimizer_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        make_server_optimizer(name="fedsgdm", learning_rate=1.0)
