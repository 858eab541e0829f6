"""Streaming aggregation vs Flower's FedAvg aggregation (flwr 1.41), side by side.

Flower's Message-API ``FedAvg.aggregate_train`` calls
``strategy_utils.aggregate_arrayrecords(replies, "num-examples")`` on the list
of reply ``RecordDict``s. Both sides here start from the same replies and end
with an ``ArrayRecord`` of the mean, so both pay ``Array.numpy()`` per tensor
(as ``protocols.flower_codec`` does) and the final packing.

Both decode each reply tensor just before adding it, in the same order
(Flower's loop does ``value.numpy() * weight`` per tensor; ours gets a mapping
of lazily decoded tensors, which ``StreamingMean.add`` materialises one at a
time). In the round loop a whole delta is decoded at once because admission
needs all of it (digest, norm); that cost is admission's, not aggregation's.

Time: per (K, P) the replies are built once; the methods then run on those
same objects, interleaved (order rotated each repetition), ``--reps`` times;
we report medians and the median of per-repetition ratios. ``--variants``
adds the accumulation options that were considered (float64 sum, float32
without cache blocking) so the choice in ``coordinator/aggregation.py`` can be
re-checked. Accuracy: max abs error of each method against a float64
reference, and as a fraction of the float32 bound ``error_bound(K)``.

Memory: each (method, K, P) runs in a fresh subprocess, its peak RSS
(VmHWM) reset after imports. Flower's API needs every reply at once; ours gets them one at a
time from a generator and drops each after adding it. Peak extra = peak RSS
minus RSS after imports, before any input exists.

    python benchmarks/aggregation.py [--quick] [--reps 5] [--variants] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coordinator.aggregation import StreamingMean, error_bound
from protocols.atomic_files import PUBLIC, write_json

TENSORS = 4  # split P over a few named tensors like a real trunk
MEM_BYTES = 24 * 2**30
Deltas = Iterable[tuple[dict[str, np.ndarray], float]]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> None:
    # ``ru_maxrss`` would also carry the import transient and, after vfork+exec,
    # the parent's peak; VmHWM reset through clear_refs (Linux >= 4.0) does not.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reply(k: int, p: int) -> Any:
    """What participant ``k`` sends: its delta (float32, normal) and example count."""
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    rng = np.random.default_rng(k)
    n = p // TENSORS
    arrays = ArrayRecord({f"trunk.{i}.weight": Array(rng.standard_normal(n, np.float32))
                          for i in range(TENSORS)})
    return RecordDict({"arrays": arrays,
                       "metrics": MetricRecord({"num-examples": 100 + 37 * k})})


class _Lazy:
    """A reply tensor decoded (``Array.numpy()``) only when it is added, as Flower does."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = tuple(array.shape)
        self.size = math.prod(self.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.array.numpy(), dtype=dtype)


def _deltas(replies: Iterable[Any]) -> Iterator[tuple[dict[str, np.ndarray], float]]:
    for r in replies:
        lazy: dict[str, Any] = {n: _Lazy(a) for n, a in r["arrays"].items()}
        yield lazy, float(r["metrics"]["num-examples"])


def _pack(mean: Mapping[str, np.ndarray]) -> Any:
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.asarray(v)) for k, v in mean.items()})


# ---------------------------------------------------------------- methods
def flower(replies: list[Any]) -> Any:
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    return aggregate_arrayrecords(replies, "num-examples")


def fedadmet(replies: Iterable[Any]) -> Any:
    """What ships: ``StreamingMean`` (float32, cache-blocked axpy)."""
    agg: StreamingMean | None = None
    for delta, w in _deltas(replies):
        if agg is None:
            agg = StreamingMean({k: v.shape for k, v in delta.items()}, group=lambda _: "all")
        agg.add(delta, weight=w)
    assert agg is not None
    return _pack(agg.result())


def _variant(add: Callable[[np.ndarray, np.ndarray, float, np.ndarray], None],
             acc_dtype: type, scratch_dtype: type, block: int | None
             ) -> Callable[[Iterable[Any]], Any]:
    def run(replies: Iterable[Any]) -> Any:
        acc: dict[str, np.ndarray] = {}
        scratch: np.ndarray = np.empty(0, scratch_dtype)
        total = 0.0
        for delta, w in _deltas(replies):
            if not acc:
                acc = {k: np.zeros(v.size, acc_dtype) for k, v in delta.items()}
                size = max(v.size for v in delta.values())
                scratch = np.empty(size if block is None else min(size, block), scratch_dtype)
            for k, v in delta.items():
                add(acc[k], np.ravel(v), w, scratch)
            total += w
        return _pack({k: (a / total).astype(np.float32) for k, a in acc.items()})
    return run


def _scaled_add(y: np.ndarray, x: np.ndarray, w: float, scratch: np.ndarray) -> None:
    step = scratch.size
    for i in range(0, y.size, step):
        yi, s = y[i:i + step], scratch[:min(step, y.size - i)]
        np.multiply(x[i:i + step], w, out=s)
        np.add(yi, s, out=yi)


VARIANTS: dict[str, Callable[[Iterable[Any]], Any]] = {
    # the previous implementation: float32 product in a full-size scratch, float64 sum
    "float64-sum": _variant(_scaled_add, np.float64, np.float32, None),
    "float64-sum-blocked": _variant(_scaled_add, np.float64, np.float64, 1 << 15),
    "float32-unblocked": _variant(_scaled_add, np.float32, np.float32, None),
}


