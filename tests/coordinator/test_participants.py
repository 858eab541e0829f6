"""Waiting for participants is bounded; sampling is reproducible from the RNG."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.participants import sample_participants, wait_for_participants
from protocols.errors import RoundFailedError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.01)


def test_returns_as_soon_as_enough_nodes_are_online() -> None:
    clock = FakeClock()
    online: list[list[int]] = [[1], [1, 2], [1, 2, 3]]
    calls = iter(online)
    got = wait_for_participants(lambda: next(calls), min_participants=2, timeout=10,
                                clock=clock, sleep=clock.sleep)
    assert got == [1, 2]


def test_too_few_nodes_fails_loudly_at_the_deadline() -> None:
    clock = FakeClock()
    with pytest.raises(RoundFailedError) as err:
        wait_for_participants(lambda: [7], min_participants=3, timeout=5, clock=clock,
                              sleep=clock.sleep)
    assert "min-participants = 3" in str(err.value)
    assert 5.0 <= clock.now < 6.0


@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=40, unique=True),
       st.floats(0.05, 1.0), st.integers(0, 2**31))
def test_sampling_is_deterministic_and_respects_the_minimum(
    nodes: list[int], fraction: float, seed: int
) -> None:
    minimum = min(len(nodes), 2)
    a = sample_participants(sorted(nodes), fraction=fraction, min_participants=minimum,
                            rng=np.random.default_rng(seed))
    b = sample_participants(sorted(nodes), fraction=fraction, min_participants=minimum,
                            rng=np.random.default_rng(seed))
    assert a == b
    assert len(a) >= minimum
    assert set(a) <= set(nodes)
    assert len(set(a)) == len(a)
