"""The shared multi-task model: a trunk every member trains, one head per endpoint.

After SparseChem (the MELLODDY consortium's model, Arany et al. 2021): a
feed-forward *trunk* of Linear + ReLU + Dropout layers learns a shared
molecular representation; each endpoint has its own Linear *head*. The trunk
and the consortium endpoints' heads are federated; a member's private heads
stay on its site.

There is no BatchNorm or LayerNorm: per-sample gradient clipping for DP-SGD
needs layers whose per-example gradients are independent (Opacus's
validators refuse BatchNorm), and the fast clipping path supports Linear
layers only.

Each head is built from a :class:`protocols.endpoints.EndpointSpec` (the
contract's endpoint, shared with the coordinator). Regression targets are
scaled with its fixed, agreed ``target_offset`` and ``target_scale`` (never
estimated from one site's data); predictions are returned in original units.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from protocols.canonical import canonical_json, sha256_hex
from protocols.endpoints import EndpointSpec
from protocols.errors import ConfigError

__all__ = [
    "ModelSpec",
    "MultiTaskMLP",
    "build_model",
    "masked_loss",
    "predict",
    "shared_parameter_names",
]

@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Architecture of the shared model; its digest is announced every round."""

    input_dim: int
    hidden_dims: tuple[int, ...]
    dropout: float
    endpoints: tuple[EndpointSpec, ...]
    activation: Literal["relu"] = "relu"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.input_dim < 1 or not self.hidden_dims or any(h < 1 for h in self.hidden_dims):
            raise ConfigError("model", "input and hidden sizes must be positive",
                              got=(self.input_dim, self.hidden_dims))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("model.dropout", "must be in [0, 1)", got=self.dropout)
        names = [e.name for e in self.endpoints]
        if not names or len(set(names)) != len(names):
            raise ConfigError("model.endpoints", "need at least one, with unique names", got=names)

    @property
    def endpoint_names(self) -> tuple[str, ...]:
        """Endpoint names in output order."""
        return tuple(e.name for e in self.endpoints)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"input_dim": self.input_dim, "hidden_dims": list(self.hidden_dims),
                "dropout": self.dropout, "activation": self.activation,
                "endpoints": [e.to_dict() for e in self.endpoints], "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(input_dim=int(d["input_dim"]),
                   hidden_dims=tuple(int(h) for h in d["hidden_dims"]),
                   dropout=float(d["dropout"]), activation=d.get("activation", "relu"),
                   endpoints=tuple(EndpointSpec(**e) for e in d["endpoints"]),
                   extra=dict(d.get("extra", {})))

    def digest(self) -> str:
        """SHA-256 hex of the RFC 8785 canonical JSON of :meth:`to_dict`."""
        return sha256_hex(canonical_json(self.to_dict()))

    def with_endpoints(self, extra_endpoints: Sequence[EndpointSpec]) -> ModelSpec:
        """The same trunk with more heads (a site's private endpoints)."""
        known = set(self.endpoint_names)
        added = tuple(e for e in extra_endpoints if e.name not in known)
        return ModelSpec(input_dim=self.input_dim, hidden_dims=self.hidden_dims,
                         dropout=self.dropout, activation=self.activation,
                         endpoints=self.endpoints + added, extra=self.extra)


class MultiTaskMLP(nn.Module):
    """Trunk (Linear, ReLU, Dropout)* plus one Linear head per endpoint."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        width = spec.input_dim
        for hidden in spec.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if spec.dropout > 0:
                layers.append(nn.Dropout(spec.dropout))
            width = hidden
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({e.name: nn.Linear(width, 1) for e in spec.endpoints})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs (scaled regression values, classification logits), (B, n_endpoints)."""
        h = self.trunk(x)
        return torch.cat([self.heads[name](h) for name in self.spec.endpoint_names], dim=1)


