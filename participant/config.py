"""A member site's configuration, validated once into typed objects.

A member writes ``participant.toml`` (``fedadmet participant init`` makes a
template). One schema serves every command: ``[participant]`` (name, state dir,
privacy budget, receipt keys), ``[coordinator]`` (address, root certificate,
node key, local port: only ``start`` needs it), ``[data]``,
``[endpoints.<name>]`` and ``[training]`` (fine-tuning defaults, DP ``secure-mode``). Unknown keys
are refused and every error names the key and the value.

The ClientApp finds the file through Flower node config
(``--node-config 'config="/etc/fedadmet/participant.toml"'``); simulation
mode generates one per virtual partner. Relative paths resolve against the
file's folder, so a site directory can be moved as a whole.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from participant.daemon import (
    DEFAULT_TASK_POLL_INTERVAL,
    MAX_TASK_POLL_INTERVAL,
    MIN_TASK_POLL_INTERVAL,
    SuperNodePlan,
)
from participant.pinning import CodePin
from protocols.errors import ConfigError
from protocols.settings import Table

__all__ = ["CoordinatorConfig", "DataConfig", "EndpointColumn", "EvaluationConfig",
           "LocalTrainingConfig", "ParticipantConfig", "supernode_plan"]


_DATA_SUFFIXES = (".csv", ".parquet", ".pq", ".sdf")


@dataclass(frozen=True, kw_only=True)
class EndpointColumn:
    """Maps a column of the member's data to an endpoint name and task."""

    endpoint: str
    column: str
    task: Literal["regression", "classification"]


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the member's private assay data lives and how to read it."""

    files: tuple[Path, ...]
    smiles_column: str = "smiles"
    endpoints: tuple[EndpointColumn, ...] = ()
    valid_fraction: float = 0.15
    split_seed: int = 0
    encoding: str | None = None  # text encoding of CSV/SDF files; None: UTF-8 (BOM allowed)

    @property
    def endpoint_names(self) -> tuple[str, ...]:
        """Endpoint names in config order."""
        return tuple(e.endpoint for e in self.endpoints)


@dataclass(frozen=True, kw_only=True)
class LocalTrainingConfig:
    """Local options (fine-tuning, DP draws); the DP plan itself comes from the coordinator."""

    finetune_epochs: int = 100
    finetune_patience: int = 10
    finetune_lr: float = 1e-3
    trunk_lr_factor: float = 0.1
    threads: int = 0
    # Opacus's secure_mode: DP batches and noise from a CSPRNG (AES-256-CTR) with
    # floating-point-attack-resistant Gaussians; slower. Off: full-state Mersenne
    # Twister generators from OS entropy (participant.dp_random), no seed to search.
    secure_mode: bool = False


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """What federated evaluation may send (``[evaluation]``; docs/threat-model.md).

    ``release = "noised"`` sends bounded held-out metrics with Gaussian noise at
    ``noise_multiplier`` and charges each release to the ledger
    (:mod:`participant.private_evaluation`); ``"local"`` sends no metrics at all and
    only logs them on site.
    """

    release: Literal["noised", "local"] = "noised"
    noise_multiplier: float = 10.0
    error_bound: float = 2.0


@dataclass(frozen=True, kw_only=True)
class CoordinatorConfig:
    """How the daemon reaches the coordinator (``[coordinator]``); read by ``start``."""

    address: str
    root_certificate: Path
    node_key: Path
    local_port: int = 9094
    # How often the SuperExec asks the SuperNode for a task (Flower's default: 1 s).
    task_poll_interval: float = DEFAULT_TASK_POLL_INTERVAL
    # The ClientApp code this member runs (``[code-pin]``; default: only the installed
    # fedadmet). Running whatever the coordinator sends needs the unsafe flag.
    code_pin: CodePin | None = field(default_factory=CodePin.installed)
    unsafe_run_unpinned_code: bool = False


