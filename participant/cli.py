"""``fedadmet participant``: commands a member company types.

Every command reads the site's ``participant.toml`` through
:class:`participant.config.ParticipantConfig` (one schema; ``init`` writes a
template that loads as is).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

from participant.config import ParticipantConfig
from participant.keys import create_member_keys
from protocols.errors import ConfigError, DeploymentError

if TYPE_CHECKING:
    from chem.standardize import InvalidRow
    from participant.daemon import SuperNodePlan
    from participant.ledger import PrivacyLedger

app = typer.Typer(help="Run a member company's participant daemon, fine-tune and predict "
                  "on site.", no_args_is_help=True)

_CONFIG_HELP = "The site's participant.toml."


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _toml_str(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def participant_template(*, name: str, coordinator: str, root_certificate: str | Path,
                         local_port: int = 9094) -> str:
    """The ``participant.toml`` that ``init`` writes; paths relative to the site folder."""
    return f"""\
# This site's configuration. Nothing in it, and nothing it points to, leaves your site.
# Relative paths are resolved against this file's folder. Fill in [data] and [endpoints].

[participant]
name = {_toml_str(name)}
state-dir = "state"
# Your privacy budget: a round that would take the spent epsilon past it is refused.
max-epsilon = 8.0
delta = 1e-5
receipt-key = "keys/receipt_key.pem"
# The coordinator's receipt-signing public key, given to you at enrolment.
coordinator-key = "keys/coordinator_receipt.pub.pem"
# MLflow store for fine-tuning (local only); default: sqlite in the state dir.
# tracking-uri = "sqlite:////opt/fl/state/mlflow.db"
# Halt after this many rounds whose spent update the coordinator's receipt marks dropped,
# or marks late (the round closed on min-replies before the update arrived).
max-dropped-rounds = 2
max-late-rounds = 3

[coordinator]
address = {_toml_str(coordinator)}
root-certificate = {_toml_str(root_certificate)}
node-key = "keys/node_key"
# The SuperNode's local runtime port; different for each SuperNode on one host.
local-port = {local_port}
# Seconds between the SuperExec's checks for a new task (Flower's default is 1.0);
# each federated message waits for the next check.
task-poll-interval = 0.2
# Code pinning: by default the daemon runs only ClientApp code identical to the
# installed fedadmet. To pin exact bundles instead, add a table (docs/deployment.md):
# [code-pin]
# fab-sha256 = ["<sha256 of the FAB your operator announced>"]

[data]
files = ["data/assays.csv"]
smiles-column = "smiles"
valid-fraction = 0.15
split-seed = 0

# One table per endpoint: [endpoints.<federation endpoint name>]
[endpoints.lipophilicity]
column = "logD"
task = "regression"

[training]
finetune-epochs = 100
finetune-patience = 10
finetune-lr = 0.001
trunk-lr-factor = 0.1
# DP batches and noise from a CSPRNG (Opacus's secure_mode); slower, off by default.
secure-mode = false

