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
        # One changed byte anywhere (each proof hash, the root) breaks the proof.
        for j in range(len(proof)):
            bad = list(proof)
            flipped = bytearray(bad[j])
            flipped[(i + j) % 32] ^= 0x80
            bad[j] = bytes(flipped)
            with pytest.raises(ReceiptVerificationError):
                verify_inclusion(leaves[i], i, size, bad, root)
        wrong_root = bytearray(root)
        wrong_root[i % 32] ^= 1
        with pytest.raises(ReceiptVerificationError):
            verify_inclusion(leaves[i], i, size, proof, bytes(wrong_root))
        # A proof for another position, or truncated or extended, fails too. (tree_size alone
        # is not bound by the proof; receipts bind it by signing the leaves.)
        if size > 1:
            with pytest.raises(ReceiptVerificationError):
                verify_inclusion(leaves[i], (i + 1) % size, size, proof, root)
        with pytest.raises(ReceiptVerificationError):
            verify_inclusion(leaves[i], i, size, [*proof, root], root)
        if proof:
            with pytest.raises(ReceiptVerificationError):
                verify_inclusion(leaves[i], i, size, proof[:-1], root)


def test_matches_an_independent_rfc9162_root() -> None:
    """Roots agree with a bottom-up construction (RFC 9162 §2.1.1 via pairwise levels)."""
    for size in range(1, 34):
        leaves = [bytes([n]) * n for n in range(size)]
        level = [leaf_hash(x) for x in leaves]
        while len(level) > 1:  # pair left to right; an odd last node is promoted unchanged
            nxt = [node_hash(level[k], level[k + 1]) for k in range(0, len(level) - 1, 2)]
            level = nxt + ([level[-1]] if len(level) % 2 else [])
        assert merkle_root(leaves) == level[0], size


def test_leaf_cannot_pose_as_a_node() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert merkle_root([a + b]) != merkle_root([b"a", b"b"])
