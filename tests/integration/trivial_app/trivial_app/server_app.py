"""FedAvg with explicit timeouts; writes per-round wall times to ``result-file``."""

import itertools
import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


def _slowest(replies: list[RecordDict], key: str) -> MetricRecord:
    """The largest ``train-seconds`` (the slowest participant), not a weighted mean."""
    return MetricRecord({"train-seconds": max(
        float(r["metrics"]["train-seconds"]) for r in replies)})  # type: ignore[arg-type]


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    n = int(rc["min-nodes"])
    fraction_evaluate = float(rc.get("fraction-evaluate", 0.0))
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=fraction_evaluate,
                      min_train_nodes=n, min_evaluate_nodes=n, min_available_nodes=n,
                      train_metrics_aggr_fn=_slowest)
    stamps: list[float] = []

    def stamp(server_round: int, arrays: ArrayRecord) -> None:
        stamps.append(time.time())  # called at round 0, then after each round

    t0 = time.time()
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(4, np.float32)]),
                            num_rounds=int(rc["num-server-rounds"]),
                            train_config=ConfigRecord({}), timeout=float(rc["round-timeout"]),
                            evaluate_fn=stamp)
    out = rc.get("result-file")
    if out:
        Path(str(out)).write_text(json.dumps({
            "wall_s": time.time() - t0,
            "round_s": [b - a for a, b in itertools.pairwise(stamps)],
            "final": [float(x) for x in result.arrays.to_numpy_ndarrays()[0]],
            "train_metrics": {str(k): dict(v) for k, v in
                              result.train_metrics_clientapp.items()}}))
