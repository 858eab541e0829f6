"""Ed25519: RFC 8032 known answers, key parsing, failure modes."""

from __future__ import annotations

import pytest

from protocols.errors import SignatureError
from protocols.signing import (
    Ed25519PrivateKey,
    fingerprint,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_key_pem,
    public_key_raw,
    sign,
    verify,
)

# RFC 8032 §7.1, TEST 1 and TEST 2 (secret key, public key, message, signature).
VECTORS = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701"
     "cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d"
     "0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), VECTORS)
def test_rfc8032_vectors(secret: str, public: str, message: str, signature: str) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
    assert public_key_raw(key.public_key()).hex() == public
    assert sign(key, bytes.fromhex(message)) == signature
    verify(load_public_key(public.encode()), bytes.fromhex(message), signature, what="kat")


def test_pem_round_trip_and_fingerprint() -> None:
    key = Ed25519PrivateKey.generate()
    again = load_private_key(private_key_pem(key))
    from_pem = load_public_key(public_key_pem(key))
    assert fingerprint(again) == fingerprint(key) == fingerprint(from_pem)
    assert fingerprint(key).startswith("sha256:") and len(fingerprint(key)) == 71


def test_wrong_key_or_altered_payload_fails() -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    sig = sign(a, b"payload")
    with pytest.raises(SignatureError):
        verify(b.public_key(), b"payload", sig, what="x")
    with pytest.raises(SignatureError):
        verify(a.public_key(), b"payloaD", sig, what="x")
    with pytest.raises(SignatureError):
        verify(a.public_key(), b"payload", sig[:-2], what="x")
    with pytest.raises(SignatureError):
        verify(a.public_key(), b"payload", "zz" * 64, what="x")


def test_non_ed25519_keys_are_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ecdsa = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(SignatureError):
        load_public_key(ecdsa)
    with pytest.raises(SignatureError):
        load_public_key(b"not a key")
