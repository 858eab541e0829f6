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
    random_membership,
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


# --- Why the first audit read AUC 0.61 at ε = 8: non-members from other chemical series ----

def _series(rng: np.random.Generator, n: int, series: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Molecules of chemical series: a series' core bits plus a few random ones; the label
    is the series' value plus noise, so a model learns series, not molecules."""
    centre = np.random.default_rng(7).random((series.max() + 1, D)) < 0.3
    core_value = np.random.default_rng(8).normal(scale=2.0, size=series.max() + 1)
    s = rng.choice(series, size=n)
    x = (centre[s] ^ (rng.random((n, D)) < 0.05)).astype(np.float32)
    y = (core_value[s] + 0.3 * rng.normal(size=n)).astype(np.float32)[:, None]
    return x, y, np.ones_like(y)


def _fit(x: np.ndarray, y: np.ndarray, m: np.ndarray) -> MultiTaskMLP:
    model = build_model(SPEC, seed=2)
    fit(model, Split(x, y, m), Split(x, y, m), epochs=30, lr=5e-3, batch_size=32, patience=30)
    return model


def test_a_scaffold_split_makes_a_model_trained_on_neither_set_look_leaky() -> None:
    # The old audit's non-members were the held-out scaffold split: other series than the
    # members. A reference model that saw no member, only other molecules of the members'
    # series, then "detects" members: the attack measures series, not membership.
    rng = np.random.default_rng(3)
    xm, ym, mm = _series(rng, 150, np.arange(0, 6))
    xn, yn, mn = _series(rng, 150, np.arange(6, 12))
    data = AttackData(x_members=xm, y_members=ym, mask_members=mm, x_non_members=xn,
                      y_non_members=yn, mask_non_members=mn)
    reference = _fit(*_series(rng, 150, np.arange(0, 6)))
    result = run_attacks(reference, data, shadows=None, n_bootstrap=100)
    assert result["loss-threshold"].auc.lower > 0.7, result["loss-threshold"].auc


def test_attack_on_a_model_trained_on_neither_set_scores_chance() -> None:
    # The audit's membership: a random half of one pool of molecules from all series (Carlini
    # et al. 2022). A model trained on other molecules of the same series, and the shadows,
    # can then tell nothing: both attacks score chance.
    rng = np.random.default_rng(4)
    pool = _series(rng, 300, np.arange(12))
    data = random_membership(*pool, seed=0)
    assert len(data.x_members) == len(data.x_non_members) == 150
    reference = _fit(*_series(rng, 150, np.arange(12)))
    shadows = train_shadows(_fit, data, shadows=2, seed=0)
    result = run_attacks(reference, data, shadows=shadows, n_bootstrap=100)
    for attack in ("loss-threshold", "lira-offline"):
        assert result[attack].auc.contains(0.5), (attack, result[attack].auc)
        assert abs(result[attack].auc.value - 0.5) < 0.08, (attack, result[attack].auc)
    # ...while the same attack on a model trained on the members does detect them.
    target = run_attacks(_overfit(data.x_members, data.y_members, data.mask_members), data,
                         shadows=shadows, n_bootstrap=100)
    assert target["lira-offline"].auc.lower > 0.6, target["lira-offline"].auc


def test_random_membership_splits_the_pool_at_the_molecule_level() -> None:
    x = np.arange(20, dtype=np.float32)[:, None]
    data = random_membership(x, x.copy(), np.ones_like(x), seed=5)
    both = np.sort(np.r_[data.x_members[:, 0], data.x_non_members[:, 0]])
    assert np.array_equal(both, x[:, 0]) and len(data.x_members) == 10
    assert np.array_equal(data.x_members, data.y_members)  # rows stay together
    again = random_membership(x, x.copy(), np.ones_like(x), seed=6)
    assert not np.array_equal(again.x_members, data.x_members)


def test_every_candidate_is_out_for_half_the_shadows_each_trained_like_the_target() -> None:
    rng = np.random.default_rng(9)
    data = random_membership(*_rows(rng, 40), seed=0)
    sizes: list[int] = []

    def trainer(x: np.ndarray, y: np.ndarray, m: np.ndarray) -> MultiTaskMLP:
        sizes.append(len(x))
        return build_model(SPEC, seed=0)

    shadows = train_shadows(trainer, data, shadows=4, seed=0)
    assert sizes == [20] * 4  # as many molecules as the target's members
    assert (shadows.trained_on.sum(axis=0) == 2).all()  # members and non-members alike
