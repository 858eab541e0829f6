"""The deployment end to end: real SuperLink, nginx and SuperNodes on 127.0.0.1.

One consortium (coordinator + 3 enrolled members, TLS, node authentication, members
behind the fleet-only public port) is shared by the tests of this module: each test runs
its own federation (own id and state directory) on it, as an operator would run several.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.superlink import write_flwr_home
from participant.daemon import REFUSED_EXIT_CODE, flower_exit_code, start_node
from participant.outbox import Outbox
from protocols.receipts import parse_receipt, verify_chain
from protocols.signing import fingerprint, load_public_key
from tests.integration.consortium import (
    BIN,
    Consortium,
    checkpoint_round,
    consortium,
    env,
    kill_group,
    rounds_logged,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    with consortium(tmp_path_factory.mktemp("consortium"), members=3) as c:
        yield c


def _receipts(state: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((state / "receipts").glob("*.json"))]


def _finish(run: subprocess.Popen[bytes], *, timeout_s: float, log: Path) -> None:
    try:
        rc = run.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(run)
        raise AssertionError(f"run did not finish in {timeout_s} s:\n"
                             f"{log.read_text(errors='replace')[-4000:]}") from None
    assert rc == 0, log.read_text(errors="replace")[-4000:]


@pytest.mark.integration
def test_three_members_finish_three_rounds_and_an_unenrolled_node_is_refused(
        fed: Consortium) -> None:
    config = fed.write_federation("three-rounds", rounds=3, min_participants=3,
                                  round_timeout=180.0)
    state = fed.dir / "state" / "three-rounds"
    fed.serve("three-rounds")
    t0 = time.monotonic()
    run = fed.submit(config)
    # A fourth SuperNode whose key nobody enrolled, started while the run is live.
    stranger = fed.add_member(9, enroll=False)
    intruder = start_node(stranger.plan, work_dir=stranger.site / "runtime",
                          log_path=stranger.log, env=env())
    try:
        rc = intruder.supernode.wait(timeout=90)
        assert flower_exit_code(stranger.log.read_text(errors="replace"), rc) \
            == REFUSED_EXIT_CODE
        _finish(run, timeout_s=400, log=config.with_suffix(".log"))
    finally:
        intruder.stop(timeout_s=5)
        kill_group(run)
    wall = time.monotonic() - t0
    print(f"3 members x 3 rounds over TLS + node auth through nginx: {wall:.1f} s")

    assert checkpoint_round(state) == 3
    rounds = rounds_logged(state)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["accepted"] == 3 and r["dropped"] == 0 for r in rounds), rounds
    report = verify_chain(_receipts(state), coordinator_key=load_public_key(
        fed.coordinator_public_pem()), federation_id="three-rounds")
    assert report.ok and report.verified == 3, report
    enrolled = {fingerprint(load_public_key(m.keys.receipt_pub.read_bytes()))
                for m in fed.members}
    for raw in _receipts(state):  # the three enrolled members, nobody else
        assert {leaf.participant_fingerprint for leaf in parse_receipt(raw).leaves} == enrolled
    for m in fed.members:
        entries = [e for e in m.ledger().entries() if e.federation_id == "three-rounds"]
        spent = [e for e in entries if e.release == "train"]
        assert [e.round for e in spent] == [1, 2, 3]
        # each round's federated evaluation is charged once too (noised, docs/threat-model.md)
        assert [e.round for e in entries if e.release == "evaluate"] == [1, 2, 3]
        assert 0 < spent[0].epsilon_after < spent[1].epsilon_after < spent[2].epsilon_after
    assert (state / "global_model.npz").exists()
    assert not stranger.node_ids()  # never got a SuperNode ID
    assert fed.task_token_refusals() == []


@pytest.mark.integration
def test_killed_supernode_is_recorded_as_dropped_and_the_round_completes(
        fed: Consortium) -> None:
    config = fed.write_federation("node-killed", rounds=1, min_participants=2,
                                  round_timeout=45.0)
    state = fed.dir / "state" / "node-killed"
    fed.serve("node-killed")
    victim = fed.members[2]
    assert victim.node is not None
    victim_id = victim.node_ids()[-1]
    offset = victim.log.stat().st_size
    run = fed.submit(config)
    try:
        # Mid-round: the victim's ClientApp has taken the round-1 train instruction.
        wait_for(lambda: "running the coordinator's ClientApp bundle" in
                 victim.log.read_text(errors="replace")[offset:], timeout_s=120,
                 what="the victim's ClientApp to start")
        for proc in (victim.node.supernode, victim.node.superexec):
            kill_group(proc, signal.SIGKILL)
        victim.node = None
        _finish(run, timeout_s=240, log=config.with_suffix(".log"))
    finally:
        kill_group(run)
        victim.start()  # the shared consortium gets its member back
    (summary,) = rounds_logged(state)
    assert summary["accepted"] == 2 and summary["dropped"] == 1, summary
    (raw,) = _receipts(state)
    dropped = [leaf for leaf in parse_receipt(raw).leaves if leaf.status == "dropped"]
    assert [(d.participant_fingerprint, d.reason) for d in dropped] == \
        [(f"node:{victim_id}", "timeout")]
    assert checkpoint_round(state) == 1


@pytest.mark.integration
def test_killed_serverapp_resumes_from_its_checkpoint_without_double_counting(
        fed: Consortium) -> None:
    config = fed.write_federation("resumed", rounds=2, min_participants=3, round_timeout=120.0)
    state = fed.dir / "state" / "resumed"
    fed.serve("resumed")

    def released(round_: int) -> list[str]:
        return [m.name for m in fed.members
                if any(e.federation_id == "resumed" and e.round == round_
                       for e in m.ledger().entries())]

    first = fed.submit(config)
    try:
        # Kill the coordinator's ServerApp mid-round 2: round 1 is checkpointed and a
        # member has already released (trained, stored, spent) its round-2 update.
        wait_for(lambda: checkpoint_round(state) == 1 and released(2), timeout_s=240,
                 what="round 1's checkpoint and a round-2 release", every_s=0.2)
        (serverapp,) = fed.serverapps()
        os.kill(serverapp, signal.SIGKILL)
    finally:
        kill_group(first)
    assert checkpoint_round(state) == 1, "round 2 finished before the kill; nothing tested"
    early = released(2)
    outboxes = {m.name: Outbox(m.state_dir()).submitted()[2]
                for m in fed.members if m.name in early}
    again = subprocess.run([str(BIN / "fedadmet"), "coordinator", "run", "--dir",
                            str(fed.dir), "--config", str(config)], env=env(),
                           capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode != 0 and "pass --resume" in again.stdout + again.stderr, again

    resumed = fed.submit(config, resume=True)
    try:
        _finish(resumed, timeout_s=300, log=config.with_suffix(".resume.log"))
    finally:
        kill_group(resumed)
    assert checkpoint_round(state) == 2
    assert [r["round"] for r in rounds_logged(state)] == [1, 2]  # none repeated or skipped
    report = verify_chain(_receipts(state), coordinator_key=load_public_key(
        fed.coordinator_public_pem()), federation_id="resumed")
    assert report.ok and report.verified == 2, report
    round2 = parse_receipt(_receipts(state)[1])
    assert sum(leaf.status == "accepted" for leaf in round2.leaves) == 3
    digests = {leaf.update_digest for leaf in round2.leaves}
    for name, digest in outboxes.items():  # the stored update was resent, not retrained
        assert digest in digests, name
    for m in fed.members:  # one spend per (federation, round), whatever was retried
        entries = [e for e in m.ledger().entries() if e.federation_id == "resumed"]
        assert [e.round for e in entries if e.release == "train"] == [1, 2], m.name
        evaluated = [e.round for e in entries if e.release == "evaluate"]
        assert len(evaluated) == len(set(evaluated)) and set(evaluated) <= {1, 2}, m.name
    assert fed.task_token_refusals() == []


def _status(url: str, ca_cert: Path, *, method: str = "GET") -> int:
    ctx = ssl.create_default_context(cafile=str(ca_cert))
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.integration
def test_public_port_serves_the_fleet_api_only(fed: Consortium) -> None:
    """Members' traffic crosses nginx; the Control API and /docs do not."""
    public = f"https://127.0.0.1:{fed.public_port}"
    loopback = f"https://127.0.0.1:{fed.port}"
    assert _status(f"{loopback}/docs", fed.ca_cert) == 200  # the SuperLink serves it...
    assert _status(f"{public}/docs", fed.ca_cert) == 403  # ...the public port does not
    assert _status(f"{public}/openapi.json", fed.ca_cert) == 403
    assert _status(f"{public}/v1/control/list-runs", fed.ca_cert, method="POST") == 403
    assert _status(f"{loopback}/v1/control/list-runs", fed.ca_cert, method="POST") != 403

    home = fed.root / "outsider-flwr-home"
    write_flwr_home(home, port=fed.public_port, ca_cert=fed.ca_cert, connection="public")
    outsider = subprocess.run([str(BIN / "flwr"), "ls", "public", "--format", "json"],
                              env={**env(), "FLWR_HOME": str(home)}, capture_output=True,
                              text=True, timeout=60, check=False)
    assert "403" in outsider.stdout + outsider.stderr, outsider
    assert '"runs"' not in outsider.stdout
    inside = subprocess.run([str(BIN / "flwr"), "ls", "fedadmet", "--format", "json"],
                            env={**env(), "FLWR_HOME": str(fed.dir / "state" / "flwr-home")},
                            capture_output=True, text=True, timeout=60, check=False)
    assert inside.returncode == 0 and '"runs"' in inside.stdout, inside  # loopback admin

    access = (fed.dir / "state" / "nginx" / "access.log").read_text()
    fleet = [line for line in access.splitlines() if "/v1/fleet/" in line]
    assert any("/v1/fleet/push-messages" in line and " 200 " in line for line in fleet)
    node_key = fed.members[0].keys.node_pub.read_text().split()[1]
    assert node_key not in access and "flwr-signature" not in access  # no auth headers
