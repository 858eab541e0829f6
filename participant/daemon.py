"""Build and run the member's stock ``flower-supernode`` (outbound only; flwr 1.41 flags).

Restarts are bounded with exponential backoff; every line logged is plain language.
Exit code 305 means the SuperLink refused the connection (unregistered key, TLS).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from protocols.errors import DeploymentError

__all__ = [
    "SuperNodePlan",
    "format_node_config",
    "run_with_restarts",
    "supernode_command",
    "supernode_env",
]

log = logging.getLogger("fedadmet.participant.daemon")
REFUSED_EXIT_CODE = 305
_LOOPBACK_NO_PROXY = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True, kw_only=True)
class SuperNodePlan:
    """What one SuperNode needs. ``port`` is its local runtime API (distinct per host)."""

    superlink: str
    root_certificates: Path
    node_key: Path
    port: int
    node_config: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    isolation: str = "subprocess"
    executable: str = "flower-supernode"


def format_node_config(values: Mapping[str, str | int | float | bool]) -> str:
    """Flower's ``key=value`` list: strings quoted (TOML), numbers/bools bare."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def supernode_command(plan: SuperNodePlan) -> list[str]:
    """TLS to the coordinator, node-key authentication, local runtime port."""
    cmd = [plan.executable, "--superlink", plan.superlink,
           "--root-certificates", str(plan.root_certificates),
           "--auth-supernode-private-key", str(plan.node_key),
           "--port", str(plan.port), "--isolation", plan.isolation]
    if plan.node_config:
        cmd += ["--node-config", format_node_config(plan.node_config)]
    return cmd


def supernode_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Keep HTTPS_PROXY; make sure loopback (the local SuperExec) is never proxied."""
    env = dict(os.environ if base is None else base)
    current = env.get("NO_PROXY") or env.get("no_proxy") or ""
    entries = [e for e in current.split(",") if e]
    for host in _LOOPBACK_NO_PROXY:
        if host not in entries:
            entries.append(host)
    env["NO_PROXY"] = env["no_proxy"] = ",".join(entries)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    return env


def run_with_restarts(plan: SuperNodePlan, *, log_path: Path, max_restarts: int = 5,
                      backoff_s: float = 2.0, max_backoff_s: float = 60.0,
                      sleep: Callable[[float], None] = time.sleep) -> int:
    """Run the SuperNode; restart on crashes, stop at once if the coordinator refuses us."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    delay = backoff_s
    for attempt in range(max_restarts + 1):
        log.info("Starting the Flower SuperNode (attempt %d of %d), connecting to %s.",
                 attempt + 1, max_restarts + 1, plan.superlink)
        with open(log_path, "ab") as out:
            rc = subprocess.call(supernode_command(plan), stdout=out, stderr=subprocess.STDOUT,
                                 env=supernode_env())
        if rc == 0:
            log.info("The SuperNode stopped normally.")
            return 0
        if rc == REFUSED_EXIT_CODE:
            raise DeploymentError("the coordinator refused this participant's connection",
                                  got=f"exit code {rc}", fix="check that your node key is "
                                  "enrolled, and the coordinator address and CA certificate")
        log.warning("The SuperNode stopped with exit code %d; retrying in %.0f s. "
                    "Details are in %s.", rc, delay, log_path)
        sleep(delay)
        delay = min(delay * 2, max_backoff_s)
    raise DeploymentError("the SuperNode kept failing; giving up",
                          got=f"{max_restarts + 1} attempts", fix=f"read {log_path}")
