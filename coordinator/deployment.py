"""A coordinator directory and what the operator's commands do with it.

A coordinator directory holds ``coordinator.toml`` (where the SuperLink listens and its
TLS files), ``federation.toml`` (what the ServerApp runs: :class:`FederationConfig`),
``members.json``, ``receipt_key.pem``, ``tls/`` and ``state/``. The run is the bundle in
``coordinator/fab`` (configuration only; the installed fedadmet's apps), submitted over
loopback with ``config=<federation.toml>`` as run config. ``fedadmet coordinator``
(:mod:`fedadmet.cli.coordinator`) parses, prints and exits; the work is here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator import checkpoint
from coordinator.config import FederationConfig
from coordinator.members import check_new_member, enroll_member
from coordinator.pki import create_pki
from coordinator.proxy import start_nginx, write_nginx_config
from coordinator.superlink import SuperLinkPlan, start_superlink, wait_healthy, write_flwr_home
from protocols.atomic_files import PRIVATE, PUBLIC, write_bytes
from protocols.errors import DeploymentError
from protocols.settings import ConfigPaths, Table, read_toml
from protocols.signing import fingerprint, load_public_key, private_key_pem, public_key_pem

__all__ = [
    "CONNECTION",
    "DEPLOYMENT_NAME",
    "FAB_DIR",
    "FEDERATION_NAME",
    "RECEIPT_PUBLIC_KEY",
    "CoordinatorServices",
    "Deployment",
    "NewDeployment",
    "check_resume",
    "federation_toml",
    "finished",
    "init_deployment",
    "register_member",
    "resume_advice",
    "run_command",
    "run_status",
    "split_address",
    "stream_run",
]

DEPLOYMENT_NAME = "coordinator.toml"
RECEIPT_PUBLIC_KEY = "receipt_key.pub.pem"  # what members verify receipts with
FEDERATION_NAME = "federation.toml"
FAB_DIR = Path(__file__).resolve().parent / "fab"
CONNECTION = "fedadmet"
_STARTED = re.compile(r"Successfully started run (\d+)")


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets) as ``(host, port)``."""
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
    # Where nginx binds (HOST:PORT); default: the public address itself. "0.0.0.0:443"
    # (or "[::]:443") binds every interface, for a host behind NAT or a load balancer.
    listen_address: str | None = None

    @classmethod
    def load(cls, directory: Path) -> Deployment:
        """Read ``<directory>/coordinator.toml`` (relative paths against the directory).

        Validated like every config (:class:`protocols.settings.Table`): a missing or
        mistyped key is refused by name, never left to a default.
        """
        directory = directory.resolve()
        path = directory / DEPLOYMENT_NAME
        if not path.exists():
            raise DeploymentError("no coordinator config here", got=str(path),
                                  fix="run `fedadmet coordinator init <dir>` first")
        t = Table(read_toml(path), source=str(path))
        paths = ConfigPaths(directory)
        dep = cls(directory=directory,
                  port=t.integer("superlink-port", required=True, min=1, max=65535),
                  state_dir=paths(t.text("state-dir", required=True)),
                  ca_cert=paths(t.text("ca-cert", required=True)),
                  server_cert=paths(t.text("server-cert", required=True)),
                  server_key=paths(t.text("server-key", required=True)),
                  public_address=t.optional_text("public-address"),
                  listen_address=t.optional_text("listen-address"))
        t.finish()
        return dep

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

    def proxy_listen(self) -> tuple[str, int]:
        """Where nginx binds: ``listen-address``, else the public address's host and port."""
        where = self.listen_address or self.public_address
        if where is None:
            raise DeploymentError("no public address: nothing for nginx to listen on",
                                  fix="pass --public-address HOST:PORT to `coordinator init`")
        return split_address(where)

    def superlink_plan(self) -> SuperLinkPlan:
        return SuperLinkPlan(port=self.port, state_dir=self.state_dir, ca_cert=self.ca_cert,
                             server_cert=self.server_cert, server_key=self.server_key)


def federation_toml(*, rounds: int, round_timeout: float, min_participants: int,
                    endpoints: list[str]) -> str:
    """The ``federation.toml`` that ``init`` writes; endpoints as ``NAME:TASK``."""
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


@dataclass(frozen=True)
class NewDeployment:
    """What ``init`` created, for the operator to hand on."""

    deployment_toml: Path
    federation_toml: Path
    ca_cert: Path
    receipt_fingerprint: str
    receipt_public_key: Path


def init_deployment(directory: Path, *, public_address: str | None, port: int, rounds: int,
                    round_timeout: float, min_participants: int,
                    endpoints: list[str], listen_address: str | None = None) -> NewDeployment:
    """Create the CA, TLS server certificate, receipt key, coordinator.toml, federation.toml."""
    directory = directory.resolve()
    host = split_address(public_address)[0] if public_address else None
    if listen_address is not None:
        if public_address is None:
            raise DeploymentError("--listen-address needs --public-address",
                                  got=listen_address, fix="give the address members dial too")
        split_address(listen_address)
    fed_text = federation_toml(rounds=rounds, round_timeout=round_timeout,
                               min_participants=min_participants, endpoints=endpoints)
    tls = create_pki(directory / "tls", public_host=host)
    receipt = Ed25519PrivateKey.generate()
    write_bytes(directory / "receipt_key.pem", private_key_pem(receipt), mode=PRIVATE)
    write_bytes(directory / RECEIPT_PUBLIC_KEY, public_key_pem(receipt), mode=PUBLIC)
    (directory / "state").mkdir(parents=True, exist_ok=True)
    public = f'public-address = "{public_address}"\n' if public_address else ""
    if listen_address:
        public += f'listen-address = "{listen_address}"\n'
    write_bytes(directory / DEPLOYMENT_NAME, (
        f"superlink-port = {port}\n{public}"
        'state-dir = "state"\n'
        f'ca-cert = "{tls.ca_cert.relative_to(directory)}"\n'
        f'server-cert = "{tls.server_cert.relative_to(directory)}"\n'
        f'server-key = "{tls.server_key.relative_to(directory)}"\n').encode(), mode=PUBLIC)
    write_bytes(directory / FEDERATION_NAME, fed_text.encode(), mode=PUBLIC)
    FederationConfig.load(directory / FEDERATION_NAME)  # what we wrote must load
    return NewDeployment(directory / DEPLOYMENT_NAME, directory / FEDERATION_NAME, tls.ca_cert,
                         fingerprint(receipt), directory / RECEIPT_PUBLIC_KEY)


