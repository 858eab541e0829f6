"""Noise owed per column is DP-SGD's noise: the same distribution, never lost."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import participant.dp.noisy_step as noisy_step
from chem.models import ModelSpec, build_model, masked_loss
from participant.dp.lazy_noise import LazyColumnNoise, plain_sgd_group
from participant.dp.randomness import DPRandom
from participant.dp.sparse_rows import SparseBatch, SparseRows
from participant.dp.training import DPTrainingResult, dp_train
from protocols.endpoints import EndpointSpec
from protocols.errors import ConfigError


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[LazyColumnNoise]:
    """Every LazyColumnNoise that dp_train makes (the real objects, recorded)."""
    made: list[LazyColumnNoise] = []

    def record(*args: Any, **kwargs: Any) -> LazyColumnNoise:
        made.append(LazyColumnNoise(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(noisy_step, "LazyColumnNoise", record)
    return made


def _fingerprints(n: int, d_in: int, per_row: int, seed: int) -> torch.Tensor:
    """Rows with ``per_row`` non-zero counts each, like a very sparse fingerprint."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, d_in, dtype=torch.float64)
    for i in range(n):
        cols = torch.randperm(d_in, generator=g)[:per_row]
        x[i, cols] = torch.randint(1, 4, (per_row,), generator=g).double()
    return x


