"""Checkpoints round-trip, and damaged or partial ones are never resumed from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.checkpoint import Checkpoint, latest, load, save
from protocols.errors import CheckpointError


def _ckpt(round: int) -> Checkpoint:
    rng = np.random.default_rng(round)
    return Checkpoint(round=round, weights={"trunk.0.weight": rng.normal(size=(3, 2)).astype(
        np.float32)}, optimizer={"steps": round, "m": {"trunk.0.weight": np.ones((3, 2))},
                                 "v": {"trunk.0.weight": np.full((3, 2), 2.0)}},
        rng_state=dict(rng.bit_generator.state), receipt_hash="ab" * 32,
        receipt_bytes=b'{"round":%d}' % round, config_digest="cd" * 32,
        extra={"nodes": {"7": "sha256:" + "0" * 64}})


def test_round_trip(tmp_path: Path) -> None:
    save(tmp_path, _ckpt(2))
    got = latest(tmp_path)
    assert got is not None and got.round == 2
    want = _ckpt(2)
    assert np.array_equal(got.weights["trunk.0.weight"], want.weights["trunk.0.weight"])
    assert np.array_equal(got.optimizer["v"]["trunk.0.weight"], np.full((3, 2), 2.0))
    assert got.rng_state == want.rng_state and got.receipt_bytes == want.receipt_bytes
    restored = np.random.default_rng()
    restored.bit_generator.state = got.rng_state
    expected = np.random.default_rng(2)
    expected.normal(size=(3, 2))
    assert restored.random() == expected.random()


def test_resume_picks_the_newest_valid_checkpoint(tmp_path: Path) -> None:
    for r in (1, 2, 3):
        save(tmp_path, _ckpt(r))
    weights = tmp_path / "checkpoints" / "round-000003" / "weights.npz"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError):
        load(weights.parent)
    got = latest(tmp_path)
    assert got is not None and got.round == 2


def test_partial_temp_directories_are_ignored(tmp_path: Path) -> None:
    save(tmp_path, _ckpt(1))
    (tmp_path / "checkpoints" / ".tmp-crashed").mkdir()
    got = latest(tmp_path)
    assert got is not None and got.round == 1


def test_only_the_newest_are_kept(tmp_path: Path) -> None:
    for r in range(1, 6):
        save(tmp_path, _ckpt(r), keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("round-*")) == [
        "round-000004", "round-000005"]
