"""Merkle trees over receipt leaves, hashed as RFC 6962 / RFC 9162 specify.

    leaf hash:  SHA-256(0x00 || leaf bytes)
    node hash:  SHA-256(0x01 || left || right)
    MTH({})   = SHA-256("")
    MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two < n

The distinct prefixes stop a leaf from being passed off as an inner node (the
second-preimage attack on naive Merkle trees). Inclusion proofs and their
verification follow RFC 9162 §2.1.3.1-2.1.3.2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from protocols.errors import ReceiptVerificationError

__all__ = ["inclusion_proof", "leaf_hash", "merkle_root", "node_hash", "verify_inclusion"]

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(leaf: bytes) -> bytes:
    """RFC 6962 leaf hash."""
    return hashlib.sha256(_LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior-node hash."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _root(hashes: Sequence[bytes]) -> bytes:
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return node_hash(_root(hashes[:k]), _root(hashes[k:]))


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Merkle tree hash (MTH) of the leaves."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    return _root([leaf_hash(leaf) for leaf in leaves])


def _path(index: int, hashes: Sequence[bytes]) -> list[bytes]:
    if len(hashes) == 1:
        return []
    k = _split(len(hashes))
    if index < k:
        return [*_path(index, hashes[:k]), _root(hashes[k:])]
    return [*_path(index - k, hashes[k:]), _root(hashes[:k])]


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """Audit path for ``leaves[index]`` (RFC 9162 §2.1.3.1), leaf-side first."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} outside a tree of {len(leaves)} leaves")
    return _path(index, [leaf_hash(leaf) for leaf in leaves])


def verify_inclusion(leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes],
                     root: bytes) -> None:
    """Check an inclusion proof (RFC 9162 §2.1.3.2); raises on any mismatch."""
    if not 0 <= index < tree_size:
        raise ReceiptVerificationError("inclusion", "leaf index outside the tree",
                                       got=index, expected=f"0 <= index < {tree_size}")
    fn, sn = index, tree_size - 1
    r = leaf_hash(leaf)
    for p in proof:
        if sn == 0:
            raise ReceiptVerificationError("inclusion", "proof is longer than the tree allows")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ReceiptVerificationError("inclusion", "proof is shorter than the tree requires")
    if r != root:
        raise ReceiptVerificationError("inclusion", "recomputed root does not match",
                                       got=r.hex(), expected=root.hex())
