"""Per-endpoint metrics on masked multi-task predictions.

Regression: MAE, RMSE, R². Classification: AUROC and AUPRC (average
precision). Only labelled entries (mask 1) count. An endpoint with too few
labels for a metric (no labels; a single class for AUROC) reports NaN rather
than a misleading number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["HIGHER_IS_BETTER", "endpoint_metrics", "headline_metric", "mean_predictor_metrics"]

HIGHER_IS_BETTER = {"mae": False, "rmse": False, "r2": True, "auroc": True, "auprc": True}


def _regression(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    err = p - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else math.nan,
    }


def _classification(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    if len(np.unique(y)) < 2:
        return {"auroc": math.nan, "auprc": math.nan}
    # Imported here: scikit-learn costs ~1 s of start-up in every flwr-clientapp
    # process, and regression-only sites never need it.
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {"auroc": float(roc_auc_score(y, p)), "auprc": float(average_precision_score(y, p))}


def endpoint_metrics(y: np.ndarray, pred: np.ndarray, mask: np.ndarray,
                     endpoints: Sequence[str], tasks: Sequence[str]) -> dict[str, dict[str, float]]:
    """Metrics per endpoint: ``{endpoint: {"mae": ..., "n": ...}}``.

    ``pred`` is in original units (probabilities for classification).
    """
    out: dict[str, dict[str, float]] = {}
    for j, (name, task) in enumerate(zip(endpoints, tasks, strict=True)):
        sel = mask[:, j] > 0
        n = int(sel.sum())
        if n == 0:
            out[name] = {"n": 0.0}
            continue
        yj, pj = y[sel, j].astype(np.float64), pred[sel, j].astype(np.float64)
        values = _classification(yj, pj) if task == "classification" else _regression(yj, pj)
        values["n"] = float(n)
        out[name] = values
    return out


def mean_predictor_metrics(y_train: np.ndarray, mask_train: np.ndarray, y: np.ndarray,
                           mask: np.ndarray, endpoints: Sequence[str], tasks: Sequence[str]
                           ) -> dict[str, dict[str, float]]:
    """Metrics of predicting the training mean (or base rate) for every molecule."""
    means = np.array([
        float(y_train[mask_train[:, j] > 0, j].mean()) if (mask_train[:, j] > 0).any() else 0.0
        for j in range(y.shape[1])
    ])
    pred = np.broadcast_to(means, y.shape).copy()
    return endpoint_metrics(y, pred, mask, endpoints, tasks)


def headline_metric(task: str) -> str:
    """The metric a table reports for a task: MAE for regression, AUROC for classification."""
    return "auroc" if task == "classification" else "mae"