class _Case:
    """A one-endpoint regression on sparse count rows, trained by dp_train."""

    def __init__(self, *, n: int, d_in: int, hidden: int, per_row: int, seed: int) -> None:
        self.n = n
        self.spec = ModelSpec(input_dim=d_in, hidden_dims=(hidden,), dropout=0.0, endpoints=(
            EndpointSpec(name="a", task="regression", target_offset=0.0, target_scale=1.0),))
        self.x = _fingerprints(n, d_in, per_row, seed=seed)
        self.y = self.x[:, :d_in // 2].sum(dim=1, keepdim=True) - 1.0
        self.mask = torch.ones_like(self.y)
        self.rows = SparseRows.from_dense(self.x)

    def dense(self, idx: torch.Tensor) -> torch.Tensor:
        return self.x[idx]

    def train(self, model: nn.Module, inputs: Callable[[torch.Tensor], Any], *, seed: int,
              **dp: Any) -> DPTrainingResult:
        return dp_train(model, self.n, lambda pred, idx: masked_loss(
            pred, self.y[idx], self.mask[idx], self.spec, reduction="none"),
            inputs, unsafe_seed=seed, **dp)


@pytest.mark.parametrize("helper", [False, True])
def test_each_read_sees_exactly_the_noise_owed_since_the_last_one(helper: bool) -> None:
    # No gradients: a column's change between two reads is the noise of the steps
    # in between, N(0, sum of (lr_t * std)^2), fresh each time.
    out, n_in, std, steps = 64, 120, 0.3, 12
    weight = torch.zeros(out, n_in)
    lrs = [0.5 + 0.1 * t for t in range(steps)]
    rng = np.random.default_rng(0)
    reads = [torch.from_numpy(np.sort(rng.choice(n_in, 20, replace=False)))
             for _ in range(steps)]
    last_value = torch.zeros(n_in, out)
    owed_since = np.zeros(n_in)
    standardized: list[torch.Tensor] = []
    with LazyColumnNoise(weight, std=std, lr=lrs[0], rng=DPRandom(unsafe_seed=3),
                         helper=helper) as owed:
        for t in range(steps):
            # dp_train's order: the next batch's columns are prepared before this
            # batch's settle, from the second step on.
            if 0 < t < steps - 1:
                owed.prepare(reads[t + 1])
            owed.settle(reads[t])
            if t == 0:
                owed.prepare(reads[1])
            cols = reads[t]
            now = weight.t()[cols].clone()
            for k, c in enumerate(cols.tolist()):
                if owed_since[c] > 0:
                    standardized.append((now[k] - last_value[c]) / np.sqrt(owed_since[c]))
                last_value[c] = now[k]
                owed_since[c] = 0.0
            owed.step(lr=lrs[t])
            owed_since += (lrs[t] * std) ** 2
    # On exit everything still owed is added.
    final = weight.t().clone()
    for c in range(n_in):
        if owed_since[c] > 0:
            standardized.append((final[c] - last_value[c]) / np.sqrt(owed_since[c]))
    z = torch.cat(standardized).numpy()
    assert len(z) > 5000
    assert abs(z.std() - 1.0) < 0.03 and abs(z.mean()) < 0.03
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_a_changed_learning_rate_is_still_owed_exactly() -> None:
    # dp_train with a zero loss gradient and an lr that the loss callback changes
    # every step: each entry's total change is N(0, sum_t (lr_t * std)^2), and the
    # noise of columns no batch read is added at the end.
    n, d_in, q, sigma, clip = 400, 300, 0.02, 1.3, 0.7
    x = _fingerprints(n, d_in, 2, seed=1).float()
    layer = nn.Linear(d_in, 50)
    nn.init.zeros_(layer.weight)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    lrs: list[float] = []

    def loss(pred: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        lrs.append(1.0 + 0.25 * len(lrs))
        opt.param_groups[0]["lr"] = lrs[-1]  # this step's update uses it
        return pred.sum(dim=1) * 0.0

    dp_train(nn.Sequential(layer), n, loss, SparseRows.from_dense(x).gather,
             noise_multiplier=sigma, max_grad_norm=clip, sample_rate=q, steps=30,
             optimizer=opt, unsafe_seed=5)
    assert len(lrs) == 30 and len(set(lrs)) == 30
    std = sigma * clip / round(q * n)
    expected = std * np.sqrt(sum(lr * lr for lr in lrs))
    z = (layer.weight.detach().flatten() / expected).numpy()
    assert abs(z.std() - 1.0) < 0.03
    assert stats.kstest(z, "norm").pvalue > 1e-3


def _tiny_run(seed: int, *, lazy: bool) -> torch.Tensor:
    case = _Case(n=60, d_in=100, hidden=3, per_row=2, seed=11)
    model = build_model(case.spec, seed=0).double()
    result = case.train(model, case.rows.gather, seed=seed, noise_multiplier=3.0,
                        max_grad_norm=0.5, sample_rate=0.1, steps=20,
                        optimizer=torch.optim.SGD(model.parameters(), lr=1.0), lazy_noise=lazy)
    probe = torch.linspace(-1, 1, 100, dtype=torch.float64).unsqueeze(0)
    with torch.no_grad():
        w = dict(model.named_parameters())["trunk.0.weight"].flatten()
        # The training loss is computed on the weights each step reads: it tells
        # whether they held the noise owed so far.
        seen = torch.tensor([result.mean_loss, result.clipped_fraction], dtype=torch.float64)
        return torch.cat([w[:20], model(probe).flatten(), w.norm().unsqueeze(0), seen])


def test_owed_and_per_step_noise_train_models_of_the_same_distribution(
        made: list[LazyColumnNoise]) -> None:
    # The nonlinear model feeds each step's noise into the next gradients; owing
    # the noise of unread columns must not change the law of anything computed.
    lazy = torch.stack([_tiny_run(s, lazy=True) for s in range(300)]).numpy()
    assert len(made) == 300  # the first layer's noise was owed per column
    eager = torch.stack([_tiny_run(1000 + s, lazy=False) for s in range(300)]).numpy()
    assert len(made) == 300
    pvalues = [stats.ks_2samp(lazy[:, j], eager[:, j]).pvalue for j in range(lazy.shape[1])]
    # 24 statistics: with the same law, all above 1e-3 with probability ~0.98.
    # (Fixed seeds, so this is deterministic.) Weights that held the noise only at
    # the end of training, not when read, gave p ~ 1e-110 on the training loss.
    assert min(pvalues) > 1e-3, pvalues


@pytest.mark.parametrize("lr", [0.5, 0.0])
def test_without_noise_owed_columns_train_the_dense_model(
        lr: float, made: list[LazyColumnNoise]) -> None:
    # Noiseless Poisson steps: the clipped sum goes straight into the CSR-read
    # weight's columns and must follow the dense path step for step.
    case = _Case(n=300, d_in=200, hidden=16, per_row=3, seed=4)
    trained = []
    for inputs in (case.dense, case.rows.gather):
        model = build_model(case.spec, seed=3).double()
        case.train(model, inputs, seed=4, noise_multiplier=0.0, max_grad_norm=0.5,
                   sample_rate=0.05, steps=40, optimizer=torch.optim.SGD(model.parameters(), lr=lr))
        trained.append(dict(model.named_parameters()))
    assert len(made) == 1  # the CSR run owed its first layer's noise per column
    dense, sparse = trained
    start = dict(build_model(case.spec, seed=3).double().named_parameters())
    assert torch.equal(dense["trunk.0.weight"], start["trunk.0.weight"]) == (lr == 0)
    for name in dense:
        assert torch.allclose(dense[name], sparse[name], rtol=1e-9, atol=1e-12), name


def test_a_dense_batch_among_csr_batches_reads_and_updates_every_column(
        made: list[LazyColumnNoise]) -> None:
    # Owing starts from a CSR first batch; a later dense batch reads every column,
    # so all owed noise is added before it and its update covers every column.
    case = _Case(n=300, d_in=200, hidden=8, per_row=3, seed=8)
    calls = 0

    def mixed(idx: torch.Tensor) -> torch.Tensor | SparseBatch:
        nonlocal calls
        calls += 1
        return case.rows.gather(idx) if calls % 3 == 1 else case.x[idx]

    trained = []
    for inputs in (case.dense, mixed):
        model = build_model(case.spec, seed=2).double()
        case.train(model, inputs, seed=9, noise_multiplier=0.0, max_grad_norm=0.5,
                   sample_rate=0.05, steps=12,
                   optimizer=torch.optim.SGD(model.parameters(), lr=0.5))
        trained.append(dict(model.named_parameters()))
    assert len(made) == 1
    for name in trained[0]:
        assert torch.allclose(trained[0][name], trained[1][name], rtol=1e-9, atol=1e-12), name


def test_noise_still_owed_is_added_when_a_step_raises() -> None:
    # Fail closed: a step that raises mid-run leaves the weight with the noise of
    # every step taken, none deferred forever.
    n, d_in, q, sigma, clip, fail_at = 400, 300, 0.02, 1.0, 1.0, 10
    x = _fingerprints(n, d_in, 2, seed=2).float()
    layer = nn.Linear(d_in, 50)
    nn.init.zeros_(layer.weight)
    calls = 0

    def loss(pred: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == fail_at:
            raise RuntimeError("site lost its data")
        return pred.sum(dim=1) * 0.0

    with pytest.raises(RuntimeError, match="site lost its data"):
        dp_train(nn.Sequential(layer), n, loss, SparseRows.from_dense(x).gather,
                 noise_multiplier=sigma, max_grad_norm=clip, sample_rate=q, steps=30,
                 optimizer=torch.optim.SGD(layer.parameters(), lr=1.0),
                 unsafe_seed=6)
    expected = sigma * clip / round(q * n) * np.sqrt(fail_at - 1)
    z = (layer.weight.detach().flatten() / expected).numpy()
    assert abs(z.std() - 1.0) < 0.03
    assert layer.weight.is_contiguous()


def test_the_same_seed_owes_the_same_noise_with_or_without_the_helper_thread() -> None:
    saved = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_tiny_run(7, lazy=True))
    finally:
        torch.set_num_threads(saved)
    assert torch.allclose(results[0], results[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=1e-4),
    lambda ps: torch.optim.SGD(ps, lr=0.1, maximize=True),
    lambda ps: torch.optim.Adam(ps, lr=0.1),
    lambda ps: type("MySGD", (torch.optim.SGD,), {})(ps, lr=0.1),
])
def test_only_plain_sgd_may_owe_noise(make: object) -> None:
    layer = nn.Linear(4, 2)
    assert callable(make)
    assert plain_sgd_group(make(layer.parameters()), layer.weight) is None
    plain = torch.optim.SGD(layer.parameters(), lr=0.1)
    assert plain_sgd_group(plain, layer.weight) is plain.param_groups[0]
    assert plain_sgd_group(plain, nn.Parameter(torch.zeros(1))) is None


@pytest.mark.parametrize("stale", [30.0, 0.0])
def test_stale_gradient_on_a_lazily_noised_weight_is_never_applied(
        stale: float, made: list[LazyColumnNoise]) -> None:
    """A ``.grad`` left on a weight whose noise is owed was applied by ``optimizer.step()``
    at every step, unclipped and without noise (a measured shift of 30 in one weight)."""
    n, d_in = 200, 64
    x = _fingerprints(n, d_in, 2, seed=3).float()
    layer = nn.Linear(d_in, 8)
    nn.init.zeros_(layer.weight)
    layer.weight.grad = torch.zeros_like(layer.weight)
    layer.weight.grad[0, 0] = stale  # e.g. from an earlier backward on the same model

    def train() -> None:
        dp_train(nn.Sequential(layer), n, lambda pred, idx: pred.sum(dim=1) * 0.0,
                 SparseRows.from_dense(x).gather, noise_multiplier=0.0, max_grad_norm=1.0,
                 sample_rate=0.05, steps=5, optimizer=torch.optim.SGD(layer.parameters(),
                                                                      lr=1.0))

    if stale:
        with pytest.raises(ConfigError, match="already holds a gradient"):
            train()
        assert not made  # refused before any step
    else:
        train()  # a zeroed gradient is harmless: cleared, then trained as usual
        assert made, "the weight should have owed its noise (the case under test)"
    assert torch.count_nonzero(layer.weight.detach()) == 0  # no noise, no gradient: no move
