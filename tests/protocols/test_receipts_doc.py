"""docs/receipts.md carries the worked example's real bytes, and they verify."""

from __future__ import annotations

import hashlib
from pathlib import Path

from protocols.receipts import parse_receipt, verify_chain
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
