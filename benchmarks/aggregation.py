"""Streaming aggregation vs Flower's ``aggregate_arrayrecords`` (flwr 1.41).

Each (method, K, P) runs in a fresh subprocess so ``ru_maxrss`` is that case's
own peak. Ours gets deltas one at a time from a generator (as the ServerApp
drops each message after adding it); Flower's API needs every reply's
RecordDict at once, so its inputs are all built first. Both pay the
conversion they need: Flower builds ``Array`` records from numpy; ours
converts the same kind of ``ArrayRecord`` back with ``.numpy()`` per tensor.
Peak extra memory = peak RSS - RSS before inputs were made.

    python benchmarks/aggregation.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np

TENSORS = 4  # split P over a few named tensors like a real trunk
MEM_BYTES = 24 * 2**30


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _delta(k: int, p: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(k)
    n = p // TENSORS
    return {f"trunk.{i}.weight": rng.random(n, dtype=np.float32) for i in range(TENSORS)}


def _record(k: int, p: int):  # type: ignore[no-untyped-def]
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    arrays = ArrayRecord({n: Array(a) for n, a in _delta(k, p).items()})
    return RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 100 + k})})


def run_case(method: str, k: int, p: int) -> dict[str, float]:
    base = _rss()
    if method == "flower":
        from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

        t0 = time.perf_counter()
        records = [_record(i, p) for i in range(k)]
        t1 = time.perf_counter()
        out = aggregate_arrayrecords(records, "num-examples")
        t2 = time.perf_counter()
        first = out["trunk.0.weight"].numpy()
    else:
        from coordinator.aggregation import aggregate

        t0 = time.perf_counter()
        gen_s = 0.0

        # Time generation separately so only aggregation + conversion is compared.
        def timed() -> Iterator[dict[str, np.ndarray]]:
            nonlocal gen_s
            for i in range(k):
                g0 = time.perf_counter()
                rec = _record(i, p)
                gen_s += time.perf_counter() - g0
                yield {n: a.numpy() for n, a in rec["arrays"].items()}
        res = aggregate(timed(), [100 + i for i in range(k)])
        t2 = time.perf_counter()
        t1 = t0 + gen_s
        first = res["trunk.0.weight"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"agg_s": t2 - t1, "peak_extra_bytes": peak - base, "checksum": float(first[:8].sum())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--case", nargs=3)  # internal: method k p
    a = ap.parse_args()
    if a.case:
        print(json.dumps(run_case(a.case[0], int(a.case[1]), int(a.case[2]))))
        return
    ks, ps = ([4, 10], [100_000]) if a.quick else ([10, 50, 100], [1_000_000, 10_000_000])
    rows = []
    for p in ps:
        for k in ks:
            row: dict[str, object] = {"K": k, "P": p, "input_bytes": 4 * k * p}
            for method in ("fedadmet", "flower"):
                # Flower holds all K replies (+ Array bytes copies): ~2x inputs.
                if method == "flower" and 2.2 * 4 * k * p > 0.8 * MEM_BYTES:
                    row[method] = {"skipped": "all replies at once would not fit in 24 GB"}
                    continue
                env = dict(os.environ, PYTHONPATH=os.getcwd())
                r = subprocess.run([sys.executable, __file__, "--case", method, str(k), str(p)],
                                   capture_output=True, text=True, env=env, check=False)
                if r.returncode != 0:
                    row[method] = {"failed": r.stderr.strip()[-300:]}
                    continue
                row[method] = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(row)
    print(json.dumps(rows, indent=1))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    print(f"{'K':>4} {'P':>10} {'ours s':>8} {'flwr s':>8} {'t ratio':>7} "
          f"{'ours MB':>8} {'flwr MB':>8} {'mem ratio':>9}")
    for row in rows:
        o, f = row["fedadmet"], row["flower"]
        assert isinstance(o, dict) and isinstance(f, dict)
        if "agg_s" in o and "agg_s" in f:
            print(f"{row['K']:>4} {row['P']:>10} {o['agg_s']:>8.3f} {f['agg_s']:>8.3f} "
                  f"{o['agg_s'] / f['agg_s']:>7.2f} {o['peak_extra_bytes'] / 2**20:>8.0f} "
                  f"{f['peak_extra_bytes'] / 2**20:>8.0f} "
                  f"{o['peak_extra_bytes'] / f['peak_extra_bytes']:>9.3f}")
        else:
            print(f"{row['K']:>4} {row['P']:>10} ours={o} flower={f}")


if __name__ == "__main__":
    main()
