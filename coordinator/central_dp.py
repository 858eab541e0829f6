"""Optional participant-level (central) DP on the server: clip, sum, add noise.

DP-FedAvg with a fixed denominator: McMahan, Ramage, Talwar & Zhang 2018,
"Learning Differentially Private Recurrent Language Models" (ICLR,
arXiv:1710.06963), estimator ``f~_f``, with the semantics of Flower's
``DifferentialPrivacyServerSideFixedClipping`` (flwr 1.41: FlatClip of each
update, noise std ``noise_multiplier * clipping_norm / num_sampled``):

- every admitted delta is scaled to global L2 norm at most ``C`` (:meth:`clip`);
- the clipped deltas are summed with *equal* weight and divided by ``n``, the
  number of participants *sampled* for the round, fixed before any reply
  arrives (a dropped or rejected member only removes a term from the sum);
- ``N(0, (z C / n)^2)`` is added to every coordinate.

Adding or removing one participant moves the sum by at most ``C``, so each
round is the Gaussian mechanism with noise multiplier ``z`` (add/remove-one
adjacency). Example-count weights or dividing by the number *accepted* would
let one member move the mean by more than ``C / n``; both are refused here.

Accounting: Rényi DP (Mironov 2017, "Rényi Differential Privacy", IEEE CSF).
The Gaussian mechanism is ``(α, α / 2z²)``-RDP at every order α, rounds
compose by adding, and Opacus's ``RDPAccountant`` converts to ``(ε, δ)`` with
Theorem 21 of Balle, Barthe, Gaboardi, Hsu & Sato 2020, "Hypothesis Testing
Interpretations and Rényi Differential Privacy" (AISTATS, arXiv:1905.09982).
No amplification by subsampling is claimed (``sample_rate = 1``): the round
loop samples a fixed number of the members that are *online*, which is neither
Poisson sampling of the enrolled population nor a sample of known size from
it, so the sampled-Gaussian bounds (Mironov, Talwar & Zhang 2019) do not apply
as stated. Flower 1.41's own fixed-clipping accountant refuses to amplify for
the same reason (``SamplingMethod.NO_AMPLIFICATION``). The ε is thus a bound
for every member, sampled or not.

Noise comes from an explicit ``numpy.random.Generator``; the round loop must
seed it from OS entropy, never from the (shared, digest-bound) config seed:
whoever can replay the noise can subtract it. PCG64 is not a CSPRNG and
floating-point Gaussian sampling has the weaknesses described by Mironov 2012,
"On Significance of the Least Significant Bits for Differential Privacy" (CCS);
this is the trust level of Flower's and Opacus's default (non-secure) modes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from opacus.accountants import RDPAccountant

from protocols.errors import ConfigError

__all__ = ["CentralDP", "add_gaussian_noise", "clip_delta", "global_norm", "noise_std"]

_BLOCK = 1 << 16
# float32 rounding of the scale and of each product can lift the norm by a few
# ulps; shrinking the scale by 4 ulps keeps the clipped norm <= C exactly.
_CLIP_MARGIN = 1.0 - 4 * 2.0**-24


def global_norm(delta: Mapping[str, np.ndarray]) -> float:
    """L2 norm over all tensors, summed in float64 block by block (no float64 copy)."""
    sq = 0.0
    for a in delta.values():
        flat = np.ravel(a)
        for i in range(0, flat.size, _BLOCK):
            block = flat[i:i + _BLOCK].astype(np.float64)
            sq += float(np.dot(block, block))
    return math.sqrt(sq)


def clip_delta(delta: Mapping[str, np.ndarray], *, clipping_norm: float
               ) -> dict[str, np.ndarray]:
    """Scale ``delta`` by ``min(1, clipping_norm / ||delta||_2)`` (FlatClip, all tensors)."""
    norm = global_norm(delta)
    if norm <= clipping_norm:
        return dict(delta)
    scale = np.float32(clipping_norm / norm * _CLIP_MARGIN)
    return {k: (a * scale).astype(a.dtype, copy=False) for k, a in delta.items()}


def noise_std(*, noise_multiplier: float, clipping_norm: float, num_sampled: int) -> float:
    """Std of the noise on the mean (Flower's ``compute_stdv``)."""
    return noise_multiplier * clipping_norm / num_sampled


def add_gaussian_noise(mean: Mapping[str, np.ndarray], *, std: float,
                       rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``mean + N(0, std²)`` per element, float32 throughout (no float64 temporaries)."""
    out: dict[str, np.ndarray] = {}
    for k, a in mean.items():
        noisy = rng.standard_normal(a.shape, dtype=np.float32)
        noisy *= np.float32(std)
        noisy += a
        out[k] = noisy
    return out


@dataclass(kw_only=True)
class CentralDP:
    """Server-side fixed clipping, fixed-denominator noise, and an RDP ε ledger."""

    noise_multiplier: float
    clipping_norm: float
    delta: float
    # Opacus accountant history: (noise_multiplier, sample_rate, rounds).
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for key, value in (("noise-multiplier", self.noise_multiplier),
                           ("clipping-norm", self.clipping_norm)):
            if not 0 < value < math.inf:
                raise ConfigError(f"central-dp.{key}", "must be positive and finite",
                                  got=value, expected="> 0")
        if not 0 < self.delta < 1:
            raise ConfigError("central-dp.delta", "must be a probability", got=self.delta,
                              expected="0 < delta < 1 (well below 1 / number of members)")

    def clip(self, delta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One admitted delta, clipped to ``clipping_norm``."""
        return clip_delta(delta, clipping_norm=self.clipping_norm)

    def privatize(self, clipped_mean: Mapping[str, np.ndarray], *, num_accepted: int,
                  num_sampled: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Turn the equal-weight mean of ``num_accepted`` clipped deltas into the release.

        The mean is rescaled to ``sum / num_sampled`` (the fixed denominator),
        noised, and the round is accounted.
        """
        if not 1 <= num_accepted <= num_sampled:
            raise ConfigError("central-dp.num_accepted", "accepted count out of range",
                              got=(num_accepted, num_sampled),
                              expected="1 <= accepted <= sampled")
        fixed: Mapping[str, np.ndarray] = clipped_mean
        if num_accepted < num_sampled:
            scale = np.float32(num_accepted / num_sampled)
            fixed = {k: a * scale for k, a in clipped_mean.items()}
        std = noise_std(noise_multiplier=self.noise_multiplier,
                        clipping_norm=self.clipping_norm, num_sampled=num_sampled)
        out = add_gaussian_noise(fixed, std=std, rng=rng)
        acc = self._accountant()
        acc.step(noise_multiplier=self.noise_multiplier, sample_rate=1.0)
        self.history = [(float(n), float(q), int(s)) for n, q, s in acc.history]
        return out

    def rounds(self) -> int:
        """Releases accounted so far."""
        return sum(s for _, _, s in self.history)

    def epsilon(self) -> float:
        """ε spent so far at ``delta`` (0 before any round)."""
        return float(self._accountant().get_epsilon(self.delta)) if self.history else 0.0

    def _accountant(self) -> RDPAccountant:
        acc = RDPAccountant()
        acc.history = list(self.history)
        return acc

    def state_dict(self) -> dict[str, object]:
        """Accountant history for the checkpoint."""
        return {"history": [list(h) for h in self.history]}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore from :meth:`state_dict`."""
        raw = state.get("history", [])
        if not isinstance(raw, list):
            raise ConfigError("central-dp.history", "checkpointed history is not a list",
                              got=type(raw).__name__, expected="[[z, q, rounds], ...]")
        self.history = [(float(n), float(q), int(s)) for n, q, s in raw]