def register_member(dep: Deployment, public_key: Path, *, name: str, receipt_key: Path,
                    max_epsilon: float | None, max_examples: int | None) -> str:
    """Register a member's node key with the SuperLink (loopback) and record it.

    Duplicates (name, node key or receipt key) are refused before the SuperLink is
    touched. Returns what ``flwr supernode register`` printed.
    """
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
    return done.stdout.strip()


def check_resume(cfg: FederationConfig, *, resume: bool) -> int:
    """The last checkpointed round; a checkpoint needs ``--resume``, ``--resume`` one."""
    ckpt = checkpoint.latest(cfg.state_dir)
    done = 0 if ckpt is None else ckpt.round
    if ckpt is not None and not resume:
        raise DeploymentError(f"federation {cfg.federation_id} already has a checkpoint",
                              got=f"round {done} in {cfg.state_dir}",
                              fix="pass --resume to continue it from that round")
    if ckpt is None and resume:
        raise DeploymentError("nothing to resume: no round of this federation was "
                              "checkpointed", got=str(cfg.state_dir),
                              fix="run it from the start: `fedadmet coordinator run` "
                              "without --resume")
    return done


def resume_advice(cfg: FederationConfig) -> str:
    """What to type after a run that did not complete: only what ``run`` will accept."""
    ckpt = checkpoint.latest(cfg.state_dir)
    if ckpt is None:
        return ("no round was checkpointed, so there is nothing to resume: run it again "
                "with `fedadmet coordinator run` (without --resume)")
    if ckpt.round >= cfg.rounds:
        return f"all {cfg.rounds} rounds are checkpointed: nothing is left to run"
    return (f"round {ckpt.round} of {cfg.rounds} is checkpointed: continue with "
            "`fedadmet coordinator run --resume`")


def finished(cfg: FederationConfig) -> bool:
    """Whether every planned round of ``cfg`` is checkpointed."""
    ckpt = checkpoint.latest(cfg.state_dir)
    return ckpt is not None and ckpt.round >= cfg.rounds


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


def stream_run(dep: Deployment, config: Path, *, app_dir: Path,
               on_line: Callable[[str], None]) -> tuple[int | None, int]:
    """``flwr run --stream``, each log line to ``on_line``: (run id or None, exit status).

    ``flwr run --stream`` exits 0 however the run ended (a ServerApp that raised
    included), so callers ask :func:`run_status` for the run's final status.
    """
    run_id: int | None = None
    with subprocess.Popen(run_command(config, app_dir=app_dir), env=dep.env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line)
            found = _STARTED.search(line)
            if found and run_id is None:
                run_id = int(found.group(1))
    return run_id, proc.returncode


@dataclass
class CoordinatorServices:
    """The loopback SuperLink and, for a public address, the fleet-only nginx in front.

    Each runs in its own session; leaving the ``with`` block ends every process group
    (TERM, then KILL after 10 s), so none outlives the command.
    """

    dep: Deployment
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_superlink(self, *, health_timeout: float) -> None:
        plan = self.dep.superlink_plan()
        self.procs.append(start_superlink(plan, log_path=self.dep.state_dir / "superlink.log",
                                          env=self.dep.env()))
        wait_healthy(port=self.dep.port, ca_cert=plan.ca_cert, timeout_s=health_timeout,
                     proc=self.procs[0])

    def start_proxy(self) -> None:
        """nginx on the public address, forwarding the Fleet API only."""
        host, pport = self.dep.proxy_listen()
        prefix = self.dep.state_dir / "nginx"
        conf = write_nginx_config(prefix, listen_host=host, listen_port=pport,
                                  upstream_port=self.dep.port, server_cert=self.dep.server_cert,
                                  server_key=self.dep.server_key, ca_cert=self.dep.ca_cert)
        log_path = self.dep.state_dir / "nginx.log"
        nginx = start_nginx(conf, prefix, log_path=log_path)
        self.procs.append(nginx)
        _wait_listening(nginx, host, pport, log_path=log_path)

    def wait(self) -> None:
        """Until the SuperLink exits."""
        self.procs[0].wait()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)

    def __enter__(self) -> CoordinatorServices:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _wait_listening(proc: subprocess.Popen[bytes], host: str, port: int, *, log_path: Path,
                    timeout_s: float = 30.0) -> None:
    """Until nginx accepts on ``host:port`` (bounded); its own error if it exited."""
    dial = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-600:] if log_path.exists() else ""
            raise DeploymentError(f"nginx could not listen on {host}:{port}", got=tail,
                                  fix="use an address of this host, or bind every interface "
                                  "deliberately: `coordinator init ... --listen-address "
                                  f"0.0.0.0:{port}` (listen-address in coordinator.toml)")
        with contextlib.suppress(OSError), socket.create_connection((dial, port), timeout=1):
            return
        time.sleep(0.2)
    raise DeploymentError("nginx did not start listening in time", got=f"{host}:{port}",
                          expected=f"a connection within {timeout_s:.0f} s", fix=f"read {log_path}")
