from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from participant.keys import create_member_keys
from protocols.errors import DeploymentError
from protocols.signing import fingerprint, load_public_key


def test_node_key_is_openssh_p384_and_receipt_key_is_ed25519(tmp_path: Path) -> None:
    keys = create_member_keys(tmp_path)
    priv = serialization.load_ssh_private_key(keys.node_key.read_bytes(), password=None)
    assert isinstance(priv, ec.EllipticCurvePrivateKey) and priv.curve.name == "secp384r1"
    assert keys.node_pub.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert keys.node_fingerprint.startswith("SHA256:")
    pub = load_public_key(keys.receipt_pub.read_bytes())
    assert fingerprint(pub) == keys.receipt_fingerprint
    assert keys.node_key.stat().st_mode & 0o077 == 0


def test_existing_keys_are_not_overwritten(tmp_path: Path) -> None:
    keys = create_member_keys(tmp_path)
    before = keys.node_key.read_bytes()
    with pytest.raises(DeploymentError):
        create_member_keys(tmp_path)
    assert keys.node_key.read_bytes() == before
