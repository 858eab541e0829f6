"""Streaming weighted aggregation of deltas: O(parameters) memory.

Flower's ``aggregate_arrayrecords`` holds every reply at once. Here each
admitted delta is added into a float64 accumulator as it arrives and can be
dropped immediately, so peak extra memory is one accumulator the size of the
model, whatever the number of participants. The mean is the FedAvg update of
McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data": ``sum_k w_k * delta_k / sum_k w_k``.

Groups let heads average over the members who actually hold the endpoint:
a member without labels for an endpoint contributes zero to its head, and
counting it would shrink every head update by its share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from protocols.errors import AdmissionError

__all__ = ["StreamingMean", "group_of"]


def group_of(name: str) -> str:
    """Weighting group of a parameter: ``heads.<endpoint>`` for heads, else ``trunk``."""
    if name.startswith("heads."):
        return "heads." + name.split(".")[1]
    return "trunk"


class StreamingMean:
    """Accumulates ``weight * delta`` per tensor; weights can differ per group."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], *,
                 group: Callable[[str], str] = group_of) -> None:
        self._acc = {k: np.zeros(s, dtype=np.float64) for k, s in shapes.items()}
        self._group = {k: group(k) for k in shapes}
        self._weights: dict[str, float] = dict.fromkeys(self._group.values(), 0.0)
        self.count = 0

    def add(self, delta: Mapping[str, np.ndarray], *, weight: float,
            group_weights: Mapping[str, float] | None = None) -> None:
        """Add one delta; ``group_weights`` overrides ``weight`` for named groups."""
        if set(delta) != set(self._acc):
            raise AdmissionError("wrong-tensor-set", "delta does not match the model",
                                 got=sorted(delta)[:5], expected=sorted(self._acc)[:5])
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        used: dict[str, float] = {}
        for name, value in delta.items():
            g = self._group[name]
            w = float(group_weights.get(g, weight)) if group_weights else float(weight)
            used[g] = w
            if w == 0.0:
                continue
            acc = self._acc[name]
            # In place: no temporary the size of the tensor beyond the float64 cast.
            acc += w * value.astype(np.float64, copy=False)
        for g, w in used.items():
            self._weights[g] += w
        self.count += 1

    def result(self, *, dtype: type = np.float32) -> dict[str, np.ndarray]:
        """The weighted mean per tensor (zero for a group nobody weighted)."""
        out: dict[str, np.ndarray] = {}
        for name, acc in self._acc.items():
            total = self._weights[self._group[name]]
            out[name] = (acc / total if total > 0 else np.zeros_like(acc)).astype(dtype)
        return out

    def group_weights(self) -> dict[str, float]:
        """Total weight per group."""
        return dict(self._weights)
