"""The noisy DP-SGD update: each step's clipped sum plus Gaussian noise, per parameter.

After the clipping (:mod:`participant.dp.clipping`) a step sets
``p.grad = (clipped sum + noise) / expected batch``: Opacus's
``DPOptimizerFastGradientClipping`` arithmetic (Abadi et al. 2016; std =
noise_multiplier * max_grad_norm on the clipped sum, then division by the
expected batch size), with the division applied to each term: the noise is
drawn with the divided std and the clipped sum is added onto it by one
in-place ``addmm_``. The optimizer's own ``step()`` then applies ``p.grad``.

:class:`NoiseLayout` decides, after the first forward pass shows which
Linear layers read CSR rows, where each parameter's noise comes from:

- per step (``eager``): one flat buffer of fresh noise every step, drawn on a
  helper thread beside the step (:class:`participant.dp.step_noise.StepNoise`);
- owed per column (``lazy``): under plain SGD, a CSR-read weight's columns a
  batch does not read are owed their noise and get it when a batch next reads
  them (:class:`participant.dp.lazy_noise.LazyColumnNoise`): the same
  distribution, a third of the draws at batch 32. The clipped sum of such a
  weight is applied here directly as a plain SGD step.

It wraps both noise sources; the training loop (:mod:`participant.dp.training`)
wraps it. Every draw comes from one :class:`participant.dp.randomness.DPRandom`.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from participant.dp.clipping import Inputs
from participant.dp.lazy_noise import LazyColumnNoise, plain_sgd_group
from participant.dp.randomness import DPRandom
from participant.dp.sparse_rows import SparseBatch, column_major
from participant.dp.step_noise import StepNoise

__all__ = ["LAZY_MAX_READ_FRACTION", "NoiseLayout", "add_clipped_sums", "sgd_clipped_sum"]

# Per-column noise (participant.dp.lazy_noise) is used when the first batch reads at
# most this fraction of a CSR-read weight's columns. Measured on Lipophilicity,
# 2048-256, 2 cores: 0.84-0.92x the epoch at batch 32 (33% read), even at 64 (47%),
# 1.05-1.13x at 128-256 (65-80%), where its per-step bookkeeping outweighs the
# draws it saves.
LAZY_MAX_READ_FRACTION = 0.5


class NoiseLayout:
    """Each parameter's noise: drawn per step (``eager``) or owed per column (``lazy``)."""

    def __init__(self, noise: StepNoise, eager: list[torch.Tensor],
                 views: list[list[torch.Tensor]], lazy: dict[nn.Linear, LazyColumnNoise],
                 groups: dict[nn.Linear, dict[str, Any]]) -> None:
        self.noise, self.eager, self.views, self.lazy, self.groups = (
            noise, eager, views, lazy, groups)

    @classmethod
    def lay_out(cls, stack: ExitStack, params: list[torch.Tensor],
                owner: dict[int, tuple[nn.Linear, bool]], inputs: dict[nn.Linear, Inputs],
                optimizer: torch.optim.Optimizer, *, std: float,
                rng: DPRandom, secure_mode: bool, lazy_noise: bool) -> NoiseLayout:
        """Lay out the noise after the first forward pass (nothing is owed before it).

        Weights that read CSR inputs go column-major; under plain SGD their
        noise is owed per column (``participant.dp.lazy_noise``), settled by a
        forward pre-hook just before the layer reads the columns and in full
        when training ends. Everything else gets each step's noise as one
        flat buffer, drawn on a helper thread beside the step when it is big.
        """
        csr = [m for m, x in inputs.items()
               if isinstance(x, SparseBatch) and m.weight.requires_grad]
        stack.enter_context(column_major(m.weight for m in csr))
        lazy: dict[nn.Linear, LazyColumnNoise] = {}
        groups: dict[nn.Linear, dict[str, Any]] = {}
        # Helper threads draw step t+1's noise during step t's update (and, for
        # per-step noise, step t+1's forward pass); training runs on one thread
        # fewer meanwhile. OpenMP's full team next to a busy helper ran a plain step
        # 3x slower (threads spin at barriers), and switching the team size per
        # phase cost ~0.25 ms each time.
        threads = torch.get_num_threads()
        for m in csr:
            x = inputs[m]
            assert isinstance(x, SparseBatch)
            # Owing pays per step for the columns read; it wins when it saves most draws.
            owe = (lazy_noise and not secure_mode
                   and len(x.columns) <= LAZY_MAX_READ_FRACTION * x.n_cols)
            group = plain_sgd_group(optimizer, m.weight) if owe else None
            if group is not None:
                # Entered after column_major, so left before it: the owed noise lands
                # in the weight even when a step raises (fail closed).
                lazy[m] = stack.enter_context(LazyColumnNoise(
                    m.weight, std=std, lr=float(group["lr"]), rng=rng.spawn(),
                    helper=threads > 1))
                groups[m] = group
                stack.callback(m.register_forward_pre_hook(_settle_hook(lazy[m])).remove)
        eager = [p for p in params if owner[id(p)][0] not in lazy or not owner[id(p)][1]]
        noise = stack.enter_context(StepNoise(
            sum(p.numel() for p in eager), std=std, rng=rng.spawn(),
            secure_mode=secure_mode, helper=threads > 1,
            dtype=params[0].dtype if params else torch.float32))
        if noise.has_helper or any(owed.has_helper for owed in lazy.values()):
            torch.set_num_threads(threads - 1)
        moved = {id(m.weight) for m in csr}
        views = [_views(b, eager, moved) for b in noise.buffers]
        noise.begin()
        return cls(noise, eager, views, lazy, groups)

    def prepare(self, x: Inputs | None) -> None:
        """Start drawing the per-column noise the forward pass on ``x`` will settle."""
        if isinstance(x, SparseBatch):
            for owed in self.lazy.values():
                owed.prepare(x.columns)


