"""``fedadmet coordinator``: commands the consortium operator types.

A coordinator directory holds ``coordinator.toml`` (where the SuperLink listens and its
TLS files), ``federation.toml`` (what the ServerApp runs: :class:`FederationConfig`),
``members.json``, ``receipt_key.pem``, ``tls/`` and ``state/``. The run is the bundle in
``coordinator/fab`` (configuration only; the installed fedadmet's apps), submitted over
loopback with ``config=<federation.toml>`` as run config.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator import checkpoint
from coordinator.config import FederationConfig
from coordinator.members import check_new_member, enroll_member
from coordinator.pki import create_pki
from coordinator.proxy import start_nginx, write_nginx_config
from coordinator.superlink import SuperLinkPlan, start_superlink, wait_healthy, write_flwr_home
from protocols.atomic_files import PRIVATE, PUBLIC, write_bytes
from protocols.errors import DeploymentError
from protocols.signing import fingerprint, load_public_key, private_key_pem

app = typer.Typer(help="Run the consortium coordinator (SuperLink + ServerApp).",
                  no_args_is_help=True)

DEPLOYMENT_NAME = "coordinator.toml"
FEDERATION_NAME = "federation.toml"
FAB_DIR = Path(__file__).resolve().parent / "fab"
CONNECTION = "fedadmet"
_STARTED = re.compile(r"Successfully started run (\d+)")


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DeploymentError("address must be HOST:PORT", got=address,
                              expected="e.g. fl.example.com:443")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, kw_only=True)
class Deployment:
    """``coordinator.toml``: the loopback SuperLink and the optional public address."""

    directory: Path
    port: int
    state_dir: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    public_address: str | None = None

    @classmethod
    def load(cls, directory: Path) -> Deployment:
        """Read ``<directory>/coordinator.toml`` (relative paths against the directory)."""
        directory = directory.resolve()
        path = directory / DEPLOYMENT_NAME
        if not path.exists():
            raise DeploymentError("no coordinator config here", got=str(path),
                                  fix="run `fedadmet coordinator init <dir>` first")
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        try:
            public = raw.get("public-address")
            return cls(directory=directory, port=int(raw["superlink-port"]),
                       state_dir=directory / str(raw["state-dir"]),
                       ca_cert=directory / str(raw["ca-cert"]),
                       server_cert=directory / str(raw["server-cert"]),
                       server_key=directory / str(raw["server-key"]),
                       public_address=str(public) if public else None)
        except (KeyError, ValueError) as exc:
            raise DeploymentError("coordinator.toml is incomplete", got=repr(exc),
                                  fix="recreate it with `fedadmet coordinator init`") from None

    @property
    def flwr_home(self) -> Path:
        """The operator CLI's FLWR_HOME: one loopback connection with our CA."""
        return self.state_dir / "flwr-home"

    def env(self) -> dict[str, str]:
        """Environment for ``flwr`` and the SuperLink (no telemetry, no installs)."""
        write_flwr_home(self.flwr_home, port=self.port, ca_cert=self.ca_cert,
                        connection=CONNECTION)
        return {**os.environ, "FLWR_HOME": str(self.flwr_home),
                "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def _federation_toml(*, rounds: int, round_timeout: float, min_participants: int,
                     endpoints: list[str]) -> str:
    lines = ["[federation]", f'id = "{uuid.uuid4()}"', f"rounds = {rounds}",
             f"min-participants = {min_participants}", f"round-timeout = {round_timeout}",
             'state-dir = "state"', 'members = "members.json"',
             'signing-key = "receipt_key.pem"', ""]
    for spec in endpoints:
        name, _, task = spec.partition(":")
        if not name or task not in ("regression", "classification"):
            raise DeploymentError("--endpoint must be NAME:regression or NAME:classification",
                                  got=spec, expected="e.g. lipophilicity:regression")
        lines += ["[[model.endpoints]]", f'name = "{name}"', f'task = "{task}"', ""]
    return "\n".join(lines)


