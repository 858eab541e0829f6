"""`fedadmet audit verify/show` on a real chain on disk, and on tampered copies."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from protocols.receipts import RoundReceipt
from protocols.signing import public_key_pem
from simulations.cli import _mount, app
from tests.protocols.factories import COORDINATOR, chain, key


def _write_chain(tmp_path: Path, n: int = 4) -> tuple[Path, Path]:
    receipts = tmp_path / "receipts"
    receipts.mkdir()
    for r in chain(n):
        (receipts / f"receipt-{r.round:06d}.json").write_bytes(r.canonical_bytes())
    pub = tmp_path / "coordinator.pub"
    pub.write_bytes(public_key_pem(COORDINATOR))
    return receipts, pub


def _run(*args: str) -> tuple[int, str]:
    _mount()
    out = CliRunner().invoke(app, ["audit", *args])
    return out.exit_code, out.output


def test_verify_accepts_an_honest_chain(tmp_path: Path) -> None:
    receipts, pub = _write_chain(tmp_path)
    code, text = _run("verify", str(receipts), "--coordinator-key", str(pub))
    assert code == 0 and "4 receipt(s) verified" in text


def test_verify_names_the_first_tampered_receipt(tmp_path: Path) -> None:
    receipts, pub = _write_chain(tmp_path)
    target = receipts / "receipt-000003.json"
    obj = json.loads(target.read_bytes())
    obj["leaves"][1]["status"] = "rejected"
    obj["leaves"][1]["reason"] = "norm-exceeded"
    obj["leaves"][1]["weight"] = 0.0
    target.write_bytes(RoundReceipt.from_dict(obj).canonical_bytes())
    code, text = _run("verify", str(receipts), "--coordinator-key", str(pub))
    assert code == 1 and "receipt-000003.json" in text and "round 3" in text


def test_verify_detects_a_deleted_receipt(tmp_path: Path) -> None:
    receipts, pub = _write_chain(tmp_path)
    (receipts / "receipt-000002.json").unlink()
    code, text = _run("verify", str(receipts), "--coordinator-key", str(pub))
    assert code == 1 and "removed" in text


def test_verify_with_the_wrong_key_fails(tmp_path: Path) -> None:
    receipts, _ = _write_chain(tmp_path)
    wrong = tmp_path / "wrong.pub"
    wrong.write_bytes(public_key_pem(key(42)))
    code, _text = _run("verify", str(receipts), "--coordinator-key", str(wrong))
    assert code == 1


def test_show_prints_each_round(tmp_path: Path) -> None:
    receipts, _ = _write_chain(tmp_path, 2)
    code, text = _run("show", str(receipts))
    assert code == 0 and "round 1" in text and "round 2" in text and "accepted" in text
