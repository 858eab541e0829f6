"""Waiting for and sampling participants, with explicit deadlines.

Flower's ``FedAvg.sample_nodes`` waits forever for ``min_available_nodes``; a
consortium run must instead fail loudly when a round cannot gather its
minimum. Sampling uses the federation's checkpointed RNG, so a resumed run
samples exactly as an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable

import numpy as np

from protocols.errors import RoundFailedError

__all__ = ["sample_participants", "wait_for_participants"]

log = logging.getLogger(__name__)


def wait_for_participants(
    get_node_ids: Callable[[], Iterable[int]],
    *,
    min_participants: int,
    timeout: float,
    poll_interval: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[int]:
    """Poll until at least ``min_participants`` nodes are online, or fail.

    Raises
    ------
    RoundFailedError
        When the deadline passes first; the message says how many were online.
    """
    deadline = clock() + timeout
    announced = False
    while True:
        online = sorted(int(n) for n in get_node_ids())
        if len(online) >= min_participants:
            return online
        if clock() >= deadline:
            raise RoundFailedError(
                f"only {len(online)} participant(s) connected within {timeout:.0f} s",
                got=len(online),
                expected=f"at least min-participants = {min_participants}",
                fix="check that members' daemons are running and enrolled, "
                "or lower federation.min-participants / raise federation.join-timeout",
            )
        if not announced:
            log.info("waiting up to %.0f s for %d participant(s); %d online",
                     timeout, min_participants, len(online))
            announced = True
        sleep(min(poll_interval, max(0.0, deadline - clock())))


def sample_participants(
    online: list[int], *, fraction: float, min_participants: int, rng: np.random.Generator
) -> list[int]:
    """Sample ``max(min, ceil(fraction * online))`` nodes without replacement."""
    k = min(len(online), max(min_participants, math.ceil(fraction * len(online))))
    if k == len(online):
        return list(online)
    chosen = rng.choice(np.asarray(online, dtype=np.int64), size=k, replace=False)
    return sorted(int(c) for c in chosen)
