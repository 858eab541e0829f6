from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.pki import create_pki
from coordinator.superlink import wait_healthy, write_flwr_home
from participant.daemon import (
    SuperNodePlan,
    flower_exit_code,
    format_node_config,
    start_node,
    superexec_command,
    supernode_command,
    supernode_env,
    write_pin_runtime,
)
from participant.keys import create_member_keys
from participant.pinned_clientapp import PIN_ENV
from participant.pinning import CodePin, bundle_files, code_digest
from protocols.errors import ConfigError, DeploymentError

BIN = Path(sys.executable).parent
TRIVIAL_APP = Path(__file__).parents[1] / "integration" / "trivial_app"
REFUSAL = "REFUSED the coordinator's ClientApp bundle"


def _plan(tmp_path: Path, **kw: object) -> SuperNodePlan:
    return SuperNodePlan(superlink="fl.example.org:443", root_certificates=tmp_path / "ca.crt",
                         node_key=tmp_path / "node_key", port=9101, **kw)  # type: ignore[arg-type]


def test_no_proxy_always_covers_loopback_and_keeps_https_proxy() -> None:
    env = supernode_env({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "corp.internal"})
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    assert env["NO_PROXY"].split(",") == ["corp.internal", "127.0.0.1", "localhost", "::1"]


def test_supernode_uses_tls_node_key_and_our_own_superexec(tmp_path: Path) -> None:
    plan = _plan(tmp_path, node_config={"state-dir": '/x "y"', "n": 2})
    cmd = supernode_command(plan, secret_file=tmp_path / "s")
    assert "--insecure" not in cmd
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(tmp_path / "node_key")
    assert cmd[cmd.index("--port") + 1] == "9101"
    assert cmd[cmd.index("--isolation") + 1] == "process"
    assert cmd[cmd.index("--superexec-auth-secret-file") + 1] == str(tmp_path / "s")
    exec_cmd = superexec_command(plan, secret_file=tmp_path / "s")
    assert exec_cmd[exec_cmd.index("--runtime-api-address") + 1] == "127.0.0.1:9101"
    assert format_node_config({"state-dir": '/x "y"', "n": 2}) == 'state-dir="/x \\"y\\"" n=2'


def test_daemon_is_pinned_to_installed_code_by_default(tmp_path: Path) -> None:
    assert _plan(tmp_path).code_pin == CodePin.installed()


@pytest.mark.parametrize("interval", [0.0, 0.001, 61.0, float("nan")])
def test_task_poll_interval_outside_flowers_bounds_is_refused(tmp_path: Path,
                                                              interval: float) -> None:
    with pytest.raises(ConfigError, match="task_poll_interval"):
        SuperNodePlan(superlink="127.0.0.1:1", root_certificates=tmp_path / "ca.crt",
                      node_key=tmp_path / "k", port=9101, task_poll_interval=interval)


def test_unpinned_daemon_needs_the_unsafe_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="whatever ClientApp code"):
        _plan(tmp_path, code_pin=None)
    assert _plan(tmp_path, code_pin=None, unsafe_run_unpinned_code=True).code_pin is None
    with pytest.raises(ConfigError, match="contradicts the code pin"):
        _plan(tmp_path, unsafe_run_unpinned_code=True)


def test_every_other_task_runner_is_shadowed_by_a_refusal(tmp_path: Path) -> None:
    pin_file, bin_dir = write_pin_runtime(CodePin.installed(), tmp_path)
    assert CodePin.from_mapping(json.loads(pin_file.read_text())) == CodePin.installed()
    for name in ("flwr-serverapp", "flwr-agentapp", "flwr-simulation"):
        done = subprocess.run([str(bin_dir / name)], capture_output=True, text=True, timeout=10)
        assert done.returncode != 0 and "REFUSED" in done.stderr


def test_clientapp_runner_without_a_readable_pin_runs_nothing(tmp_path: Path) -> None:
    pin_file, bin_dir = write_pin_runtime(CodePin.installed(), tmp_path)
    pin_file.write_text("{}")  # a pin that accepts nothing
    done = subprocess.run([str(bin_dir / "flwr-clientapp"), "--insecure", "--token", "t"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "FEDADMET_CODE_PIN": str(pin_file)})
    assert done.returncode == 2 and "code pin cannot be read" in done.stderr


