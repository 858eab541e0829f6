"""`fedadmet audit verify/show` on a real chain on disk, and on tampered copies."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fedadmet.cli.main import _mount, app
from protocols.receipts import RoundReceipt
from protocols.signing import public_key_pem
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


def test_uppercase_signature_hex_is_rejected_by_audit_verify(tmp_path: Path) -> None:
    receipts, pub = _write_chain(tmp_path)
    last = receipts / "receipt-000004.json"
    raw = last.read_bytes()
    obj = json.loads(raw)
    at = raw.index(obj["signature"].encode())
    i = next(i for i, c in enumerate(obj["signature"]) if c in "abcdef")
    last.write_bytes(raw[:at + i] + raw[at + i:at + i + 1].upper() + raw[at + i + 1:])
    code, text = _run("verify", str(receipts), "--coordinator-key", str(pub))
    assert code == 1 and "receipt-000004.json" in text and "signature" in text


def test_renamed_receipt_file_is_rejected_by_audit_verify(tmp_path: Path) -> None:
    receipts, pub = _write_chain(tmp_path)
    (receipts / "receipt-000004.json").unlink()
    (receipts / "receipt-000003.json").rename(receipts / "receipt-000004.json")
    code, text = _run("verify", str(receipts), "--coordinator-key", str(pub))
    assert code == 1 and "misnamed" in text and "receipt-000003.json" in text


def test_stray_receipt_file_is_rejected_by_audit_verify(tmp_path: Path) -> None:
    receipts, pub = _write_chain(tmp_path)
    (receipts / "receipt-000004.json").rename(receipts / "receipt-4.json")
    for command in (["verify", str(receipts), "--coordinator-key", str(pub)],
                    ["show", str(receipts)]):
        code, text = _run(*command)
        assert code == 1 and "stray" in text and "receipt-4.json" in text, command


def test_truncated_chain_is_detected_with_expect_head(tmp_path: Path) -> None:
    receipts, pub = _write_chain(tmp_path)
    code, text = _run("verify", str(receipts), "--coordinator-key", str(pub))
    head = text.split("chain head ")[1].split()[0]
    assert code == 0 and len(head) == 64 and "(round 4)" in text
    code, text = _run("verify", str(receipts), "--coordinator-key", str(pub),
                      "--expect-head", head, "--rounds", "4")
    assert code == 0, text
    (receipts / "receipt-000004.json").unlink()
    code, _ = _run("verify", str(receipts), "--coordinator-key", str(pub))
    assert code == 0  # the files alone cannot show it
    code, text = _run("verify", str(receipts), "--coordinator-key", str(pub),
                      "--expect-head", head)
    assert code == 1 and "truncated" in text and "3 receipt(s)" in text
    code, text = _run("verify", str(receipts), "--coordinator-key", str(pub), "--rounds", "4")
    assert code == 1 and "truncated" in text and "expected 4" in text


def test_expect_head_that_is_not_a_lowercase_hash_is_a_usage_error(tmp_path: Path) -> None:
    receipts, pub = _write_chain(tmp_path)
    for bad in ("A" * 64, "a" * 63, "xyz"):
        code, text = _run("verify", str(receipts), "--coordinator-key", str(pub),
                          "--expect-head", bad)
        words = " ".join(text.replace("│", " ").split())  # undo rich's boxed wrapping
        assert code == 2 and "64 lower-case hex characters" in words, bad


def test_show_reports_a_malformed_receipt_without_a_traceback(tmp_path: Path) -> None:
    receipts, _ = _write_chain(tmp_path, 2)
    (receipts / "receipt-000002.json").write_bytes(b'{"round": 2}')
    code, text = _run("show", str(receipts))
    assert code == 1 and "receipt-000002.json" in text and "Traceback" not in text
