"""The DP-SGD training loop: Poisson batches, per-sample clipping, the noisy step.

:func:`dp_train` runs ``steps`` DP-SGD steps (Abadi et al. 2016, "Deep Learning
with Differential Privacy") and wraps the parts that each do one thing:

- :mod:`participant.dp.sampling`: the Poisson batches;
- :mod:`participant.dp.clipping`: per-sample gradient norms and clip-scaled
  gradients in one backward pass (the :class:`~participant.dp.clipping.Tape`);
- :mod:`participant.dp.noisy_step`: clipped sum plus noise into ``p.grad``
  (per-step noise, or noise owed per column under plain SGD), then the
  optimizer's ``step()``;
- :mod:`participant.dp.randomness`: the only source of the batches' and the
  noise's randomness (no searchable seed; ``secure_mode``: a CSPRNG).

The loop is pipelined: the next batch is gathered before the current step, so
the noise its forward pass needs is drawn on a helper thread beside this whole
step (fresh per step, complete before that step's update). Fingerprint inputs
are ~98% zeros: when ``batch_inputs`` returns CSR rows
(:class:`participant.dp.sparse_rows.SparseBatch`), the Linear layer that reads
them runs on the non-zeros only, with its weight kept column-major during
training. Without noise the result equals the dense path up to float summation
order (tested with Opacus and against the dense path step for step).

:func:`participant.dp.local_round.train_dp_round` (one site round) wraps this.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from participant.dp.clipping import Inputs, Tape, linear_layers
from participant.dp.noisy_step import NoiseLayout, add_clipped_sums, sgd_clipped_sum
from participant.dp.randomness import DPRandom
from participant.dp.sampling import poisson_batches
from participant.dp.sparse_rows import sparse_input
from protocols.errors import ConfigError

__all__ = ["DPTrainingResult", "LossFn", "dp_train"]

# Per-sample losses from model outputs for one batch: (pred, batch_index) -> (B,)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class DPTrainingResult:
    """Aggregate outcome of local DP training: nothing here is per-example."""

    steps: int
    mean_loss: float
    clipped_fraction: float


def dp_train(
    model: nn.Module,
    n_examples: int,
    batch_loss: LossFn,
    batch_inputs: Callable[[torch.Tensor], Inputs],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    sample_rate: float,
    steps: int,
    optimizer: torch.optim.Optimizer,
    unsafe_seed: int | None = None,
    secure_mode: bool = False,
    lazy_noise: bool = True,
) -> DPTrainingResult:
    """Run ``steps`` DP-SGD steps with Poisson sampling at ``sample_rate``.

    ``batch_inputs(idx)`` returns the model input for the sampled indices
    (a dense tensor, or a ``participant.dp.sparse_rows.SparseBatch`` for
    fingerprints: the Linear layer that reads it then runs on the non-zeros
    only) and ``batch_loss(pred, idx)`` the per-sample losses. The privacy cost
    of the call is ``steps`` compositions of the subsampled Gaussian mechanism
    at (``noise_multiplier``, ``sample_rate``): the caller accounts for it.

    With plain SGD, a CSR-read weight's noise is by default owed per column
    and drawn when a batch next reads the column, or when training ends
    (``participant.dp.lazy_noise``): the same distribution of every step and of
    the trained model, with fewer draws. ``lazy_noise=False`` draws every
    step's noise for every parameter. Gradients are not kept: each ``p.grad``
    is None on return; a gradient already on a trained parameter is refused
    (it would be applied unclipped and un-noised).

    The batches and noise come from fresh OS entropy (``participant.dp.randomness``);
    ``unsafe_seed`` makes them reproducible, for tests only (it logs a warning).
    """
    if not 0 < sample_rate <= 1:
        raise ConfigError("sample_rate", "must be in (0, 1]", got=sample_rate)
    if noise_multiplier < 0 or max_grad_norm <= 0:
        raise ConfigError("noise_multiplier/max_grad_norm", "must be >= 0 and > 0",
                          got=(noise_multiplier, max_grad_norm))
    linears = linear_layers(model)  # fail closed before any step
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    owner = {id(p): (m, p is m.weight) for m in linears for p in m.parameters()}
    foreign = [tuple(p.shape) for p in params if id(p) not in owner]
    dtypes = {p.dtype for p in params}
    if foreign or len(dtypes) > 1:
        raise ConfigError("optimizer", "every trained parameter must belong to one of the "
                          "model's Linear layers, all of one dtype",
                          got=f"outside the model: {foreign}; dtypes: {sorted(map(str, dtypes))}",
                          fix="build the optimizer from model.parameters()")
    stale = [tuple(p.shape) for p in params if p.grad is not None and bool(p.grad.any())]
    if stale:
        raise ConfigError("parameters", "a trained parameter already holds a gradient, which "
                          "the optimizer would apply unclipped and without noise",
                          got=f"non-zero .grad on parameters of shape {stale}",
                          expected="p.grad is None (or zero) for every trained parameter",
                          fix="call optimizer.zero_grad(set_to_none=True) before dp_train")
    for p in params:
        p.grad = None
    expected_batch = max(1, round(sample_rate * n_examples))
    std = noise_multiplier * max_grad_norm / expected_batch
    rng = DPRandom(unsafe_seed=unsafe_seed)
    # The noise's source is split off before any batch is drawn, so the batches are the
    # same whichever parameters turn out to get per-step or per-column noise.
    batch_rng, noise_rng = rng.spawn(), rng.spawn()
    sampler = poisson_batches(batch_rng, n_examples, sample_rate=sample_rate, steps=steps,
                              secure_mode=secure_mode)
    threads = torch.get_num_threads()
    model.train()
    total_loss, total_n, clipped, done = 0.0, 0, 0, 0
    tape = Tape(linears)
    try:
        with ExitStack() as stack:
            stack.enter_context(sparse_input(model))
            layout: NoiseLayout | None = None  # once the first batch shows the inputs
            batches = (torch.as_tensor(i, dtype=torch.long) for i in sampler)
            idx = next(batches, None)
            x = None if idx is None else batch_inputs(idx)
            while idx is not None and x is not None:
                # The next batch is gathered first, so the noise its forward pass
                # needs can be drawn beside this whole step.
                next_idx = next(batches, None)
                next_x = None if next_idx is None else batch_inputs(next_idx)
                if layout is not None:
                    layout.prepare(next_x)

                def per_sample(pred: torch.Tensor, i: torch.Tensor = idx) -> torch.Tensor:
                    return batch_loss(pred, i)

                losses = tape.forward(model, x, per_sample)
                if layout is None:
                    layout = NoiseLayout.lay_out(
                        stack, params, owner, tape.inputs, optimizer, std=std,
                        rng=noise_rng,
                        secure_mode=secure_mode, lazy_noise=lazy_noise)
                    layout.prepare(next_x)
                slot = layout.noise.take()
                done += 1
                if next_x is not None:
                    # Step t+1's draw goes into the buffer step t-1 used (its update is
                    # done), beside this step's clipping and update.
                    layout.noise.begin()
                scaled, result = tape.clip(losses, max_grad_norm=max_grad_norm)
                del losses
                add_clipped_sums(layout.eager, layout.views[slot], owner, scaled, tape.inputs,
                                 scale=1.0 / expected_batch)
                for m, owed in layout.lazy.items():
                    lr = float(layout.groups[m]["lr"])
                    sgd_clipped_sum(m.weight, tape.inputs.get(m), scaled.get(m),
                                    alpha=-lr / expected_batch)
                    owed.step(lr=lr)
                optimizer.step()
                tape.inputs.clear()
                del scaled
                total_loss += result.loss_sum
                total_n += int(idx.numel())
                clipped += int((result.norms > max_grad_norm).sum())
                idx, x = next_idx, next_x
    finally:
        tape.close()
        torch.set_num_threads(threads)
    for p in params:  # a step's noisy gradient is spent; none is kept
        p.grad = None
    return DPTrainingResult(steps=done, mean_loss=total_loss / max(total_n, 1),
                            clipped_fraction=clipped / max(total_n, 1))
