"""ROC AUC and TPR at low FPR: known answers, properties, bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from participant.roc_statistics import attack_metrics, roc_auc, roc_curve, tpr_at_fpr


def test_auc_known_answer_with_a_tie() -> None:
    # pairs (member, non-member): (3>1), (3>2), (2 vs 2: half), (2>1) -> 3.5 / 4
    scores = np.array([3.0, 2.0, 2.0, 1.0])
    members = np.array([True, True, False, False])
    assert roc_auc(scores, members) == pytest.approx(3.5 / 4)


def test_tpr_at_fpr_takes_the_best_threshold_within_the_fpr() -> None:
    scores = np.r_[np.arange(100, 110), np.arange(100)].astype(float)  # 10 members on top
    members = np.r_[np.ones(10, bool), np.zeros(100, bool)]
    assert tpr_at_fpr(scores, members, 0.0) == 1.0
    scores[0] = 50.0  # one member buried among non-members
    assert tpr_at_fpr(scores, members, 0.001) == pytest.approx(0.9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=4, max_size=40), st.data())
def test_auc_is_the_area_under_the_curve_and_flips_with_the_score(
        values: list[float], data: st.DataObject) -> None:
    n = len(values)
    members = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    if members.all() or not members.any():
        members[0] = not members[0]
    s = np.array(values)
    fpr, tpr = roc_curve(s, members)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert roc_auc(s, members) == pytest.approx(area)
    assert roc_auc(-s, members) == pytest.approx(1 - area)


def test_bootstrap_interval_covers_chance_for_an_uninformative_score() -> None:
    rng = np.random.default_rng(1)
    m = attack_metrics(rng.normal(size=400), np.r_[np.ones(200, bool), np.zeros(200, bool)],
                       n_bootstrap=200)
    assert m.auc.contains(0.5) and m.auc.upper - m.auc.lower < 0.2
    assert m.tpr_at_fpr[0.01].value < 0.1


def test_one_class_only_is_refused() -> None:
    with pytest.raises(ValueError, match="both members and non-members"):
        roc_auc(np.arange(3.0), np.ones(3, bool))