# ---------------------------------------------------------------- accuracy
def _reference(replies: list[Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per tensor: the float64 weighted mean and the float32 allowance ``bound * sum w|x| / W``."""
    ref: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    total = sum(float(r["metrics"]["num-examples"]) for r in replies)
    for name in replies[0]["arrays"]:
        num = np.zeros(replies[0]["arrays"][name].shape, np.float64)
        absum = np.zeros_like(num)
        for r in replies:
            x = r["arrays"][name].numpy().astype(np.float64)
            x *= float(r["metrics"]["num-examples"])
            num += x
            absum += np.abs(x, out=x)
        ref[name] = (num / total, absum * (error_bound(len(replies)) / total))
    return ref


def _accuracy(ref: Mapping[str, tuple[np.ndarray, np.ndarray]], out: Any) -> dict[str, float]:
    """Max abs error vs the float64 reference, and the worst ratio to the float32 bound."""
    worst_abs, worst_frac = 0.0, 0.0
    for name, (mean, allowance) in ref.items():
        err = np.abs(out[name].numpy().astype(np.float64) - mean)
        worst_abs = max(worst_abs, float(err.max()))
        worst_frac = max(worst_frac, float((err / allowance).max()))
    return {"max_abs_error": worst_abs, "error_over_bound": worst_frac}


# ---------------------------------------------------------------- phases
def time_case(k: int, p: int, reps: int, variants: bool) -> dict[str, Any]:
    replies = [_reply(i, p) for i in range(k)]
    methods: dict[str, Callable[[list[Any]], Any]] = {"flower": flower, "fedadmet": fedadmet}
    if variants:
        methods.update(VARIANTS)
    names = list(methods)
    seconds: dict[str, list[float]] = {m: [] for m in names}
    outputs: dict[str, Any] = {}
    for rep in range(reps):
        for m in names[rep % len(names):] + names[:rep % len(names)]:
            t0 = time.perf_counter()
            out = methods[m](replies)
            seconds[m].append(time.perf_counter() - t0)
            if rep == 0:
                outputs[m] = out
            del out
    ref = _reference(replies)
    row: dict[str, Any] = {"K": k, "P": p}
    for m in names:
        ratios = [s / f for s, f in zip(seconds[m], seconds["flower"], strict=True)]
        row[m] = {"median_s": statistics.median(seconds[m]), "seconds": seconds[m],
                  "ratio_vs_flower": statistics.median(ratios), **_accuracy(ref, outputs[m])}
    return row


def memory_case(method: str, k: int, p: int) -> dict[str, float]:
    """Run in a fresh process: peak RSS above the post-import baseline."""
    import flwr.app  # both sides pay the same imports before the baseline
    import flwr.serverapp.strategy.strategy_utils  # noqa: F401

    _reset_peak()
    base = _rss()
    t0 = time.perf_counter()
    if method == "flower":
        flower([_reply(i, p) for i in range(k)])  # Flower's replies arrive as one list
    else:
        fedadmet(_reply(i, p) for i in range(k))  # one reply alive at a time
    elapsed = time.perf_counter() - t0
    return {"peak_extra_bytes": _peak() - base, "seconds_incl_inputs": elapsed}


def _memory(k: int, p: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in ("fedadmet", "flower"):
        r = subprocess.run([sys.executable, __file__, "--memory-case", method, str(k), str(p)],
                           capture_output=True, text=True, check=False)
        out[method] = (json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0
                       else {"failed": r.stderr.strip()[-300:]})
    o, f = out["fedadmet"], out["flower"]
    if "peak_extra_bytes" in o and "peak_extra_bytes" in f:
        out["ratio_vs_flower"] = o["peak_extra_bytes"] / f["peak_extra_bytes"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="K in {4, 10}, P = 1M (seconds)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--variants", action="store_true", help="also time rejected options")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--memory-case", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory_case:
        print(json.dumps(memory_case(a.memory_case[0], int(a.memory_case[1]),
                                     int(a.memory_case[2]))))
        return
    ks, ps = ([4, 10], [1_000_000]) if a.quick else ([10, 50, 100], [1_000_000, 10_000_000])
    rows = []
    for p in ps:
        for k in ks:
            if 2.5 * 4 * k * p > 0.8 * MEM_BYTES:  # replies + one conversion in flight
                rows.append({"K": k, "P": p, "skipped": "inputs would not fit in 24 GB"})
                continue
            row = time_case(k, p, a.reps, a.variants)
            if not a.no_memory:
                row["memory"] = _memory(k, p)
            rows.append(row)
            _print_row(row)
    result = {"numpy": np.__version__, "flwr": _flwr_version(), "reps": a.reps,
              "cpu_count": os.cpu_count(), "rows": rows}
    if a.json:
        write_json(Path(a.json), result, indent=1, mode=PUBLIC)


def _flwr_version() -> str:
    from importlib.metadata import version

    return version("flwr")


def _print_row(row: dict[str, Any]) -> None:
    mem = row.get("memory", {})
    line = f"K={row['K']:>3} P={row['P']:>10,}"
    for m in ("flower", "fedadmet", *VARIANTS):
        if m in row:
            r = row[m]
            line += (f" | {m} {r['median_s']:.3f}s x{r['ratio_vs_flower']:.2f}"
                     f" err {r['max_abs_error']:.1e}")
    for m in ("fedadmet", "flower"):
        if "peak_extra_bytes" in mem.get(m, {}):
            line += f" | {m} {mem[m]['peak_extra_bytes'] / 2**20:.0f} MB"
    if "ratio_vs_flower" in mem:
        line += f" (x{mem['ratio_vs_flower']:.3f})"
    print(line, flush=True)


if __name__ == "__main__":
    main()
