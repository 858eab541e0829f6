"""A member's two key pairs.

* Node authentication: ECDSA P-384 in OpenSSH format -- what
  ``flower-supernode --auth-supernode-private-key`` loads and what
  ``flwr supernode register`` accepts as the public key.
* Receipt signing: Ed25519 (PEM), fingerprinted as in ``protocols.signing``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


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
    _write(paths["node_key"], node.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.OpenSSH,
                                                 serialization.NoEncryption()), 0o600)
    _write(paths["node_pub"], node_pub + b"\n", 0o644)
    _write(paths["receipt_key"], private_key_pem(receipt), 0o600)
    _write(paths["receipt_pub"], public_key_pem(receipt), 0o644)
    return MemberKeys(node_fingerprint=openssh_fingerprint(node_pub),
                      receipt_fingerprint=fingerprint(receipt), **paths)