def build_model(spec: ModelSpec, *, seed: int | None = None) -> MultiTaskMLP:
    """Instantiate the model; with ``seed`` the initial weights are reproducible."""
    if seed is None:
        return MultiTaskMLP(spec)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return MultiTaskMLP(spec)
    finally:
        torch.random.set_rng_state(state)


def shared_parameter_names(model: nn.Module, consortium_endpoints: Iterable[str]) -> list[str]:
    """Parameters that are federated: the trunk and the consortium endpoints' heads."""
    heads = {f"heads.{e}." for e in consortium_endpoints}
    return [n for n, _ in model.named_parameters()
            if n.startswith("trunk.") or any(n.startswith(h) for h in heads)]


def scale_targets(y: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Original units to the model's scaled units (classification untouched)."""
    offset = torch.tensor([e.target_offset if e.task == "regression" else 0.0
                           for e in spec.endpoints], dtype=y.dtype, device=y.device)
    scale = torch.tensor([e.target_scale if e.task == "regression" else 1.0
                          for e in spec.endpoints], dtype=y.dtype, device=y.device)
    return (y - offset) / scale


def masked_loss(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, spec: ModelSpec, *,
                reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
    """MSE (regression, scaled units) plus BCE-with-logits (classification), masked.

    ``y`` is in original units; missing labels have ``mask == 0`` (their value
    is ignored, NaN included). With ``reduction="none"`` the result is one
    loss per example (the sum over its labelled endpoints), which is what
    per-sample clipping needs; ``"mean"`` divides the total by the number of
    labelled values.
    """
    y = torch.where(mask > 0, y, torch.zeros_like(y))
    target = scale_targets(y, spec)
    is_clf = torch.tensor([e.task == "classification" for e in spec.endpoints], device=y.device)
    sq = (pred - target) ** 2
    bce = nn.functional.binary_cross_entropy_with_logits(pred, target.clamp(0, 1),
                                                         reduction="none")
    per_value = torch.where(is_clf, bce, sq) * mask
    if reduction == "none":
        return per_value.sum(dim=1)
    return per_value.sum() / mask.sum().clamp_min(1.0)


@torch.no_grad()
def predict(model: MultiTaskMLP, x: np.ndarray | torch.Tensor, *, batch_size: int = 4096
            ) -> np.ndarray:
    """Predictions in original units (probabilities for classification), (N, n_endpoints)."""
    was_training = model.training
    model.eval()
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    outs = [model(xt[i:i + batch_size]) for i in range(0, len(xt), batch_size)]
    model.train(was_training)
    raw = torch.cat(outs).numpy() if outs else np.zeros((0, len(model.spec.endpoints)),
                                                       dtype=np.float32)
    result = np.empty_like(raw, dtype=np.float64)
    for j, e in enumerate(model.spec.endpoints):
        if e.task == "classification":
            result[:, j] = 1.0 / (1.0 + np.exp(-raw[:, j].astype(np.float64)))
        else:
            result[:, j] = raw[:, j] * e.target_scale + e.target_offset
    return result


def get_weights(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Named parameters as float32 numpy copies (all, or only ``names``)."""
    params = dict(model.named_parameters())
    keys = list(params) if names is None else list(names)
    return {k: params[k].detach().cpu().numpy().astype(np.float32, copy=True) for k in keys}


@torch.no_grad()
def set_weights(model: nn.Module, weights: Mapping[str, np.ndarray], *,
                strict: bool = True) -> None:
    """Load named arrays into parameters; ``strict`` refuses unknown names."""
    params = dict(model.named_parameters())
    for name, value in weights.items():
        if name not in params:
            if strict:
                raise ConfigError("weights", "parameter not in the model", got=name,
                                  expected=sorted(params)[:8])
            continue
        tensor = torch.as_tensor(np.asarray(value), dtype=params[name].dtype)
        if tensor.shape != params[name].shape:
            raise ConfigError("weights", f"shape mismatch for {name}", got=tuple(tensor.shape),
                              expected=tuple(params[name].shape))
        params[name].copy_(tensor)