@torch.no_grad()
def _add_weight_sum(target: torch.Tensor, x: Inputs, gc: torch.Tensor, *, alpha: float) -> None:
    """``target += alpha * (c G)^T X`` in place: one ``addmm_`` with ``beta=1``, no copy."""
    if isinstance(x, SparseBatch):
        # (X^T G) into the column-major target's contiguous (in, out) form; rows the
        # batch does not read are left as they are.
        target.t().addmm_(x.transposed_csr, gc, alpha=alpha)
    else:
        target.addmm_(gc.t(), x, alpha=alpha)


def sgd_clipped_sum(weight: torch.Tensor, x: Inputs | None, gc: torch.Tensor | None, *,
                    alpha: float) -> None:
    """``W += alpha * (c G)^T X``: plain SGD's step on the clipped sum alone."""
    if gc is not None and x is not None:  # else unused, or no example: noise alone
        _add_weight_sum(weight.data, x, gc, alpha=alpha)


def _settle_hook(owed: LazyColumnNoise) -> Callable[[nn.Module, tuple[Any, ...]], None]:
    def settle(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        # A dense input reads every column.
        owed.settle(x.columns if isinstance(x, SparseBatch)
                    else torch.arange(owed.weight.shape[1]))
    return settle


def _views(buffer: torch.Tensor, params: list[torch.Tensor],
           transposed: Container[int] = frozenset()) -> list[torch.Tensor]:
    views, offset = [], 0
    for p in params:
        flat = buffer[offset:offset + p.numel()]
        views.append(flat.view(p.shape[1], p.shape[0]).t() if id(p) in transposed
                     else flat.view_as(p))
        offset += p.numel()
    return views


@torch.no_grad()
def add_clipped_sums(params: list[torch.Tensor], views: list[torch.Tensor],
                     owner: dict[int, tuple[nn.Linear, bool]],
                     scaled: dict[nn.Linear, torch.Tensor],
                     inputs: dict[nn.Linear, Inputs], *, scale: float) -> None:
    """``p.grad = noise + scale * clipped sum``; the noise (std times ``scale``) is in ``p.grad``.

    Opacus's arithmetic, (clipped sum + N(0, sigma^2 C^2)) / expected batch,
    with the division applied to each term; for a weight it is one in-place
    ``addmm_`` with ``beta=1``: one pass, no copy.
    """
    for p, grad in zip(params, views, strict=True):
        p.grad = grad
        m, is_weight = owner[id(p)]
        gc = scaled.get(m)
        x = inputs.get(m)
        if gc is None:
            continue  # no example touched it: the update is the noise alone
        if not is_weight:
            grad.add_(gc.sum(dim=0), alpha=scale)
        else:
            assert x is not None
            _add_weight_sum(grad, x, gc, alpha=scale)
