"""The Flower ServerApp: builds the federation from config and runs its rounds.

In deployment the bundle in ``coordinator/fab`` names this app and ``flwr run``
passes ``config="/path/federation.toml"`` as run config (the ServerApp runs on
the coordinator host, so paths are local to it); simulation binds a validated
:class:`FederationConfig` directly with :func:`make_server_app`. This is the
one coordinator module that imports ``chem``'s model code: to size and initialise the
shared model. Sizing needs no RDKit (:func:`chem.featurization_spec.feature_dim` is a
function of the spec); RDKit is imported only when a model is packaged for MLflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from chem.featurization_spec import feature_dim, get_spec
from chem.models import ModelSpec, build_model, get_weights
from coordinator.config import FederationConfig
from coordinator.federation import Federation, RoundSummary, Weights, write_final
from coordinator.members import load_members
from coordinator.tracking import MlflowTracker
from protocols.errors import ConfigError
from protocols.signing import load_private_key

if TYPE_CHECKING:
    from chem.featurization_spec import FeaturizationSpec
    from chem.mlflow_model import PredictorFiles

__all__ = ["app", "config_from_run_config", "make_server_app", "model_spec_for"]

# run-config key -> FederationConfig field; empty values keep federation.toml's path
_PATH_OVERRIDES = {"state-dir": "state_dir", "members": "members_file",
                   "signing-key": "signing_key"}

log = logging.getLogger(__name__)


def model_spec_for(cfg: FederationConfig) -> ModelSpec:
    """The shared model's spec: trunk plus the consortium endpoints' heads."""
    spec = get_spec(cfg.model.featurizer)
    return ModelSpec(
        input_dim=feature_dim(spec), hidden_dims=cfg.model.hidden_dims,
        dropout=cfg.model.dropout, endpoints=cfg.model.endpoints)


def _package(directory: Path, weights: Mapping[str, np.ndarray], mspec: ModelSpec,
             fspec: FeaturizationSpec) -> PredictorFiles:
    """The global model as SMILES-predictor files; imports RDKit (it checks the spec)."""
    from chem.mlflow_model import save_predictor_files

    return save_predictor_files(directory, weights, mspec, fspec)


def run_federation(cfg: FederationConfig, grid: Grid, *,
                   on_round: Callable[[RoundSummary, Weights], None] | None = None,
                   on_reply: Callable[[str, int, int, int], None] | None = None) -> None:
    """Build and run (or resume) the federation described by ``cfg``."""
    if cfg.signing_key is None or cfg.members_file is None:
        raise ConfigError("federation.signing-key / members", "both are required",
                          fix="run `fedadmet coordinator init` and enrol members")
    fspec = get_spec(cfg.model.featurizer)
    mspec = model_spec_for(cfg)
    initial = get_weights(build_model(mspec, seed=cfg.model.init_seed))
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    # Tracking wraps the loop through its round callback; it never changes what is aggregated.
    tracker = MlflowTracker.for_federation(cfg, package_model=lambda d, w: _package(d, w, mspec,
                                                                                   fspec))

    def after_round(summary: RoundSummary, weights: Weights) -> None:
        tracker.log_round(summary, weights, central_epsilon=summary.central_epsilon)
        if on_round is not None:
            on_round(summary, weights)

    federation = Federation(
        cfg, grid=grid, signing_key=load_private_key(cfg.signing_key.read_bytes()),
        members=load_members(cfg.members_file), initial_weights=initial,
        model_spec=mspec.to_dict(), model_spec_digest=mspec.digest(),
        featurization_spec=fspec.to_dict(), featurization_spec_digest=fspec.digest(),
        on_round=after_round, on_reply=on_reply)
    try:
        federation.run()
    except BaseException:
        tracker.close(status="FAILED")
        raise
    tracker.close()
    write_final(cfg.state_dir / "global_model.npz", federation.weights)
    log.info("federation %s finished after round %d", cfg.federation_id, cfg.rounds)


def config_from_run_config(run_config: Mapping[str, object]) -> FederationConfig:
    """Deployment: ``config`` names federation.toml; ``state-dir``, ``members`` and
    ``signing-key`` override its paths when non-empty (all paths on the coordinator host)."""
    path = run_config.get("config")
    if not isinstance(path, str) or not path:
        raise ConfigError("run-config.config", "missing", got=path,
                          expected='flwr run ... -c \'config="/srv/fl/federation.toml"\'',
                          fix="run the federation with `fedadmet coordinator run`")
    cfg = FederationConfig.load(path)
    changes: dict[str, Path] = {}
    for key, attr in _PATH_OVERRIDES.items():
        value = run_config.get(key, "")
        if not isinstance(value, str):
            raise ConfigError(f"run-config.{key}", "must be a path string", got=value)
        if value:
            changes[attr] = Path(value).expanduser().resolve()
    return cfg.with_overrides(**changes) if changes else cfg


def make_server_app(cfg: FederationConfig | None = None, *,
                    on_round: Callable[[RoundSummary, Weights], None] | None = None,
                    on_reply: Callable[[str, int, int, int], None] | None = None) -> ServerApp:
    """A ServerApp bound to ``cfg``, or reading ``config`` from Flower run config."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        config = cfg if cfg is not None else config_from_run_config(dict(context.run_config))
        run_federation(config, grid, on_round=on_round, on_reply=on_reply)

    return server


app = make_server_app()
