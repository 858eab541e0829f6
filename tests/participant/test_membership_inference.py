"""Membership inference: detects an overfit model's members, not another model's."""

from __future__ import annotations

import numpy as np
import pytest

from chem.models import ModelSpec, MultiTaskMLP, build_model
from chem.training import Split, fit
from participant.membership_inference import (
    AttackData,
    ShadowLosses,
    lira_offline_scores,
    run_attacks,
    train_shadows,
)
from protocols.endpoints import EndpointSpec

D = 32
SPEC = ModelSpec(input_dim=D, hidden_dims=(64,), dropout=0.0,
                 endpoints=(EndpointSpec(name="assay", task="regression"),))


def _rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Sparse binary "fingerprints" and labels with no learnable signal: only memorisation
    # lowers a training row's loss.
    x = (rng.random((n, D)) < 0.25).astype(np.float32)
    y = rng.normal(size=(n, 1)).astype(np.float32)
    return x, y, np.ones_like(y)


def _overfit(x: np.ndarray, y: np.ndarray, m: np.ndarray) -> MultiTaskMLP:
    model = build_model(SPEC, seed=1)
    fit(model, Split(x, y, m), Split(x, y, m), epochs=60, lr=5e-3, batch_size=32, patience=60)
    return model


@pytest.fixture(scope="module")
def world() -> tuple[AttackData, ShadowLosses, np.random.Generator]:
    rng = np.random.default_rng(0)
    xm, ym, mm = _rows(rng, 120)
    xn, yn, mn = _rows(rng, 120)
    data = AttackData(x_members=xm, y_members=ym, mask_members=mm, x_non_members=xn,
                      y_non_members=yn, mask_non_members=mn)
    return data, train_shadows(_overfit, data, shadows=2, seed=0), rng


def test_loss_and_lira_attacks_detect_an_overfit_models_members(world) -> None:  # type: ignore[no-untyped-def]
    data, shadows, _ = world
    target = _overfit(data.x_members, data.y_members, data.mask_members)
    result = run_attacks(target, data, shadows=shadows, n_bootstrap=100)
    for attack in ("loss-threshold", "lira-offline"):
        assert result[attack].auc.lower > 0.8, attack
        assert result[attack].tpr_at_fpr[0.01].value > 0.1, attack


def test_attacks_on_a_model_trained_on_other_data_stay_at_chance(world) -> None:  # type: ignore[no-untyped-def]
    data, shadows, rng = world
    other = _overfit(*_rows(rng, 120))
    result = run_attacks(other, data, shadows=shadows, n_bootstrap=100)
    for attack in ("loss-threshold", "lira-offline"):
        assert result[attack].auc.contains(0.5), (attack, result[attack].auc)
        assert abs(result[attack].auc.value - 0.5) < 0.1


def test_lira_uses_only_out_shadows_for_each_candidate() -> None:
    # Candidate 0 is IN for shadow 0 (tiny loss) and OUT for shadow 1: its OUT mean must
    # come from shadow 1 alone, so a target loss equal to shadow 1's scores 0.
    losses = np.array([[1e-6, 1.0], [1.0, 2.0], [4.0, 3.0]])
    trained = np.array([[True, False], [False, False], [False, False]])
    scores = lira_offline_scores(np.array([2.5, 2.0]), ShadowLosses(
        losses=losses, trained_on=trained))
    mu0 = np.log(np.array([1.0, 4.0])).mean()
    assert scores[0] * 1 == pytest.approx((mu0 - np.log(2.5)) / _sigma(losses, trained))


def _sigma(losses: np.ndarray, trained: np.ndarray) -> float:
    phi = np.log(losses + 1e-8)
    out = ~trained
    mu = np.where(out, phi, 0).sum(0) / out.sum(0)
    return float(np.sqrt((np.where(out, phi - mu, 0) ** 2).sum() / (out.sum() - 2)))


def test_lira_refuses_a_candidate_without_out_shadows() -> None:
    with pytest.raises(ValueError, match="at least one shadow"):
        lira_offline_scores(np.ones(1), ShadowLosses(losses=np.ones((2, 1)),
                                                     trained_on=np.ones((2, 1), bool)))
