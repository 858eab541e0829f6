"""A member site's configuration, validated once into typed objects.

A member writes ``participant.toml`` (``fedadmet participant init`` makes a
template). The ClientApp finds it through Flower node config
(``--node-config 'config="/etc/fedadmet/participant.toml"'``); simulation
mode generates one per virtual partner. Relative paths resolve against the
file's folder, so a site directory can be moved as a whole.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from protocols.errors import ConfigError
from protocols.settings import Table

__all__ = ["DataConfig", "EndpointColumn", "LocalTrainingConfig", "ParticipantConfig"]

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

    @property
    def endpoint_names(self) -> tuple[str, ...]:
        """Endpoint names in config order."""
        return tuple(e.endpoint for e in self.endpoints)


@dataclass(frozen=True, kw_only=True)
class LocalTrainingConfig:
    """Options for fine-tuning; the DP plan itself comes from the coordinator."""

    finetune_epochs: int = 100
    finetune_patience: int = 10
    finetune_lr: float = 1e-3
    trunk_lr_factor: float = 0.1
    threads: int = 0


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
        cfg = cls(
            name=part.text("name", required=True),
            state_dir=resolve(part.text("state-dir", "state")) or base_dir / "state",
            max_epsilon=part.number("max-epsilon", required=True, min=0.0, min_exclusive=True,
                                   allow_inf=True),
            delta=part.number("delta", 1e-5, min=0.0, max=1.0, min_exclusive=True),
            receipt_key=resolve(part.optional_text("receipt-key")),
            coordinator_key=resolve(part.optional_text("coordinator-key")),
            node_key=resolve(part.optional_text("node-key")),
            tracking_uri=part.optional_text("tracking-uri"),
            source=source,
            data=data,
            training=_training(root.table("training")),
        )
        part.finish()
        root.finish()
        return cfg

    @property
    def tracking_uri_or_default(self) -> str:
        """MLflow URI, defaulting to a SQLite store in the state directory."""
        return self.tracking_uri or f"sqlite:///{(self.state_dir / 'mlflow.db').resolve()}"


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
    )
    t.finish()
    return cfg


def _training(t: Table) -> LocalTrainingConfig:
    cfg = LocalTrainingConfig(
        finetune_epochs=t.integer("finetune-epochs", 100, min=1),
        finetune_patience=t.integer("finetune-patience", 10, min=1),
        finetune_lr=t.number("finetune-lr", 1e-3, min=0.0, min_exclusive=True),
        trunk_lr_factor=t.number("trunk-lr-factor", 0.1, min=0.0, max=1.0),
        threads=t.integer("threads", 0, min=0),
    )
    t.finish()
    return cfg
