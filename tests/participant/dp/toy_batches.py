"""Small two-endpoint models and labelled batches for the DP tests (float64, seeded)."""

from __future__ import annotations

import torch

from chem.models import ModelSpec
from protocols.endpoints import EndpointSpec


def two_endpoint_spec(d_in: int, hidden: tuple[int, ...]) -> ModelSpec:
    """A regression and a classification head on a ``d_in``-``hidden`` trunk."""
    return ModelSpec(input_dim=d_in, hidden_dims=hidden, dropout=0.0, endpoints=(
        EndpointSpec(name="a", task="regression", target_offset=0.5, target_scale=2.0),
        EndpointSpec(name="b", task="classification")))


def labelled_batch(n: int, d_in: int, seed: int, *, zeros: float = 0.0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, mask) for :func:`two_endpoint_spec`; ``zeros`` of x set to 0 (fingerprint-like)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    x[torch.rand(n, d_in, generator=g) < zeros] = 0.0  # fingerprint-like rows
    y = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y[:, 1] = (y[:, 1] > 0).double()
    mask = (torch.rand(n, 2, generator=g) > 0.3).double()
    return x, y, mask
