"""Poisson subsampling of a DP-SGD round's batches.

The subsampled Gaussian mechanism's accounting (Abadi et al. 2016; Mironov et
al. 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism")
assumes each example joins each batch independently with probability
``sample_rate``. The batches come from Opacus's ``UniformWithReplacementSampler``
driven by a generator of fresh OS entropy, or, under ``secure_mode``, from an
AES-256-CTR stream (both from :class:`participant.dp.randomness.DPRandom`).
The training loop (:mod:`participant.dp.training`) draws its batches here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from participant.dp.randomness import CsprngStream, DPRandom

__all__ = ["poisson_batches"]


def poisson_batches(rng: DPRandom, n: int, *, sample_rate: float, steps: int,
                    secure_mode: bool = False) -> Iterable[Sequence[int] | torch.Tensor]:
    """``steps`` batches of indices into ``n`` examples, each example in at ``sample_rate``."""
    if secure_mode:
        return _csprng_batches(rng.stream(), n, sample_rate=sample_rate, steps=steps)
    sampler: Iterable[Sequence[int]] = UniformWithReplacementSampler(
        num_samples=n, sample_rate=sample_rate, generator=rng.generator(), steps=steps)
    return sampler


def _csprng_batches(stream: CsprngStream, n: int, *, sample_rate: float, steps: int
                    ) -> Iterator[torch.Tensor]:
    """Poisson subsampling (each example in with probability ``sample_rate``) from a CSPRNG."""
    for _ in range(steps):
        yield torch.nonzero(stream.uniform(n) < sample_rate).flatten()
