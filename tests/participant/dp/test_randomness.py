"""DP randomness has no searchable seed (issue 13 §1); the seeded path is unsafe and says so."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import participant.dp.randomness as randomness
from participant.dp.randomness import DPRandom, is_integer_seeded, mt_state_words
from participant.dp.training import dp_train
from participant.site import Site
from tests.participant.site_factory import make_site

# A tiny release: Linear(16 -> 1), plain SGD at lr 1, dense inputs (per-step noise).
N, D, Q, STEPS, SIGMA, CLIP = 64, 16, 0.25, 3, 200.0, 1.0
B = round(Q * N)
# The clipped part of the delta is at most STEPS * N * CLIP / B in norm, whatever the
# data; a wrong seed leaves a residual of about sqrt(2) * the noise's norm (~125 here).
CLIPPED_BOUND = STEPS * N * CLIP / B
WINDOW = 64  # the attacker's seed budget in this test (the real attack: all 2^32)

_X = torch.randn(N, D, generator=torch.Generator().manual_seed(0))
_Y = _X[:, :1] * 3.0


def _release(*, unsafe_seed: int | None, data: bool = True,
             noise_multiplier: float = SIGMA) -> torch.Tensor:
    """The site's delta for one round; without ``data``, every gradient is zero."""
    layer = nn.Linear(D, 1)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    x = _X if data else torch.zeros_like(_X)

    def loss(pred: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        # Linear in the weights, so each clipped gradient is the same along the noisy
        # and the noiseless path: the attacker's residual is the noiseless update itself.
        per = -pred[:, 0] * _Y[idx, 0]
        return per if data else per * 0.0

    dp_train(nn.Sequential(layer), N, loss, lambda idx: x[idx],
             noise_multiplier=noise_multiplier, max_grad_norm=CLIP, sample_rate=Q,
             steps=STEPS, optimizer=torch.optim.SGD(layer.parameters(), lr=1.0),
             unsafe_seed=unsafe_seed, lazy_noise=False)
    return torch.cat([layer.weight.detach().flatten(), layer.bias.detach()])


def _search(delta: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """The documented attack without the data: for each seed, replay the round's noise
    (the noise stream does not depend on the data) and keep seeds whose residual is
    small enough to be a clipped sum."""
    hits = []
    for s in range(WINDOW):
        residual = delta - _release(unsafe_seed=s, data=False)
        if float(residual.norm()) <= CLIPPED_BOUND:
            hits.append((s, residual))
    return hits


def test_seed_search_cannot_recover_noise(caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("participant.dp.randomness").setLevel(logging.ERROR)  # WINDOW warnings
    # The old construction: a 63-bit integer seed, of which the CPU generator keeps 32.
    # Its low bits are put inside the window so the test's small search can reach it.
    secret = (secrets.randbits(31) << 32) | secrets.randbelow(WINDOW)
    old = _release(unsafe_seed=secret)
    hits = _search(old)
    assert [s for s, _ in hits] == [secret & 0xFFFFFFFF], "the seed search should succeed"
    # ... and then it reads the clipped, noiseless update.
    noiseless = _release(unsafe_seed=secret, noise_multiplier=0.0)
    assert torch.allclose(hits[0][1], noiseless, atol=1e-3)

    # The shipped source: no seed in the window (or anywhere) replays its noise.
    new = _release(unsafe_seed=None)
    assert _search(new) == []


def test_the_cpu_generator_keeps_only_32_bits_of_an_integer_seed() -> None:
    """Why the old construction was searchable, and what is_integer_seeded detects."""
    s = secrets.randbits(32)
    a = torch.Generator().manual_seed(s)
    b = torch.Generator().manual_seed(s | (secrets.randbits(31) << 32))
    assert torch.equal(torch.randn(8, generator=a), torch.randn(8, generator=b))
    assert is_integer_seeded(mt_state_words(torch.Generator().manual_seed(s)))


def test_every_generator_state_is_fresh_os_entropy(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[bytes] = []
    real = os.urandom

    def urandom(n: int) -> bytes:
        drawn.append(real(n))
        return drawn[-1]

    monkeypatch.setattr(randomness.os, "urandom", urandom)
    rng = DPRandom()
    gens = [rng.generator(), rng.spawn().generator()]
    assert [len(d) for d in drawn] == [4 * randomness.MT_STATE_WORDS + 8] * 2
    for g, raw in zip(gens, drawn, strict=True):
        words = mt_state_words(g)
        # The whole 19968-bit state is the entropy read, not a seed's expansion.
        assert words.tobytes() == raw[:4 * randomness.MT_STATE_WORDS]
        assert not is_integer_seeded(words)
    # The state is what the generator uses: a different state draws differently.
    assert not torch.equal(torch.randn(8, generator=gens[0]), torch.randn(8, generator=gens[1]))


def test_unsafe_seed_is_reproducible_and_logs_a_warning(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    with caplog.at_level(logging.WARNING, logger="participant.dp.randomness"):
        a, b = DPRandom(unsafe_seed=3), DPRandom(unsafe_seed=3)
    assert sum("UNSAFE" in r.getMessage() for r in caplog.records) == 2
    assert a.seeded and not DPRandom().seeded
    assert torch.equal(torch.randn(4, generator=a.generator()),
                       torch.randn(4, generator=b.generator()))
    assert a.stream().uniform(4).tolist() == b.stream().uniform(4).tolist()


class _Recorder:
    """Every generator and CSPRNG stream the DP code creates, with its state."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.states: list[bytes] = []
        self.streams = 0
        self.seeded: list[bool] = []
        real_gen, real_stream = DPRandom.generator, DPRandom.stream

        def generator(rng: DPRandom) -> torch.Generator:
            g = real_gen(rng)
            self.states.append(mt_state_words(g).tobytes())
            self.seeded.append(rng.seeded)
            return g

        def stream(rng: DPRandom) -> Any:
            self.streams += 1
            self.seeded.append(rng.seeded)
            return real_stream(rng)

        monkeypatch.setattr(DPRandom, "generator", generator)
        monkeypatch.setattr(DPRandom, "stream", stream)


def test_two_rounds_with_a_fixed_global_model_share_no_enumerable_seed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kit = make_site(tmp_path, n=120)
    per_round = []
    receipts = []  # round 2 trains only with round 1's verified receipt (silence is not consent)
    for r in (1, 2):
        rec = _Recorder(monkeypatch)
        result = Site(kit.config).train(kit.instruction(round=r, receipts=receipts),
                                        kit.global_weights)
        assert result.refusal is None and result.submission is not None
        per_round.append(rec)
        monkeypatch.undo()
        receipts = [kit.receipt(r, submission=result.submission,
                                model_before=kit.instruction(round=r).global_model_digest,
                                model_after=kit.instruction(round=r).global_model_digest)]
    for rec in per_round:
        assert rec.states, "the round drew nothing through participant.dp.randomness"
        assert not any(rec.seeded), "a site round used the unsafe seeded path"
        for state in rec.states:
            assert not is_integer_seeded(np.frombuffer(state, np.uint32))
    first, second = (set(rec.states) for rec in per_round)
    assert len(first) == len(per_round[0].states) and len(second) == len(per_round[1].states)
    assert not first & second, "two rounds share a generator state"


def test_secure_mode_draws_batches_and_noise_from_the_csprng_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _Recorder(monkeypatch)
    layer = nn.Linear(D, 1)
    before = layer.weight.detach().clone()
    dp_train(nn.Sequential(layer), N, lambda pred, idx: (pred[:, 0] - _Y[idx, 0]) ** 2,
             lambda idx: _X[idx], noise_multiplier=1.0, max_grad_norm=CLIP, sample_rate=Q,
             steps=STEPS, optimizer=torch.optim.SGD(layer.parameters(), lr=0.1),
             secure_mode=True)
    assert rec.states == [] and rec.streams >= 2  # one for the batches, one per noise chunk
    assert not torch.equal(layer.weight.detach(), before)


def test_secure_mode_gaussians_have_the_given_std() -> None:
    out = torch.empty(400_001, dtype=torch.float32)
    DPRandom().stream().normal_(out, std=1.5)
    assert abs(out.std().item() - 1.5) < 0.01 and abs(out.mean().item()) < 0.01
    assert 0.0015 < (out.abs() > 4.5).float().mean().item() < 0.004