def test_clientapp_runner_refuses_runtime_dependency_installation(tmp_path: Path) -> None:
    _, bin_dir = write_pin_runtime(CodePin.installed(), tmp_path)
    done = subprocess.run([str(bin_dir / "flwr-clientapp"), "--insecure", "--token", "t",
                           "--allow-runtime-dependency-installation"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "REFUSED" in done.stderr


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_restarts_are_bounded_and_each_attempt_stops_its_superexec(tmp_path: Path) -> None:
    from participant.daemon import run_with_restarts

    seen = tmp_path / "seen"
    node = _script(tmp_path / "node", f'echo "$NO_PROXY $HTTPS_PROXY" >> {seen}\nexit 1\n')
    exe = _script(tmp_path / "exec", f'echo "$$ $FEDADMET_CODE_PIN '
                  f'$FLWR_SUPEREXEC_TASK_POLL_INTERVAL" >> {seen}.exec\n'
                  "command -v flwr-clientapp >> " + f"{seen}.exec\nexec sleep 60\n")
    plan = SuperNodePlan(superlink="127.0.0.1:1", root_certificates=tmp_path / "ca.crt",
                         node_key=tmp_path / "k", port=9101, executable=node,
                         superexec_executable=exe, task_poll_interval=0.25)
    sleeps: list[float] = []
    os.environ["HTTPS_PROXY"] = "http://proxy:3128"
    try:
        with pytest.raises(DeploymentError, match="kept failing"):
            run_with_restarts(plan, log_path=tmp_path / "state" / "supernode.log",
                              max_restarts=2, backoff_s=1.0, sleep=sleeps.append)
    finally:
        del os.environ["HTTPS_PROXY"]
    assert sleeps == [1.0, 2.0, 4.0]
    assert seen.read_text().count("127.0.0.1,localhost,::1 http://proxy:3128") == 3
    lines = Path(f"{seen}.exec").read_text().splitlines()
    pids = [int(line.split()[0]) for line in lines[::2]]
    assert len(pids) == 3 and lines[0].split()[1].endswith("pin.json")
    assert lines[0].split()[2] == "0.25"  # the plan's poll interval reaches the SuperExec
    assert lines[1] == str(tmp_path / "state" / "supernode-runtime" / "bin" / "flwr-clientapp")
    for pid in pids:  # each attempt's SuperExec was stopped with its SuperNode
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_refused_connection_stops_at_once(tmp_path: Path) -> None:
    """flwr 1.41 exits 1 and logs ``Exit Code: 305`` when the SuperLink refuses the node."""
    from participant.daemon import run_with_restarts

    assert flower_exit_code("x\nExit Code: 305\n", 1) == 305
    assert flower_exit_code("Exit Code: 305\n", 0) == 0
    assert flower_exit_code("no code\n", 1) == 1

    plan = SuperNodePlan(superlink="127.0.0.1:1", root_certificates=tmp_path / "ca.crt",
                         node_key=tmp_path / "k", port=9101,
                         executable=_script(tmp_path / "node", "echo 'Exit Code: 1'\n"
                                            "echo 'Exit Code: 305'\nexit 1\n"),
                         superexec_executable=_script(tmp_path / "exec", "exec sleep 60\n"))
    sleeps: list[float] = []
    with pytest.raises(DeploymentError, match="refused this participant"):
        run_with_restarts(plan, log_path=tmp_path / "supernode.log", sleep=sleeps.append)
    assert sleeps == []


# ------------------------------------------------------------------ real processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _marker_app(root: Path, marker: str) -> Path:
    """The trivial app whose ClientApp touches ``$MARKER_DIR/<marker>`` when imported."""
    app = root / "app"
    shutil.copytree(TRIVIAL_APP, app, ignore=shutil.ignore_patterns("__pycache__", "*.fab"))
    client = app / "trivial_app" / "client_app.py"
    client.write_text(client.read_text() + (
        "\nimport os as _os\nfrom pathlib import Path as _Path\n\n"
        f'_Path(_os.environ["MARKER_DIR"], "{marker}").touch()\n'))
    return app


def _wait_for(predicate: object, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def superlink(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A real TLS SuperLink on loopback with node authentication, as the coordinator runs it."""
    tls = create_pki(tmp_path / "tls")
    port = _free_port()
    log = (tmp_path / "superlink.log").open("ab")
    proc = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(port),
         "--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
         "--ssl-keyfile", str(tls.server_key), "--enable-supernode-auth",
         "--disable-runtime-dependency-installation"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_HOME": str(tmp_path / "sl")})
    try:
        wait_healthy(port=port, ca_cert=tls.ca_cert, timeout_s=30, proc=proc)
        yield port, tls.ca_cert
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        log.close()


def _flwr_run(app: Path, *, flwr_home: Path, result: Path) -> subprocess.Popen[bytes]:
    cfg = f'num-server-rounds=1 min-nodes=1 round-timeout=20.0 result-file="{result}"'
    return subprocess.Popen([str(BIN / "flwr"), "run", str(app), "--run-config", cfg],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "FLWR_HOME": str(flwr_home),
                                 "FLWR_TELEMETRY_ENABLED": "0"}, start_new_session=True)


@pytest.mark.integration
def test_tampered_bundle_is_refused(tmp_path: Path, superlink: tuple[int, Path]) -> None:
    """Real SuperLink, SuperNode (process isolation) and SuperExec with the pin's runner.

    The reviewed bundle is pinned by code hash and runs; the same bundle with one byte of
    its ClientApp changed is refused and its code never runs (its marker never appears).
    """
    port, ca_cert = superlink
    markers = tmp_path / "markers"
    markers.mkdir()
    good = _marker_app(tmp_path / "good", "ran-A")
    bad = _marker_app(tmp_path / "bad", "ran-A")
    bad_client = bad / "trivial_app" / "client_app.py"
    source = bad_client.read_bytes()
    bad_client.write_bytes(source.replace(b'"ran-A"', b'"ran-B"'))  # one byte
    assert sum(a != b for a, b in zip(source, bad_client.read_bytes(), strict=True)) == 1

    subprocess.run([str(BIN / "flwr"), "build", "--app", str(good)], cwd=tmp_path / "good",
                   check=True, capture_output=True, timeout=60,
                   env={**os.environ, "FLWR_HOME": str(tmp_path / "build-home")})
    fab = next((tmp_path / "good").glob("*.fab"))
    pin = CodePin(code_sha256=frozenset({code_digest(bundle_files(fab.read_bytes()))}))
    fab.unlink()

    keys = create_member_keys(tmp_path / "keys")
    plan = SuperNodePlan(superlink=f"127.0.0.1:{port}", root_certificates=ca_cert,
                         node_key=keys.node_key, port=_free_port(), code_pin=pin,
                         executable=str(BIN / "flower-supernode"),
                         superexec_executable=str(BIN / "flower-superexec"))
    flwr_home = tmp_path / "flwr-home"
    write_flwr_home(flwr_home, port=port, ca_cert=ca_cert)
    subprocess.run([str(BIN / "flwr"), "supernode", "register", str(keys.node_pub), "fedadmet",
                    "--name", "member"], check=True, capture_output=True, timeout=60,
                   env={**os.environ, "FLWR_HOME": str(flwr_home)})
    log_path = tmp_path / "supernode.log"
    node = start_node(plan, work_dir=tmp_path / "runtime", log_path=log_path,
                      extra_env={"MARKER_DIR": str(markers)})
    runs: list[subprocess.Popen[bytes]] = []
    try:
        good_result = tmp_path / "good-result.json"
        runs.append(_flwr_run(good, flwr_home=flwr_home, result=good_result))
        _wait_for(good_result.exists, timeout_s=60, what="the pinned bundle's run")
        assert (markers / "ran-A").exists()
        assert json.loads(good_result.read_text())["final"] == [1.0] * 4

        runs.append(_flwr_run(bad, flwr_home=flwr_home, result=tmp_path / "bad-result.json"))
        _wait_for(lambda: REFUSAL in log_path.read_text(errors="replace")
                  or (markers / "ran-B").exists(), timeout_s=60, what="the tampered run")
        time.sleep(1.0)  # a refused runner exits; give a wrongly running one time to show
        assert not (markers / "ran-B").exists(), "the tampered ClientApp code ran"
        assert REFUSAL in log_path.read_text(errors="replace")
        text = log_path.read_text(errors="replace")
        assert "matches no pinned hash" in text
        assert text.count("Successfully installed trivial-app") == 1  # the pinned one only
    finally:
        for run in runs:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=10)
        node.stop()


@pytest.mark.integration
def test_unenrolled_node_key_stops_the_daemon_at_once(tmp_path: Path,
                                                       superlink: tuple[int, Path]) -> None:
    """A real SuperNode whose key the coordinator never enrolled: no restart loop."""
    from participant.daemon import run_with_restarts

    port, ca_cert = superlink
    keys = create_member_keys(tmp_path / "keys")
    plan = SuperNodePlan(superlink=f"127.0.0.1:{port}", root_certificates=ca_cert,
                         node_key=keys.node_key, port=_free_port(),
                         executable=str(BIN / "flower-supernode"),
                         superexec_executable=str(BIN / "flower-superexec"))
    sleeps: list[float] = []
    started = time.monotonic()
    with pytest.raises(DeploymentError, match="refused this participant"):
        run_with_restarts(plan, log_path=tmp_path / "supernode.log", sleep=sleeps.append)
    assert sleeps == [] and time.monotonic() - started < 60


def _env_dumper(path: Path, out: Path) -> str:
    path.write_text(f"#!/bin/sh\nenv > '{out}'\n")
    path.chmod(0o700)
    return str(path)


def test_hostile_parent_environment_never_reaches_supernode_or_superexec(
        tmp_path: Path) -> None:
    """Real child processes: each records the environment it was started with."""
    parent = {**os.environ, "FLWR_INTERNAL_GRPC_FLEET_API": "1", "FLWR_TELEMETRY_ENABLED": "1",
              "FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE": "999999999", "LD_PRELOAD": "/tmp/x.so"}
    plan = _plan(tmp_path, executable=_env_dumper(tmp_path / "sn", tmp_path / "sn.env"),
                 superexec_executable=_env_dumper(tmp_path / "se", tmp_path / "se.env"))
    node = start_node(plan, work_dir=tmp_path / "runtime", log_path=tmp_path / "log",
                      env=parent, extra_env={"MARKER_DIR": "/m"})
    try:
        assert node.supernode.wait(timeout=30) == 0 and node.superexec.wait(timeout=30) == 0
    finally:
        node.stop(timeout_s=5)
    for name in ("sn", "se"):
        env = dict(line.split("=", 1) for line in
                   (tmp_path / f"{name}.env").read_text().splitlines() if "=" in line)
        assert not {"FLWR_INTERNAL_GRPC_FLEET_API", "FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE",
                    "LD_PRELOAD"} & set(env), name
        assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1", name
        assert env["FLWR_TELEMETRY_ENABLED"] == "0", name
        assert ("MARKER_DIR" in env) == (name == "se")
    assert Path(env[PIN_ENV]).is_file()  # the pin (an explicit extra) reaches SuperExec


# ------------------------------------------------------------------ stopping the daemon

_DAEMON = """
import logging, sys
from pathlib import Path
from participant.daemon import SuperNodePlan, run_with_restarts
logging.basicConfig(level=logging.INFO)
tmp = Path(sys.argv[1])
plan = SuperNodePlan(superlink="127.0.0.1:1", root_certificates=tmp / "ca.crt",
                     node_key=tmp / "k", port=9101, executable=str(tmp / "node"),
                     superexec_executable=str(tmp / "exec"))
sys.exit(run_with_restarts(plan, log_path=tmp / "state" / "supernode.log", max_restarts=0))
"""


def _alive(pid: int) -> bool:
    """Running (a zombie counts as gone: nothing of it runs)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _start_daemon(tmp_path: Path, body: str) -> tuple[subprocess.Popen[bytes], list[Path]]:
    """A real daemon process whose SuperNode and SuperExec each start a child of their own."""
    pids = []
    for role in ("node", "exec"):
        _script(tmp_path / role, f"echo $$ > {tmp_path / role}.pid\n{body}")
        pids += [tmp_path / f"{role}.pid", tmp_path / f"{role}.child"]
    daemon = subprocess.Popen([sys.executable, "-c", _DAEMON, str(tmp_path)],
                              env={**os.environ, "PYTHONPATH": str(Path.cwd())},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_for(lambda: all(p.exists() and p.read_text().strip() for p in pids), timeout_s=60,
              what="the fake SuperNode, SuperExec and their children to start")
    return daemon, pids


def _kill_all(daemon: subprocess.Popen[bytes], pids: list[int]) -> None:
    """Clean-up by PID, whatever the test saw: every child, then the daemon."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if daemon.poll() is None:
        daemon.kill()
    daemon.wait(timeout=10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_the_daemon_stops_every_process_it_started(tmp_path: Path,
                                                            sig: signal.Signals) -> None:
    """Before: SIGTERM ended the daemon at once and its SuperNode ran on under PID 1."""
    body = "sleep 600 &\necho $! > \"$0.child\"\nwait\n"
    daemon, files = _start_daemon(tmp_path, body)
    pids = [int(p.read_text()) for p in files]
    try:
        assert all(_alive(p) for p in pids)
        daemon.send_signal(sig)
        out, _ = daemon.communicate(timeout=30)
        assert daemon.returncode == 0, out.decode(errors="replace")
        assert f"Stopped on {sig.name}" in out.decode()
        _wait_for(lambda: not any(_alive(p) for p in pids), timeout_s=15,
                  what="every process the daemon started to stop")
    finally:
        _kill_all(daemon, pids)


def test_supernode_and_superexec_stop_when_the_daemon_is_killed(tmp_path: Path) -> None:
    """SIGKILL runs no handler: the kernel's parent-death signal stops both (Linux)."""
    body = "echo $$ > \"$0.child\"\nexec sleep 600\n"
    daemon, files = _start_daemon(tmp_path, body)
    pids = sorted({int(p.read_text()) for p in files})
    try:
        daemon.kill()
        daemon.wait(timeout=10)
        _wait_for(lambda: not any(_alive(p) for p in pids), timeout_s=15,
                  what="the SuperNode and SuperExec to stop with their daemon")
    finally:
        _kill_all(daemon, pids)
