"""MlflowTracker against the embedded SQLite store: params, metrics, receipts, registry, resume."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from chem.featurizers import get_spec
from chem.mlflow_model import PredictorFiles, load_predictor, save_predictor_files
from chem.models import ModelSpec, build_model, get_weights
from coordinator.config import FederationConfig
from coordinator.federation import RoundSummary
from coordinator.receipt_log import ReceiptLog
from coordinator.server_app import model_spec_for
from coordinator.tracking import (
    FEDERATION_TAG,
    MlflowTracker,
    flatten_params,
    round_metrics,
)
from protocols.canonical import canonical_json, sha256_hex, tensors_digest
from protocols.errors import TrackingError

Weights = dict[str, np.ndarray]


def make_config(state: Path, *, rounds: int = 3, register_every: int = 2,
                lr: float = 1e-3, uri: str | None = None) -> FederationConfig:
    fed: dict[str, Any] = {"id": "fed-test", "rounds": rounds, "state-dir": str(state),
                           "register-every": register_every}
    if uri:
        fed["tracking-uri"] = uri
    return FederationConfig.from_mapping({
        "federation": fed,
        "model": {"hidden-dims": [8], "dropout": 0.0, "endpoints": [
            {"name": "logd", "task": "regression", "target-offset": 2.0},
            {"name": "herg", "task": "classification"}]},
        "privacy": {"learning-rate": lr},
    })


def packager(spec: ModelSpec) -> Any:
    fspec = get_spec("ecfp4-count-2048/v1")

    def package(directory: Path, weights: Any) -> PredictorFiles:
        return save_predictor_files(directory, weights, spec, fspec)
    return package


def round_weights(spec: ModelSpec, r: int) -> Weights:
    return get_weights(build_model(spec, seed=r))


def summary_for(cfg: FederationConfig, r: int, weights: Weights) -> RoundSummary:
    """A round's summary, with its receipt written to the log as the round loop does."""
    receipt = canonical_json({"federation_id": cfg.federation_id, "round": r})
    ReceiptLog(cfg.state_dir / "receipts").append(r, receipt)
    return RoundSummary(
        round=r, accepted=3, rejected=1, dropped=r % 2, refused=0, reasons={"p4": "norm"},
        model_digest=tensors_digest(weights), receipt_hash=sha256_hex(receipt),
        # a training loss left in a summary (an old checkpoint's) is never logged
        train={"train-loss": 1.0 / r}, evaluate={"logd.mae": 0.5 + r, "herg.auroc": 0.6},
        max_claimed_epsilon=float(r), epsilon={"a": 1.0 * r, "b": 0.5 * r, "c": 0.0},
        seconds=0.1)


