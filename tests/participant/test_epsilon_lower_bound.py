"""The ε lower bound of Jagielski et al. 2020: known answers and the threshold test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from participant.epsilon_lower_bound import (
    clopper_pearson,
    distinguishing_bound,
    epsilon_lower_bound,
    max_epsilon_lower_bound,
)


def test_clopper_pearson_matches_the_tabulated_interval() -> None:
    # 5 successes in 20 trials: exact 95 % interval 0.0866-0.4910 (standard binomial table)
    lo, hi = clopper_pearson(5, 20, alpha=0.05)
    assert lo == pytest.approx(0.0866, abs=1e-4) and hi == pytest.approx(0.4910, abs=1e-4)
    # no failures: the upper end has the closed form 1 - (alpha/2)^(1/n)
    assert clopper_pearson(0, 100)[1] == pytest.approx(1 - 0.025 ** (1 / 100))


def test_jagielski_bound_matches_the_formula_by_hand() -> None:
    # 2 false positives in 100 negatives, 10 false negatives in 100 positives, delta 1e-5
    fpr_hi = clopper_pearson(2, 100)[1]
    fnr_hi = clopper_pearson(10, 100)[1]
    by_hand = max(math.log((1 - 1e-5 - fpr_hi) / fnr_hi), math.log((1 - 1e-5 - fnr_hi) / fpr_hi))
    got = epsilon_lower_bound(false_positives=2, negatives=100, false_negatives=10,
                              positives=100, delta=1e-5)
    assert got == pytest.approx(by_hand)
    # and the numbers themselves: FPR_hi = 0.07038, FNR_hi = 0.17622 -> 2.4644
    assert fpr_hi == pytest.approx(0.07038, abs=1e-4)
    assert got == pytest.approx(math.log((1 - 1e-5 - 0.17622) / 0.07038), abs=2e-3)


def test_a_chance_level_test_gives_no_bound() -> None:
    assert epsilon_lower_bound(false_positives=50, negatives=100, false_negatives=50,
                               positives=100, delta=1e-5) == 0.0


def test_threshold_is_chosen_on_one_half_and_counted_on_the_other() -> None:
    pos = np.r_[np.full(20, 1.0), np.full(20, 3.0)]  # fit half: at 1.0, test half: at 3.0
    neg = np.r_[np.full(20, 0.0), np.full(20, 2.0)]
    b = distinguishing_bound(pos, neg, delta=1e-5)
    assert b.threshold == pytest.approx(0.5)  # perfect on the fit half
    assert (b.false_positives, b.false_negatives) == (20, 0)  # ...and wrong on the test half
    assert b.epsilon == 0.0
    assert b.ceiling == pytest.approx(max_epsilon_lower_bound(runs=20, delta=1e-5))


def test_perfect_separation_reaches_the_ceiling() -> None:
    b = distinguishing_bound(np.arange(10, 50.0), np.arange(40.0) - 100, delta=1e-5)
    assert b.epsilon == pytest.approx(b.ceiling) and b.ceiling > 1.5
