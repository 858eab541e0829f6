"""The one way fedadmet talks to MLflow: telemetry off, an explicit client, errors as ours.

Shared by the coordinator's and the participant's trackers and by
:mod:`chem.mlflow_model` (``chem`` is the one package below both that may know MLflow).

- :func:`disable_telemetry` is called where tracking or model logging starts, not at
  import: importing a fedadmet module changes no environment variable. It sets
  ``MLFLOW_DISABLE_TELEMETRY`` only when the operator has not set it (so opting in
  through MLflow's own variable still works) and re-initialises MLflow's client,
  which ``import mlflow`` created before the variable was set.
- :func:`mlflow_client` binds tracking and registry to one URI: no global tracking
  URI and no active run, so two stores in one process cannot mix.
- :func:`mlflow_errors` turns MLflow's exceptions into one :class:`TrackingError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.exceptions import MlflowException
from mlflow.telemetry import set_telemetry_client
from mlflow.tracking import MlflowClient

from protocols.errors import TrackingError

__all__ = ["TELEMETRY_ENV", "disable_telemetry", "mlflow_client", "mlflow_errors"]

TELEMETRY_ENV = "MLFLOW_DISABLE_TELEMETRY"
_telemetry_settled = False


def disable_telemetry() -> None:
    """Runtime code never phones home; idempotent (MLflow reads the variable at every event)."""
    global _telemetry_settled
    os.environ.setdefault(TELEMETRY_ENV, "true")
    if not _telemetry_settled:
        set_telemetry_client()  # type: ignore[no-untyped-call]
        _telemetry_settled = True


def mlflow_client(uri: str) -> MlflowClient:
    """A client whose tracking and registry are both ``uri``, telemetry disabled first."""
    disable_telemetry()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextmanager
def mlflow_errors(action: str, uri: str) -> Iterator[None]:
    """Turn MLflow's exceptions (and failed file access) into one TrackingError line."""
    try:
        yield
    except MlflowException as exc:
        raise TrackingError(f"MLflow {action} failed", got=f"{uri}: {exc.message[:300]}",
                            fix="check the tracking URI, the server's logs (if it is a "
                            "server) and that the store's folder is writable") from None
    except OSError as exc:
        raise TrackingError(f"MLflow {action} failed", got=f"{uri}: {exc}",
                            fix="check that the store's folder is writable") from None
