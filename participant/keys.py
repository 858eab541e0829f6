"""A member's two key pairs.

* Node authentication: ECDSA P-384 in OpenSSH format -- what
  ``flower-supernode --auth-supernode-private-key`` loads and what
  ``flwr supernode register`` accepts as the public key.
* Receipt signing: Ed25519 (PEM), fingerprinted as in ``protocols.signing``.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols.atomic_files import PRIVATE, PUBLIC, write_bytes
from protocols.errors import DeploymentError
from protocols.signing import fingerprint, private_key_pem, public_key_pem

__all__ = ["MemberKeys", "create_member_keys", "openssh_fingerprint"]


@dataclass(frozen=True, kw_only=True)
class MemberKeys:
    """Key file paths and the public fingerprints a member sends to the operator."""

    node_key: Path
    node_pub: Path
    receipt_key: Path
    receipt_pub: Path
    node_fingerprint: str
    receipt_fingerprint: str


def openssh_fingerprint(public_line: bytes) -> str:
    """OpenSSH-style ``SHA256:<base64>`` fingerprint of an OpenSSH public key line."""
    parts = public_line.split()
    if len(parts) < 2:
        raise DeploymentError("not an OpenSSH public key line", got=public_line[:60],
                              expected="'<type> <base64> [comment]'")
    digest = hashlib.sha256(base64.b64decode(parts[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def create_member_keys(directory: Path, *, overwrite: bool = False) -> MemberKeys:
    """Generate both key pairs under ``directory`` (private keys mode 0600)."""
    paths = {"node_key": directory / "node_key", "node_pub": directory / "node_key.pub",
             "receipt_key": directory / "receipt_key.pem",
             "receipt_pub": directory / "receipt_key.pub.pem"}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise DeploymentError("member keys already exist; refusing to overwrite them",
                              got=existing, fix="keep the existing keys (they are enrolled), "
                              "or use a fresh directory")
    node = ec.generate_private_key(ec.SECP384R1())
    node_pub = node.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                              serialization.PublicFormat.OpenSSH)
    receipt = Ed25519PrivateKey.generate()
    write_bytes(paths["node_key"], node.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.OpenSSH,
                                                      serialization.NoEncryption()), mode=PRIVATE)
    write_bytes(paths["node_pub"], node_pub + b"\n", mode=PUBLIC)
    write_bytes(paths["receipt_key"], private_key_pem(receipt), mode=PRIVATE)
    write_bytes(paths["receipt_pub"], public_key_pem(receipt), mode=PUBLIC)
    return MemberKeys(node_fingerprint=openssh_fingerprint(node_pub),
                      receipt_fingerprint=fingerprint(receipt), **paths)