@app.command()
def init(directory: Path, public_address: str | None = typer.Option(None),
         port: int = typer.Option(9443, help="loopback SuperLink port"),
         rounds: int = typer.Option(3), round_timeout: float = typer.Option(600.0),
         min_participants: int = typer.Option(2),
         endpoint: list[str] = typer.Option(..., help="consortium endpoint NAME:TASK")) -> None:
    """Create the CA, TLS server certificate, receipt key, coordinator.toml, federation.toml."""
    directory = directory.resolve()
    host = _split(public_address)[0] if public_address else None
    fed_text = _federation_toml(rounds=rounds, round_timeout=round_timeout,
                                min_participants=min_participants, endpoints=endpoint)
    tls = create_pki(directory / "tls", public_host=host)
    receipt = Ed25519PrivateKey.generate()
    write_bytes(directory / "receipt_key.pem", private_key_pem(receipt), mode=PRIVATE)
    (directory / "state").mkdir(parents=True, exist_ok=True)
    public = f'public-address = "{public_address}"\n' if public_address else ""
    write_bytes(directory / DEPLOYMENT_NAME, (
        f"superlink-port = {port}\n{public}"
        'state-dir = "state"\n'
        f'ca-cert = "{tls.ca_cert.relative_to(directory)}"\n'
        f'server-cert = "{tls.server_cert.relative_to(directory)}"\n'
        f'server-key = "{tls.server_key.relative_to(directory)}"\n').encode(), mode=PUBLIC)
    write_bytes(directory / FEDERATION_NAME, fed_text.encode(), mode=PUBLIC)
    FederationConfig.load(directory / FEDERATION_NAME)  # what we wrote must load
    typer.echo(f"Created {directory / DEPLOYMENT_NAME} and {directory / FEDERATION_NAME}")
    typer.echo(f"Give members the CA certificate: {tls.ca_cert}")
    typer.echo(f"Coordinator receipt key fingerprint: {fingerprint(receipt)}")


