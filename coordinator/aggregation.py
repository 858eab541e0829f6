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

from collections.abc import Callable, Iterable, Mapping

import numpy as np

from protocols.errors import AdmissionError, ConfigError

__all__ = ["StreamingMean", "aggregate", "group_of"]


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
        # One float32 scratch buffer reused for every tensor: w * delta is formed
        # in it and added into the float64 sum, so no per-add temporaries and half
        # the memory traffic of a float64 product (the product's float32 rounding,
        # 6e-8 relative, is far below the sum's; the sum itself stays float64).
        self._scratch = np.empty(max((a.size for a in self._acc.values()), default=0),
                                 dtype=np.float32)
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
            tmp = self._scratch[:acc.size].reshape(acc.shape)
            np.multiply(value, np.float32(w), out=tmp)
            np.add(acc, tmp, out=acc)
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


def aggregate(deltas: Iterable[Mapping[str, np.ndarray]], weights: Iterable[float], *,
              weighting: str = "num-examples") -> dict[str, np.ndarray]:
    """Weighted mean of ``deltas`` consumed one at a time (FedAvg, McMahan et al. 2017).

    ``weighting="num-examples"`` uses ``weights`` (example counts);
    ``"equal"`` gives every delta weight 1 (required under central DP, where a
    participant's influence must be bounded by the clipping norm alone).
    The first delta fixes the tensor set; every later one must match it.
    """
    if weighting not in ("num-examples", "equal"):
        raise ConfigError("weighting", "unknown weighting", got=weighting,
                          expected="num-examples | equal")
    agg: StreamingMean | None = None
    for delta, w in zip(deltas, weights, strict=True):
        if agg is None:
            agg = StreamingMean({k: v.shape for k, v in delta.items()}, group=_one_group)
        agg.add(delta, weight=1.0 if weighting == "equal" else float(w))
    if agg is None:
        raise AdmissionError("no-updates", "nothing to aggregate", got=0,
                             expected=">= 1 admitted delta")
    if agg.group_weights()["all"] <= 0:
        raise AdmissionError("zero-weight", "total weight is zero", got=0.0,
                             expected="> 0")
    return agg.result()


def _one_group(name: str) -> str:
    return "all"
