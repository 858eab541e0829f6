"""``fedadmet participant``: commands a member company types.

Every command reads the site's ``participant.toml`` through
:class:`participant.config.ParticipantConfig` (one schema; ``init`` writes a
template that loads as is: :mod:`participant.site_folder`). Parsing, printing
and exit codes only; the work is in :mod:`participant`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from participant.config import ParticipantConfig, supernode_plan
from participant.site_folder import init_site
from protocols.errors import ConfigError

if TYPE_CHECKING:
    from chem.standardize import InvalidRow

app = typer.Typer(help="Run a member company's participant daemon, fine-tune and predict "
                  "on site.", no_args_is_help=True)

_CONFIG_HELP = "The site's participant.toml."


@app.command()
def init(directory: Path,
         coordinator: str = typer.Option("fl.example.com:443", help="coordinator HOST:PORT"),
         root_certificate: Path | None = typer.Option(
             None, help="the consortium's CA certificate (default: ca.crt in DIRECTORY)"),
         local_port: int = typer.Option(9094, help="the SuperNode's local runtime port")
         ) -> None:
    """Create the node key pair, the receipt-signing key and a participant.toml template."""
    toml, keys = init_site(directory, coordinator=coordinator, root_certificate=root_certificate,
                           local_port=local_port)
    typer.echo(f"Wrote {toml}")
    typer.echo("Send these to the consortium operator:")
    typer.echo(f"  node public key:    {keys.node_pub} ({keys.node_fingerprint})")
    typer.echo(f"  receipt public key: {keys.receipt_pub} ({keys.receipt_fingerprint})")


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

    from participant.budget import read_budget

    cfg = ParticipantConfig.load(config)
    site = read_budget(cfg)
    ledger, head, dropped, accountant = site.ledger, site.head, site.dropped, site.accountant
    if as_json:
        typer.echo(json.dumps({"summary": ledger.summary(), "rounds": ledger.rounds(),
                               "receipt_head": None if head is None else asdict(head),
                               "dropped_after_submit": dropped,
                               "max_dropped_rounds": cfg.max_dropped_rounds},
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
    if head is None:
        console.print("receipt chain head: none verified yet")
    else:
        console.print(f"receipt chain head: round {head.round} of {head.federation_id}, "
                      f"{head.receipt_hash}", soft_wrap=True, markup=False)
        key = cfg.coordinator_key or "COORDINATOR_KEY"
        console.print(f"check any copy of the chain: fedadmet audit verify {site.receipts_dir} "
                      f"--coordinator-key {key} --expect-head {head.receipt_hash}", soft_wrap=True,
                      markup=False)


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
