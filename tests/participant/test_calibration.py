"""Per-site noise calibration: never overshoots ε, refuses an exhausted budget."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from participant.calibration import calibrate
from participant.ledger import epsilon_for
from protocols.errors import PrivacyBudgetExceeded


@settings(max_examples=8, deadline=None)
@given(n=st.integers(200, 5000), batch=st.sampled_from([16, 64]), rounds=st.integers(1, 5),
       target=st.floats(0.5, 8.0), spent_rounds=st.integers(0, 2))
def test_calibrated_sigma_never_overshoots_epsilon(n: int, batch: int, rounds: int,
                                                   target: float, spent_rounds: int) -> None:
    history = [(3.0, 0.01, 20)] * spent_rounds
    cal = calibrate(n_examples=n, batch_size=batch, rounds=rounds, local_epochs=1,
                    target_epsilon=target, delta=1e-5, max_epsilon=10.0, history=history)
    total = epsilon_for([*history, (cal.noise_multiplier, cal.sample_rate,
                                    cal.steps_per_round * rounds)], delta=1e-5)
    assert total <= target + 1e-9
    assert cal.sample_rate == pytest.approx(min(1.0, batch / n))


def test_smaller_site_needs_more_noise() -> None:
    kw = {"batch_size": 64, "rounds": 3, "local_epochs": 1, "target_epsilon": 2.0,
          "delta": 1e-5, "max_epsilon": 10.0}
    small = calibrate(n_examples=500, **kw)  # type: ignore[arg-type]
    large = calibrate(n_examples=5000, **kw)  # type: ignore[arg-type]
    assert small.sample_rate > large.sample_rate
    assert small.planned_epsilon <= 2.0 and large.planned_epsilon <= 2.0


def test_exhausted_budget_is_refused() -> None:
    history = [(0.5, 0.5, 200)]
    assert epsilon_for(history, delta=1e-5) > 1.0
    with pytest.raises(PrivacyBudgetExceeded):
        calibrate(n_examples=1000, batch_size=64, rounds=1, local_epochs=1,
                  target_epsilon=5.0, delta=1e-5, max_epsilon=1.0, history=history)


@pytest.mark.parametrize(("n", "rounds", "target"), [(160, 3, 8.0), (255, 3, 8.0),
                                                     (1000, 20, 8.0), (300, 5, 1.0)])
def test_calibrating_a_plan_prints_no_opacus_alpha_warning(n: int, rounds: int,
                                                          target: float) -> None:
    """Each of these warned "Optimal order is the largest alpha" from a search trial."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cal = calibrate(n_examples=n, batch_size=32, rounds=rounds, local_epochs=1,
                        target_epsilon=target, delta=1e-5, max_epsilon=8.0)
    assert cal.planned_epsilon <= target
    assert [str(w.message) for w in seen] == []
