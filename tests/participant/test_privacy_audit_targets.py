"""A received model is attacked on its own endpoints and members; canary runs keep the claim."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chem.models import ModelSpec, build_model
from participant.membership_inference import AttackData, per_example_losses, random_membership
from participant.privacy_audit import AuditPlan, aligned, attack_targets, canary_audits
from protocols.endpoints import EndpointSpec


def _data(rng: np.random.Generator) -> AttackData:
    x = rng.random((40, 8)).astype(np.float32)
    y = rng.normal(size=(40, 2)).astype(np.float32)
    m = np.ones_like(y)
    m[:, 1] = 0  # the site has no labels for "b"
    return AttackData(x_members=x[:20], y_members=y[:20], mask_members=m[:20],
                      x_non_members=x[20:], y_non_members=y[20:], mask_non_members=m[20:],
                      endpoints=("a", "b"))


def test_aligned_reorders_labels_and_masks_out_unknown_endpoints() -> None:
    data = _data(np.random.default_rng(0))
    got = aligned(data, ("c", "a"))
    assert got.endpoints == ("c", "a")
    assert np.array_equal(got.y_members[:, 1], data.y_members[:, 0])
    assert not got.mask_members[:, 0].any() and got.mask_members[:, 1].all()


def test_a_received_model_is_attacked_on_its_endpoints_only() -> None:
    data = _data(np.random.default_rng(1))
    spec = ModelSpec(input_dim=8, hidden_dims=(4,), dropout=0.0, endpoints=(
        EndpointSpec(name="c", task="regression"), EndpointSpec(name="a", task="regression")))
    model = build_model(spec, seed=0)
    result = attack_targets({"received": (model, None)}, data,
                            plan=AuditPlan(n_bootstrap=20))
    assert set(result["received"]) == {"loss-threshold"}  # no shadows for a received model
    view = aligned(data, spec.endpoint_names)
    losses = per_example_losses(model, view.x_members, view.y_members, view.mask_members)
    # the loss reads endpoint "a" (column 1 of the model), never the unlabelled one
    model.eval()
    pred = model(torch.from_numpy(view.x_members)).detach().numpy()[:, 1]
    assert np.allclose(losses, (pred - data.y_members[:, 0]) ** 2, atol=1e-5)


def test_a_received_model_is_attacked_on_its_own_fixed_members() -> None:
    # The audit's own targets train on a random half of the pool; a received model was
    # trained on the site's training split, so it is attacked on that membership instead.
    rng = np.random.default_rng(2)
    pool, fixed = _data(rng), _data(rng)
    spec = ModelSpec(input_dim=8, hidden_dims=(4,), dropout=0.0,
                     endpoints=(EndpointSpec(name="a", task="regression"),))
    model = build_model(spec, seed=0)
    got = attack_targets({"received": (model, None)}, pool, plan=AuditPlan(n_bootstrap=0),
                         received_data=fixed)
    on_fixed = attack_targets({"received": (model, None)}, fixed, plan=AuditPlan(n_bootstrap=0))
    on_pool = attack_targets({"received": (model, None)}, pool, plan=AuditPlan(n_bootstrap=0))
    auc = got["received"]["loss-threshold"]["auc"]["value"]
    assert auc == on_fixed["received"]["loss-threshold"]["auc"]["value"]
    assert auc != on_pool["received"]["loss-threshold"]["auc"]["value"]


def test_canary_runs_train_on_a_subset_at_the_members_sample_rate() -> None:
    # The accountant's ε depends on (σ, q, T) only: canary runs on canary_rows members at
    # the members' q and T are held to exactly the claim of the full-size training.
    rng = np.random.default_rng(3)
    x = (rng.random((400, 64)) < 0.2).astype(np.float32)
    x[:, 48:] = 0  # free columns for the canary's markers
    y = rng.normal(size=(400, 1)).astype(np.float32)
    data = random_membership(x, y, np.ones_like(y), seed=0, endpoints=("a",))
    spec = ModelSpec(input_dim=64, hidden_dims=(8,), dropout=0.0,
                     endpoints=(EndpointSpec(name="a", task="regression"),))
    plan = AuditPlan(batch_size=20, rounds=1, local_epochs=1, runs=4, canary_rows=50,
                     epsilon=4.0, audit_epsilon=1.0)
    rows = canary_audits(data, spec, plan, delta=1e-5)
    assert [r["target_epsilon"] for r in rows] == [1.0, 4.0]
    for r in rows:
        assert r["training_rows"] == 50
        assert r["mechanism"]["sample_rate"] == pytest.approx(20 / 200)  # q of the members
        assert r["record_epsilon"] == pytest.approx(r["target_epsilon"], rel=0.02)
