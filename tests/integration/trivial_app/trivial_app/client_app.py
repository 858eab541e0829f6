"""Returns a tiny array; records its own training time as a metric."""

import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    t0 = time.perf_counter()
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    new = [a + np.float32(1.0) for a in arrays]
    return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord(
        {"num-examples": 1, "train-seconds": time.perf_counter() - t0})}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    loss = float(sum(float(np.abs(a).sum()) for a in arrays))
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1, "loss": loss})}),
                   reply_to=msg)
