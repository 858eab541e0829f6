"""MLflow tracking for a federation: one run, per-round metrics, receipts, registered models.

The only coordinator module that imports mlflow. Every call goes through an
explicit :class:`mlflow.MlflowClient` bound to this tracker's URI (no global
tracking URI, no active run), so two federations in one process cannot mix.

- One run per federation, tagged ``fedadmet.federation_id``; a resumed
  coordinator finds it and continues it. ``fedadmet.last_round`` makes
  replayed rounds no-ops, so a round is never logged twice.
- The config is logged as flattened params (values truncated to MLflow's
  limit); per-round metrics use ``step = round``.
- Each round's signed receipt is logged byte for byte as
  ``receipts/receipt-000001.json``.
- The final global model (and every ``register_every`` rounds) is logged as a
  pyfunc model that predicts from SMILES and registered under the
  federation's name, with version tags ``fedadmet.round``,
  ``fedadmet.receipt_hash`` and ``fedadmet.model_digest``. The caller passes
  a ``package_model`` callable (``chem.mlflow_model.save_predictor_files``
  bound to the specs); logging reuses ``chem.mlflow_model.log_predictor``, the
  one place that knows how to log a SMILES predictor through an explicit client.
  It is imported when a model is registered, not at start-up: packaging a
  SMILES predictor needs RDKit, opening the run does not.

The embedded default is SQLite in the state directory with artifacts under
``<state>/mlartifacts``; ``tracking-uri`` may name an MLflow server. Telemetry
is disabled when the tracker opens (:func:`chem.mlflow_client.disable_telemetry`)
unless the operator opted in through MLflow's own variable.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

from chem.mlflow_client import mlflow_client, mlflow_errors
from coordinator.receipt_log import ReceiptLog
from protocols.errors import TrackingError

if TYPE_CHECKING:
    from chem.mlflow_model import PredictorFiles
    from coordinator.config import FederationConfig
    from coordinator.federation import RoundSummary

__all__ = [
    "FEDERATION_TAG",
    "MlflowTracker",
    "ModelPackager",
    "NullTracker",
    "Tracker",
    "check_tracking_uri",
    "flatten_params",
]

log = logging.getLogger(__name__)

FEDERATION_TAG = "fedadmet.federation_id"
CONFIG_DIGEST_TAG = "fedadmet.config_digest"
LAST_ROUND_TAG = "fedadmet.last_round"
_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql")

Weights = Mapping[str, np.ndarray]


ModelPackager = Callable[[Path, Weights], "PredictorFiles"]


class Tracker(Protocol):
    """What the round loop reports to; ``log_round`` fits ``Federation(on_round=...)``."""

    def log_round(self, summary: RoundSummary, weights: Weights, *,
                  central_epsilon: float | None = None) -> None: ...

    def close(self, *, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Tracking switched off."""

    def log_round(self, summary: RoundSummary, weights: Weights, *,
                  central_epsilon: float | None = None) -> None:
        """Nothing to record."""

    def close(self, *, status: str = "FINISHED") -> None:
        """Nothing to close."""


