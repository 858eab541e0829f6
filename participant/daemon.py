"""Build and run the member's stock ``flower-supernode`` (outbound only; flwr 1.41 flags).

The SuperNode runs with ``--isolation process``; the daemon starts the stock
``flower-superexec`` itself, sharing a fresh secret with the SuperNode, with the code
pin's runner first on its ``PATH`` (see :mod:`participant.pinned_clientapp`): every
ClientApp bundle is checked against the member's :class:`CodePin` before anything of it
is unpacked or run. Pinned to the installed fedadmet by default; running unpinned needs
``unsafe_run_unpinned_code=True`` and is logged loudly.

Restarts are bounded with exponential backoff; every line logged is plain language.
SIGTERM, SIGINT or SIGHUP to the daemon stops (and reaps) the SuperNode and SuperExec it
started, each by its process group, with the ClientApps the SuperExec launched; on Linux
both also get SIGTERM from the kernel if the daemon itself dies (``PR_SET_PDEATHSIG``).
Flower code 305 means the SuperLink refused the connection (unregistered key, TLS). flwr
1.41 exits with status 1 for every error and only logs ``Exit Code: 305``, so the code is
read from what the attempt wrote to the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from participant.node_log import LogPump
from participant.pinned_clientapp import PIN_ENV
from participant.pinning import CodePin
from protocols.atomic_files import PRIVATE, PUBLIC, write_bytes
from protocols.errors import ConfigError, DeploymentError
from protocols.flower_env import flower_env

__all__ = [
    "DEFAULT_TASK_POLL_INTERVAL",
    "STOP_SIGNALS",
    "NodeProcesses",
    "StopRequested",
    "SuperNodePlan",
    "flower_exit_code",
    "format_node_config",
    "run_with_restarts",
    "start_node",
    "stop_on_signals",
    "superexec_command",
    "supernode_command",
    "supernode_env",
    "write_pin_runtime",
]

log = logging.getLogger("fedadmet.participant.daemon")
REFUSED_EXIT_CODE = 305
_FLOWER_EXIT = re.compile(r"Exit Code: (\d+)")
_LOOPBACK_NO_PROXY = ("127.0.0.1", "localhost", "::1")
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
DEFAULT_TASK_POLL_INTERVAL = 0.2
MIN_TASK_POLL_INTERVAL, MAX_TASK_POLL_INTERVAL = 0.01, 60.0  # flwr 1.41's own bounds
# Every task runner SuperExec may launch (flwr 1.41 TASK_TYPE_TO_COMMAND). A member runs
# only ClientApps; the others are shadowed by a refusal so no other code path opens.
_OTHER_RUNNERS = ("flwr-agentapp", "flwr-connector", "flwr-model", "flwr-serverapp",
                  "flwr-simulation")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class StopRequested(Exception):
    """The daemon was asked to stop (a signal in :data:`STOP_SIGNALS`)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn the first stop signal into :class:`StopRequested`; later ones are ignored.

    Python's default SIGTERM ends the process without running ``finally`` blocks, so the
    SuperNode (own session) was left running, reparented to PID 1. Ignoring repeats
    keeps a second Ctrl-C from interrupting the stop itself. Main thread only (Python
    delivers signals there); elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = False

    def handler(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise StopRequested(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the daemon dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


@dataclass(frozen=True, kw_only=True)
class SuperNodePlan:
    """What one SuperNode needs. ``port`` is its local runtime API (distinct per host).

    ``code_pin`` is the ClientApp code this member runs (default: only code identical to
    the installed fedadmet). ``None`` is refused unless ``unsafe_run_unpinned_code``.
    """

    superlink: str
    root_certificates: Path
    node_key: Path
    port: int
    node_config: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    code_pin: CodePin | None = field(default_factory=CodePin.installed)
    unsafe_run_unpinned_code: bool = False
    # SuperExec's task poll (FLWR_SUPEREXEC_TASK_POLL_INTERVAL; Flower's default 1 s):
    # every message waits for the next poll (benchmarks/round_overhead.py).
    task_poll_interval: float = DEFAULT_TASK_POLL_INTERVAL
    executable: str = "flower-supernode"
    superexec_executable: str = "flower-superexec"

    def __post_init__(self) -> None:
        if self.code_pin is None and not self.unsafe_run_unpinned_code:
            raise ConfigError("code_pin", "no code pin: the participant would run whatever "
                              "ClientApp code the coordinator sends", got="code_pin=None",
                              expected="a CodePin", fix="pin the reviewed bundle, or set "
                              "unsafe_run_unpinned_code=True to accept that risk knowingly")
        if not MIN_TASK_POLL_INTERVAL <= self.task_poll_interval <= MAX_TASK_POLL_INTERVAL:
            raise ConfigError("task_poll_interval", "is outside Flower's bounds",
                              got=self.task_poll_interval,
                              expected=f"{MIN_TASK_POLL_INTERVAL} to {MAX_TASK_POLL_INTERVAL} s")
        if self.code_pin is not None and self.unsafe_run_unpinned_code:
            raise ConfigError("unsafe_run_unpinned_code", "contradicts the code pin also given",
                              got=self.code_pin.describe(), fix="choose one of the two")
        if not 0 < self.port < 65536:
            raise ConfigError("port", "local runtime port out of range", got=self.port,
                              expected="1-65535")


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


def supernode_command(plan: SuperNodePlan, *, secret_file: Path) -> list[str]:
    """TLS to the coordinator, node-key authentication, our own SuperExec (process)."""
    cmd = [plan.executable, "--superlink", plan.superlink,
           "--root-certificates", str(plan.root_certificates),
           "--auth-supernode-private-key", str(plan.node_key),
           "--port", str(plan.port), "--isolation", "process",
           "--superexec-auth-secret-file", str(secret_file)]
    if plan.node_config:
        cmd += ["--node-config", format_node_config(plan.node_config)]
    return cmd


def superexec_command(plan: SuperNodePlan, *, secret_file: Path) -> list[str]:
    """The stock SuperExec on the SuperNode's loopback runtime API; exits with the daemon."""
    return [plan.superexec_executable, "--insecure",
            "--runtime-api-address", f"127.0.0.1:{plan.port}",
            "--superexec-auth-secret-file", str(secret_file), "--parent-pid", str(os.getpid())]


def supernode_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed Flower environment (:func:`protocols.flower_env.flower_env`).

    Keeps HTTPS_PROXY; makes sure loopback (the local SuperExec) is never proxied.
    """
    src = os.environ if base is None else base
    current = src.get("NO_PROXY") or src.get("no_proxy") or ""
    entries = [e for e in current.split(",") if e]
    for host in _LOOPBACK_NO_PROXY:
        if host not in entries:
            entries.append(host)
    no_proxy = ",".join(entries)
    return flower_env(src, {"NO_PROXY": no_proxy, "no_proxy": no_proxy})


def write_pin_runtime(pin: CodePin, work_dir: Path, *,
                      python: str = sys.executable) -> tuple[Path, Path]:
    """Write ``pin.json`` and the ``bin/`` of runners SuperExec finds first on PATH."""
    bin_dir = work_dir / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    pin_file = work_dir / "pin.json"
    write_bytes(pin_file, json.dumps(pin.to_mapping(), indent=2).encode(), mode=PUBLIC)
    runner = (f"#!/bin/sh\nexec {shlex.quote(python)} -I -m participant.pinned_clientapp "
              '"$@"\n')
    write_bytes(bin_dir / "flwr-clientapp", runner.encode(), mode=0o755)
    for name in _OTHER_RUNNERS:
        refusal = (f"#!/bin/sh\necho 'fedadmet: REFUSED to run {name}: a participant runs "
                   "only pinned ClientApps.' >&2\nexit 1\n")
        write_bytes(bin_dir / name, refusal.encode(), mode=0o755)
    return pin_file, bin_dir


@dataclass
class NodeProcesses:
    """The SuperExec and SuperNode of one attempt, each in its own process group."""

    superexec: subprocess.Popen[bytes]
    supernode: subprocess.Popen[bytes]
    pump: LogPump | None = None

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """SIGTERM each group, then SIGKILL what is left after ``timeout_s``; reap both.

        The groups are signalled even when their leader already exited: a ClientApp the
        SuperExec launched lives on in the SuperExec's group.
        """
        for proc in (self.supernode, self.superexec):
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in (self.supernode, self.superexec):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)
        for proc in (self.supernode, self.superexec):  # leftovers of an exited leader
            _signal_group(proc, signal.SIGKILL)
        if self.pump is not None:  # every line they wrote is in the log now
            self.pump.join()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def start_node(plan: SuperNodePlan, *, work_dir: Path, log_path: Path,
               env: Mapping[str, str] | None = None,
               extra_env: Mapping[str, str] | None = None) -> NodeProcesses:
    """Start SuperExec (with the pin's runners, if pinned) and SuperNode; do not wait.

    Both get :func:`supernode_env` of ``env`` (default: this process's environment);
    ``extra_env`` reaches the SuperExec and its ClientApps as given.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    base = supernode_env(env)
    secret_file = work_dir / "superexec.secret"
    write_bytes(secret_file, secrets.token_hex(32).encode(), mode=PRIVATE)
    exec_extra = {**(extra_env or {}), TASK_POLL_ENV: str(plan.task_poll_interval)}
    if plan.code_pin is not None:
        pin_file, bin_dir = write_pin_runtime(plan.code_pin, work_dir)
        exec_extra[PIN_ENV] = str(pin_file)
        exec_extra["PATH"] = os.pathsep.join([str(bin_dir), base.get("PATH", os.defpath)])
        log.info("ClientApp code is pinned: this participant runs only %s.",
                 plan.code_pin.describe())
    else:
        log.warning("UNSAFE: no code pin (unsafe_run_unpinned_code). This participant will "
                    "run WHATEVER ClientApp code the coordinator sends, next to your data.")
    exec_env = flower_env(base, exec_extra)
    pump = LogPump(log_path)  # one pipe for both (and their ClientApps), ANSI codes removed
    out = pump.write_fd
    try:
        superexec = subprocess.Popen(superexec_command(plan, secret_file=secret_file),
                                     stdout=out, stderr=subprocess.STDOUT, env=exec_env,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        try:
            supernode = subprocess.Popen(supernode_command(plan, secret_file=secret_file),
                                         stdout=out, stderr=subprocess.STDOUT, env=base,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        except BaseException:  # OSError, or a stop signal between the two starts
            _signal_group(superexec, signal.SIGKILL)
            superexec.wait(timeout=5)
            raise
    finally:
        pump.started()
    return NodeProcesses(superexec=superexec, supernode=supernode, pump=pump)


def flower_exit_code(log_text: str, returncode: int) -> int:
    """Flower's own exit code (last ``Exit Code: N`` logged), else the process status."""
    codes = _FLOWER_EXIT.findall(log_text)
    return int(codes[-1]) if codes and returncode != 0 else returncode


def run_with_restarts(plan: SuperNodePlan, *, log_path: Path, max_restarts: int = 5,
                      backoff_s: float = 2.0, max_backoff_s: float = 60.0,
                      work_dir: Path | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> int:
    """Run the SuperNode; restart on crashes, stop at once if the coordinator refuses us.

    A stop signal (:data:`STOP_SIGNALS`) stops and reaps every process of the attempt and
    returns 0: stopping the daemon is a normal end.
    """
    try:
        with stop_on_signals():
            return _run_attempts(plan, log_path=log_path, max_restarts=max_restarts,
                                 backoff_s=backoff_s, max_backoff_s=max_backoff_s,
                                 work=work_dir if work_dir is not None
                                 else log_path.parent / "supernode-runtime", sleep=sleep)
    except StopRequested as stop:
        log.info("Stopped on %s: the SuperNode and SuperExec this daemon started are "
                 "stopped.", stop)
        return 0


def _run_attempts(plan: SuperNodePlan, *, log_path: Path, max_restarts: int,
                  backoff_s: float, max_backoff_s: float, work: Path,
                  sleep: Callable[[float], None]) -> int:
    delay = backoff_s
    for attempt in range(max_restarts + 1):
        log.info("Starting the Flower SuperNode (attempt %d of %d), connecting to %s.",
                 attempt + 1, max_restarts + 1, plan.superlink)
        offset = log_path.stat().st_size if log_path.exists() else 0
        node = start_node(plan, work_dir=work, log_path=log_path)
        try:
            status = node.supernode.wait()
        finally:
            node.stop()
        with open(log_path, "rb") as f:
            f.seek(offset)
            rc = flower_exit_code(f.read().decode("utf-8", "replace"), status)
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
