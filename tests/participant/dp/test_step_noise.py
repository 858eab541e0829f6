"""StepNoise: fresh noise per step, a function of the seed alone, never handed out early."""

from __future__ import annotations

import pytest
import torch

from participant.dp.randomness import DPRandom
from participant.dp.step_noise import StepNoise


def _draws(*, helper: bool, secure: bool = False, steps: int = 3, numel: int = 200_000,
           std: float = 1.5) -> list[torch.Tensor]:
    out = []
    with StepNoise(numel, std=std, rng=DPRandom(unsafe_seed=11),
                   secure_mode=secure, helper=helper) as noise:
        for _ in range(steps):
            noise.begin()
            out.append(noise.buffers[noise.take()].clone())
    return out


def test_noise_is_the_same_with_or_without_the_helper_thread() -> None:
    with_helper, alone = _draws(helper=True), _draws(helper=False)
    for a, b in zip(with_helper, alone, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("secure", [False, True])
def test_every_step_is_a_fresh_gaussian_of_the_given_std(secure: bool) -> None:
    draws = _draws(helper=True, secure=secure)
    for d in draws:
        assert abs(d.std().item() - 1.5) / 1.5 < 0.01
        assert abs(d.mean().item()) < 0.02
        # Roughly Gaussian tails: about 0.27% beyond 3 sigma.
        assert 0.0015 < (d.abs() > 4.5).float().mean().item() < 0.004
    for i in range(len(draws)):
        for j in range(i + 1, len(draws)):
            corr = torch.corrcoef(torch.stack([draws[i], draws[j]]))[0, 1].item()
            assert abs(corr) < 0.01


def test_different_seeds_give_different_noise() -> None:
    a = StepNoise(50_000, std=1.0, rng=DPRandom(unsafe_seed=1), helper=False)
    b = StepNoise(50_000, std=1.0, rng=DPRandom(unsafe_seed=2), helper=False)
    a.begin()
    b.begin()
    assert not torch.equal(a.buffers[a.take()], b.buffers[b.take()])


def test_take_before_begin_and_double_begin_are_refused() -> None:
    with StepNoise(1000, std=1.0, rng=DPRandom(), helper=True) as noise:
        with pytest.raises(RuntimeError):
            noise.take()
        noise.begin()
        with pytest.raises(RuntimeError):
            noise.begin()  # would drop a step's noise unused


def test_the_taken_buffer_is_left_alone_during_the_next_draw() -> None:
    with StepNoise(300_000, std=1.0, rng=DPRandom(), helper=True) as noise:
        noise.begin()
        first = noise.take()
        kept = noise.buffers[first].clone()
        noise.begin()  # the next step's draw runs while this step's update reads `first`
        second = noise.take()
        assert second != first
        assert torch.equal(noise.buffers[first], kept)


def test_zero_std_gives_zeros() -> None:
    with StepNoise(10, std=0.0, rng=DPRandom()) as noise:
        noise.begin()
        assert torch.equal(noise.buffers[noise.take()], torch.zeros(10))


@pytest.mark.parametrize("helper", [False, True])
def test_row_stds_scale_each_row_of_a_partial_draw(helper: bool) -> None:
    row_std = torch.tensor([0.5, 1.0, 2.0, 4.0] * 5)
    with StepNoise(200_000, std=1.5, rng=DPRandom(unsafe_seed=2),
                   helper=helper) as noise:
        noise.begin(20 * 5000, row_std=row_std)
        buffer = noise.buffers[noise.take()]
        rows = buffer[:100_000].view(20, 5000)
        stds = rows.std(dim=1)
        assert torch.allclose(stds, 1.5 * row_std, rtol=0.04)
        # The next draw may ask for another size; the values stay seeded.
        noise.begin(0, row_std=torch.zeros(0))
        noise.take()
    with StepNoise(200_000, std=1.5, rng=DPRandom(unsafe_seed=2),
                   helper=not helper) as again:
        again.begin(20 * 5000, row_std=row_std)
        assert torch.equal(again.buffers[again.take()][:100_000], buffer[:100_000])


def test_a_draw_that_does_not_fit_is_refused() -> None:
    with StepNoise(100, std=1.0, rng=DPRandom(), helper=False) as noise:
        for numel, row_std in [(101, None), (-1, None), (30, torch.ones(7)),
                               (10, torch.zeros(0)), (10, torch.ones(2, 5))]:
            with pytest.raises(ValueError, match="does not fit"):
                noise.begin(numel, row_std=row_std)
        noise.begin(30, row_std=torch.ones(3))  # nothing was left half-begun
        noise.take()
