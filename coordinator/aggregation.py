"""Streaming weighted aggregation of deltas: O(parameters) memory.

Flower's ``aggregate_arrayrecords`` holds every reply at once. Here each
admitted delta is added into one accumulator the size of the model as it
arrives and can be dropped immediately, so peak extra memory is one model's
worth, whatever the number of participants. The mean is the FedAvg update of
McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data": ``sum_k w_k * delta_k / sum_k w_k``.

Speed: ``acc += w * delta`` is done in cache-sized blocks (the product lives
in a 256 KiB scratch that never leaves L2), one pass over each delta and the
accumulator; the weights are divided out once at the end. Accumulation is
float32, as in Flower: a float64 sum doubles the memory traffic and measured
1.5-3x slower than Flower (benchmarks/aggregation.py). Its error is the
recursive-summation bound (Higham, "Accuracy and Stability of Numerical
Algorithms", 2nd ed., §4.2): per element, ``|mean - exact| <= (K + 3) * u *
sum_k w_k |delta_k| / sum_k w_k`` with ``u = 2**-24``, i.e. about 6e-6 of the
mean magnitude at K = 100, far below DP-SGD noise; the tests check this bound
against a float64 reference.

Groups let heads average over the members who actually hold the endpoint:
a member without labels for an endpoint contributes zero to its head, and
counting it would shrink every head update by its share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from protocols.errors import AdmissionError, ConfigError

__all__ = ["UNIT_ROUNDOFF", "StreamingMean", "aggregate", "count_weight", "error_bound", "group_of",
           "member_weights"]

UNIT_ROUNDOFF = 2.0**-24  # float32
_BLOCK = 1 << 16  # float32 elements: 256 KiB, so block, scratch and product stay in L2


def group_of(name: str) -> str:
    """Weighting group of a parameter: ``heads.<endpoint>`` for heads, else ``trunk``."""
    if name.startswith("heads."):
        return "heads." + name.split(".")[1]
    return "trunk"


def member_weights(*, weighting: str, count: int | None, head_counts: Mapping[str, float],
                   cap: int) -> tuple[float, dict[str, float]]:
    """A member's trunk weight and per-head weights (``heads.<endpoint>``).

    ``uniform`` (the default; docs/threat-model.md): every admitted update weighs 1, and a
    head 1 if the member holds that endpoint's labels; no count is involved, so no member
    can steer by claiming one. ``capped``: the claimed (power-of-two) count, clipped at
    ``cap``, the member's example cap fixed at enrolment, so a member's weight is at most
    ``cap`` whatever it claims.
    """
    heads = {f"heads.{e}": count_weight(weighting=weighting, count=n, cap=cap)
             for e, n in head_counts.items()}
    if weighting == "uniform":
        return 1.0, heads
    if weighting != "capped" or count is None:
        raise AdmissionError("bad-count", "capped weighting needs a count", got=count,
                             expected="a power-of-two count")
    return float(min(count, cap)), heads


def count_weight(*, weighting: str, count: float, cap: int) -> float:
    """The weight of a per-endpoint count a member reports (a head's label count, or an
    evaluate reply's noisy held-out count): ``uniform``, 1 if it is positive, else 0;
    ``capped``, the count clipped into ``[0, cap]``. Either way a member cannot weigh more
    than its enrolled cap allows by claiming more."""
    if weighting == "uniform":
        return 1.0 if count > 0 else 0.0
    return float(min(max(count, 0.0), cap))


def error_bound(k: int) -> float:
    """Bound on ``|mean - exact|`` relative to ``sum w|delta| / sum w`` after ``k`` adds."""
    return (k + 3) * UNIT_ROUNDOFF


def _axpy(y: np.ndarray, x: np.ndarray, a: float, scratch: np.ndarray) -> None:
    """``y += a * x`` on flat float32 ``y``, blockwise so ``a * x`` never goes to memory."""
    if a == 1.0:  # equal weighting: a single fused pass
        np.add(y, x, out=y)
        return
    a32 = np.float32(a)
    step = scratch.size
    for i in range(0, y.size, step):
        yi = y[i:i + step]
        prod = scratch[:yi.size]
        np.multiply(x[i:i + step], a32, out=prod)
        np.add(yi, prod, out=yi)


class StreamingMean:
    """Accumulates ``weight * delta`` per tensor; weights can differ per group."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], *,
                 group: Callable[[str], str] = group_of) -> None:
        self._acc = {k: np.zeros(s, dtype=np.float32) for k, s in shapes.items()}
        self._untouched = set(self._acc)
        self._closed = False
        self._group = {k: group(k) for k in shapes}
        self._weights: dict[str, float] = dict.fromkeys(self._group.values(), 0.0)
        largest = max((a.size for a in self._acc.values()), default=0)
        self._scratch = np.empty(min(largest, _BLOCK), dtype=np.float32)
        self.count = 0

    def add(self, delta: Mapping[str, np.ndarray], *, weight: float,
            group_weights: Mapping[str, float] | None = None) -> None:
        """Add one delta; ``group_weights`` overrides ``weight`` for named groups."""
        if self._closed:
            raise AdmissionError("round-closed", "the mean was already taken", got=self.count,
                                 expected="add() before result()")
        if set(delta) != set(self._acc):
            raise AdmissionError("wrong-tensor-set", "delta does not match the model",
                                 got=sorted(delta)[:5], expected=sorted(self._acc)[:5])
        # ``.shape`` rather than ``np.shape``: a lazily decoded tensor (anything with
        # ``shape`` and ``__array__``) is then only materialised when it is added.
        bad = [n for n, v in delta.items() if tuple(v.shape) != self._acc[n].shape]
        if bad:
            raise AdmissionError("wrong-shape", "delta tensor shape does not match the model",
                                 got={n: tuple(delta[n].shape) for n in bad[:3]},
                                 expected={n: self._acc[n].shape for n in bad[:3]})
        # Every weight is checked before anything is added: a refused delta leaves
        # the sum untouched (a NaN or negative weight would also let one member
        # cancel or amplify the others).
        used = {g: float(group_weights.get(g, weight)) if group_weights else float(weight)
                for g in set(self._group.values())}
        bad_w = {g: w for g, w in used.items() if not 0.0 <= w < math.inf}
        if bad_w:
            raise AdmissionError("bad-weight", "aggregation weights must be finite and >= 0",
                                 got=bad_w, expected="0 <= weight < inf")
        for name, value in delta.items():
            w = used[self._group[name]]
            if w == 0.0:
                continue
            acc = self._acc[name].reshape(-1)
            if name in self._untouched:  # first term: write it, don't add it to zeros
                np.multiply(np.ravel(value), np.float32(w), out=acc)
                self._untouched.discard(name)
            else:
                _axpy(acc, np.ravel(value), w, self._scratch)
        for g, w in used.items():
            self._weights[g] += w
        self.count += 1

    def result(self, *, dtype: type = np.float32) -> dict[str, np.ndarray]:
        """The weighted mean per tensor (zero for a group nobody weighted).

        The sums are divided in place, so the round never holds a second
        model-sized buffer; this closes the accumulator (later ``add`` calls are
        refused) and repeated calls return the same arrays.
        """
        if not self._closed:
            for name, acc in self._acc.items():
                total = self._weights[self._group[name]]
                if total > 0:
                    np.divide(acc, np.float32(total), out=acc)
            self._closed = True
        return {name: acc.astype(dtype, copy=False) for name, acc in self._acc.items()}

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
