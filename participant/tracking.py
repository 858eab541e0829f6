"""Local MLflow tracking for a participant: fine-tune runs and the site's own model registry.

A member's fine-tuning runs, metrics and fine-tuned models describe its
private data, so they stay on site: the default store is SQLite in the
participant's state directory (artifacts under ``<state>/mlartifacts``), and
only local URIs are accepted (``sqlite:``, ``file:``, or an MLflow server on
this host's loopback). Any other URI is refused unless the member passes
``unsafe_allow_remote_tracking=True``, which logs a warning every time.

Every call goes through an explicit :class:`mlflow.MlflowClient`; no global
tracking URI, no active run. Telemetry is disabled when the tracker opens
(:func:`chem.mlflow_client.disable_telemetry`).
"""

from __future__ import annotations

import logging
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from mlflow.entities import Metric, Param
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from chem.featurizers import FeaturizationSpec
from chem.mlflow_client import mlflow_client, mlflow_errors
from chem.mlflow_model import log_predictor, save_predictor_files
from chem.models import ModelSpec
from protocols.errors import TrackingError

if TYPE_CHECKING:
    from participant.config import ParticipantConfig

__all__ = ["FineTuneRun", "LoggedModel", "ParticipantTracker", "check_local_uri"]

log = logging.getLogger(__name__)

SITE_TAG = "fedadmet.site"
_LOCAL_SCHEMES = ("sqlite", "file")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_local_uri(uri: str, *, unsafe_allow_remote_tracking: bool = False) -> str:
    """Accept only URIs whose data stays on this host (unless explicitly overridden)."""
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in _LOCAL_SCHEMES:
        if scheme == "sqlite":
            try:
                Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TrackingError("cannot create the folder of the SQLite store", got=uri,
                                    expected="a writable path", fix=f"check permissions ({exc})"
                                    ) from None
        return uri
    if scheme in ("http", "https") and parsed.hostname in _LOOPBACK:
        return uri
    if not scheme:
        raise TrackingError("the tracking URI has no scheme", got=uri,
                            expected="sqlite:///<path>/mlflow.db",
                            fix="leave tracking-uri unset for the SQLite store in the state dir")
    if not unsafe_allow_remote_tracking:
        raise TrackingError(
            "a non-local tracking URI would send fine-tuning results off this site", got=uri,
            expected="sqlite:///..., file:///..., or http://127.0.0.1:<port>",
            fix="keep tracking local; to send runs elsewhere anyway, pass "
            "unsafe_allow_remote_tracking=True")
    log.warning("UNSAFE: participant tracking goes to %s; fine-tuning metrics and models of "
                "this site's private data leave the site", uri)
    return uri


@dataclass(frozen=True, kw_only=True)
class LoggedModel:
    """Where a fine-tuned model went: its URI, and its local registry version if registered."""

    model_uri: str
    registered_name: str | None
    version: str | None


class ParticipantTracker:
    """The site's local MLflow store."""

    def __init__(self, *, tracking_uri: str, site: str, experiment: str = "fedadmet-finetune",
                 artifact_location: str | None = None,
                 unsafe_allow_remote_tracking: bool = False) -> None:
        self.uri = check_local_uri(tracking_uri,
                                   unsafe_allow_remote_tracking=unsafe_allow_remote_tracking)
        self.site = site
        with mlflow_errors("opening the experiment", self.uri):
            self.client = mlflow_client(self.uri)
            exp = self.client.get_experiment_by_name(experiment)
            self.experiment_id = str(exp.experiment_id if exp is not None else
                                     self.client.create_experiment(
                                         experiment, artifact_location=artifact_location))

    @classmethod
    def for_config(cls, cfg: ParticipantConfig, *,
                   unsafe_allow_remote_tracking: bool = False) -> ParticipantTracker:
        """The tracker in the participant's state directory (or its configured local URI)."""
        artifacts = ((cfg.state_dir / "mlartifacts").resolve().as_uri()
                     if cfg.tracking_uri is None else None)
        return cls(tracking_uri=cfg.tracking_uri_or_default, site=cfg.name,
                   artifact_location=artifacts,
                   unsafe_allow_remote_tracking=unsafe_allow_remote_tracking)

    def start_finetune(self, *, run_name: str, params: Mapping[str, Any],
                       tags: Mapping[str, str] | None = None) -> FineTuneRun:
        """A new fine-tune run with ``params`` logged (values cut to MLflow's limit)."""
        with mlflow_errors("starting a fine-tune run", self.uri):
            run = self.client.create_run(self.experiment_id, run_name=run_name,
                                         tags={SITE_TAG: self.site, **(tags or {})})
            run_id = str(run.info.run_id)
            items = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[i:i + 100])
        return FineTuneRun(self, run_id)


class FineTuneRun:
    """One fine-tune run; as a context manager it ends FAILED if the block raises."""

    def __init__(self, tracker: ParticipantTracker, run_id: str) -> None:
        self.tracker = tracker
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Metrics at ``step`` (epoch)."""
        now = int(time.time() * 1000)
        with mlflow_errors("logging metrics", self.tracker.uri):
            self.tracker.client.log_batch(
                self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_model(self, state_dict: Mapping[str, np.ndarray], model_spec: ModelSpec,
                  featurization_spec: FeaturizationSpec, *, register_as: str | None = None,
                  version_tags: Mapping[str, str] | None = None) -> LoggedModel:
        """Log the fine-tuned model as a SMILES pyfunc; register it locally if asked."""
        with mlflow_errors("logging the fine-tuned model", self.tracker.uri), \
                tempfile.TemporaryDirectory(prefix="fedadmet-finetuned-") as tmp:
            files = save_predictor_files(tmp, state_dict, model_spec, featurization_spec)
            uri, version = log_predictor(
                self.tracker.client, files, run_id=self.run_id, name="finetuned",
                registered_model_name=register_as,
                version_tags={SITE_TAG: self.tracker.site, **(version_tags or {})})
        return LoggedModel(model_uri=uri, registered_name=register_as, version=version)

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED (or FAILED / KILLED)."""
        with mlflow_errors("ending the run", self.tracker.uri):
            self.tracker.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> FineTuneRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.end("FAILED" if exc_type is not None else "FINISHED")
