"""DP-SGD noise for the weight columns a step does not read, drawn when they are next read.

With plain SGD (no momentum, no weight decay) a DP-SGD step (Abadi et al.
2016) moves every weight entry by ``-lr * (clipped sum / B + N(0, std^2))``,
entries independently. A fingerprint batch in CSR form reads only the
columns of the first weight for the features its molecules have: on
Lipophilicity ECFP4-count-2048, 33% of the columns at batch 32, 47% at 64,
65% at 128. Every other column gets that step's noise alone, and nothing
reads it (forward, clipping or the update of another parameter) until a
later batch has one of its features, or training ends.

The noise a column has been owed since it was last read is a sum of
independent Gaussians, which is one Gaussian with the summed variance
``sum_t (lr_t * std)^2``. Drawing that one value when the column is next
read gives every quantity the training computes, and the trained weights,
exactly the joint distribution that per-step draws give. For every dataset
the output is distributed as DP-SGD's, so its (epsilon, delta) guarantee and
accounting apply unchanged; only fewer random numbers are drawn:
``|columns read| x out`` per step instead of ``in x out``. ``settle_all``
adds whatever is still owed when training ends, or fails: a model never
leaves ``dp_train`` with a step's noise missing.

The next batch is known a step ahead, so a helper thread draws the noise its
columns will owe, already scaled, beside the current step. Owing costs the
training thread a pass over the columns read; it pays where it saves most
draws (``participant.dp.noisy_step.LAZY_MAX_READ_FRACTION``): 0.84-0.92x the
DP epoch at batch 32 on 2048-256, and 0.80-0.82x at 2048-512 and batch 64.

Momentum, weight decay or adaptive optimizers (Adam) feed the noise through
state that every step reads, so they keep the per-step draws
(``participant.dp.noisy_step``, the user of this module, checks); so does
``secure_mode``, whose draws come from a CSPRNG stream
(``participant.dp.randomness``), not a torch generator. The helper's draws go
through :class:`participant.dp.step_noise.StepNoise`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch

from participant.dp.randomness import DPRandom
from participant.dp.step_noise import StepNoise

__all__ = ["LazyColumnNoise", "plain_sgd_group"]


def plain_sgd_group(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> dict[str, Any] | None:
    """``p``'s parameter group when ``optimizer`` updates it by plain SGD, else None.

    Plain SGD is ``torch.optim.SGD`` itself (not a subclass, which may change
    ``step``) with no momentum, no weight decay and not maximizing: the
    update is then ``p -= lr * p.grad``, linear in the noise.
    """
    if type(optimizer) is not torch.optim.SGD:
        return None
    for group in optimizer.param_groups:
        if any(q is p for q in group["params"]):
            plain = (group["momentum"] == 0 and group["weight_decay"] == 0
                     and not group["maximize"])
            return group if plain else None
    return None


class LazyColumnNoise:
    """The DP noise owed to each input column of one (out, in) weight under plain SGD.

    Per step: ``settle(columns)`` before the forward pass reads those
    columns; after the caller applies the clipped sum, ``step(lr=...)`` adds
    one step of noise variance to every column. ``prepare(columns)`` for
    the next step's ``settle`` lets a helper thread draw that noise beside
    the current step, already scaled to what each column will owe then (the
    owed variances after one more ``step`` at the current ``lr``; checked at
    the settle, and drawn afresh if they differ). Use as a context
    manager: on exit all noise still owed is added (``settle_all``) and the
    helper stops.
    """

    def __init__(self, weight: torch.Tensor, *, std: float, lr: float,
                 rng: DPRandom, helper: bool = True) -> None:
        if weight.dim() != 2:
            raise ValueError(f"LazyColumnNoise needs a 2-D weight, got shape {tuple(weight.shape)}")
        self.weight, self.std = weight, std
        self.owed = np.zeros(weight.shape[1], dtype=np.float64)  # noise variance per column
        self._step_var = (lr * std) ** 2  # what the next step() will add, as far as known
        self._generator = rng.generator()
        self._normals = StepNoise(weight.numel(), std=1.0, dtype=weight.dtype, helper=helper,
                                  rng=rng.spawn())
        self._drawing: torch.Tensor | None = None  # columns whose noise is being drawn
        self._drawn_for: np.ndarray | None = None  # the owed variances it is scaled to
        self._queue: deque[torch.Tensor] = deque()  # prepared, not yet being drawn

    @property
    def has_helper(self) -> bool:
        return self._normals.has_helper

    def __enter__(self) -> LazyColumnNoise:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.settle_all()
        finally:
            self._normals.close()

    def _columns_major(self) -> torch.Tensor:
        # (in, out): row c is column c of the weight; contiguous for a column_major weight.
        return self.weight.data.t()

    def prepare(self, columns: torch.Tensor) -> None:
        """Queue drawing the noise for the next ``settle(columns)`` (that same tensor).

        Call it before the current step's ``settle``: that settle starts the
        draw, which then runs beside the whole step. Settles must come in the
        order prepared.
        """
        if self.std == 0:
            return  # nothing will be owed
        self._queue.append(columns)
        if self._drawing is None:
            self._draw_next()

    def _draw_next(self) -> None:
        if not self._queue:
            return
        cols = self._queue.popleft()
        # Scaled for its settle, which comes after one more step() at the current lr.
        owed = self.owed[cols.numpy()] + self._step_var
        self._normals.begin(len(cols) * self.weight.shape[0],
                            row_std=torch.from_numpy(np.sqrt(owed)).to(self.weight.dtype))
        self._drawing, self._drawn_for = cols, owed

    def _discard_prepared(self) -> None:
        self._queue.clear()
        if self._drawing is not None:  # unused fresh noise: dropping it reveals nothing
            self._normals.take()
            self._drawing = self._drawn_for = None

    @torch.no_grad()
    def settle(self, columns: torch.Tensor) -> None:
        """Add the noise owed to ``columns`` (ascending, distinct) to the weight."""
        cols = columns.numpy()
        owed = self.owed[cols]
        w = self._columns_major()
        shape = (len(cols), w.shape[1])
        z: torch.Tensor | None = None
        if columns is self._drawing:
            drawn = self._normals.buffers[self._normals.take()][:shape[0] * shape[1]]
            if self._drawn_for is not None and np.array_equal(owed, self._drawn_for):
                z = drawn.view(shape)
            self._drawing = self._drawn_for = None
        else:
            self._discard_prepared()
        if z is None and owed.any():  # not prepared, or the lr changed since
            z = torch.empty(shape, dtype=w.dtype).normal_(generator=self._generator)
            z.mul_(torch.from_numpy(np.sqrt(owed)).to(w.dtype).unsqueeze(1))
        self.owed[cols] = 0.0
        # Into the other buffer, so z stays untouched while it is added.
        self._draw_next()
        if z is not None:
            w.index_add_(0, columns, z)

    def step(self, *, lr: float) -> None:
        """One SGD step's noise, ``N(0, (lr * std)^2)``, is owed by every column.

        The step's clipped sum is the caller's to apply (it is zero outside the
        columns the batch read).
        """
        self._step_var = (lr * self.std) ** 2
        self.owed += self._step_var

    def settle_all(self) -> None:
        """Add all noise still owed: the weight then has every step's noise."""
        self._discard_prepared()
        self.settle(torch.from_numpy(np.flatnonzero(self.owed)))
