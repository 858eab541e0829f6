"""The coordinator's receipt log is append-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.receipt_log import ReceiptLog
from protocols.errors import IntegrityError


def test_append_and_read_back(tmp_path: Path) -> None:
    log = ReceiptLog(tmp_path / "receipts")
    log.append(1, b'{"round":1}')
    log.append(2, b'{"round":2}')
    assert log.rounds() == [1, 2]
    assert log.read(2) == b'{"round":2}'
    assert not list((tmp_path / "receipts").glob(".receipt-*"))


def test_reappending_identical_bytes_is_a_noop(tmp_path: Path) -> None:
    log = ReceiptLog(tmp_path)
    log.append(3, b"abc")
    log.append(3, b"abc")
    assert log.rounds() == [3]


def test_rewriting_history_is_refused(tmp_path: Path) -> None:
    log = ReceiptLog(tmp_path)
    log.append(1, b"original")
    with pytest.raises(IntegrityError):
        log.append(1, b"forged")
    assert log.read(1) == b"original"
