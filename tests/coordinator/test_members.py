from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.members import enroll_member, load_members
from protocols.errors import ConfigError
from protocols.signing import public_key_pem


def _pem() -> str:
    return public_key_pem(Ed25519PrivateKey.generate()).decode()


def test_enrolled_members_load_back(tmp_path: Path) -> None:
    path = tmp_path / "members.json"
    enroll_member(path, name="ACME", node_key="ecdsa-sha2-nistp384 AAAA1", receipt_key_pem=_pem())
    enroll_member(path, name="Globex", node_key="ecdsa-sha2-nistp384 AAAA2",
                  receipt_key_pem=_pem())
    assert sorted(m.name for m in load_members(path).values()) == ["ACME", "Globex"]


def test_duplicate_name_is_refused_and_file_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "members.json"
    enroll_member(path, name="ACME", node_key="ecdsa-sha2-nistp384 AAAA1", receipt_key_pem=_pem())
    before = path.read_bytes()
    with pytest.raises(ConfigError):
        enroll_member(path, name="ACME", node_key="ecdsa-sha2-nistp384 AAAA9",
                      receipt_key_pem=_pem())
    assert path.read_bytes() == before


def test_enrolment_caps_load_back(tmp_path: Path) -> None:
    path = tmp_path / "members.json"
    enroll_member(path, name="ACME", node_key="ecdsa-sha2-nistp384 AAAA1",
                  receipt_key_pem=_pem(), max_epsilon=4.0, max_examples=5000)
    (member,) = load_members(path).values()
    assert (member.max_epsilon, member.max_examples) == (4.0, 5000)


def test_duplicate_enrolment_never_reaches_the_superlink(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # a duplicate used to be registered with the SuperLink first, leaving a second
    # authorised node behind when members.json then refused it
    import subprocess

    from typer.testing import CliRunner

    from coordinator import deployment
    from fedadmet.cli import coordinator as cli

    runner = CliRunner()
    done = runner.invoke(cli.app, ["init", str(tmp_path), "--endpoint", "logd:regression"])
    assert done.exit_code == 0, done.output
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "registered", "")

    monkeypatch.setattr(deployment.subprocess, "run", fake_run)
    node, receipt = tmp_path / "node.pub", tmp_path / "receipt.pem"
    node.write_text("ecdsa-sha2-nistp384 AAAA1\n", encoding="utf-8")
    receipt.write_text(_pem(), encoding="utf-8")
    args = ["enroll", str(node), "--name", "ACME", "--receipt-key", str(receipt),
            "--max-epsilon", "6", "--max-examples", "20000", "--dir", str(tmp_path)]
    assert runner.invoke(cli.app, args).exit_code == 0
    assert len(calls) == 1
    for change in (["--name", "Globex"], []):  # same keys under a new name; all the same
        again = args + change
        result = runner.invoke(cli.app, again)
        assert result.exit_code != 0 and isinstance(result.exception, ConfigError)
    assert len(calls) == 1  # the SuperLink was never asked again
    (member,) = load_members(tmp_path / "members.json").values()
    assert (member.max_epsilon, member.max_examples) == (6.0, 20000)
