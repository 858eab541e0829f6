"""FedAvg with explicit timeouts; writes per-round wall times to the run's state dir."""

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    n = int(rc["min-nodes"])
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n,
                      min_available_nodes=n)
    t0 = time.time()
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(4, np.float32)]),
                            num_rounds=int(rc["num-server-rounds"]),
                            train_config=ConfigRecord({}), timeout=float(rc["round-timeout"]))
    out = rc.get("result-file")
    if out:
        Path(str(out)).write_text(json.dumps({
            "wall_s": time.time() - t0,
            "final": [float(x) for x in result.arrays.to_numpy_ndarrays()[0]],
            "train_metrics": {str(k): dict(v) for k, v in
                              result.train_metrics_clientapp.items()}}))
