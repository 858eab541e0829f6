"""Build and launch the loopback-only ``flower-superlink`` (flwr 1.41 flags)."""

from __future__ import annotations

import os
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from coordinator.pki import private_dir
from protocols.errors import DeploymentError
from protocols.flower_env import flower_env

__all__ = [
    "SuperLinkPlan",
    "start_superlink",
    "superlink_command",
    "wait_healthy",
    "write_flwr_home",
]

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, kw_only=True)
class SuperLinkPlan:
    """Everything ``flower-superlink`` needs; host is fixed to loopback on purpose."""

    port: int
    state_dir: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    executable: str = "flower-superlink"


def superlink_command(plan: SuperLinkPlan) -> list[str]:
    """TLS, node auth, SQLite state, no runtime installs, loopback only."""
    return [plan.executable, "--host", LOOPBACK, "--port", str(plan.port),
            "--ssl-ca-certfile", str(plan.ca_cert), "--ssl-certfile", str(plan.server_cert),
            "--ssl-keyfile", str(plan.server_key), "--enable-supernode-auth",
            "--database", str(plan.state_dir / "superlink.db"),
            "--disable-runtime-dependency-installation"]


def write_flwr_home(flwr_home: Path, *, port: int, ca_cert: Path,
                    connection: str = "fedadmet") -> Path:
    """A FLWR_HOME whose config.toml names one loopback connection with our CA."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    cfg = flwr_home / "config.toml"
    cfg.write_text(
        "[superlink]\n"
        f'default = "{connection}"\n\n'
        f"[superlink.{connection}]\n"
        f'address = "{LOOPBACK}:{port}"\n'
        f'root-certificates = "{ca_cert}"\n',
        encoding="utf-8")
    return cfg


def start_superlink(plan: SuperLinkPlan, *, log_path: Path,
                    env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start in its own process group (so the spawned SuperExec stops with it).

    The SuperLink gets :func:`protocols.flower_env.flower_env` of ``env`` (default: this
    process's environment), never the whole of it; its state directory and log are
    private to this user (0700/0600).
    """
    private_dir(plan.state_dir)
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.chmod(log_path, 0o600)
    log = os.fdopen(fd, "ab")
    return subprocess.Popen(superlink_command(plan), stdout=log, stderr=subprocess.STDOUT,
                            env=flower_env(os.environ if env is None else env),
                            start_new_session=True, umask=0o077)


def wait_healthy(*, port: int, ca_cert: Path, timeout_s: float = 30.0,
                 proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``GET https://127.0.0.1:<port>/health`` (bounded) until it answers 200."""
    ctx = ssl.create_default_context(cafile=str(ca_cert))
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DeploymentError("SuperLink exited while starting", got=proc.returncode,
                                  fix="read its log file")
        try:
            with urllib.request.urlopen(f"https://{LOOPBACK}:{port}/health", context=ctx,
                                        timeout=2) as resp:
                if resp.status == 200:
                    return
                last = resp.status
        except OSError as exc:
            last = exc
        time.sleep(0.25)
    raise DeploymentError("SuperLink did not become healthy in time", got=last,
                          expected=f"HTTP 200 from /health within {timeout_s} s")