def check_tracking_uri(uri: str) -> str:
    """Refuse URIs MLflow would fail on late (or retry against for minutes)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme not in _SCHEMES:
        raise TrackingError("unsupported MLflow tracking URI", got=uri,
                            expected="sqlite:///<path>/mlflow.db or http(s)://host:port",
                            fix="set federation.tracking-uri (or --tracking-uri) to one of those")
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        if path and path != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TrackingError("cannot create the folder of the SQLite store", got=uri,
                                    expected="a writable path", fix=f"check permissions ({exc})"
                                    ) from None
    if scheme in ("http", "https"):
        _probe_server(uri)
    return uri


def _probe_server(uri: str, *, timeout: float = 5.0) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status == 200:
                return
            got = f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        got = str(getattr(exc, "reason", exc))
    raise TrackingError("the MLflow server is not reachable", got=f"{uri}: {got}",
                        expected="a running `mlflow server` answering /health",
                        fix="start the server or correct tracking-uri; leave it unset for the "
                        "embedded SQLite store")


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config to ``a.b.c`` params, values as text cut to MLflow's limits."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, name + "."))
        elif isinstance(value, list | tuple) and value and all(isinstance(v, Mapping)
                                                               for v in value):
            for i, item in enumerate(value):
                out.update(flatten_params(item, f"{name}.{i}."))
        else:
            text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
            out[name[:MAX_ENTITY_KEY_LENGTH]] = text[:MAX_PARAM_VAL_LENGTH]
    return out


class MlflowTracker:
    """One MLflow run per federation, continued on resume."""

    def __init__(self, *, tracking_uri: str, federation_id: str, config: Mapping[str, Any],
                 config_digest: str, rounds: int, receipts_dir: Path | None = None,
                 register_every: int = 0, package_model: ModelPackager | None = None,
                 artifact_location: str | None = None,
                 registered_model_name: str | None = None) -> None:
        self.uri = check_tracking_uri(tracking_uri)
        self.federation_id = federation_id
        self.rounds = rounds
        self.register_every = register_every
        self.receipts = ReceiptLog(receipts_dir) if receipts_dir is not None else None
        self.package_model = package_model
        self.registered_model_name = registered_model_name or federation_id
        self.registered_versions: dict[int, str] = {}
        with mlflow_errors("opening the federation's run", self.uri):
            self.client = mlflow_client(self.uri)
            self.experiment_id = self._experiment(artifact_location)
            self.run_id, self.last_round, self.resumed = self._run(config, config_digest)

    @classmethod
    def for_federation(cls, cfg: FederationConfig, *,
                       package_model: ModelPackager | None = None) -> MlflowTracker:
        """The tracker a federation config asks for (embedded SQLite unless told otherwise)."""
        embedded = cfg.tracking_uri is None
        artifacts = (cfg.state_dir / "mlartifacts").resolve().as_uri() if embedded else None
        return cls(tracking_uri=cfg.tracking_uri_or_default, federation_id=cfg.federation_id,
                   config=cfg.to_dict(), config_digest=cfg.digest(), rounds=cfg.rounds,
                   receipts_dir=cfg.state_dir / "receipts", register_every=cfg.register_every,
                   package_model=package_model, artifact_location=artifacts)

    # ---------------------------------------------------------------- run
    def _experiment(self, artifact_location: str | None) -> str:
        exp = self.client.get_experiment_by_name(self.federation_id)
        if exp is not None:
            return str(exp.experiment_id)
        return str(self.client.create_experiment(
            self.federation_id, artifact_location=artifact_location,
            tags={FEDERATION_TAG: self.federation_id}))

    def _run(self, config: Mapping[str, Any], digest: str) -> tuple[str, int, bool]:
        runs = [r for r in self.client.search_runs([self.experiment_id], max_results=1000)
                if r.data.tags.get(FEDERATION_TAG) == self.federation_id]
        if runs:
            run = runs[0]
            if run.data.tags.get(CONFIG_DIGEST_TAG) != digest:
                raise TrackingError(
                    "the federation's MLflow run was made under another configuration",
                    got=digest, expected=run.data.tags.get(CONFIG_DIGEST_TAG),
                    fix="resume with the original federation config, or use a new federation id")
            self.client.update_run(run.info.run_id, status="RUNNING")
            last = int(run.data.tags.get(LAST_ROUND_TAG, "0"))
            log.info("continuing MLflow run %s after round %d", run.info.run_id, last)
            return str(run.info.run_id), last, True
        run = self.client.create_run(self.experiment_id, run_name=self.federation_id,
                                     tags={FEDERATION_TAG: self.federation_id,
                                           CONFIG_DIGEST_TAG: digest, LAST_ROUND_TAG: "0"})
        params = [Param(k, v) for k, v in flatten_params(config).items()]
        for i in range(0, len(params), 100):  # MLflow's per-batch limit
            self.client.log_batch(run.info.run_id, params=params[i:i + 100])
        return str(run.info.run_id), 0, False

    # ---------------------------------------------------------------- rounds
    def log_round(self, summary: RoundSummary, weights: Weights, *,
                  central_epsilon: float | None = None) -> None:
        """Metrics, receipt and (when due) the registered model for one finished round."""
        r = summary.round
        if r <= self.last_round:
            log.info("round %d is already in MLflow run %s; not logging it again", r, self.run_id)
            return
        with mlflow_errors(f"logging round {r}", self.uri):
            metrics = [Metric(k, float(v), int(time.time() * 1000), r)
                       for k, v in round_metrics(summary, central_epsilon=central_epsilon).items()]
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
            self._log_receipt(r)
            if self._model_due(r):
                self.register(r, weights, receipt_hash=summary.receipt_hash,
                              model_digest=summary.model_digest)
            self.client.log_batch(self.run_id, tags=[RunTag(LAST_ROUND_TAG, str(r))])
        self.last_round = r

    def _model_due(self, r: int) -> bool:
        every = self.register_every
        return self.package_model is not None and (r == self.rounds or (every > 0
                                                                        and r % every == 0))

    def _log_receipt(self, r: int) -> None:
        if self.receipts is None or r not in self.receipts.rounds():
            return
        with tempfile.TemporaryDirectory(prefix="fedadmet-receipt-") as tmp:
            path = Path(tmp) / f"receipt-{r:06d}.json"
            path.write_bytes(self.receipts.read(r))  # byte for byte: it is signed
            self.client.log_artifact(self.run_id, str(path), artifact_path="receipts")

    def register(self, r: int, weights: Weights, *, receipt_hash: str, model_digest: str) -> str:
        """Log the global model after round ``r`` and register it; returns the version."""
        if self.package_model is None:
            raise TrackingError("no model packager was configured", got=None,
                                fix="pass package_model= (chem.mlflow_model.save_predictor_files)")
        from chem.mlflow_model import log_predictor  # RDKit comes in with the predictor

        with mlflow_errors(f"registering the round-{r} model", self.uri), \
                tempfile.TemporaryDirectory(prefix="fedadmet-model-") as tmp:
            package = self.package_model(Path(tmp), weights)
            _, version = log_predictor(
                self.client, package, run_id=self.run_id,
                name=f"global-round-{r:06d}", step=r,
                registered_model_name=self.registered_model_name,
                version_tags={"fedadmet.round": str(r), "fedadmet.receipt_hash": receipt_hash,
                              "fedadmet.model_digest": model_digest,
                              FEDERATION_TAG: self.federation_id})
        assert version is not None
        self.registered_versions[r] = version
        log.info("registered %s version %s (round %d)", self.registered_model_name, version, r)
        return version

    def close(self, *, status: str = "FINISHED") -> None:
        """Mark the run finished (or FAILED / KILLED)."""
        with mlflow_errors("closing the run", self.uri):
            self.client.set_terminated(self.run_id, status=status)


UNBOUNDED_EPSILON = 1e300  # claims at or above this carry no privacy guarantee


def round_metrics(summary: RoundSummary, *, central_epsilon: float | None = None
                  ) -> dict[str, float]:
    """The metrics one round contributes, named as in docs/tracking.md."""
    # Nothing from summary.train: sites send no training loss (docs/threat-model.md).
    out: dict[str, float] = {f"eval.{k}": v for k, v in summary.evaluate.items()}
    out.update({"participants.accepted": summary.accepted,
                "participants.rejected": summary.rejected,
                "participants.dropped": summary.dropped,
                "participants.late": summary.late,
                "participants.refused": summary.refused,
                "round.seconds": summary.seconds,
                "epsilon.max": summary.max_claimed_epsilon})
    claimed = list(summary.epsilon.values())
    # A participant under an unsafe no-DP federation claims an unbounded ε (sent as a
    # huge finite number); count those instead of averaging them into nonsense.
    bounded = [e for e in claimed if math.isfinite(e) and e < UNBOUNDED_EPSILON]
    if bounded:
        out["epsilon.mean"] = math.fsum(bounded) / len(bounded)
    if len(bounded) < len(claimed):
        out["epsilon.unbounded"] = len(claimed) - len(bounded)
    if central_epsilon is not None:
        out["epsilon.central"] = central_epsilon
    return {k: float(v) for k, v in out.items()}
