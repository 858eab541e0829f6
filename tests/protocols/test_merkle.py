"""RFC 6962 Merkle trees: proofs for every leaf of every size 1..33."""

from __future__ import annotations

import hashlib

import pytest

from protocols.errors import ReceiptVerificationError
from protocols.merkle import inclusion_proof, leaf_hash, merkle_root, node_hash, verify_inclusion


def test_known_values() -> None:
    assert merkle_root([]) == hashlib.sha256(b"").digest()
    assert merkle_root([b"a"]) == hashlib.sha256(b"\x00a").digest()
    three = merkle_root([b"a", b"b", b"c"])
    assert three == node_hash(node_hash(leaf_hash(b"a"), leaf_hash(b"b")), leaf_hash(b"c"))
    # RFC 6962 test vector: the empty leaf
    assert leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")


@pytest.mark.parametrize("size", range(1, 34))
def test_every_leaf_proves_inclusion_and_any_change_breaks_it(size: int) -> None:
    leaves = [f"leaf-{i}".encode() for i in range(size)]
    root = merkle_root(leaves)
    for i in range(size):
        proof = inclusion_proof(i, leaves)
        verify_inclusion(leaves[i], i, size, proof, root)
        with pytest.raises(ReceiptVerificationError):
            verify_inclusion(leaves[i] + b"!", i, size, proof, root)
        if proof:
            bad = list(proof)
            flipped = bytearray(bad[0])
            flipped[0] ^= 1
            bad[0] = bytes(flipped)
            with pytest.raises(ReceiptVerificationError):
                verify_inclusion(leaves[i], i, size, bad, root)
        if size > 1:
            with pytest.raises(ReceiptVerificationError):
                verify_inclusion(leaves[i], (i + 1) % size, size, proof, root)


def test_leaf_cannot_pose_as_a_node() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert merkle_root([a + b]) != merkle_root([b"a", b"b"])
