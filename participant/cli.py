"""``fedadmet participant``: commands a member company types."""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path
from typing import Literal

import typer

from participant.daemon import SuperNodePlan, run_with_restarts
from participant.keys import create_member_keys
from protocols.errors import DeploymentError

app = typer.Typer(help="Run a member company's participant daemon.", no_args_is_help=True)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@app.command()
def init(directory: Path,
         coordinator: str = typer.Option("fl.example.com:443", help="coordinator HOST:PORT"),
         root_certificate: Path = typer.Option(Path("ca.crt"))) -> None:
    """Create the node key pair, the receipt-signing key and a participant.toml template."""
    keys = create_member_keys(directory / "keys")
    state = directory / "state"
    toml = directory / "participant.toml"
    if toml.exists():
        raise DeploymentError("participant.toml already exists; not overwriting it",
                              got=str(toml))
    _write_text(toml, (
        "# Fill in the data section; nothing here leaves your site.\n"
        f'coordinator = "{coordinator}"\n'
        f'root-certificate = "{root_certificate}"\n'
        f'node-key = "{keys.node_key}"\n'
        f'receipt-key = "{keys.receipt_key}"\n'
        f'state-dir = "{state}"\n'
        "local-port = 9094\n"
        'data-files = ["data/assays.csv"]\n'
        'smiles-column = "smiles"\n'
        "max-epsilon = 8.0\n"
        "delta = 1e-5\n"
        f'mlflow-tracking-uri = "sqlite:///{state / "mlflow.db"}"\n\n'
        "[endpoints]\n"
        '# column name in your file = federation endpoint name\n'
        '"logD" = "lipophilicity"\n'))
    typer.echo(f"Wrote {toml}")
    typer.echo("Send these to the consortium operator:")
    typer.echo(f"  node public key:    {keys.node_pub} ({keys.node_fingerprint})")
    typer.echo(f"  receipt public key: {keys.receipt_pub} ({keys.receipt_fingerprint})")


@app.command()
def start(config: Path = typer.Option(Path("participant.toml"), "--config"),
          max_restarts: int = typer.Option(5)) -> None:
    """Run the SuperNode, outbound only, with restarts and backoff."""
    raw = tomllib.loads(config.read_text(encoding="utf-8"))
    state = Path(str(raw["state-dir"]))
    plan = SuperNodePlan(superlink=str(raw["coordinator"]),
                         root_certificates=Path(str(raw["root-certificate"])),
                         node_key=Path(str(raw["node-key"])), port=int(raw["local-port"]),
                         node_config={"config": str(config.resolve()),
                                      "state-dir": str(state)})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    raise typer.Exit(run_with_restarts(plan, log_path=state / "supernode.log",
                                       max_restarts=max_restarts))


@app.command()
def budget(config: Path = typer.Option(Path("participant.toml"), "--config",
                                       help="The site's participant.toml."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")
           ) -> None:
    """Privacy spend per round, cumulative ε, and what remains of the budget."""
    import json

    from rich.console import Console
    from rich.table import Table

    from participant.config import ParticipantConfig
    from participant.ledger import PrivacyLedger

    cfg = ParticipantConfig.load(config)
    path = cfg.state_dir / "privacy_ledger.json"
    stored = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    accountant: Literal["rdp", "prv"] = "prv" if stored.get("accountant") == "prv" else "rdp"
    ledger = PrivacyLedger.open(cfg.state_dir, max_epsilon=cfg.max_epsilon, delta=cfg.delta,
                                accountant=accountant)
    if as_json:
        typer.echo(json.dumps({"summary": ledger.summary(), "rounds": ledger.rounds()},
                              indent=2, default=str))
        return
    table = Table(title=f"privacy ledger of {cfg.name} (δ = {cfg.delta:g}, {accountant})")
    for col in ("federation", "round", "noise_multiplier", "sample_rate", "steps", "ε after"):
        table.add_column(col)
    for e in ledger.entries():
        table.add_row(e.federation_id, str(e.round), f"{e.noise_multiplier:.4f}",
                      f"{e.sample_rate:.4f}", str(e.steps), f"{e.epsilon_after:.3f}")
    console = Console()
    console.print(table)
    console.print(f"spent ε = {ledger.epsilon():.3f} of {cfg.max_epsilon:g}; "
                  f"remaining {ledger.remaining():.3f}")
