"""The shared model: stable spec digests, correct masked loss, shared vs private names."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from chem.models import (
    ModelSpec,
    build_model,
    get_weights,
    masked_loss,
    predict,
    set_weights,
    shared_parameter_names,
)
from protocols.endpoints import EndpointSpec
from protocols.errors import ConfigError

SPEC = ModelSpec(input_dim=6, hidden_dims=(8, 4), dropout=0.1, endpoints=(
    EndpointSpec(name="logd", task="regression", target_offset=2.0, target_scale=0.5),
    EndpointSpec(name="bbb", task="classification")))


def test_digest_is_stable_and_sensitive() -> None:
    assert SPEC.digest() == ModelSpec.from_dict(json.loads(json.dumps(SPEC.to_dict()))).digest()
    other = ModelSpec(input_dim=6, hidden_dims=(8, 5), dropout=0.1, endpoints=SPEC.endpoints)
    assert other.digest() != SPEC.digest()
    code = ("import json; from chem.models import ModelSpec; "
            f"print(ModelSpec.from_dict(json.loads({json.dumps(json.dumps(SPEC.to_dict()))})).digest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120)
    assert out.stdout.strip() == SPEC.digest()


def test_architecture_has_no_normalisation_layers() -> None:
    model = build_model(SPEC, seed=0)
    assert not any(isinstance(m, nn.BatchNorm1d | nn.LayerNorm) for m in model.modules())
    assert model(torch.zeros(3, 6)).shape == (3, 2)


def test_seeded_builds_are_identical() -> None:
    a, b = get_weights(build_model(SPEC, seed=5)), get_weights(build_model(SPEC, seed=5))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_masked_loss_matches_a_hand_computation() -> None:
    pred = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    y = torch.tensor([[2.5, 1.0], [math.nan, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    per = masked_loss(pred, y, mask, SPEC, reduction="none")
    scaled = (2.5 - 2.0) / 0.5
    bce0 = math.log(2.0)
    bce1 = math.log1p(math.exp(2.0))
    assert per.tolist() == pytest.approx([scaled**2 + bce0, bce1])
    assert float(masked_loss(pred, y, mask, SPEC)) == pytest.approx((scaled**2 + bce0 + bce1) / 3)
    assert torch.isfinite(per).all()  # NaN labels under a zero mask do not leak


def test_predict_returns_original_units() -> None:
    model = build_model(SPEC, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    out = predict(model, np.zeros((2, 6), dtype=np.float32))
    assert out[:, 0].tolist() == pytest.approx([2.0, 2.0])  # offset
    assert out[:, 1].tolist() == pytest.approx([0.5, 0.5])  # sigmoid(0)


def test_shared_and_private_parameter_names() -> None:
    local = build_model(SPEC.with_endpoints([EndpointSpec(name="tox", task="classification")]))
    shared = shared_parameter_names(local, ["logd", "bbb"])
    assert "heads.tox.weight" not in shared and "heads.logd.weight" in shared
    assert all(n in shared for n, _ in local.trunk.named_parameters(prefix="trunk"))


def test_set_weights_refuses_wrong_shapes_and_names() -> None:
    model = build_model(SPEC)
    with pytest.raises(ConfigError):
        set_weights(model, {"trunk.0.weight": np.zeros((1, 1), np.float32)})
    with pytest.raises(ConfigError):
        set_weights(model, {"nope": np.zeros(1, np.float32)})


def test_invalid_specs_are_refused() -> None:
    with pytest.raises(ConfigError):
        ModelSpec(input_dim=4, hidden_dims=(), dropout=0.0, endpoints=SPEC.endpoints)
    with pytest.raises(ConfigError):
        ModelSpec(input_dim=4, hidden_dims=(3,), dropout=0.0,
                  endpoints=(SPEC.endpoints[0], SPEC.endpoints[0]))
