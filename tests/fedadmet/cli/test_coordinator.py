"""``fedadmet coordinator``: what init hands out, and resume advice that run accepts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from coordinator import checkpoint
from coordinator.config import FederationConfig
from coordinator.deployment import RECEIPT_PUBLIC_KEY, check_resume, resume_advice
from fedadmet.cli.coordinator import app
from protocols.errors import DeploymentError
from protocols.signing import fingerprint, load_private_key, load_public_key


def _init(tmp_path: Path, *, rounds: int = 3) -> Path:
    out = CliRunner().invoke(app, ["init", str(tmp_path / "fl"), "--rounds", str(rounds),
                                   "--endpoint", "logs:regression"])
    assert out.exit_code == 0, out.output
    return tmp_path / "fl"


def _checkpoint(cfg: FederationConfig, round_: int) -> None:
    checkpoint.save(cfg.state_dir, checkpoint.Checkpoint(
        round=round_, weights={"w": np.zeros((2, 2), np.float32)}, optimizer={},
        rng_state={}, receipt_hash="00" * 32, receipt_bytes=b"{}", config_digest="d"))


def test_init_writes_the_receipt_public_key_members_are_told_to_use(tmp_path: Path) -> None:
    """Before: init printed a fingerprint only; members need the key itself."""
    out = CliRunner().invoke(app, ["init", str(tmp_path / "fl"), "--endpoint",
                                   "logs:regression"])
    assert out.exit_code == 0, out.output
    pub = tmp_path / "fl" / RECEIPT_PUBLIC_KEY
    private = load_private_key((tmp_path / "fl" / "receipt_key.pem").read_bytes())
    assert fingerprint(load_public_key(pub.read_bytes())) == fingerprint(private)
    assert pub.stat().st_mode & 0o777 == 0o644  # public: meant to be handed out
    assert str(pub) in out.output and "coordinator-key" in out.output
    assert str(tmp_path / "fl" / "tls" / "ca.crt") in out.output


@pytest.mark.parametrize(("checkpointed", "advice", "accepts_resume"), [
    (None, "without --resume", False), (1, "run --resume", True)])
def test_resume_advice_is_what_run_then_accepts(tmp_path: Path, checkpointed: int | None,
                                                advice: str, accepts_resume: bool) -> None:
    """Before: a run that failed in round 1 advised --resume, which then refused."""
    cfg = FederationConfig.load(_init(tmp_path) / "federation.toml")
    if checkpointed is not None:
        _checkpoint(cfg, checkpointed)
    assert advice in resume_advice(cfg)
    if accepts_resume:
        assert check_resume(cfg, resume=True) == checkpointed
        with pytest.raises(DeploymentError, match="pass --resume"):
            check_resume(cfg, resume=False)
    else:
        assert check_resume(cfg, resume=False) == 0
        with pytest.raises(DeploymentError, match="nothing to resume"):
            check_resume(cfg, resume=True)


def test_resume_of_a_finished_federation_says_there_is_nothing_to_do(tmp_path: Path) -> None:
    directory = _init(tmp_path, rounds=2)
    cfg = FederationConfig.load(directory / "federation.toml")
    _checkpoint(cfg, 2)
    assert "nothing is left to run" in resume_advice(cfg)
    # no SuperLink is running: run must answer before it would try to reach one
    out = CliRunner().invoke(app, ["run", "--dir", str(directory), "--resume"])
    assert out.exit_code == 0, out.output
    assert "already finished all 2 rounds: nothing to resume" in out.output
