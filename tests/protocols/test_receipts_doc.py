"""docs/receipts.md carries the worked example's real bytes, and they verify."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from protocols.receipts import (
    parse_receipt,
    receipt_filename,
    receipt_hash,
    verify_chain,
    verify_stored_chain,
)
from protocols.signing import load_public_key
from tests.protocols.receipt_example import example

DOC = Path(__file__).resolve().parents[2] / "docs" / "receipts.md"


def test_worked_example_in_the_spec_is_current() -> None:
    text = DOC.read_text(encoding="utf-8")
    e = example()
    for key in ("coordinator_seed", "coordinator_public_key", "coordinator_fingerprint",
                "merkle_root", "signing_payload", "signature", "receipt_json", "receipt_hash"):
        assert str(e[key]) in text, key
    for leaf, digest in zip(e["leaf_json"], e["leaf_hashes"], strict=True):  # type: ignore[call-overload]
        assert leaf in text and digest in text


def test_worked_example_verifies_independently() -> None:
    e = example()
    raw = str(e["receipt_json"]).encode()
    key = load_public_key(str(e["coordinator_public_key"]).encode())
    assert verify_chain([raw], coordinator_key=key).ok
    assert hashlib.sha256(raw).hexdigest() == e["receipt_hash"]
    assert parse_receipt(raw).merkle_root == e["merkle_root"]


def test_the_spec_s_independent_verifier_runs(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    code = text.split("```python\n")[1].split("```")[0]
    namespace: dict[str, object] = {}
    exec(code, namespace)  # the doc's own verifier, not ours
    e = example()
    (tmp_path / "receipt-000001.json").write_bytes(str(e["receipt_json"]).encode())
    verify_dir = namespace["verify_dir"]
    assert verify_dir(tmp_path, e["coordinator_public_key"]) == e["receipt_hash"]  # type: ignore[operator]
    raw = bytearray((tmp_path / "receipt-000001.json").read_bytes())
    raw[raw.index(b'"weight":0.75')+10] = ord("6")
    (tmp_path / "receipt-000001.json").write_bytes(bytes(raw))
    try:
        verify_dir(tmp_path, e["coordinator_public_key"])  # type: ignore[operator]
    except Exception:  # InvalidSignature from the doc's verifier
        return
    raise AssertionError("the spec's verifier accepted a tampered receipt")


def test_the_spec_s_verifier_agrees_with_ours_on_longer_chains(tmp_path: Path) -> None:
    """The spec's verifier and verify_chain accept and refuse the same multi-round chains."""
    from tests.protocols.factories import COORDINATOR, chain
    from tests.protocols.test_receipts import _resign

    text = DOC.read_text(encoding="utf-8")
    namespace: dict[str, object] = {}
    exec(text.split("```python\n")[1].split("```")[0], namespace)
    verify_dir = namespace["verify_dir"]
    pub_hex = COORDINATOR.public_key().public_bytes_raw().hex()
    honest = [r.canonical_bytes() for r in chain(4)]
    swapped = _resign(chain(4), 2, model_digest_before="9" * 64)
    foreign = _resign(chain(4), 1, federation_id="other")
    for name, raws, ok in (("honest", honest, True), ("swapped", swapped, False),
                           ("foreign", foreign, False)):
        d = tmp_path / name
        d.mkdir()
        for i, raw in enumerate(raws, start=1):
            (d / f"receipt-{i:06d}.json").write_bytes(raw)
        ours = verify_chain(raws, coordinator_key=COORDINATOR.public_key()).ok
        try:
            verify_dir(d, pub_hex)  # type: ignore[operator]
            theirs = True
        except AssertionError:
            theirs = False
        assert ours == theirs == ok, name


def _spec_verifier() -> Callable[..., str]:
    namespace: dict[str, Any] = {}
    exec(DOC.read_text(encoding="utf-8").split("```python\n")[1].split("```")[0], namespace)
    return cast("Callable[..., str]", namespace["verify_dir"])


def _theirs(verify_dir: Callable[..., str], directory: Path, pub_hex: str, **expect: Any) -> bool:
    try:
        verify_dir(directory, pub_hex, **expect)
    except Exception:  # AssertionError, InvalidSignature, JSON, Unicode or key errors
        return False
    return True


def _write(directory: Path, files: dict[str, bytes]) -> Path:
    if directory.exists():
        for old in directory.iterdir():
            old.unlink()
    directory.mkdir(exist_ok=True)
    for name, raw in files.items():
        (directory / name).write_bytes(raw)
    return directory