@dataclass(frozen=True, kw_only=True)
class ParticipantConfig:
    """Everything the participant needs; nothing here ever leaves the site."""

    name: str
    state_dir: Path
    max_epsilon: float
    delta: float
    data: DataConfig
    receipt_key: Path | None = None
    coordinator_key: Path | None = None
    node_key: Path | None = None
    tracking_uri: str | None = None
    source: Path | None = None
    training: LocalTrainingConfig = field(default_factory=LocalTrainingConfig)
    coordinator: CoordinatorConfig | None = None
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    # Rounds in which this site spent ε on an update that the coordinator's receipt then
    # marks dropped; at this many the site halts (docs/threat-model.md).
    max_dropped_rounds: int = 2

    @classmethod
    def load(cls, path: str | Path) -> ParticipantConfig:
        """Read and validate ``participant.toml``."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("config", "participant config file not found", got=str(path),
                              fix="run `fedadmet participant init <dir>` or fix the path") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"is not valid TOML ({exc})", got=str(path)) from None
        return cls.from_mapping(raw, base_dir=path.parent.resolve(), source=path.resolve())

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> ParticipantConfig:
        """Build from Flower node config: ``config="/path/participant.toml"``."""
        value = node_config.get("config")
        if not isinstance(value, str) or not value:
            raise ConfigError(
                "node-config.config", "is missing",
                got=dict(node_config),
                expected='a path, e.g. --node-config \'config="/srv/site/participant.toml"\'',
                fix="start the SuperNode with `fedadmet participant start`, which sets it")
        return cls.load(value)

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], *, base_dir: Path = Path("."),
                     source: Path | None = None) -> ParticipantConfig:
        """Validate an already-parsed TOML document."""
        src = str(source) if source else None
        root = Table(raw, source=src)
        part = root.table("participant", required=True)

        def resolve(value: str | None) -> Path | None:
            if value is None:
                return None
            p = Path(value).expanduser()
            return p if p.is_absolute() else (base_dir / p).resolve()

        data = _data(root.table("data", required=True), root.tables("endpoints"), resolve)
        # node-key used to sit in [participant]; still read there, but not in both places
        legacy_node_key = part.optional_text("node-key")
        pin_raw = None
        if root.has("code-pin"):
            root.table("code-pin")  # marks the key as known; CodePin validates its content
            pin_raw = raw["code-pin"]
        coordinator = _coordinator(root.table("coordinator"), resolve, legacy_node_key,
                                   code_pin=pin_raw)
        cfg = cls(
            name=part.text("name", required=True),
            state_dir=resolve(part.text("state-dir", "state")) or base_dir / "state",
            max_epsilon=part.number("max-epsilon", required=True, min=0.0, min_exclusive=True,
                                   allow_inf=True),
            delta=part.number("delta", 1e-5, min=0.0, max=1.0, min_exclusive=True),
            receipt_key=resolve(part.optional_text("receipt-key")),
            coordinator_key=resolve(part.optional_text("coordinator-key")),
            node_key=coordinator.node_key if coordinator else resolve(legacy_node_key),
            tracking_uri=part.optional_text("tracking-uri"),
            source=source,
            data=data,
            training=_training(root.table("training")),
            coordinator=coordinator,
            evaluation=_evaluation(root.table("evaluation")),
            max_dropped_rounds=part.integer("max-dropped-rounds", 2, min=1),
        )
        part.finish()
        root.finish()
        return cfg

    def require_coordinator(self) -> CoordinatorConfig:
        """The ``[coordinator]`` table, which only the daemon needs."""
        if self.coordinator is None:
            raise ConfigError("coordinator", "is missing; the daemon needs it",
                              source=str(self.source) if self.source else None,
                              expected="[coordinator] with address, root-certificate, "
                              "node-key and local-port",
                              fix="copy the [coordinator] table from a template made by "
                              "`fedadmet participant init`")
        return self.coordinator

    @property
    def tracking_uri_or_default(self) -> str:
        """MLflow URI, defaulting to a SQLite store in the state directory."""
        return self.tracking_uri or f"sqlite:///{(self.state_dir / 'mlflow.db').resolve()}"



def supernode_plan(cfg: ParticipantConfig) -> SuperNodePlan:
    """The daemon's plan from the ``[coordinator]`` table of a loaded config."""
    coord = cfg.require_coordinator()
    if cfg.source is None:
        raise ConfigError("config", "has no file to hand to the SuperNode",
                          fix="load it with ParticipantConfig.load(path)")
    return SuperNodePlan(superlink=coord.address, root_certificates=coord.root_certificate,
                         node_key=coord.node_key, port=coord.local_port,
                         node_config={"config": str(cfg.source), "state-dir": str(cfg.state_dir)},
                         code_pin=coord.code_pin, task_poll_interval=coord.task_poll_interval,
                         unsafe_run_unpinned_code=coord.unsafe_run_unpinned_code)

