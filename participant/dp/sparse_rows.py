"""Mostly-zero feature rows (fingerprints) as CSR, and Linear layers that take them.

A 2048-bit ECFP count vector has ~50 non-zeros per molecule (2.4% on
Lipophilicity). A dense first layer multiplies all 2048 inputs; from CSR the
forward pass ``X W^T`` and the weight gradient ``X^T G`` touch only the
non-zeros, about 10x less work for the layer that holds 99% of the model's
parameters. The values are the same, so the results equal the dense ones up
to float summation order.

``SparseRows`` holds a whole matrix once; ``gather(idx)`` makes the batch.
``sparse_input(model)`` lets the model's ``nn.Linear`` layers accept a
``SparseBatch`` for the duration of a ``with`` block (instance-level wrap,
restored on exit), so the model class and its state dict stay unchanged.
``column_major(params)`` stores weights so that ``W^T`` is contiguous, the
layout the CSR kernels read and write fastest.

Only DP training reads it (``participant.dp.local_round`` picks CSR rows,
``participant.dp.clipping`` and ``participant.dp.noisy_step`` run on them), so it
lives with that code; the model class itself (``chem.models``) never sees CSR.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["SparseBatch", "SparseRows", "column_major", "row_batches", "sparse_input"]

# Chosen with margin, not tuned: at 2.4% the CSR kernels are 3-10x faster than the
# dense ones, and their cost grows linearly with the non-zeros.
MAX_DENSITY = 0.2


def _csr(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
         size: tuple[int, int]) -> torch.Tensor:
    # The indices come from our own construction below, so the (costly) invariant
    # check is off on purpose.
    return torch.sparse_csr_tensor(crow, col, val, size, check_invariants=False)


def _silence_beta_note() -> None:
    # PyTorch warns once per process that CSR support is in beta; trigger it here,
    # muted, rather than in a user's training log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _csr(torch.zeros(2, dtype=torch.long), torch.zeros(0, dtype=torch.long),
             torch.zeros(0), (1, 1))


_silence_beta_note()


@dataclass(frozen=True, eq=False)
class SparseBatch:
    """A (B, n_cols) batch in CSR form: row ``i`` is ``val[crow[i]:crow[i+1]]`` at ``col[...]``."""

    crow: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor
    n_cols: int
    sq_norms: torch.Tensor | None = None  # ||x_i||^2, when the source precomputed them

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.crow.numel()) - 1, self.n_cols)

    @property
    def lengths(self) -> torch.Tensor:
        return self.crow[1:] - self.crow[:-1]

    @cached_property
    def _row_ids(self) -> torch.Tensor:
        """The row of each stored value."""
        ids = np.repeat(np.arange(self.shape[0], dtype=np.int64), self.lengths.numpy())
        return torch.from_numpy(ids)

    def csr(self) -> torch.Tensor:
        return _csr(self.crow, self.col, self.val, self.shape)

    def to_dense(self) -> torch.Tensor:
        out = torch.zeros(self.shape, dtype=self.val.dtype)
        out[self._row_ids, self.col] = self.val
        return out

    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``X W^T + b`` for a (out, in) ``weight``; differentiable in ``weight`` and ``bias``."""
        out: torch.Tensor = _SparseLinear.apply(weight, bias, self)
        return out

    def squared_row_norms(self) -> torch.Tensor:
        """``||x_i||^2`` per row, shape (B,)."""
        if self.sq_norms is not None:
            return self.sq_norms
        sq = torch.zeros(self.shape[0], dtype=self.val.dtype)
        return sq.index_add_(0, self._row_ids, self.val * self.val)

    def transposed_matmul(self, grad: torch.Tensor) -> torch.Tensor:
        """``X^T G`` as a contiguous (n_cols, k) matrix."""
        # Into zeros with addmm_: sparse.mm's own output path took 1.7 ms here on
        # real fingerprints, addmm_ 0.15 ms.
        out = torch.zeros(self.n_cols, grad.shape[1], dtype=grad.dtype)
        return out.addmm_(self.transposed_csr, grad)

    @cached_property
    def _column_counts(self) -> np.ndarray:
        return np.bincount(self.col.numpy(), minlength=self.n_cols)

    @cached_property
    def columns(self) -> torch.Tensor:
        """The columns holding a stored value, ascending: the only ones ``X W^T`` reads."""
        return torch.from_numpy(np.flatnonzero(self._column_counts))

    @cached_property
    def transposed_csr(self) -> torch.Tensor:
        """``X^T`` as a (n_cols, B) CSR tensor, for the weight gradient ``X^T G``."""
        # numpy: these are a few thousand indices, where torch's per-op dispatch
        # cost more than the work. Stable argsort of 16-bit keys is a radix sort,
        # 3x faster than on int64.
        col = self.col.numpy()
        order = np.argsort(col.astype(np.uint16) if self.n_cols <= 1 << 16 else col,
                           kind="stable")
        crow = np.zeros(self.n_cols + 1, dtype=np.int64)
        np.cumsum(self._column_counts, out=crow[1:])
        return _csr(torch.from_numpy(crow), torch.from_numpy(self._row_ids.numpy()[order]),
                    self.val[torch.from_numpy(order)], (self.n_cols, self.shape[0]))


