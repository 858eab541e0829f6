"""The federation's configuration, validated once into typed objects.

The operator writes ``federation.toml`` (``fedadmet coordinator init`` makes a
template). The ServerApp receives its path through Flower's run config
(``config = "/path/federation.toml"``), validates it here, and records the
resolved config, with its digest, next to the outputs and in every receipt.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from protocols.canonical import canonical_json, sha256_hex
from protocols.endpoints import TASKS, EndpointSpec
from protocols.errors import ConfigError
from protocols.settings import ConfigPaths, Table, default_tracking_uri, read_toml

__all__ = [
    "AdmissionConfig",
    "CentralDPConfig",
    "FederationConfig",
    "ModelConfig",
    "PrivacyPlanConfig",
    "ServerOptimizerConfig",
]

Weighting = Literal["uniform", "capped"]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The shared model: featurizer, trunk and consortium heads."""

    featurizer: str = "ecfp4-count-2048/v1"
    hidden_dims: tuple[int, ...] = (512, 256)
    dropout: float = 0.1
    endpoints: tuple[EndpointSpec, ...] = ()
    init_seed: int = 0


@dataclass(frozen=True, kw_only=True)
class PrivacyPlanConfig:
    """Record-level DP plan that every site calibrates its own noise against."""

    max_grad_norm: float = 1.0
    target_epsilon: float = 8.0
    delta: float = 1e-5
    local_epochs: int = 1
    batch_size: int = 64
    accountant: Literal["rdp", "prv"] = "rdp"
    # SGD at lr 1.0: the shipped scenarios' measured setting (docs/results.md), and the one
    # optimizer whose honest update norm the plan bounds tightly (coordinator.update_bound)
    learning_rate: float = 1.0
    optimizer: Literal["adam", "sgd"] = "sgd"
    # Named as unsafe on purpose: it turns record-level DP off at every site.
    unsafe_no_dp: bool = False


@dataclass(frozen=True, kw_only=True)
class ServerOptimizerConfig:
    """Server optimizer after Reddi et al. 2021, "Adaptive Federated Optimization"."""

    name: Literal["fedavg", "fedadam", "fedyogi"] = "fedavg"
    learning_rate: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3


@dataclass(frozen=True, kw_only=True)
class AdmissionConfig:
    """Bounds every submitted delta must respect.

    ``max_update_norm`` None (the default) derives the bound from the DP plan per member
    (:func:`coordinator.update_bound.honest_update_norm_bound`); a number overrides it.
    ``max_num_examples`` is the default per-member example cap for members enrolled
    without one: it bounds a member's steps per round, and so its update norm, and
    under capped weighting its weight.
    """

    max_update_norm: float | None = None
    max_num_examples: int = 100_000


@dataclass(frozen=True, kw_only=True)
class CentralDPConfig:
    """Optional participant-level DP: server-side clipping plus Gaussian noise."""

    enabled: bool = False
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0