@app.command()
def enroll(public_key: Path, name: str = typer.Option(...),
           receipt_key: Path = typer.Option(...),
           max_epsilon: float | None = typer.Option(
               None, min=0.0, help="the member's declared privacy budget ε (default: none "
               "beyond the plan's target-epsilon)"),
           max_examples: int | None = typer.Option(
               None, min=1, help="the member's example cap (default: admission.max-num-examples)"),
           directory: Path = typer.Option(Path("."), "--dir")) -> None:
    """Register a member's node key with the SuperLink (loopback) and record it.

    Duplicates (name, node key or receipt key) are refused before the SuperLink is
    touched. ``--max-epsilon`` and ``--max-examples`` are fixed here by the operator:
    admission rejects a claimed ε above the first, weighting and the update-norm bound
    use the second.
    """
    dep = Deployment.load(directory)
    fed = FederationConfig.load(dep.directory / FEDERATION_NAME)
    if fed.members_file is None:
        raise DeploymentError("federation.toml names no members file",
                              fix='add members = "members.json" to [federation]')
    node_key = public_key.read_text(encoding="utf-8").strip()
    receipt_pem = receipt_key.read_text(encoding="utf-8")
    load_public_key(receipt_pem.encode())  # fail before touching the SuperLink
    check_new_member(fed.members_file, name=name, node_key=node_key, receipt_key_pem=receipt_pem)
    done = subprocess.run(["flwr", "supernode", "register", str(public_key), CONNECTION,
                           "--name", name], env=dep.env(), capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode != 0:
        raise DeploymentError("the SuperLink refused the registration",
                              got=(done.stdout + done.stderr)[-400:],
                              fix="start the coordinator first (`fedadmet coordinator start`)")
    enroll_member(fed.members_file, name=name, node_key=node_key, receipt_key_pem=receipt_pem,
                  max_epsilon=math.inf if max_epsilon is None else max_epsilon,
                  max_examples=max_examples)
    typer.echo(done.stdout.strip())
    typer.echo(f"Enrolled {name}.")


def check_resume(cfg: FederationConfig, *, resume: bool) -> int:
    """The last checkpointed round; a checkpoint needs ``--resume``, ``--resume`` one."""
    ckpt = checkpoint.latest(cfg.state_dir)
    done = 0 if ckpt is None else ckpt.round
    if ckpt is not None and not resume:
        raise DeploymentError(f"federation {cfg.federation_id} already has a checkpoint",
                              got=f"round {done} in {cfg.state_dir}",
                              fix="pass --resume to continue it from that round")
    if ckpt is None and resume:
        raise DeploymentError("nothing to resume: no checkpoint", got=str(cfg.state_dir),
                              fix="start the federation without --resume")
    return done


def run_command(config: Path, *, app_dir: Path = FAB_DIR) -> list[str]:
    """``flwr run`` of the consortium bundle with federation.toml as run config."""
    return ["flwr", "run", str(app_dir), CONNECTION, "--run-config",
            f'config="{config.resolve()}"', "--stream"]


def run_status(dep: Deployment, run_id: int) -> str:
    """The SuperLink's status for ``run_id`` (e.g. ``finished:completed``), via loopback."""
    done = subprocess.run(["flwr", "ls", CONNECTION, "--run-id", str(run_id), "--format",
                           "json"], env=dep.env(), capture_output=True, text=True,
                          timeout=60, check=False)
    try:
        runs = json.loads(done.stdout)["runs"]
        return str(runs[0]["status"])
    except (ValueError, KeyError, IndexError, TypeError):
        return f"unknown ({(done.stdout + done.stderr).strip()[-300:]})"


def _submit(dep: Deployment, config: Path, *, resume: bool, app_dir: Path) -> int:
    """Run the federation, stream its log, and exit 0 only if the run completed.

    ``flwr run --stream`` exits 0 however the run ended (a ServerApp that raised
    included), so the run's final status is asked of the SuperLink afterwards.
    """
    cfg = FederationConfig.load(config)
    done = check_resume(cfg, resume=resume)
    if resume:
        typer.echo(f"Resuming federation {cfg.federation_id} after round {done}.")
    run_id: int | None = None
    with subprocess.Popen(run_command(config, app_dir=app_dir), env=dep.env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            found = _STARTED.search(line)
            if found and run_id is None:
                run_id = int(found.group(1))
    if run_id is None:
        typer.echo("fedadmet: the SuperLink did not start the run (see above).", err=True)
        return proc.returncode or 1
    status = run_status(dep, run_id)
    if status != "finished:completed":
        typer.echo(f"fedadmet: run {run_id} of federation {cfg.federation_id} ended as "
                   f"{status}; resume it with `fedadmet coordinator run --resume`.", err=True)
        return 1
    typer.echo(f"fedadmet: run {run_id} of federation {cfg.federation_id} completed.")
    return 0


@app.command()
def run(directory: Path = typer.Option(Path("."), "--dir"),
        config: Path | None = typer.Option(None, help="federation.toml (default: --dir's)"),
        resume: bool = typer.Option(False, help="continue from the last checkpoint"),
        app_dir: Path = typer.Option(FAB_DIR, help="Flower app to run")) -> None:
    """Submit the federation to the running SuperLink (loopback) and stream its log."""
    dep = Deployment.load(directory)
    raise typer.Exit(_submit(dep, config or dep.directory / FEDERATION_NAME, resume=resume,
                             app_dir=app_dir))


@app.command()
def start(directory: Path = typer.Option(Path("."), "--dir"),
          run_federation: bool = typer.Option(False, "--run",
                                              help="also run federation.toml, then stop"),
          resume: bool = typer.Option(False, help="run, continuing from the last checkpoint"),
          app_dir: Path = typer.Option(FAB_DIR, help="Flower app to run"),
          health_timeout: float = typer.Option(60.0)) -> None:
    """Run the loopback SuperLink (+ fleet-only nginx if public), optionally the federation."""
    dep = Deployment.load(directory)
    # SIGTERM (systemd stop, kill) must run the finally below: the SuperLink and nginx
    # live in their own sessions and would otherwise outlive this command.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    plan = SuperLinkPlan(port=dep.port, state_dir=dep.state_dir, ca_cert=dep.ca_cert,
                         server_cert=dep.server_cert, server_key=dep.server_key)
    env = dep.env()
    procs = [start_superlink(plan, log_path=dep.state_dir / "superlink.log", env=env)]
    try:
        wait_healthy(port=dep.port, ca_cert=plan.ca_cert, timeout_s=health_timeout,
                     proc=procs[0])
        typer.echo(f"SuperLink listening on 127.0.0.1:{dep.port} (loopback only).", err=True)
        if dep.public_address:
            _host, pport = _split(dep.public_address)
            prefix = dep.state_dir / "nginx"
            conf = write_nginx_config(prefix, listen_host="0.0.0.0", listen_port=pport,
                                      upstream_port=dep.port, server_cert=plan.server_cert,
                                      server_key=plan.server_key, ca_cert=plan.ca_cert)
            procs.append(start_nginx(conf, prefix, log_path=dep.state_dir / "nginx.log"))
            typer.echo(f"Members connect to {dep.public_address} (Fleet API only) with CA "
                       f"{plan.ca_cert} and their enrolled node key.", err=True)
        if run_federation or resume:
            raise typer.Exit(_submit(dep, dep.directory / FEDERATION_NAME, resume=resume,
                                     app_dir=app_dir))
        procs[0].wait()
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