# Federated evaluation (docs/threat-model.md): "noised" sends bounded held-out metrics
# with Gaussian noise, charged to your ledger; "local" sends none and only logs them.
[evaluation]
release = "noised"
noise-multiplier = 10.0
"""


@app.command()
def init(directory: Path,
         coordinator: str = typer.Option("fl.example.com:443", help="coordinator HOST:PORT"),
         root_certificate: Path | None = typer.Option(
             None, help="the consortium's CA certificate (default: ca.crt in DIRECTORY)"),
         local_port: int = typer.Option(9094, help="the SuperNode's local runtime port")
         ) -> None:
    """Create the node key pair, the receipt-signing key and a participant.toml template."""
    toml = directory / "participant.toml"
    if toml.exists():
        raise DeploymentError("participant.toml already exists; not overwriting it",
                              got=str(toml))
    text = participant_template(
        name=directory.resolve().name, coordinator=coordinator, local_port=local_port,
        root_certificate=root_certificate.resolve() if root_certificate else "ca.crt")
    # the template must load as it is: a typo here would greet every new member
    ParticipantConfig.from_mapping(tomllib.loads(text),
                                   base_dir=directory.resolve())
    keys = create_member_keys(directory / "keys")
    _write_text(toml, text)
    typer.echo(f"Wrote {toml}")
    typer.echo("Send these to the consortium operator:")
    typer.echo(f"  node public key:    {keys.node_pub} ({keys.node_fingerprint})")
    typer.echo(f"  receipt public key: {keys.receipt_pub} ({keys.receipt_fingerprint})")


def supernode_plan(cfg: ParticipantConfig) -> SuperNodePlan:
    """The daemon's plan from the ``[coordinator]`` table of a loaded config."""
    from participant.daemon import SuperNodePlan

    coord = cfg.require_coordinator()
    if cfg.source is None:
        raise ConfigError("config", "has no file to hand to the SuperNode",
                          fix="load it with ParticipantConfig.load(path)")
    return SuperNodePlan(superlink=coord.address, root_certificates=coord.root_certificate,
                         node_key=coord.node_key, port=coord.local_port,
                         node_config={"config": str(cfg.source), "state-dir": str(cfg.state_dir)},
                         code_pin=coord.code_pin, task_poll_interval=coord.task_poll_interval,
                         unsafe_run_unpinned_code=coord.unsafe_run_unpinned_code)


