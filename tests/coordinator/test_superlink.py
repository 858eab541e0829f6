"""The SuperLink starts with an allow-listed environment and private state (real process)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from coordinator.pki import create_pki
from coordinator.superlink import SuperLinkPlan, start_superlink


def _env_dumper(path: Path, out: Path, touch: Path) -> str:
    """A stand-in executable: records the environment it got and creates one file."""
    path.write_text(f"#!/bin/sh\nenv > '{out}'\n: > '{touch}'\n")
    path.chmod(0o700)
    return str(path)


def _finish(proc: subprocess.Popen[bytes]) -> None:
    """Bounded wait; the process group is killed by PID if it outlives it."""
    try:
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _environment(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_hostile_grpc_variable_in_the_parent_does_not_reach_the_superlink(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLWR_INTERNAL_GRPC_CONTROL_API", "1")
    monkeypatch.setenv("FLWR_INTERNAL_GRPC_FLEET_API", "1")
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "1")
    state = tmp_path / "state"
    dump = tmp_path / "env.txt"
    plan = SuperLinkPlan(port=9443, state_dir=state, ca_cert=tmp_path / "c",
                         server_cert=tmp_path / "s", server_key=tmp_path / "k",
                         executable=_env_dumper(tmp_path / "fake-superlink", dump,
                                                state / "superlink.db"))
    proc = start_superlink(plan, log_path=state / "superlink.log",
                           env={**os.environ, "FLWR_HOME": str(tmp_path / "home")})
    _finish(proc)
    env = _environment(dump.read_text())
    assert "FLWR_INTERNAL_GRPC_CONTROL_API" not in env
    assert "FLWR_INTERNAL_GRPC_FLEET_API" not in env
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["FLWR_HOME"] == str(tmp_path / "home") and env["PATH"] == os.environ["PATH"]


def test_superlink_state_log_and_keys_are_private_to_its_user(tmp_path: Path) -> None:
    """Other local users cannot read the SuperLink's database, log or the CA key."""
    tls = create_pki(tmp_path / "tls")
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    plan = SuperLinkPlan(port=9443, state_dir=state, ca_cert=tls.ca_cert,
                         server_cert=tls.server_cert, server_key=tls.server_key,
                         executable=_env_dumper(tmp_path / "fake-superlink",
                                                tmp_path / "env.txt", state / "superlink.db"))
    proc = start_superlink(plan, log_path=state / "superlink.log")
    _finish(proc)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(state) == 0o700 and mode(tmp_path / "tls") == 0o700
    # the log, and whatever the SuperLink creates (umask 077), are 0600
    assert mode(state / "superlink.log") == 0o600 and mode(state / "superlink.db") == 0o600
    assert mode(tls.ca_key) == 0o600 and mode(tls.server_key) == 0o600
