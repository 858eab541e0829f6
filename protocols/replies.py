"""What a site answers a train instruction with, in memory: an update or a refusal.

The site builds a :class:`TrainReply` (:class:`participant.site.Site`), the ClientApp
encodes it, and the coordinator gets the same type back from
:func:`protocols.flower_codec.decode_train_reply`. It is not itself a wire message: the
delta travels as arrays next to the signed :class:`~protocols.messages.UpdateSubmission`
that names its digest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.messages import Refusal, UpdateSubmission

__all__ = ["TrainReply"]


@dataclass(frozen=True)
class TrainReply:
    """A signed submission with its delta and metrics, or a refusal."""

    submission: UpdateSubmission | None
    delta: dict[str, np.ndarray]
    metrics: dict[str, float]
    refusal: Refusal | None
