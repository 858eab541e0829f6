"""CSR fingerprint rows: every operation equals its dense counterpart."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from chem.models import ModelSpec, build_model
from participant.dp.sparse_rows import (
    SparseBatch,
    SparseRows,
    column_major,
    row_batches,
    sparse_input,
)
from protocols.endpoints import EndpointSpec


def _matrix(n: int, d: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return torch.where(torch.rand(n, d, generator=g, dtype=torch.float64) < density, x, 0.0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 30), d=st.integers(1, 25), density=st.floats(0.0, 1.0),
       seed=st.integers(0, 10_000), picks=st.lists(st.integers(0, 10_000), max_size=40))
def test_a_gathered_batch_equals_the_dense_rows(n: int, d: int, density: float, seed: int,
                                                picks: list[int]) -> None:
    x = _matrix(n, d, density, seed)
    idx = torch.tensor([p % n for p in picks], dtype=torch.long)  # repeats and any order
    batch = SparseRows.from_dense(x).gather(idx)
    dense = x[idx]
    assert batch.shape == (len(picks), d)
    assert torch.equal(batch.to_dense(), dense)
    assert torch.allclose(batch.squared_row_norms(), dense.square().sum(dim=1))
    bare = SparseBatch(crow=batch.crow, col=batch.col, val=batch.val, n_cols=d)  # norms computed
    assert torch.allclose(bare.squared_row_norms(), dense.square().sum(dim=1))
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(7, d, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    assert torch.allclose(batch.linear(w, b), dense @ w.t() + b)
    grad = torch.randn(len(picks), 7, generator=g, dtype=torch.float64)
    assert torch.allclose(batch.transposed_matmul(grad), dense.t() @ grad)
    # The columns a batch reads: exactly those with a non-zero in some row.
    assert batch.columns.tolist() == torch.nonzero(dense.ne(0).any(dim=0)).flatten().tolist()


@pytest.mark.parametrize("column", [False, True])
def test_sparse_linear_gradients_equal_dense_autograd(column: bool) -> None:
    x = _matrix(20, 30, 0.1, 1)
    idx = torch.tensor([4, 0, 4, 19, 7])
    w = torch.randn(6, 30, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    wd, bd = w.clone().requires_grad_(), b.clone().requires_grad_()
    (x[idx] @ wd.t() + bd).tanh().sum().backward()  # type: ignore[no-untyped-call]
    ws, bs = nn.Parameter(w.clone()), nn.Parameter(b.clone())
    with column_major([ws] if column else []):
        SparseRows.from_dense(x).gather(idx).linear(ws, bs).tanh().sum().backward()  # type: ignore[no-untyped-call]
    assert ws.grad is not None and bs.grad is not None
    assert torch.allclose(ws.grad, wd.grad)  # type: ignore[arg-type]
    assert torch.allclose(bs.grad, bd.grad)  # type: ignore[arg-type]
    assert ws.is_contiguous() and ws.grad.is_contiguous()


def test_sparse_input_lets_the_model_read_csr_rows_only_inside_the_block() -> None:
    spec = ModelSpec(input_dim=30, hidden_dims=(8, 4), dropout=0.0, endpoints=(
        EndpointSpec(name="a", task="regression"), EndpointSpec(name="b", task="classification")))
    model = build_model(spec, seed=0).double()
    x = _matrix(10, 30, 0.15, 2)
    batch = SparseRows.from_dense(x).gather(torch.arange(10))
    with sparse_input(model):
        out = model(batch)
        assert torch.allclose(out, model(x))  # dense input still works inside
    with pytest.raises(TypeError):
        model(batch)
    assert all("forward" not in vars(m) for m in model.modules())


def test_column_major_keeps_values_and_restores_the_layout() -> None:
    p = nn.Parameter(torch.randn(5, 9))
    before = p.detach().clone()
    with column_major([p]):
        assert p.t().is_contiguous() and not p.is_contiguous()
        assert torch.equal(p, before)
        p.grad = torch.ones(9, 5).t()
    assert p.is_contiguous() and p.grad is not None and p.grad.is_contiguous()
    assert torch.equal(p.detach(), before)


def test_row_batches_picks_csr_only_for_mostly_zero_features() -> None:
    sparse, dense = _matrix(50, 40, 0.05, 3), _matrix(50, 40, 0.9, 3)
    idx = torch.tensor([3, 1, 3])
    got = row_batches(sparse)(idx)
    assert isinstance(got, SparseBatch) and torch.equal(got.to_dense(), sparse[idx])
    plain = row_batches(dense)(idx)
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, dense[idx])


def test_density_and_bad_shape() -> None:
    rows = SparseRows.from_dense(torch.tensor([[0.0, 2.0], [0.0, 0.0]]))
    assert len(rows) == 2 and rows.density == 0.25
    with pytest.raises(ValueError, match="2-D"):
        SparseRows.from_dense(torch.zeros(3))