def test_the_spec_s_verifier_agrees_with_ours_on_single_byte_mutants(tmp_path: Path) -> None:
    """At each signature character: its upper case, the next hex digit and a space; at every
    other byte: its other case, or the next byte value where it has none."""
    from tests.protocols.test_receipt_byte_form import small_receipt

    verify_dir = _spec_verifier()
    raw, coordinator = small_receipt()
    pub, pub_hex = coordinator.public_key(), coordinator.public_key().public_bytes_raw().hex()
    sig_at = raw.index(b'"signature":"') + len(b'"signature":"')
    mutants = []
    for i, byte in enumerate(raw):
        other = ord(chr(byte).swapcase())
        if sig_at <= i < sig_at + 128:
            values = bytes((other, ord("0123456789abcdef"[(int(chr(byte), 16) + 1) % 16]), 32))
        else:
            values = bytes((other if other != byte else (byte + 1) % 256,))
        mutants += [raw[:i] + bytes((v,)) + raw[i + 1:] for v in values if v != byte]
    directory = tmp_path / "chain"
    assert _theirs(verify_dir, _write(directory, {"receipt-000001.json": raw}), pub_hex)
    disagreements = []
    for mutant in mutants:
        ours = verify_stored_chain({"receipt-000001.json": mutant}, coordinator_key=pub).ok
        theirs = _theirs(verify_dir, _write(directory, {"receipt-000001.json": mutant}), pub_hex)
        if ours or theirs:
            disagreements.append((mutant, ours, theirs))
    assert len(mutants) > 1100 and disagreements == []


def test_the_spec_s_verifier_agrees_with_ours_on_files_and_pins(tmp_path: Path) -> None:
    """Renamed, stray, truncated and duplicate-member attacks: both refuse, honest both accept."""
    from tests.protocols.factories import COORDINATOR, chain

    verify_dir = _spec_verifier()
    pub, pub_hex = COORDINATOR.public_key(), COORDINATOR.public_key().public_bytes_raw().hex()
    receipts = chain(4)
    honest = {receipt_filename(r.round): r.canonical_bytes() for r in receipts}
    head, early = receipt_hash(receipts[-1]), receipt_hash(receipts[1])
    truncated = {k: v for k, v in honest.items() if k != "receipt-000004.json"}
    doubled = dict(honest)
    doubled["receipt-000004.json"] = b'{"round":9,' + honest["receipt-000004.json"][1:]
    cases: list[tuple[str, dict[str, bytes], dict[str, Any], bool]] = [
        ("honest", honest, {}, True),
        ("honest, pinned", honest, {"expect_head": head, "rounds": 4}, True),
        ("extends an earlier pin", honest, {"expect_head": early}, True),
        ("renamed one up", {receipt_filename(r.round + 1): r.canonical_bytes()
                            for r in receipts}, {}, False),
        ("misnamed last", {**truncated, "receipt-000005.json": honest["receipt-000004.json"]},
         {}, False),
        ("unpadded", {**truncated, "receipt-4.json": honest["receipt-000004.json"]}, {}, False),
        ("stray copy", {**honest, "receipt-copy.json": honest["receipt-000004.json"]}, {},
         False),
        ("truncated", truncated, {}, True),
        ("truncated, head pinned", truncated, {"expect_head": head}, False),
        ("truncated, rounds pinned", truncated, {"rounds": 4}, False),
        ("duplicate member", doubled, {}, False),
    ]
    for name, files, expect, ok in cases:
        ours = verify_stored_chain(files, coordinator_key=pub,
                                   expect_head=expect.get("expect_head"),
                                   expect_rounds=expect.get("rounds")).ok
        theirs = _theirs(verify_dir, _write(tmp_path / "c", files), pub_hex, **expect)
        assert ours == theirs == ok, name


def _table_members(section: str) -> set[str]:
    text = DOC.read_text(encoding="utf-8").split(section)[1].split("\n## ")[0]
    return {line.split("`")[1] for line in text.splitlines() if line.startswith("| `")}


def test_the_spec_s_member_tables_are_the_code_s_fields() -> None:
    """§2 and §4 list exactly the members the parser takes (and refuses all others)."""
    from dataclasses import fields

    from protocols.receipts import ReceiptLeaf, RoundReceipt

    for section, cls in (("## 2. Leaf", ReceiptLeaf), ("## 4. Receipt", RoundReceipt)):
        assert _table_members(section) == {"kind"} | {f.name for f in fields(cls)}, section