class _SparseLinear(torch.autograd.Function):
    """``X W^T + b`` with the weight gradient ``(X^T G)^T`` from a transposed CSR.

    PyTorch's own backward for ``sparse.mm`` goes through a CSC operand and
    cost 1.8 ms per step here, slower than the dense layer it replaces.
    The gradient comes out (in, out)-contiguous, i.e. in the layout of a
    ``column_major`` weight, which autograd then accumulates without a copy.
    """

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, bias: torch.Tensor | None,
                x: SparseBatch) -> torch.Tensor:
        ctx.x, ctx.has_bias = x, bias is not None
        out: torch.Tensor = torch.sparse.mm(x.csr(), weight.t())
        return out if bias is None else out.add_(bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x: SparseBatch = ctx.x
        gw = x.transposed_matmul(grad).t() if ctx.needs_input_grad[0] else None
        gb = grad.sum(dim=0) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return gw, gb, None


class SparseRows:
    """A feature matrix stored once in CSR form; ``gather`` selects a batch of rows."""

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
                 n_cols: int) -> None:
        self.crow, self.col, self.val, self.n_cols = crow, col, val, n_cols
        whole = SparseBatch(crow=crow, col=col, val=val, n_cols=n_cols)
        self.sq_norms = whole.squared_row_norms()  # ||x_i||^2 per molecule, once

    @classmethod
    def from_dense(cls, x: torch.Tensor) -> SparseRows:
        if x.dim() != 2:
            raise ValueError(f"SparseRows needs a 2-D matrix, got shape {tuple(x.shape)}")
        rows, cols = x.nonzero(as_tuple=True)  # row-major order
        crow = torch.zeros(x.shape[0] + 1, dtype=torch.long)
        torch.cumsum(torch.bincount(rows, minlength=x.shape[0]), 0, out=crow[1:])
        return cls(crow, cols, x[rows, cols], int(x.shape[1]))

    def __len__(self) -> int:
        return int(self.crow.numel()) - 1

    @property
    def density(self) -> float:
        cells = len(self) * self.n_cols
        return float(self.val.numel()) / cells if cells else 0.0

    def gather(self, idx: torch.Tensor) -> SparseBatch:
        """Rows ``idx`` (in that order, repeats allowed) as a batch."""
        # numpy index arithmetic: ~10 small ops per step cost 0.2 ms through torch.
        i = idx.numpy()
        crow = self.crow.numpy()
        starts = crow[i]
        lengths = crow[i + 1] - starts
        out_crow = np.zeros(len(i) + 1, dtype=np.int64)
        np.cumsum(lengths, out=out_crow[1:])
        # Position of each kept value in the full arrays: its row's start plus its
        # offset within the row.
        pos = np.repeat(starts - out_crow[:-1], lengths)
        pos += np.arange(len(pos), dtype=np.int64)
        p = torch.from_numpy(pos)
        return SparseBatch(crow=torch.from_numpy(out_crow), col=self.col[p], val=self.val[p],
                           n_cols=self.n_cols, sq_norms=self.sq_norms[idx])


def row_batches(x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor | SparseBatch]:
    """``idx -> rows idx of x``: CSR batches when at most ``MAX_DENSITY`` of ``x`` is non-zero."""
    if x.dim() == 2 and x.numel() and int(torch.count_nonzero(x)) <= MAX_DENSITY * x.numel():
        return SparseRows.from_dense(x).gather

    def dense(idx: torch.Tensor) -> torch.Tensor:
        return x[idx]

    return dense


def _linear_forward(module: nn.Linear, x: torch.Tensor | SparseBatch) -> torch.Tensor:
    if isinstance(x, SparseBatch):
        return x.linear(module.weight, module.bias)
    return nn.Linear.forward(module, x)


@contextmanager
def sparse_input(model: nn.Module) -> Iterator[None]:
    """Within the block every ``nn.Linear`` of ``model`` also accepts a ``SparseBatch``."""
    patched: list[nn.Linear] = []
    try:
        for m in model.modules():
            if type(m) is nn.Linear and "forward" not in vars(m):
                m.forward = _linear_forward.__get__(m)  # type: ignore[method-assign]
                patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward


@contextmanager
def column_major(params: Iterable[torch.Tensor]) -> Iterator[None]:
    """Store 2-D ``params`` transposed (``p.t()`` contiguous) within the block.

    Values, shapes and identities are unchanged; on exit each is made
    contiguous again, its gradient too.
    """
    moved = [p for p in params if p.dim() == 2 and p.is_contiguous()]
    try:
        for p in moved:
            p.data = p.data.t().contiguous().t()
        yield
    finally:
        for p in moved:
            p.data = p.data.contiguous()
            if p.grad is not None:
                p.grad = p.grad.contiguous()