@app.command()
def start(config: Path = typer.Option(Path("participant.toml"), "--config", help=_CONFIG_HELP),
          max_restarts: int = typer.Option(5)) -> None:
    """Run the SuperNode, outbound only, with restarts and backoff."""
    from participant.daemon import run_with_restarts

    cfg = ParticipantConfig.load(config)
    plan = supernode_plan(cfg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    raise typer.Exit(run_with_restarts(plan, log_path=cfg.state_dir / "supernode.log",
                                       max_restarts=max_restarts))


@app.command()
def budget(config: Path = typer.Option(Path("participant.toml"), "--config", help=_CONFIG_HELP),
           as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")
           ) -> None:
    """Privacy spend per round, cumulative ε, what remains, and the verified receipt head."""
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    from participant.ledger import PrivacyLedger
    from participant.receipt_store import ReceiptStore

    cfg = ParticipantConfig.load(config)
    path = cfg.state_dir / "privacy_ledger.json"
    stored = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    accountant: Literal["rdp", "prv"] = "prv" if stored.get("accountant") == "prv" else "rdp"
    ledger = PrivacyLedger.open(cfg.state_dir, max_epsilon=cfg.max_epsilon, delta=cfg.delta,
                                accountant=accountant)
    store = ReceiptStore(cfg.state_dir)
    head = store.head()
    dropped = _dropped_rounds(cfg, ledger)
    late = _dropped_rounds(cfg, ledger, status="late")
    if as_json:
        typer.echo(json.dumps({"summary": ledger.summary(), "rounds": ledger.rounds(),
                               "receipt_head": None if head is None else asdict(head),
                               "dropped_after_submit": dropped,
                               "max_dropped_rounds": cfg.max_dropped_rounds,
                               "late_after_submit": late,
                               "max_late_rounds": cfg.max_late_rounds},
                              indent=2, default=str))
        return
    table = Table(title=f"privacy ledger of {cfg.name} (δ = {cfg.delta:g}, {accountant})")
    for col in ("federation", "round", "release", "noise_multiplier", "sample_rate", "steps",
                "ε after"):
        table.add_column(col)
    for e in ledger.entries():
        table.add_row(e.federation_id, str(e.round), e.release, f"{e.noise_multiplier:.4f}",
                      f"{e.sample_rate:.4f}", str(e.steps), f"{e.epsilon_after:.3f}")
    console = Console()
    console.print(table)
    console.print(f"spent ε = {ledger.epsilon():.3f} of {cfg.max_epsilon:g}; "
                  f"remaining {ledger.remaining():.3f}")
    style = "bold red" if dropped else ""
    console.print(f"updates spent but marked dropped by the coordinator: {len(dropped)} "
                  f"(rounds {dropped}; this site halts at {cfg.max_dropped_rounds})", style=style)
    console.print(f"updates spent but marked late (round closed before they arrived): "
                  f"{len(late)} (rounds {late}; this site halts at {cfg.max_late_rounds})",
                  style="bold yellow" if late else "")
    if head is None:
        console.print("receipt chain head: none verified yet")
    else:
        console.print(f"receipt chain head: round {head.round} of {head.federation_id}, "
                      f"{head.receipt_hash}", soft_wrap=True, markup=False)
        key = cfg.coordinator_key or "COORDINATOR_KEY"
        console.print(f"check any copy of the chain: fedadmet audit verify {store.dir} "
                      f"--coordinator-key {key} --expect-head {head.receipt_hash}", soft_wrap=True,
                      markup=False)


def _dropped_rounds(cfg: ParticipantConfig, ledger: PrivacyLedger, *,
                   status: str = "dropped") -> list[int]:
    """Rounds whose verified receipt marks ``status`` an update this site spent ε on."""
    from participant.receipt_store import ReceiptStore
    from protocols.signing import fingerprint, load_private_key

    if cfg.receipt_key is None or not cfg.receipt_key.exists():
        return []
    own = fingerprint(load_private_key(cfg.receipt_key.read_bytes()))
    return ReceiptStore(cfg.state_dir).dropped_after_submit(own, ledger.spent_rounds(),
                                                            status=status)


def _require_file(path: Path, flag: str, encoding: str | None) -> None:
    """Before the model loads: a missing or undecodable input is an argument error."""
    from chem.tables import check_text

    if not path.is_file():
        raise ConfigError(flag, "file not found" if not path.exists() else "is not a file",
                          got=str(path), fix="check the path")
    check_text(path, encoding=encoding)


_ENCODING_HELP = ("Text encoding of CSV/SDF input (default: UTF-8, BOM allowed), e.g. "
                  "latin-1 or cp1252.")


def _print_rows(invalid: Sequence[InvalidRow], summary: str = "") -> None:
    from chem.tables import report_lines

    for line in report_lines(invalid):
        typer.echo(line, err=True)
    if summary:
        typer.echo(summary, err=True)


def _fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "n/a"


@app.command()
def finetune(
    model: str = typer.Option(..., "--model", help="The global model: models:/NAME/VERSION, "
                              "runs:/..., or a folder of predictor files."),
    endpoint: str = typer.Option(..., "--endpoint", help="Endpoint to fine-tune (an existing "
                                 "head of the model, or a new one)."),
    data: list[Path] = typer.Option([], "--data", help="Local data file(s) (CSV/Parquet/SDF); "
                                    "default: the data files of the config."),
    column: str | None = typer.Option(None, "--column", help="Label column (default: the "
                                      "endpoint's column in the config, else its name)."),
    task: str | None = typer.Option(None, "--task", help="regression | classification "
                                    "(needed for a new endpoint)."),
    mode: str = typer.Option("full", "--mode", help="head-only (trunk frozen) | full."),
    trunk_lr_factor: float | None = typer.Option(None, "--trunk-lr-factor", help="Trunk "
                                                 "learning rate / head learning rate (full)."),
    epochs: int | None = typer.Option(None, "--epochs"),
    patience: int | None = typer.Option(None, "--patience"),
    lr: float | None = typer.Option(None, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    register_as: str | None = typer.Option(None, "--register-as", help="Local registered "
                                           "model name (default: finetuned-ENDPOINT)."),
    encoding: str | None = typer.Option(None, "--encoding", help=_ENCODING_HELP),
    config: Path = typer.Option(Path("participant.toml"), "--config", help=_CONFIG_HELP),
) -> None:
    """Fine-tune the federated model on local data; log and register it in the local MLflow.

    Every rejected row is listed (row number, value, reason); duplicate structures are
    merged before training (mean, or the majority label; ties are dropped and listed).
    """
    for path in data:
        _require_file(path, "--data", encoding)
    from participant.finetune import FineTuneOptions, run_finetune

    cfg = ParticipantConfig.load(config)
    if not data:
        for path in cfg.data.files:
            _require_file(path, "data.files", encoding or cfg.data.encoding)
    t = cfg.training
    options = FineTuneOptions(
        endpoint=endpoint, task=task, mode=mode,  # type: ignore[arg-type]  # validated there
        trunk_lr_factor=t.trunk_lr_factor if trunk_lr_factor is None else trunk_lr_factor,
        epochs=t.finetune_epochs if epochs is None else epochs,
        patience=t.finetune_patience if patience is None else patience,
        lr=t.finetune_lr if lr is None else lr, seed=seed)
    if t.threads:
        import torch
        torch.set_num_threads(t.threads)
    report = run_finetune(cfg, model_ref=model, options=options, files=data, column=column,
                          register_as=register_as, encoding=encoding)
    o = report.outcome
    if report.data.invalid or report.data.duplicates:
        _print_rows(report.data.invalid, f"data: {report.data.summary()}")
    typer.echo(f"endpoint {o.endpoint} ({o.task}, {options.mode}): {o.n_train} training, "
               f"{o.n_valid} validation molecules (scaffold split)")
    typer.echo(f"validation {o.metric} before: {_fmt(o.before)} ({o.before_model})")
    typer.echo(f"validation {o.metric} after:  {_fmt(o.after)} (best epoch "
               f"{o.fit.best_epoch + 1} of {len(o.fit.train_loss)})")
    if not o.improved:
        typer.echo("warning: fine-tuning did not improve the validation metric; keep using "
                   "the global model for this endpoint", err=True)
    logged = report.logged
    typer.echo(f"MLflow run {report.run_id}; registered locally as "
               f"models:/{logged.registered_name}/{logged.version}")


@app.command()
def predict(
    model: str = typer.Option(..., "--model", help="models:/NAME/VERSION, runs:/..., or a "
                              "folder of predictor files."),
    input_path: Path = typer.Option(..., "--input", help="Molecules (CSV/Parquet/SDF)."),
    output: Path = typer.Option(..., "--output", help="Predictions (.csv or .parquet)."),
    smiles_column: str = typer.Option("smiles", "--smiles-column"),
    encoding: str | None = typer.Option(None, "--encoding", help=_ENCODING_HELP),
    config: Path = typer.Option(Path("participant.toml"), "--config", help=_CONFIG_HELP +
                                " Needed for models:/ and runs:/ URIs (the local MLflow "
                                "store)."),
) -> None:
    """Predict every endpoint for a file of SMILES; invalid rows are reported, never dropped."""
    _require_file(input_path, "--input", encoding)
    from chem.mlflow_model import load_predictor
    from participant.predict import predict_file

    is_uri = ":/" in model and not Path(model).exists()
    tracking_uri = None
    if config.exists():
        tracking_uri = ParticipantConfig.load(config).tracking_uri_or_default
    elif is_uri:
        raise ConfigError("--config", "is needed to find the local MLflow store of a model URI",
                          got=str(config), fix="pass --config /path/to/participant.toml, or "
                          "a folder of predictor files as --model")
    result = predict_file(load_predictor(model, tracking_uri=tracking_uri), input_path, output,
                          smiles_column=smiles_column, encoding=encoding)
    _print_rows([dataclasses.replace(r, file=input_path.name) for r in result.invalid])
    n = len(result.frame)
    typer.echo(f"wrote {output}: {n - len(result.invalid)} of {n} rows predicted"
               + (f"; {len(result.invalid)} invalid (valid = false, reason in `error`)"
                  if result.invalid else "")
               + (f"; {result.duplicates} rows repeat an earlier row's standardised structure"
                  if result.duplicates else ""))