def _data(t: Table, endpoint_tables: dict[str, Table], resolve: Any) -> DataConfig:
    files = tuple(resolve(f) for f in t.array("files", required=True, item_type=str, min_len=1))
    for f in files:
        if f.suffix.lower() not in _DATA_SUFFIXES:
            raise t.error("files", "has an unsupported file type", got=str(f),
                          expected=" | ".join(_DATA_SUFFIXES))
    endpoints = []
    for name, et in endpoint_tables.items():
        endpoints.append(EndpointColumn(
            endpoint=name,
            column=et.text("column", name),
            task=et.text("task", required=True,  # type: ignore[arg-type]
                        choices=("regression", "classification")),
        ))
        et.finish()
    if not endpoints:
        raise ConfigError("endpoints", "no endpoints configured",
                          expected="at least one [endpoints.<name>] table with column and task",
                          fix='add e.g. [endpoints.logd] column = "logD" task = "regression"')
    cfg = DataConfig(
        files=files,
        smiles_column=t.text("smiles-column", "smiles"),
        endpoints=tuple(endpoints),
        valid_fraction=t.number("valid-fraction", 0.15, min=0.0, max=0.5, min_exclusive=True),
        split_seed=t.integer("split-seed", 0, min=0),
        encoding=t.optional_text("encoding"),
    )
    t.finish()
    return cfg


def _coordinator(t: Table, resolve: Any, legacy_node_key: str | None, *,
                 code_pin: Mapping[str, Any] | None) -> CoordinatorConfig | None:
    address = t.optional_text("address")
    root_certificate = t.optional_text("root-certificate")
    node_key = t.optional_text("node-key")
    local_port = t.integer("local-port", 9094, min=1, max=65535)
    poll = t.number("task-poll-interval", DEFAULT_TASK_POLL_INTERVAL,
                    min=MIN_TASK_POLL_INTERVAL, max=MAX_TASK_POLL_INTERVAL)
    unsafe = t.boolean("unsafe-run-unpinned-code", False)
    t.finish()  # typos first: "adress" is reported as itself, not as a missing address
    if address is None and root_certificate is None and node_key is None \
            and not t.has("local-port") and not t.has("task-poll-interval"):
        return None  # no [coordinator]: simulation or fine-tune-only sites
    if legacy_node_key is not None and node_key is not None:
        raise t.error("node-key", "is given twice", got=legacy_node_key,
                      fix="keep it in [coordinator] only and delete participant.node-key")
    node_key = node_key or legacy_node_key
    for key, value in (("address", address), ("root-certificate", root_certificate),
                       ("node-key", node_key)):
        if value is None:
            raise t.error(key, "is required", expected="a value in [coordinator]",
                          fix="see the template written by `fedadmet participant init`")
    assert address is not None
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise t.error("address", "is not HOST:PORT", got=address,
                      expected="e.g. fl.example.org:443")
    if code_pin is not None and unsafe:
        raise t.error("unsafe-run-unpinned-code", "contradicts the [code-pin] table", got=True,
                      fix="delete one of them: a pinned daemon cannot also run unpinned code")
    pin = (CodePin.from_mapping(code_pin) if code_pin is not None
           else None if unsafe else CodePin.installed())
    return CoordinatorConfig(address=address, root_certificate=resolve(root_certificate),
                             node_key=resolve(node_key), local_port=local_port, code_pin=pin,
                             unsafe_run_unpinned_code=unsafe, task_poll_interval=poll)


def _training(t: Table) -> LocalTrainingConfig:
    cfg = LocalTrainingConfig(
        finetune_epochs=t.integer("finetune-epochs", 100, min=1),
        finetune_patience=t.integer("finetune-patience", 10, min=1),
        finetune_lr=t.number("finetune-lr", 1e-3, min=0.0, min_exclusive=True),
        trunk_lr_factor=t.number("trunk-lr-factor", 0.1, min=0.0, max=1.0),
        threads=t.integer("threads", 0, min=0),
        secure_mode=t.boolean("secure-mode", False),
    )
    t.finish()
    return cfg


def _evaluation(t: Table) -> EvaluationConfig:
    cfg = EvaluationConfig(
        release=t.text("release", "noised",  # type: ignore[arg-type]
                       choices=("noised", "local")),
        noise_multiplier=t.number("noise-multiplier", 10.0, min=0.0, min_exclusive=True),
        error_bound=t.number("error-bound", 2.0, min=0.0, min_exclusive=True),
    )
    t.finish()
    return cfg
