"""Simulation scenarios: TOML files validated once into a typed :class:`Scenario`.

A scenario says which public datasets (or a researcher's own CSVs) become
which endpoints, how their molecules are spread across virtual partners, the
privacy target, and the model and training plan. Keys are kebab-case, as in
Flower's run config; every error names the key and file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from protocols.canonical import canonical_json, sha256_hex
from protocols.errors import ConfigError
from protocols.settings import ConfigPaths, Table, read_toml
from simulations.datasets import DATASETS

__all__ = ["EndpointSource", "Scenario", "load_scenario"]

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
# "column": a natural partition, each partner the rows of its own source (a lab, a
# company, an assay) named in the CSV column ``partner-column``.
PARTITIONS = ("scaffold-dirichlet", "quantity-skew", "quantity+scaffold", "column")


@dataclass(frozen=True, kw_only=True)
class EndpointSource:
    """Where an endpoint's molecules come from, and who holds it."""

    name: str
    dataset: str | None = None
    csv: Path | None = None
    smiles_column: str = "smiles"
    value_column: str = "target"
    task: str = "regression"
    private_to: int | None = None  # partner index for a private endpoint
    max_molecules: int | None = None
    encoding: str | None = None  # text encoding of ``csv``; None: UTF-8 (BOM allowed)


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """A validated simulation scenario."""

    name: str
    partners: int
    rounds: int
    epsilon: float
    delta: float = 1e-5
    seeds: tuple[int, ...] = (0,)
    endpoints: tuple[EndpointSource, ...] = ()
    partition: str = "scaffold-dirichlet"
    partner_column: str | None = None  # partition = "column": the CSV column naming the source
    alpha: float = 0.5
    min_partner_size: int = 20
    test_fraction: float = 0.2
    featurizer: str = "ecfp4-count-2048/v1"
    hidden_dims: tuple[int, ...] = (256,)
    dropout: float = 0.1
    local_epochs: int = 1
    batch_size: int = 128
    learning_rate: float = 1.0
    optimizer: str = "sgd"
    max_grad_norm: float = 1.0
    server_optimizer: str = "fedavg"
    server_learning_rate: float = 1.0
    round_timeout: float = 600.0
    compare: bool = True
    # dp-sweep: the epsilons to run one after another (empty: just ``epsilon``)
    epsilon_sweep: tuple[float, ...] = ()
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def consortium(self) -> tuple[EndpointSource, ...]:
        """Endpoints whose heads are federated."""
        return tuple(e for e in self.endpoints if e.private_to is None)

    @property
    def private(self) -> tuple[EndpointSource, ...]:
        """Endpoints held by one partner, heads kept local."""
        return tuple(e for e in self.endpoints if e.private_to is not None)

    def with_overrides(self, **changes: Any) -> Scenario:
        """Command-line overrides; unset (None) values are ignored, the result re-validated."""
        clean = {k: v for k, v in changes.items() if v is not None}
        updated = replace(self, **clean)
        _validate(updated)
        return updated

    @property
    def private_label(self) -> str:
        """How the privacy setting is named in reports: ``ε=8`` or ``non-private (ε=inf)``."""
        return "non-private (ε=inf)" if math.isinf(self.epsilon) else f"ε={self.epsilon:g}"

    def sweep(self) -> list[Scenario]:
        """One scenario per epsilon of a dp-sweep (``[self]`` when there is no sweep)."""
        if not self.epsilon_sweep:
            return [self]
        return [replace(self, epsilon=e, epsilon_sweep=()) for e in self.epsilon_sweep]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["epsilon"] = "inf" if math.isinf(self.epsilon) else self.epsilon
        d["epsilon_sweep"] = ["inf" if math.isinf(e) else e for e in self.epsilon_sweep]
        if d["partner_column"] is None:  # left out unset, so older scenarios keep their digest
            del d["partner_column"]
        # an unset encoding is left out, so scenarios written before it keep their digest
        d["endpoints"] = [{k: (str(v) if isinstance(v, Path) else v) for k, v in e.items()
                           if not (k == "encoding" and v is None)} for e in d["endpoints"]]
        return d

    def digest(self) -> str:
        """SHA-256 of the resolved scenario (RFC 8785)."""
        d = self.to_dict()
        d.pop("source", None)
        return sha256_hex(canonical_json(d))


def _validate(s: Scenario) -> None:
    if s.partners < 2:
        raise ConfigError("partners", "a federation needs at least 2 partners", got=s.partners)
    for eps in (s.epsilon, *s.epsilon_sweep):
        if not (eps > 0):
            raise ConfigError("epsilon", "must be positive (use \"inf\" for non-private)",
                              got=eps, expected="a number > 0 or \"inf\"")
    if not 0 < s.delta < 1:
        raise ConfigError("delta", "must lie strictly between 0 and 1", got=s.delta)
    if s.alpha <= 0:
        raise ConfigError("alpha", "the Dirichlet concentration must be positive", got=s.alpha,
                          expected="a number > 0")
    if s.rounds < 1:
        raise ConfigError("rounds", "at least one round is required", got=s.rounds)
    if not s.seeds:
        raise ConfigError("seeds", "at least one seed is required", got=list(s.seeds))
    names = [e.name for e in s.endpoints]
    if len(set(names)) != len(names):
        raise ConfigError("endpoints", "endpoint names must be unique", got=names)
    for e in s.private:
        if e.private_to is not None and not 0 <= e.private_to < s.partners:
            raise ConfigError(f"endpoints.{e.name}.private-to", "partner index out of range",
                              got=e.private_to, expected=f"0..{s.partners - 1}")
    if not s.consortium:
        raise ConfigError("endpoints", "at least one consortium endpoint is required",
                          fix="add an endpoint without `private-to`")
    if (s.partition == "column") != (s.partner_column is not None):
        raise ConfigError("partner-column", "is given exactly when partition = \"column\"",
                          got={"partition": s.partition, "partner-column": s.partner_column},
                          fix="partition = \"column\" with partner-column = \"<CSV column>\", "
                          "or neither")
    if s.partition == "column":
        vendored = [e.name for e in s.consortium if e.csv is None]
        if vendored:
            raise ConfigError("partition", "a column partition needs every consortium "
                              "endpoint from a CSV with the partner column", got=vendored,
                              expected="`csv = ...` endpoints",
                              fix="use a synthetic partition for vendored datasets")


