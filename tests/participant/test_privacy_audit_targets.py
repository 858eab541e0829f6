"""A received model is attacked on its own endpoints, whatever order the site keeps them in."""

from __future__ import annotations

import numpy as np
import torch

from chem.models import ModelSpec, build_model
from participant.membership_inference import AttackData, per_example_losses
from participant.privacy_audit import AuditPlan, aligned, attack_targets
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
