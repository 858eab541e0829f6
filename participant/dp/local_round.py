"""One DP training round at a site: Poisson sampling, per-sample clipping, noise.

A thin shell over ``participant.dp.training.dp_train`` (Abadi et al. 2016): it
chooses the trainable parameters, builds the optimizer over them and reads
fingerprint-like features as CSR rows (``participant.dp.sparse_rows``). Its
callers are ``participant.site`` and the privacy audits. The caller commits
the round's spend to the ledger (noise_multiplier, sample_rate, steps returned
here) BEFORE any update leaves the process.
Only aggregates are returned, never per-example values.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Literal

import torch
from torch import nn

from participant.dp.sparse_rows import row_batches
from participant.dp.training import DPTrainingResult, dp_train
from protocols.errors import ConfigError

__all__ = ["train_dp_round"]

# (pred, y, mask) -> per-sample losses, shape (B,)
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def train_dp_round(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor, torch.Tensor], *,
                   loss_fn: PerSampleLoss, max_grad_norm: float, noise_multiplier: float,
                   sample_rate: float, steps: int, lr: float,
                   optimizer: Literal["sgd", "adam"] = "sgd",
                   unsafe_seed: int | None = None,
                   trainable: Collection[str] | None = None,
                   secure_mode: bool = False) -> DPTrainingResult:
    """Train ``model`` in place for ``steps`` DP-SGD steps; only ``trainable`` parameters move.

    ``data`` is (features, labels, label mask); fingerprint-like features are
    read as CSR rows. The optimizer is built here over the trainable
    parameters, at ``lr``. Batches and noise come from fresh OS entropy
    (``participant.dp.randomness``); ``unsafe_seed`` is for tests only.
    """
    x, y, mask = data
    n = int(x.shape[0])
    if n == 0 or steps < 1:
        raise ConfigError("data/steps", "need examples and at least one step", got=(n, steps))
    names = dict(model.named_parameters())
    chosen = set(names) if trainable is None else set(trainable)
    unknown = chosen - set(names)
    if unknown:
        raise ConfigError("trainable", "unknown parameter names", got=sorted(unknown),
                          expected=sorted(names))
    for name, p in names.items():
        p.requires_grad_(name in chosen)
    params = [names[k] for k in sorted(chosen)]
    opt: torch.optim.Optimizer = (torch.optim.SGD(params, lr=lr) if optimizer == "sgd"
                                  else torch.optim.Adam(params, lr=lr))
    return dp_train(model, n, lambda pred, idx: loss_fn(pred, y[idx], mask[idx]),
                    row_batches(x), noise_multiplier=noise_multiplier,
                    max_grad_norm=max_grad_norm, sample_rate=sample_rate, steps=steps,
                    optimizer=opt, unsafe_seed=unsafe_seed, secure_mode=secure_mode)
