"""Optional participant-level (central) DP on the server: clip, average, add noise.

Semantics of Flower's ``DifferentialPrivacyServerSideFixedClipping`` (flwr
1.41), after McMahan et al. 2018, "Learning Differentially Private Recurrent
Language Models" (DP-FedAvg, arXiv:1710.06963): each delta is scaled to L2
norm at most ``clipping_norm`` (FlatClip), the *equal-weight* mean is taken,
and Gaussian noise with std ``noise_multiplier * clipping_norm / num_sampled``
is added to it. Weighting must be equal: with example-count weights one
member's influence on the mean would be bounded by its weight share, not by
``clipping_norm / num_sampled``, and the noise would no longer cover it.

Noise is drawn from an explicit ``numpy.random.Generator`` (Flower uses the
global RNG), so a resumed run is reproducible. ε is accounted per round with
Opacus's ``RDPAccountant`` at ``sample_rate = num_sampled / num_total``
(Mironov 2017, "Rényi Differential Privacy"; sampled Gaussian mechanism).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from opacus.accountants import RDPAccountant

from protocols.errors import ConfigError

__all__ = ["CentralDP", "add_gaussian_noise", "clip_delta", "noise_std"]


def clip_delta(delta: Mapping[str, np.ndarray], *, clipping_norm: float
               ) -> dict[str, np.ndarray]:
    """Scale ``delta`` by ``min(1, clipping_norm / ||delta||_2)`` (global norm, all tensors)."""
    sq = sum(float(np.dot(a.ravel().astype(np.float64), a.ravel().astype(np.float64)))
             for a in delta.values())
    norm = math.sqrt(sq)
    scale = 1.0 if norm <= clipping_norm else clipping_norm / norm
    return {k: (a * np.float32(scale)).astype(a.dtype, copy=False) for k, a in delta.items()}


def noise_std(*, noise_multiplier: float, clipping_norm: float, num_sampled: int) -> float:
    """Std of the noise on the mean (Flower's ``compute_stdv``)."""
    return noise_multiplier * clipping_norm / num_sampled


def add_gaussian_noise(mean: Mapping[str, np.ndarray], *, std: float,
                       rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``mean + N(0, std²)`` per element, same dtypes."""
    return {k: (a + rng.normal(0.0, std, a.shape)).astype(a.dtype) for k, a in mean.items()}


@dataclass(kw_only=True)
class CentralDP:
    """Server-side fixed clipping plus an RDP ε ledger over rounds."""

    noise_multiplier: float
    clipping_norm: float
    num_total: int
    delta: float
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for key, value in (("noise_multiplier", self.noise_multiplier),
                           ("clipping_norm", self.clipping_norm), ("delta", self.delta)):
            if not value > 0:
                raise ConfigError(f"central-dp.{key}", "must be positive", got=value,
                                  expected="> 0")
        if self.num_total < 1:
            raise ConfigError("central-dp.num_total", "need at least one participant",
                              got=self.num_total, expected=">= 1")

    def privatize(self, clipped_mean: Mapping[str, np.ndarray], *, num_sampled: int,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Noise an equal-weight mean of clipped deltas and account the round."""
        if not 1 <= num_sampled <= self.num_total:
            raise ConfigError("central-dp.num_sampled", "sampled count out of range",
                              got=num_sampled, expected=f"1..{self.num_total}")
        std = noise_std(noise_multiplier=self.noise_multiplier,
                        clipping_norm=self.clipping_norm, num_sampled=num_sampled)
        out = add_gaussian_noise(clipped_mean, std=std, rng=rng)
        acc = self._accountant()
        acc.step(noise_multiplier=self.noise_multiplier, sample_rate=num_sampled / self.num_total)
        self.history = [(float(n), float(q), int(s)) for n, q, s in acc.history]
        return out

    def epsilon(self) -> float:
        """ε spent so far at ``delta`` (0 before any round)."""
        return float(self._accountant().get_epsilon(self.delta)) if self.history else 0.0

    def _accountant(self) -> RDPAccountant:
        acc = RDPAccountant()
        acc.history = list(self.history)
        return acc

    def state_dict(self) -> dict[str, object]:
        """Accountant history (noise_multiplier, sample_rate, steps) for the checkpoint."""
        return {"history": [list(h) for h in self.history]}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore from :meth:`state_dict`."""
        raw = state["history"]
        assert isinstance(raw, list)
        self.history = [(float(n), float(q), int(s)) for n, q, s in raw]