def test_a_federation_is_one_run_with_params_metrics_receipts_and_models(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "state")
    spec = model_spec_for(cfg)
    tracker = MlflowTracker.for_federation(cfg, package_model=packager(spec))
    assert tracker.uri == f"sqlite:///{(tmp_path / 'state' / 'mlflow.db').resolve()}"
    weights = {}
    for r in (1, 2, 3):
        weights[r] = round_weights(spec, r)
        tracker.log_round(summary_for(cfg, r, weights[r]), weights[r],
                          central_epsilon=0.25 * r if r == 3 else None)
    tracker.close()

    client = MlflowClient(tracking_uri=tracker.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[FEDERATION_TAG] == "fed-test"
    assert run.data.params["federation_id"] == "fed-test"
    assert run.data.params["model.hidden_dims"] == "8"
    assert run.data.params["model.endpoints.1.name"] == "herg"
    assert run.data.params["privacy.learning_rate"] == "0.001"
    hist = client.get_metric_history(tracker.run_id, "eval.logd.mae")
    assert [(m.step, m.value) for m in hist] == [(1, 1.5), (2, 2.5), (3, 3.5)]
    assert [m.value for m in client.get_metric_history(tracker.run_id, "epsilon.mean")] == \
        [0.5, 1.0, 1.5]
    assert [m.step for m in client.get_metric_history(tracker.run_id, "epsilon.central")] == [3]
    assert run.data.metrics["participants.rejected"] == 1.0
    assert not any(k.startswith("train.") for k in run.data.metrics)

    names = sorted(a.path for a in client.list_artifacts(tracker.run_id, "receipts"))
    assert names == [f"receipts/receipt-00000{r}.json" for r in (1, 2, 3)]
    local = client.download_artifacts(tracker.run_id, "receipts/receipt-000002.json",
                                       str(tmp_path / "dl"))
    assert Path(local).read_bytes() == ReceiptLog(cfg.state_dir / "receipts").read(2)
    assert (cfg.state_dir / "mlartifacts").is_dir()  # artifacts stay in the state dir

    versions = sorted(client.search_model_versions("name='fed-test'"),
                      key=lambda v: int(v.version))
    assert [v.tags["fedadmet.round"] for v in versions] == ["2", "3"]
    assert tracker.registered_versions == {2: "1", 3: "2"}
    v3 = versions[1]
    assert v3.tags["fedadmet.receipt_hash"] == summary_for(cfg, 3, weights[3]).receipt_hash
    assert v3.tags["fedadmet.model_digest"] == summary_for(cfg, 3, weights[3]).model_digest
    # the registered model predicts from SMILES like the round-3 weights do
    got = load_predictor("models:/fed-test/2", tracking_uri=tracker.uri).predict(["CCO", "x("])
    want = packager(spec)(tmp_path / "want", weights[3])
    expected = load_predictor(want.directory).predict(["CCO", "x("])
    np.testing.assert_allclose(got[["logd", "herg"]].to_numpy(float),
                               expected[["logd", "herg"]].to_numpy(float), rtol=1e-6)
    assert got["valid"].tolist() == [True, False]


def test_resumed_coordinator_continues_the_same_run(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "state", register_every=0)
    spec = model_spec_for(cfg)
    first = MlflowTracker.for_federation(cfg)
    w1 = round_weights(spec, 1)
    first.log_round(summary_for(cfg, 1, w1), w1)
    # the coordinator dies here; a new process resumes

    second = MlflowTracker.for_federation(cfg)
    assert second.resumed and second.run_id == first.run_id and second.last_round == 1
    second.log_round(summary_for(cfg, 1, w1), w1)  # replayed round: not logged twice
    w2 = round_weights(spec, 2)
    second.log_round(summary_for(cfg, 2, w2), w2)

    client = MlflowClient(tracking_uri=second.uri)
    runs = client.search_runs([second.experiment_id])
    assert [r.info.run_id for r in runs] == [first.run_id]
    assert [m.step for m in client.get_metric_history(first.run_id, "eval.logd.mae")] == [1, 2]
    assert runs[0].data.tags["fedadmet.last_round"] == "2"


def test_resume_under_another_config_is_refused(tmp_path: Path) -> None:
    MlflowTracker.for_federation(make_config(tmp_path / "state"))
    with pytest.raises(TrackingError, match="another configuration") as err:
        MlflowTracker.for_federation(make_config(tmp_path / "state", lr=0.5))
    assert err.value.fix


def test_bad_tracking_uri_is_a_tracking_error(tmp_path: Path) -> None:
    with pytest.raises(TrackingError, match="unsupported MLflow tracking URI") as err:
        MlflowTracker.for_federation(make_config(tmp_path, uri="htp:/nowhere"))
    assert "sqlite:///" in str(err.value.expected)


def test_unreachable_server_fails_fast_with_a_fix(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match="not reachable") as err:
        MlflowTracker.for_federation(make_config(tmp_path, uri=f"http://127.0.0.1:{port}"))
    assert time.monotonic() - t0 < 10
    assert "start the server" in (err.value.fix or "")


def test_params_are_flattened_and_cut_to_mlflow_limits() -> None:
    flat = flatten_params({"a": {"b": [1, 2], "c": "x" * 7000},
                           "eps": [{"name": "logd"}, {"name": "herg"}]})
    assert flat["a.b"] == "1,2"
    assert len(flat["a.c"]) == 6000
    assert flat["eps.1.name"] == "herg"


def test_round_metrics_without_claims_have_no_mean() -> None:
    s = RoundSummary(round=1, accepted=0, rejected=0, dropped=2, refused=0, reasons={},
                     model_digest="", receipt_hash="", train={}, evaluate={},
                     max_claimed_epsilon=0.0, seconds=1.0)
    m = round_metrics(s)
    assert "epsilon.mean" not in m and "epsilon.central" not in m
    assert m["participants.dropped"] == 2.0


def test_unsafe_no_dp_claims_are_counted_not_averaged() -> None:
    # regression: four 1e308 claims overflowed math.fsum and crashed the ε = inf run
    s = RoundSummary(round=1, accepted=4, rejected=0, dropped=0, refused=0, reasons={},
                     model_digest="", receipt_hash="", train={}, evaluate={},
                     max_claimed_epsilon=1e308, seconds=1.0,
                     epsilon={f"p{i}": 1e308 for i in range(3)} | {"p3": 2.0})
    m = round_metrics(s)
    assert m["epsilon.unbounded"] == 3.0 and m["epsilon.mean"] == 2.0


def test_unwritable_sqlite_location_is_a_tracking_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TrackingError, match="SQLite store"):
        MlflowTracker.for_federation(
            make_config(tmp_path, uri=f"sqlite:///{blocker / 'sub' / 'mlflow.db'}"))
