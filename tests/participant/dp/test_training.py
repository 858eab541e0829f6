"""The DP-SGD loop: calibrated fresh noise per step, Opacus's update, fail-closed inputs."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from chem.models import ModelSpec, build_model, masked_loss
from participant.dp.sparse_rows import SparseRows
from participant.dp.training import dp_train
from protocols.errors import ConfigError
from tests.participant.dp.toy_batches import labelled_batch as _batch
from tests.participant.dp.toy_batches import two_endpoint_spec as _spec


@pytest.mark.parametrize("sparse", [False, True])
def test_noise_has_the_calibrated_standard_deviation(sparse: bool) -> None:
    # Zero data gradient: the update is pure noise of std sigma * C / expected batch,
    # also when the weight is stored column-major for CSR inputs.
    layer = nn.Linear(50, 40, bias=False)
    model = nn.Sequential(layer)
    nn.init.zeros_(layer.weight)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    n, q, sigma, clip = 1000, 0.1, 1.3, 0.7
    rows = SparseRows.from_dense(torch.zeros(n, 50))
    dp_train(model, n, lambda pred, idx: pred.sum(dim=1) * 0.0,
             rows.gather if sparse else (lambda idx: torch.zeros(len(idx), 50)),
             noise_multiplier=sigma, max_grad_norm=clip, sample_rate=q, steps=1,
             optimizer=opt, unsafe_seed=0)
    observed = layer.weight.detach().std().item()
    expected = sigma * clip / (q * n)
    assert abs(observed - expected) / expected < 0.05
    assert layer.weight.is_contiguous()


def test_training_reduces_loss_at_low_noise() -> None:
    torch.manual_seed(0)
    spec = _spec(8, (16,))
    x = torch.randn(512, 8)
    y = torch.stack([x[:, 0] * 2 + 0.5, (x[:, 1] > 0).float()], dim=1)
    mask = torch.ones_like(y)
    model = build_model(spec, seed=0)
    before = masked_loss(model(x), y, mask, spec).item()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    dp_train(model, 512, lambda pred, idx: masked_loss(pred, y[idx], mask[idx], spec,
                                                       reduction="none"),
             lambda idx: x[idx], noise_multiplier=0.1, max_grad_norm=5.0, sample_rate=0.1,
             steps=200, optimizer=opt, unsafe_seed=1)
    assert masked_loss(model(x), y, mask, spec).item() < 0.5 * before


def _opacus_clipped_mean(model: nn.Module, spec: ModelSpec, x: torch.Tensor, y: torch.Tensor,
                         mask: torch.Tensor, clip: float) -> dict[str, torch.Tensor]:
    reference = GradSampleModule(model, loss_reduction="sum")
    masked_loss(reference(x), y, mask, spec, reduction="none").sum().backward()  # type: ignore[no-untyped-call]
    samples = {name.removeprefix("_module."): p.grad_sample
               for name, p in reference.named_parameters()}
    n = x.shape[0]
    norms = torch.stack([g.reshape(n, -1).norm(dim=1) for g in samples.values()], 1).norm(dim=1)
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    return {k: torch.einsum("i,i...->...", factor, g) / n for k, g in samples.items()}


@pytest.mark.parametrize(("threads", "sparse"), [(1, False), (2, False), (1, True), (2, True)])
def test_a_noiseless_step_moves_by_opacus_clipped_mean(threads: int, sparse: bool) -> None:
    # Sample rate 1 takes every example, so the step is -lr * (sum of clipped grads) / n,
    # written by dp_train's in-place update path (with and without the noise thread;
    # dense rows, or CSR rows into a column-major first weight).
    spec = _spec(7, (6, 5))
    x, y, mask = _batch(12, 7, 5, zeros=0.7 if sparse else 0.0)
    model = build_model(spec, seed=1).double()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    expected = _opacus_clipped_mean(build_model(spec, seed=1).double(), spec, x, y, mask, 0.3)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dp_train(model, 12, lambda pred, idx: masked_loss(pred, y[idx], mask[idx], spec,
                                                          reduction="none"),
                 SparseRows.from_dense(x).gather if sparse else (lambda idx: x[idx]),
                 noise_multiplier=0.0, max_grad_norm=0.3, sample_rate=1.0,
                 steps=1, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                 unsafe_seed=0)
    finally:
        torch.set_num_threads(saved)
    for name, p in model.named_parameters():
        assert p.is_contiguous(), name
        assert p.grad is None, name  # a spent noisy gradient is not kept
        assert torch.allclose(before[name] - p.detach(), expected[name], rtol=1e-9,
                              atol=1e-12), name


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_sparse_and_dense_rows_train_the_same_model(optimizer: str) -> None:
    # Many Poisson steps without noise: the CSR path (column-major first weight, its
    # optimizer state in that layout) must follow the dense path step for step.
    spec = _spec(20, (16,))
    x, y, mask = _batch(300, 20, 9, zeros=0.85)
    rows = SparseRows.from_dense(x)
    models = []
    for inputs in (lambda idx: x[idx], rows.gather):
        model = build_model(spec, seed=3).double()
        opt: torch.optim.Optimizer = (torch.optim.SGD(model.parameters(), lr=0.5)
                                      if optimizer == "sgd"
                                      else torch.optim.Adam(model.parameters(), lr=0.01))
        dp_train(model, 300, lambda pred, idx: masked_loss(pred, y[idx], mask[idx], spec,
                                                           reduction="none"),
                 inputs, noise_multiplier=0.0, max_grad_norm=0.5, sample_rate=0.1, steps=40,
                 optimizer=opt, unsafe_seed=4)
        models.append(model)
    dense, sparse = (dict(m.named_parameters()) for m in models)
    start = dict(build_model(spec, seed=3).double().named_parameters())
    assert not torch.equal(dense["trunk.0.weight"], start["trunk.0.weight"])  # it did train
    for name in dense:
        assert torch.allclose(dense[name], sparse[name], rtol=1e-9, atol=1e-12), name


def test_each_step_gets_fresh_noise_of_the_calibrated_std() -> None:
    # Zero data gradient and lr 1: each step's update is exactly that step's noise / batch.
    layer = nn.Linear(300, 200, bias=False)
    nn.init.zeros_(layer.weight)
    n, q, sigma, clip = 500, 0.2, 0.9, 1.1
    updates: list[torch.Tensor] = []
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    for _ in range(3):
        w = layer.weight.detach().clone()
        dp_train(nn.Sequential(layer), n, lambda pred, idx: pred.sum(dim=1) * 0.0,
                 lambda idx: torch.zeros(len(idx), 300), noise_multiplier=sigma,
                 max_grad_norm=clip, sample_rate=q, steps=1, optimizer=opt,
                 unsafe_seed=7)
        updates.append((w - layer.weight.detach()).flatten())
    expected = sigma * clip / (q * n)
    for u in updates:
        assert abs(u.std().item() - expected) / expected < 0.03
    # The same seed gives the same noise; two steps of one run must not share it.
    assert torch.equal(updates[0], updates[1])
    fresh = nn.Linear(300, 200, bias=False)
    nn.init.zeros_(fresh.weight)
    model = nn.Sequential(fresh)
    steps: list[torch.Tensor] = []

    class Recorder(torch.optim.SGD):
        def step(self, closure: object = None) -> None:  # type: ignore[override]
            assert fresh.weight.grad is not None
            steps.append(fresh.weight.grad.detach().clone().flatten())
            super().step()

    dp_train(model, n, lambda pred, idx: pred.sum(dim=1) * 0.0,
             lambda idx: torch.zeros(len(idx), 300), noise_multiplier=sigma,
             max_grad_norm=clip, sample_rate=q, steps=3, optimizer=Recorder(
                 model.parameters(), lr=1.0), unsafe_seed=7)
    assert len(steps) == 3
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        corr = torch.corrcoef(torch.stack([steps[a], steps[b]]))[0, 1].item()
        assert abs(corr) < 0.02, (a, b, corr)


def test_thread_count_is_restored_after_training() -> None:
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = nn.Sequential(nn.Linear(4, 1))
        dp_train(model, 50, lambda pred, idx: pred.sum(dim=1), lambda idx: torch.ones(len(idx), 4),
                 noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.2, steps=3,
                 optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


def test_optimizer_over_foreign_parameters_is_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 1))
    stray = nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError) as err:
        dp_train(model, 10, lambda pred, idx: pred.sum(dim=1), lambda idx: torch.ones(len(idx), 3),
                 noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5, steps=1,
                 optimizer=torch.optim.SGD([*model.parameters(), stray], lr=0.1))
    assert "outside the model" in str(err.value)
