"""Server optimizers: FedAvg, FedAdam and FedYogi.

After Reddi et al. 2021, "Adaptive Federated Optimization" (ICLR), Algorithm 2.
The aggregated client delta ``Δ`` (new minus old, i.e. a negative
pseudo-gradient) drives the update:

- FedAvg:  ``x += η Δ``
- FedAdam: ``m = β1 m + (1-β1) Δ``; ``v = β2 v + (1-β2) Δ²``; ``x += η m / (√v + τ)``
- FedYogi: as FedAdam but ``v = v - (1-β2) Δ² sign(v - Δ²)``

As in the paper there is no bias correction and ``v`` starts at ``τ²``
(Algorithm 2, ``v_{-1} ≥ τ²``). Flower 1.41 differs: its FedAdam applies
Adam's bias-corrected step size and both start ``v`` at zero.
State is plain numpy arrays, so it checkpoints exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from protocols.errors import ConfigError

__all__ = ["ServerOptimizer", "make_server_optimizer"]


@dataclass(kw_only=True)
class ServerOptimizer:
    """Applies aggregated deltas to the global weights; holds adaptive state."""

    name: str = "fedavg"
    learning_rate: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)
    steps: int = 0

    def __post_init__(self) -> None:
        if self.name not in ("fedavg", "fedadam", "fedyogi"):
            raise ConfigError("server-optimizer.name", "unknown server optimizer",
                              got=self.name, expected="fedavg | fedadam | fedyogi")

    def apply(self, weights: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]
              ) -> dict[str, np.ndarray]:
        """New global weights (float32); updates the optimizer state."""
        out: dict[str, np.ndarray] = {}
        for name, w in weights.items():
            d = delta[name].astype(np.float64)
            if self.name == "fedavg":
                step = self.learning_rate * d
            else:
                m = self.m.get(name, np.zeros_like(d))
                v = self.v.get(name, np.full_like(d, self.tau**2))
                m = self.beta1 * m + (1 - self.beta1) * d
                d2 = d * d
                if self.name == "fedadam":
                    v = self.beta2 * v + (1 - self.beta2) * d2
                else:
                    v = v - (1 - self.beta2) * d2 * np.sign(v - d2)
                self.m[name], self.v[name] = m, v
                step = self.learning_rate * m / (np.sqrt(v) + self.tau)
            out[name] = (w.astype(np.float64) + step).astype(np.float32)
        self.steps += 1
        return out

    def state_dict(self) -> dict[str, object]:
        """Arrays and counters for the checkpoint."""
        return {"steps": self.steps, "m": dict(self.m), "v": dict(self.v)}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore from :meth:`state_dict`."""
        self.steps = int(state["steps"])  # type: ignore[call-overload]
        self.m = {k: np.asarray(a) for k, a in dict(state["m"]).items()}  # type: ignore[call-overload]
        self.v = {k: np.asarray(a) for k, a in dict(state["v"]).items()}  # type: ignore[call-overload]


def make_server_optimizer(*, name: str, learning_rate: float, beta1: float = 0.9,
                          beta2: float = 0.99, tau: float = 1e-3) -> ServerOptimizer:
    """Build from config values."""
    return ServerOptimizer(name=name, learning_rate=learning_rate, beta1=beta1, beta2=beta2,
                           tau=tau)
