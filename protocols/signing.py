"""Ed25519 signatures over canonical bytes, and key fingerprints.

Keys are passed in as objects or bytes; this module never reads files.
A key's fingerprint is ``"sha256:" + hex(SHA-256(raw 32-byte public key))``.
Signatures are the 64-byte Ed25519 signatures of RFC 8032, hex-encoded
(lower case) wherever they appear in JSON.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocols.errors import SignatureError

__all__ = [
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "fingerprint",
    "load_private_key",
    "load_public_key",
    "private_key_pem",
    "public_key_pem",
    "public_key_raw",
    "sign",
    "verify",
]


def public_key_raw(key: Ed25519PublicKey) -> bytes:
    """The 32 raw public-key bytes."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """``sha256:<hex>`` over the raw public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return "sha256:" + hashlib.sha256(public_key_raw(public)).hexdigest()


def sign(key: Ed25519PrivateKey, payload: bytes) -> str:
    """Hex Ed25519 signature of ``payload``."""
    return key.sign(payload).hex()


def verify(key: Ed25519PublicKey, payload: bytes, signature_hex: str, *, what: str) -> None:
    """Verify a hex signature; raises :class:`SignatureError` naming ``what``."""
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        raise SignatureError(f"{what}: signature is not hex", got=signature_hex[:32],
                             expected="128 hex characters") from None
    if len(signature) != 64:
        raise SignatureError(f"{what}: signature has the wrong length", got=len(signature),
                             expected="64 bytes")
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        raise SignatureError(f"{what}: signature does not verify", got=fingerprint(key),
                             expected="a signature by this key over the canonical bytes",
                             fix="the message was altered or signed by another key") from None


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """Parse a public key from PEM, OpenSSH, 32 raw bytes, or 64 hex characters."""
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(text)
        elif text.startswith(b"ssh-ed25519"):
            key = serialization.load_ssh_public_key(text)
        elif len(text) == 64:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.decode()))
        elif len(data) == 32:
            key = Ed25519PublicKey.from_public_bytes(data)
        else:
            raise ValueError("unrecognised encoding")
    except ValueError as exc:
        raise SignatureError("cannot parse the Ed25519 public key", got=f"{exc}",
                             expected="PEM, OpenSSH, raw 32 bytes or 64 hex characters") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the key is not an Ed25519 key", got=type(key).__name__,
                             expected="Ed25519PublicKey")
    return key


def load_private_key(data: bytes) -> Ed25519PrivateKey:
    """Parse an unencrypted PKCS#8 PEM Ed25519 private key (or a 32-byte seed)."""
    try:
        key = (Ed25519PrivateKey.from_private_bytes(data) if len(data) == 32
               else serialization.load_pem_private_key(data, password=None))
    except (ValueError, TypeError) as exc:
        raise SignatureError("cannot parse the Ed25519 private key", got=str(exc),
                             expected="an unencrypted PKCS#8 PEM Ed25519 key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("the key is not an Ed25519 key", got=type(key).__name__,
                             expected="Ed25519PrivateKey")
    return key


def public_key_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """SubjectPublicKeyInfo PEM of the public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (protect the file with permissions)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
