"""chem.mlflow_client: no environment change on import; telemetry off where tracking starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.telemetry import get_telemetry_client

from chem.mlflow_client import TELEMETRY_ENV, disable_telemetry, mlflow_client, mlflow_errors
from protocols.errors import TrackingError

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import json, os
# Third-party imports are not ours to judge (RDKit's RDConfig sets RDBASE, for one).
import flwr, mlflow, numpy, pandas, rdkit.Chem.Descriptors, rdkit.RDConfig, torch
before = dict(os.environ)
import chem.mlflow_client, chem.mlflow_model, coordinator.tracking, participant.tracking
after = dict(os.environ)
print(json.dumps({k: [before.get(k), after.get(k)] for k in set(before) | set(after)
                  if before.get(k) != after.get(k)}))
"""


def test_importing_the_tracking_modules_changes_no_environment_variable() -> None:
    env = {k: v for k, v in os.environ.items() if k != TELEMETRY_ENV}
    out = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, timeout=300,
                         capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def test_disabling_telemetry_is_idempotent_and_leaves_an_opt_in_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TELEMETRY_ENV, raising=False)
    disable_telemetry()
    disable_telemetry()
    assert os.environ[TELEMETRY_ENV] == "true"
    assert get_telemetry_client() is None
    monkeypatch.setenv(TELEMETRY_ENV, "false")  # the operator opted in
    disable_telemetry()
    assert os.environ[TELEMETRY_ENV] == "false"


def test_a_client_is_bound_to_one_uri_with_telemetry_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TELEMETRY_ENV, raising=False)
    uri = "http://127.0.0.1:5999"  # nothing is contacted until a call
    client = mlflow_client(uri)
    assert client.tracking_uri == uri and client._registry_uri == uri
    assert os.environ[TELEMETRY_ENV] == "true"


def test_mlflow_and_file_errors_become_one_tracking_error() -> None:
    with pytest.raises(TrackingError, match="MLflow logging failed") as err, \
            mlflow_errors("logging", "sqlite:///x.db"):
        raise MlflowException("store is locked")
    assert "sqlite:///x.db: store is locked" in str(err.value)
    with pytest.raises(TrackingError, match="writable"), mlflow_errors("closing", "file:///x"):
        raise PermissionError("read-only file system")
    with pytest.raises(KeyError), mlflow_errors("closing", "file:///x"):
        raise KeyError("not ours to translate")
