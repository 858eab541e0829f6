"""Non-private training with early stopping, shared by every non-DP path.

The centralised baseline, local-only and pooled comparisons, and the
participant's fine-tuning of the federated model all train with this loop:
Adam, minibatches, early stopping on the validation loss with the best
weights restored. Fine-tuning options: ``freeze_trunk`` (head-only) or a
reduced trunk learning rate (``trunk_lr_factor``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from chem.models import MultiTaskMLP, masked_loss

__all__ = ["FitResult", "Split", "fit"]


@dataclass(frozen=True)
class Split:
    """Features, labels (original units, NaN allowed where masked) and mask."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Float32 tensors, with masked labels zeroed."""
        return (torch.as_tensor(np.asarray(self.x, dtype=np.float32)),
                torch.as_tensor(np.nan_to_num(np.asarray(self.y, dtype=np.float32))),
                torch.as_tensor(np.asarray(self.mask, dtype=np.float32)))


@dataclass(kw_only=True)
class FitResult:
    """Per-epoch losses and where early stopping settled."""

    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_valid_loss: float = math.inf


def fit(
    model: MultiTaskMLP,
    train: Split,
    valid: Split,
    *,
    epochs: int = 200,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    patience: int = 15,
    seed: int = 0,
    freeze_trunk: bool = False,
    trunk_lr_factor: float = 1.0,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> FitResult:
    """Train ``model`` in place and restore the weights of the best validation epoch."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    x, y, m = train.tensors()
    xv, yv, mv = valid.tensors()
    trunk = list(model.trunk.parameters())
    heads = list(model.heads.parameters())
    for p in trunk:
        p.requires_grad_(not freeze_trunk)
    groups = [{"params": heads, "lr": lr}]
    if not freeze_trunk:
        groups.append({"params": trunk, "lr": lr * trunk_lr_factor})
    opt = torch.optim.Adam(groups, weight_decay=weight_decay)
    result = FitResult()
    best_state = copy.deepcopy(model.state_dict())
    stale = 0
    n = len(x)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            loss = masked_loss(model(x[idx]), y[idx], m[idx], model.spec)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach()) * len(idx)
        model.eval()
        with torch.no_grad():
            vloss = float(masked_loss(model(xv), yv, mv, model.spec)) if len(xv) else math.nan
        result.train_loss.append(total / max(n, 1))
        result.valid_loss.append(vloss)
        if on_epoch is not None:
            on_epoch(epoch, result.train_loss[-1], vloss)
        if vloss < result.best_valid_loss - 1e-6:
            result.best_valid_loss, result.best_epoch = vloss, epoch
            best_state = copy.deepcopy(model.state_dict())
            stale = 0
        else:
            stale += 1
            if stale >= patience:
                break
    model.load_state_dict(best_state)
    for p in trunk:
        p.requires_grad_(True)
    model.eval()
    return result
