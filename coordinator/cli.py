"""``fedadmet coordinator``: commands the consortium operator types."""

from __future__ import annotations

import os
import subprocess
import tomllib
import uuid
from pathlib import Path

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.members import enroll_member
from coordinator.pki import create_pki, write_atomic
from coordinator.proxy import start_nginx, write_nginx_config
from coordinator.superlink import SuperLinkPlan, start_superlink, wait_healthy, write_flwr_home
from protocols.errors import DeploymentError
from protocols.signing import fingerprint, load_public_key, private_key_pem

app = typer.Typer(help="Run the consortium coordinator (SuperLink + ServerApp).",
                  no_args_is_help=True)


CONFIG_NAME = "federation.toml"


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DeploymentError("address must be HOST:PORT", got=address,
                              expected="e.g. fl.example.com:443")
    return host.strip("[]"), int(port)


def _load(directory: Path) -> dict[str, object]:
    path = directory / CONFIG_NAME
    if not path.exists():
        raise DeploymentError("no federation config here", got=str(path),
                              fix="run `fedadmet coordinator init <dir>` first")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _flwr_env(directory: Path) -> dict[str, str]:
    return {**os.environ, "FLWR_HOME": str(directory / "state" / "flwr-home"),
            "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


@app.command()
def init(directory: Path, public_address: str | None = typer.Option(None),
         port: int = typer.Option(9443, help="loopback SuperLink port"),
         rounds: int = typer.Option(3), round_timeout: float = typer.Option(600.0)) -> None:
    """Create the CA, TLS server certificate, receipt key and federation.toml."""
    host = _split(public_address)[0] if public_address else None
    tls = create_pki(directory / "tls", public_host=host)
    receipt = Ed25519PrivateKey.generate()
    write_atomic(directory / "receipt_key.pem", private_key_pem(receipt), mode=0o600)
    state = directory / "state"
    state.mkdir(parents=True, exist_ok=True)
    public = f'public-address = "{public_address}"\n' if public_address else ""
    write_atomic(directory / CONFIG_NAME, (
        f'federation-id = "{uuid.uuid4()}"\n'
        f"superlink-port = {port}\n{public}"
        f'state-dir = "{state}"\n'
        f'ca-cert = "{tls.ca_cert}"\nserver-cert = "{tls.server_cert}"\n'
        f'server-key = "{tls.server_key}"\n'
        f'receipt-key = "{directory / "receipt_key.pem"}"\n'
        f'members = "{directory / "members.json"}"\n'
        f"num-rounds = {rounds}\nround-timeout = {round_timeout}\n").encode())
    typer.echo(f"Created {directory / CONFIG_NAME}")
    typer.echo(f"Give members the CA certificate: {tls.ca_cert}")
    typer.echo(f"Coordinator receipt key fingerprint: {fingerprint(receipt)}")


@app.command()
def enroll(public_key: Path, name: str = typer.Option(...),
           receipt_key: Path = typer.Option(...),
           directory: Path = typer.Option(Path("."), "--dir")) -> None:
    """Register a member's node key with the SuperLink (loopback) and record it."""
    cfg = _load(directory)
    node_key = public_key.read_text(encoding="utf-8").strip()
    receipt_pem = receipt_key.read_text(encoding="utf-8")
    load_public_key(receipt_pem.encode())  # fail before touching the SuperLink
    env = _flwr_env(directory)
    write_flwr_home(Path(env["FLWR_HOME"]), port=int(str(cfg["superlink-port"])),
                    ca_cert=Path(str(cfg["ca-cert"])))
    done = subprocess.run(["flwr", "supernode", "register", str(public_key), "fedadmet",
                           "--name", name], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode != 0:
        raise DeploymentError("the SuperLink refused the registration",
                              got=(done.stdout + done.stderr)[-400:],
                              fix="start the coordinator first (`fedadmet coordinator start`)")
    enroll_member(Path(str(cfg["members"])), name=name, node_key=node_key,
                  receipt_key_pem=receipt_pem)
    typer.echo(done.stdout.strip())
    typer.echo(f"Enrolled {name}.")


@app.command()
def start(directory: Path = typer.Option(Path("."), "--dir"),
          app_dir: Path | None = typer.Option(None, help="Flower app to run (flwr run)"),
          health_timeout: float = typer.Option(60.0)) -> None:
    """Run the loopback SuperLink (+ fleet-only nginx if public) and the ServerApp run."""
    cfg = _load(directory)
    state = Path(str(cfg["state-dir"]))
    port = int(str(cfg["superlink-port"]))
    plan = SuperLinkPlan(port=port, state_dir=state, ca_cert=Path(str(cfg["ca-cert"])),
                         server_cert=Path(str(cfg["server-cert"])),
                         server_key=Path(str(cfg["server-key"])))
    env = _flwr_env(directory)
    write_flwr_home(Path(env["FLWR_HOME"]), port=port, ca_cert=plan.ca_cert)
    procs = [start_superlink(plan, log_path=state / "superlink.log", env=env)]
    try:
        wait_healthy(port=port, ca_cert=plan.ca_cert, timeout_s=health_timeout, proc=procs[0])
        typer.echo(f"SuperLink listening on 127.0.0.1:{port} (loopback only).")
        public = cfg.get("public-address")
        if public:
            _host, pport = _split(str(public))
            prefix = state / "nginx"
            conf = write_nginx_config(prefix, listen_host="0.0.0.0", listen_port=pport,
                                      upstream_port=port, server_cert=plan.server_cert,
                                      server_key=plan.server_key, ca_cert=plan.ca_cert)
            procs.append(start_nginx(conf, prefix, log_path=state / "nginx.log"))
            typer.echo(f"Members connect to {public} (Fleet API only) with CA {plan.ca_cert} "
                       "and their enrolled node key.")
        if app_dir is not None:
            subprocess.run(["flwr", "run", str(app_dir), "fedadmet", "--stream"], env=env,
                           check=False)
        else:
            procs[0].wait()
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
