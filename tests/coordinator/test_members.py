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
