"""Metrics agree with scikit-learn and respect masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, roc_auc_score

from chem.metrics import endpoint_metrics, mean_predictor_metrics


def test_known_values_with_masks() -> None:
    y = np.array([[1.0, 1], [2.0, 0], [3.0, 1], [99.0, 0]])
    pred = np.array([[1.5, 0.9], [2.0, 0.2], [2.0, 0.4], [0.0, 0.6]])
    mask = np.array([[1, 1], [1, 1], [1, 1], [0, 1]], dtype=np.float32)
    m = endpoint_metrics(y, pred, mask, ["r", "c"], ["regression", "classification"])
    assert m["r"]["mae"] == pytest.approx(mean_absolute_error([1, 2, 3], [1.5, 2.0, 2.0]))
    assert m["r"]["n"] == 3
    assert m["c"]["auroc"] == pytest.approx(roc_auc_score([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6]))


def test_single_class_auroc_is_nan_not_a_number() -> None:
    m = endpoint_metrics(np.ones((3, 1)), np.ones((3, 1)), np.ones((3, 1)), ["c"],
                         ["classification"])
    assert math.isnan(m["c"]["auroc"])


def test_mean_predictor() -> None:
    y_tr = np.array([[1.0], [3.0]])
    m = mean_predictor_metrics(y_tr, np.ones((2, 1)), np.array([[0.0], [4.0]]),
                               np.ones((2, 1)), ["r"], ["regression"])
    assert m["r"]["mae"] == pytest.approx(2.0)
