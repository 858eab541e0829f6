"""A federation tracked on a real `mlflow server` on loopback, read back over its REST API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chem.featurizers import get_spec
from chem.mlflow_model import load_predictor, save_predictor_files
from chem.models import build_model, get_weights
from coordinator.config import FederationConfig
from coordinator.federation import RoundSummary
from coordinator.receipt_log import ReceiptLog
from coordinator.server_app import model_spec_for
from coordinator.tracking import MlflowTracker
from protocols.canonical import canonical_json, sha256_hex, tensors_digest

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # ~30 s on a loaded 2-core box

MLFLOW = Path(sys.executable).parent / "mlflow"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    # No telemetry; no background job runner (it only slows the start here).
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # Own process group: the server forks uvicorn workers, and all of them must go.
    proc = subprocess.Popen(
        [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90  # a loaded 2-core CI box needs ~25 s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp_path / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("mlflow server did not answer /health within 90 s")
            time.sleep(0.3)
        yield url
    finally:
        log.close()
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, then SIGKILL; bounded waits."""
    pgid = proc.pid  # start_new_session: the group id is the server's pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader so the group can empty
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def test_federation_tracked_on_a_real_server(tmp_path: Path, mlflow_server: str) -> None:
    cfg = FederationConfig.from_mapping({
        "federation": {"id": "fed-server", "rounds": 2, "state-dir": str(tmp_path / "state"),
                       "tracking-uri": mlflow_server},
        "model": {"hidden-dims": [8], "dropout": 0.0,
                  "endpoints": [{"name": "logd", "task": "regression"}]},
    })
    spec = model_spec_for(cfg)
    fspec = get_spec("ecfp4-count-2048/v1")
    tracker = MlflowTracker.for_federation(
        cfg, package_model=lambda d, w: save_predictor_files(d, w, spec, fspec))
    receipts = ReceiptLog(cfg.state_dir / "receipts")
    final: dict[str, np.ndarray] = {}
    for r in (1, 2):
        final = get_weights(build_model(spec, seed=r))
        receipt = canonical_json({"round": r})
        receipts.append(r, receipt)
        tracker.log_round(RoundSummary(
            round=r, accepted=2, rejected=0, dropped=0, refused=0, reasons={},
            model_digest=tensors_digest(final), receipt_hash=sha256_hex(receipt),
            train={}, evaluate={"logd.mae": 1.0 / r},
            max_claimed_epsilon=2.0 * r, epsilon={"a": 2.0 * r, "b": r}, seconds=0.1), final)
    tracker.close()

    api = mlflow_server + "/api/2.0/mlflow"
    run = _get(f"{api}/runs/get?run_id={tracker.run_id}")["run"]
    assert run["info"]["status"] == "FINISHED"
    hist = _get(f"{api}/metrics/get-history?run_id={tracker.run_id}&metric_key=eval.logd.mae")
    assert [(m["step"], m["value"]) for m in hist["metrics"]] == [(1, 1.0), (2, 0.5)]
    arts = _get(f"{api}/artifacts/list?run_id={tracker.run_id}&path=receipts")
    assert [f["path"] for f in arts["files"]] == ["receipts/receipt-000001.json",
                                                  "receipts/receipt-000002.json"]
    query = urllib.parse.urlencode({"filter": "name='fed-server'"})
    versions = _get(f"{api}/model-versions/search?{query}")["model_versions"]
    assert len(versions) == 1  # the final round only (register-every = 0)
    tags = {t["key"]: t["value"] for t in versions[0]["tags"]}
    assert tags["fedadmet.round"] == "2"
    assert tags["fedadmet.model_digest"] == tensors_digest(final)
    assert tags["fedadmet.receipt_hash"] == sha256_hex(canonical_json({"round": 2}))
    # the artifacts went through the server, not to the client's disk
    assert not (cfg.state_dir / "mlartifacts").exists()
    assert any((tmp_path / "server-artifacts").rglob("weights.npz"))

    predictor = load_predictor("models:/fed-server/1", tracking_uri=mlflow_server)
    out = predictor.predict(["CCO", "nonsense"])
    assert out["valid"].tolist() == [True, False]
    local = save_predictor_files(tmp_path / "want", final, spec, fspec)
    np.testing.assert_allclose(out.loc[[0], "logd"].to_numpy(float),
                               load_predictor(local.directory).predict(["CCO"])["logd"]
                               .to_numpy(float), rtol=1e-6)
