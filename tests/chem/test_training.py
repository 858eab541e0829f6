"""Early stopping restores the best epoch; training beats a mean predictor."""

from __future__ import annotations

import numpy as np

from chem.metrics import endpoint_metrics, mean_predictor_metrics
from chem.models import ModelSpec, build_model, predict
from chem.training import Split, fit
from protocols.endpoints import EndpointSpec

SPEC = ModelSpec(input_dim=5, hidden_dims=(16,), dropout=0.0,
                 endpoints=(EndpointSpec(name="y", task="regression"),))


def _data(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x[:, :1] * 2 - x[:, 1:2] + 0.1 * rng.normal(size=(n, 1))).astype(np.float32)
    return Split(x, y, np.ones_like(y))


def test_learns_better_than_a_mean_predictor() -> None:
    train, valid, test = _data(400, 0), _data(100, 1), _data(100, 2)
    model = build_model(SPEC, seed=0)
    result = fit(model, train, valid, epochs=60, lr=1e-2, patience=10, seed=0)
    ours = endpoint_metrics(test.y, predict(model, test.x), test.mask, ["y"], ["regression"])
    base = mean_predictor_metrics(train.y, train.mask, test.y, test.mask, ["y"], ["regression"])
    assert ours["y"]["mae"] < 0.5 * base["y"]["mae"]
    assert result.best_epoch >= 0


def test_best_weights_are_restored() -> None:
    train, valid = _data(200, 0), _data(50, 1)
    model = build_model(SPEC, seed=0)
    result = fit(model, train, valid, epochs=40, lr=5e-2, patience=3, seed=0)
    import torch

    from chem.models import masked_loss
    xv, yv, mv = valid.tensors()
    with torch.no_grad():
        now = float(masked_loss(model(xv), yv, mv, SPEC))
    assert now == min(result.valid_loss) or abs(now - result.best_valid_loss) < 1e-5


def test_freeze_trunk_leaves_the_trunk_untouched() -> None:
    train, valid = _data(100, 0), _data(30, 1)
    model = build_model(SPEC, seed=0)
    before = [p.detach().clone() for p in model.trunk.parameters()]
    fit(model, train, valid, epochs=5, lr=1e-2, seed=0, freeze_trunk=True)
    assert all((a == b.detach()).all() for a, b in zip(before, model.trunk.parameters(),
                                                         strict=True))
