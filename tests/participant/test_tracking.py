"""The participant's local MLflow store: fine-tune runs, local registration, nothing off site."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from chem.featurizers import get_spec
from chem.mlflow_model import load_predictor
from chem.models import ModelSpec, build_model, get_weights
from participant.tracking import ParticipantTracker, check_local_uri
from protocols.endpoints import EndpointSpec
from protocols.errors import TrackingError

SPEC = ModelSpec(input_dim=2048, hidden_dims=(8,), dropout=0.0,
                 endpoints=(EndpointSpec(name="solubility", task="regression"),))


def test_finetune_run_logs_and_registers_locally(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"
    tracker = ParticipantTracker(tracking_uri=uri, site="acme",
                                 artifact_location=(tmp_path / "state" / "art").as_uri())
    model = build_model(SPEC, seed=7)
    with tracker.start_finetune(run_name="ft-1", params={"lr": 0.01, "epochs": 3}) as run:
        for epoch in range(3):
            run.log_metrics({"val.solubility.mae": 1.0 - 0.1 * epoch}, step=epoch)
        logged = run.log_model(get_weights(model), SPEC, get_spec("ecfp4-count-2048/v1"),
                               register_as="acme-solubility")
    client = MlflowClient(tracking_uri=uri)
    info = client.get_run(run.run_id)
    assert info.info.status == "FINISHED"
    assert info.data.params == {"lr": "0.01", "epochs": "3"}
    assert info.data.tags["fedadmet.site"] == "acme"
    assert [m.step for m in client.get_metric_history(run.run_id, "val.solubility.mae")] == \
        [0, 1, 2]
    assert logged.version == "1"
    mv = client.get_model_version("acme-solubility", "1")
    assert mv.tags["fedadmet.site"] == "acme"
    got = load_predictor("models:/acme-solubility/1", tracking_uri=uri).predict(["CCO", "?"])
    want = load_predictor(logged.model_uri, tracking_uri=uri).predict(["CCO", "?"])
    np.testing.assert_allclose(got["solubility"].to_numpy(float),
                               want["solubility"].to_numpy(float), equal_nan=True)
    assert got["valid"].tolist() == [True, False]
    assert (tmp_path / "state" / "art").is_dir()


def test_failed_block_ends_the_run_failed(tmp_path: Path) -> None:
    tracker = ParticipantTracker(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", site="acme")
    with pytest.raises(RuntimeError), tracker.start_finetune(run_name="x", params={}) as run:
        raise RuntimeError("diverged")
    assert tracker.client.get_run(run.run_id).info.status == "FAILED"


@pytest.mark.parametrize("uri", ["http://mlflow.example.org:5000", "https://10.1.2.3/",
                                 "postgresql://db.internal/mlflow"])
def test_remote_tracking_uri_is_refused(uri: str) -> None:
    with pytest.raises(TrackingError, match="off this site") as err:
        check_local_uri(uri)
    assert "unsafe_allow_remote_tracking" in (err.value.fix or "")


def test_remote_tracking_needs_the_unsafe_flag_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert check_local_uri("https://mlflow.example.org",
                               unsafe_allow_remote_tracking=True) == "https://mlflow.example.org"
    assert "UNSAFE" in caplog.text


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "http://localhost:1", "file:///tmp/x"])
def test_local_uris_are_accepted(uri: str) -> None:
    assert check_local_uri(uri) == uri
