"""The fast clipping path is exactly DP-SGD: checked against Opacus's per-sample gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus import GradSampleModule
from torch import nn

from chem.models import build_model, masked_loss
from participant.dp.clipping import clip_and_sum, linear_layers
from participant.dp.sparse_rows import SparseRows
from protocols.errors import ConfigError
from tests.participant.dp.toy_batches import labelled_batch as _batch
from tests.participant.dp.toy_batches import two_endpoint_spec as _spec


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 17), d_in=st.integers(1, 12),
       hidden=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       clip=st.floats(1e-3, 10.0), seed=st.integers(0, 10_000), sparse=st.booleans())
def test_clipped_sum_matches_opacus_per_sample_gradients(
    n: int, d_in: int, hidden: list[int], clip: float, seed: int, sparse: bool
) -> None:
    spec = _spec(d_in, tuple(hidden))
    x, y, mask = _batch(n, d_in, seed, zeros=0.8 if sparse else 0.0)
    ours = build_model(spec, seed=seed).double()
    # Sparse: the first layer reads CSR rows (its own forward and weight gradient).
    inputs = SparseRows.from_dense(x).gather(torch.arange(n)) if sparse else x
    res = clip_and_sum(ours, inputs, lambda p: masked_loss(p, y, mask, spec, reduction="none"),
                       max_grad_norm=clip)

    reference = GradSampleModule(build_model(spec, seed=seed).double(), loss_reduction="sum")
    masked_loss(reference(x), y, mask, spec, reduction="none").sum().backward()  # type: ignore[no-untyped-call]
    samples = {name.removeprefix("_module."): p.grad_sample
               for name, p in reference.named_parameters()}
    norms = torch.stack([g.reshape(n, -1).norm(dim=1) for g in samples.values()], 1).norm(dim=1)
    assert torch.allclose(res.norms, norms, rtol=1e-9, atol=1e-12)
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)  # Opacus's clip factor
    for name, p in ours.named_parameters():
        expected = torch.einsum("i,i...->...", factor, samples[name])
        assert p.grad is not None
        assert torch.allclose(p.grad, expected, rtol=1e-9, atol=1e-12), name


def test_every_clipped_contribution_is_bounded() -> None:
    spec = _spec(6, (5,))
    x, y, mask = _batch(1, 6, 3)
    model = build_model(spec, seed=0).double()
    clip_and_sum(model, x * 1e3, lambda p: masked_loss(p, y * 1e3, mask, spec, reduction="none"),
                 max_grad_norm=0.25)
    total = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm()
    assert total <= 0.25 + 1e-6


def test_model_with_non_linear_parameters_is_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 1))
    with pytest.raises(ConfigError) as err:
        linear_layers(model)
    assert "LayerNorm" in str(err.value)


def test_model_overflowing_on_chosen_molecules_cannot_nan_the_update() -> None:
    # A hostile coordinator's finite weights that overflow float32 only on molecules with a
    # chosen feature: without a guard one such molecule makes the whole noisy sum NaN, so
    # "is the delta NaN?" answers "is the molecule in the training set?" past the noise.
    torch.manual_seed(0)
    spec = _spec(4, (3,))
    model = build_model(spec).float()
    first = model.trunk[0]
    assert isinstance(first, nn.Linear)
    with torch.no_grad():
        first.weight[:, 3] = 3e38  # feature 3 marks the target molecule
    x, y, mask = (t.float() for t in _batch(6, 4, seed=1))
    x[:, 3] = 0.0
    x[2, 3] = 1.0  # only molecule 2 carries it
    x[2, :3] = 0.0

    def grads(rows: list[int]) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        clip_and_sum(model, x[rows],
                     lambda out: masked_loss(out, y[rows], mask[rows], spec, reduction="none"),
                     max_grad_norm=1.0)
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with_target, without = grads(list(range(6))), grads([0, 1, 3, 4, 5])
    assert all(torch.isfinite(g).all() for g in with_target.values())
    # the overflowing molecule contributes a zero gradient: the sum is the others' alone
    for name, g in without.items():
        assert torch.allclose(with_target[name], g, atol=1e-5), name