def _epsilons(t: Table, raw: dict[str, Any], source: str) -> list[float]:
    """``epsilon`` is one number, ``"inf"`` (non-private), or a list of them (a dp-sweep)."""
    if not isinstance(raw.get("epsilon"), list):
        return [t.number("epsilon", 8.0, allow_inf=True, min=0.0, min_exclusive=True)]
    items = t.array("epsilon", min_len=1)
    return [Table({"epsilon": item}, source=source).number(
        "epsilon", allow_inf=True, min=0.0, min_exclusive=True) for item in items]


def load_scenario(path: str | Path | None = None) -> Scenario:
    """Load a scenario file (default: ``admet-consortium``)."""
    path = Path(path) if path else SCENARIO_DIR / "admet-consortium.toml"
    if not path.exists() and (SCENARIO_DIR / f"{path}.toml").exists():
        path = SCENARIO_DIR / f"{path}.toml"
    shipped = sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))
    raw = read_toml(path, key="scenario", expected=f"a .toml file or one of {shipped}")
    t = Table(raw, source=str(path))
    paths = ConfigPaths(path.parent)
    sweep = _epsilons(t, raw, str(path))
    endpoints = []
    for name, et in t.tables("endpoints").items():
        dataset = et.optional_text("dataset")
        csv = et.optional_text("csv")
        if (dataset is None) == (csv is None):
            raise et.error("dataset", "give exactly one of `dataset` or `csv`")
        if csv is not None and not paths(csv).is_file():
            raise et.error("csv", "file not found", got=str(paths(csv)),
                           fix="a path relative to the scenario file's folder")
        if dataset is not None and dataset not in DATASETS:
            raise et.error("dataset", "unknown dataset", got=dataset,
                           expected=" | ".join(DATASETS))
        task = (DATASETS[dataset].task if dataset else
                et.text("task", required=True, choices=("regression", "classification")))
        if dataset and et.has("task"):
            et.text("task", choices=(task,))
        endpoints.append(EndpointSource(
            name=name, dataset=dataset,
            csv=paths(csv) if csv else None,
            smiles_column=et.text("smiles-column", "smiles"),
            value_column=et.text("value-column", "target"), task=task,
            private_to=et.integer("private-to", -1, min=-1) if et.has("private-to") else None,
            max_molecules=et.integer("max-molecules", 0, min=0) or None,
            encoding=et.optional_text("encoding")))
        et.finish()
    s = Scenario(
        name=t.text("name", path.stem),
        partners=t.integer("partners", 4, min=1),
        rounds=t.integer("rounds", 5, min=1),
        epsilon=sweep[0],
        epsilon_sweep=tuple(sweep) if len(sweep) > 1 else (),
        delta=t.number("delta", 1e-5, min=0.0, max=1.0, min_exclusive=True),
        seeds=tuple(t.array("seeds", [0], item_type=int, min_len=1)),
        endpoints=tuple(endpoints),
        partition=t.text("partition", "scaffold-dirichlet", choices=PARTITIONS),
        partner_column=t.optional_text("partner-column"),
        alpha=t.number("alpha", 0.5, min=0.0, min_exclusive=True),
        min_partner_size=t.integer("min-partner-size", 20, min=1),
        test_fraction=t.number("test-fraction", 0.2, min=0.05, max=0.5),
        featurizer=t.text("featurizer", "ecfp4-count-2048/v1"),
        hidden_dims=tuple(t.array("hidden-dims", [256], item_type=int, min_len=1)),
        dropout=t.number("dropout", 0.1, min=0.0, max=0.9),
        local_epochs=t.integer("local-epochs", 1, min=1),
        batch_size=t.integer("batch-size", 128, min=1),
        learning_rate=t.number("learning-rate", 1.0, min=0.0, min_exclusive=True),
        optimizer=t.text("optimizer", "sgd", choices=("sgd", "adam")),
        max_grad_norm=t.number("max-grad-norm", 1.0, min=0.0, min_exclusive=True),
        server_optimizer=t.text("server-optimizer", "fedavg",
                                choices=("fedavg", "fedadam", "fedyogi")),
        server_learning_rate=t.number("server-learning-rate", 1.0, min=0.0, min_exclusive=True),
        round_timeout=t.number("round-timeout", 600.0, min=1.0),
        compare=t.boolean("compare", True),
        source=str(path),
    )
    t.finish()
    _validate(s)
    return s