@dataclass(frozen=True, kw_only=True)
class FederationConfig:
    """Everything the coordinator needs for one federation."""

    federation_id: str
    rounds: int = 5
    min_participants: int = 2
    fraction: float = 1.0
    join_timeout: float = 120.0
    round_timeout: float = 600.0
    # stop waiting once this many train updates were admitted (and as many evaluate
    # replies arrived); 0 waits for every sampled member until round-timeout
    min_replies: int = 0
    weighting: Weighting = "uniform"
    seed: int = 0
    state_dir: Path = Path("state")
    members_file: Path | None = None
    signing_key: Path | None = None
    tracking_uri: str | None = None
    register_every: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    privacy: PrivacyPlanConfig = field(default_factory=PrivacyPlanConfig)
    server_optimizer: ServerOptimizerConfig = field(default_factory=ServerOptimizerConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    central_dp: CentralDPConfig = field(default_factory=CentralDPConfig)

    def __post_init__(self) -> None:
        # Fail closed: without a tight bound an inflated update passes admission
        # (coordinator.update_bound); every construction path (TOML, overrides) checks it.
        if self.privacy.optimizer == "adam" and self.admission.max_update_norm is None:
            raise ConfigError(
                "privacy.optimizer", "Adam has no tight update-norm bound from the DP plan",
                got="adam", expected='"sgd", or "adam" with [admission] max-update-norm',
                fix='use optimizer = "sgd" (the default), or set [admission] max-update-norm '
                "to a bound measured on honest updates (docs/threat-model.md)")

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path) -> FederationConfig:
        """Read and validate ``federation.toml``; relative paths resolve against its folder."""
        path = Path(path)
        raw = read_toml(path, fix="run `fedadmet coordinator init` or fix the path")
        return cls.from_mapping(raw, base_dir=path.parent, source=str(path))

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], *, base_dir: Path = Path("."),
                     source: str | None = None) -> FederationConfig:
        """Validate an already-parsed TOML document."""
        root = Table(raw, source=source)
        fed = root.table("federation", required=True)

        resolve = ConfigPaths(base_dir)
        cfg = cls(
            federation_id=fed.text("id", required=True),
            rounds=fed.integer("rounds", 5, min=1, max=10_000),
            min_participants=fed.integer("min-participants", 2, min=1),
            fraction=fed.number("fraction", 1.0, min=0.0, max=1.0, min_exclusive=True),
            join_timeout=fed.number("join-timeout", 120.0, min=0.0, min_exclusive=True),
            round_timeout=fed.number("round-timeout", 600.0, min=0.0, min_exclusive=True),
            min_replies=fed.integer("min-replies", 0, min=0),
            weighting=fed.text("weighting", "uniform",  # type: ignore[arg-type]
                              choices=("uniform", "capped")),
            seed=fed.integer("seed", 0, min=0),
            state_dir=resolve(fed.text("state-dir", "state")) or Path("state"),
            members_file=resolve(fed.optional_text("members")),
            signing_key=resolve(fed.optional_text("signing-key")),
            tracking_uri=fed.optional_text("tracking-uri"),
            register_every=fed.integer("register-every", 0, min=0),
            model=_model(root.table("model")),
            privacy=_privacy(root.table("privacy")),
            server_optimizer=_server_opt(root.table("server-optimizer")),
            admission=_admission(root.table("admission")),
            central_dp=_central_dp(root.table("central-dp")),
        )
        fed.finish()
        root.finish()
        if 0 < cfg.min_replies < cfg.min_participants:
            raise ConfigError("federation.min-replies", "must be 0 or >= min-participants",
                              got=cfg.min_replies, expected=f">= {cfg.min_participants}",
                              fix="a round needs min-participants updates anyway", source=source)
        if not cfg.model.endpoints:
            raise ConfigError("model.endpoints", "at least one consortium endpoint is required",
                              fix="add a [[model.endpoints]] table with name and task",
                              source=source)
        return cfg

    # ---------------------------------------------------------------- derived
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (paths as strings, infinities as the string "inf")."""
        def clean(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, float) and math.isinf(value):
                return "inf"
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [clean(v) for v in value]
            return value
        return dict(clean(asdict(self)))

    def digest(self) -> str:
        """SHA-256 over the RFC 8785 form of the training-relevant config.

        Paths, timeouts and tracking settings are operational, not part of what a
        receipt attests to, so they are left out.
        """
        d = self.to_dict()
        for key in ("state_dir", "members_file", "signing_key", "tracking_uri",
                    "join_timeout", "round_timeout", "min_replies", "register_every"):
            d.pop(key, None)
        return sha256_hex(canonical_json(d))

    def with_overrides(self, **changes: Any) -> FederationConfig:
        """A copy with top-level fields replaced (used by simulation overrides)."""
        return replace(self, **changes)

    @property
    def tracking_uri_or_default(self) -> str:
        """Tracking URI, defaulting to a SQLite store in the state directory."""
        return self.tracking_uri or default_tracking_uri(self.state_dir)


def _model(t: Table) -> ModelConfig:
    endpoints = []
    for et in t.array_of_tables("endpoints"):
        endpoints.append(EndpointSpec(
            name=et.text("name", required=True),
            task=et.text("task", required=True, choices=TASKS),  # type: ignore[arg-type]
            unit=et.text("unit", ""),
            target_offset=et.number("target-offset", 0.0),
            target_scale=et.number("target-scale", 1.0, min=0.0, min_exclusive=True),
        ))
        et.finish()
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise t.error("endpoints", "endpoint names must be unique", got=names)
    cfg = ModelConfig(
        featurizer=t.text("featurizer", "ecfp4-count-2048/v1"),
        hidden_dims=tuple(t.array("hidden-dims", [512, 256], item_type=int, min_len=1)),
        dropout=t.number("dropout", 0.1, min=0.0, max=0.9),
        endpoints=tuple(endpoints),
        init_seed=t.integer("init-seed", 0, min=0),
    )
    if any(h < 1 for h in cfg.hidden_dims):
        raise t.error("hidden-dims", "sizes must be positive", got=list(cfg.hidden_dims))
    t.finish()
    return cfg


def _privacy(t: Table) -> PrivacyPlanConfig:
    cfg = PrivacyPlanConfig(
        max_grad_norm=t.number("max-grad-norm", 1.0, min=0.0, min_exclusive=True),
        target_epsilon=t.number("target-epsilon", 8.0, min=0.0, min_exclusive=True),
        delta=t.number("delta", 1e-5, min=0.0, max=1.0, min_exclusive=True),
        local_epochs=t.integer("local-epochs", 1, min=1),
        batch_size=t.integer("batch-size", 64, min=1),
        accountant=t.text("accountant", "rdp", choices=("rdp", "prv")),  # type: ignore[arg-type]
        learning_rate=t.number("learning-rate", 1.0, min=0.0, min_exclusive=True),
        optimizer=t.text("optimizer", "sgd", choices=("adam", "sgd")),  # type: ignore[arg-type]
        unsafe_no_dp=t.boolean("unsafe-no-dp", False),
    )
    t.finish()
    return cfg


def _server_opt(t: Table) -> ServerOptimizerConfig:
    cfg = ServerOptimizerConfig(
        name=t.text("name", "fedavg", choices=("fedavg", "fedadam", "fedyogi")),  # type: ignore[arg-type]
        learning_rate=t.number("learning-rate", 1.0, min=0.0, min_exclusive=True),
        beta1=t.number("beta1", 0.9, min=0.0, max=1.0),
        beta2=t.number("beta2", 0.99, min=0.0, max=1.0),
        tau=t.number("tau", 1e-3, min=0.0, min_exclusive=True),
    )
    t.finish()
    return cfg


def _admission(t: Table) -> AdmissionConfig:
    cfg = AdmissionConfig(
        max_update_norm=(t.number("max-update-norm", 1.0, min=0.0, min_exclusive=True)
                         if t.has("max-update-norm") else None),
        max_num_examples=t.integer("max-num-examples", 100_000, min=1))
    t.finish()
    return cfg


def _central_dp(t: Table) -> CentralDPConfig:
    cfg = CentralDPConfig(
        enabled=t.boolean("enabled", False),
        noise_multiplier=t.number("noise-multiplier", 1.0, min=0.0),
        clipping_norm=t.number("clipping-norm", 1.0, min=0.0, min_exclusive=True),
    )
    t.finish()
    return cfg
