"""train_dp_round: deterministic under a seed, trains only the named parameters."""

from __future__ import annotations

import torch
from torch import nn

from participant.dp.local_round import train_dp_round


def _setup() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(200, 8)
    return model, (x, x[:, :2].clone(), torch.ones(200, 2))


def _loss(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((pred - y) ** 2 * mask).sum(dim=1)


def _run(trainable: list[str] | None = None) -> tuple[nn.Module, int]:
    model, data = _setup()
    res = train_dp_round(model, data, loss_fn=_loss, max_grad_norm=1.0, noise_multiplier=1.0,
                         sample_rate=0.1, steps=20, lr=0.05,
                         unsafe_seed=3, trainable=trainable)
    return model, res.steps


def test_same_seed_gives_same_weights_and_steps() -> None:
    (a, sa), (b, sb) = _run(), _run()
    assert sa == sb == 20
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_only_named_parameters_change() -> None:
    before, _ = _setup()
    after, _ = _run(trainable=["2.weight", "2.bias"])
    assert torch.equal(before[0].weight, after[0].weight)  # type: ignore[index]
    assert not torch.equal(before[2].weight, after[2].weight)  # type: ignore[index]
