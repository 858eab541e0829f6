"""fedadmet's wire contract: canonical bytes, messages, signatures, Merkle proofs, receipts.

Pure (stdlib, numpy, cryptography, rfc8785): no file or network I/O. The Flower
mapping lives in :mod:`protocols.flower_codec` and is deliberately not
re-exported here, so that importing ``protocols`` never imports flwr.
"""

from protocols.canonical import array_digest, canonical_json, sha256_hex, tensors_digest
from protocols.errors import (
    FedAdmetError,
    MessageValidationError,
    ProtocolError,
    ReceiptVerificationError,
    SignatureError,
)
from protocols.merkle import inclusion_proof, leaf_hash, merkle_root, node_hash, verify_inclusion
from protocols.messages import (
    PROTOCOL_VERSION,
    DPPlan,
    Refusal,
    RoundInstruction,
    UpdateSubmission,
)
from protocols.receipts import (
    GENESIS_HASH,
    ChainReport,
    InclusionProof,
    ReceiptLeaf,
    RoundReceipt,
    build_receipt,
    parse_receipt,
    proof_for,
    receipt_hash,
    sign_receipt,
    verify_chain,
    verify_receipt_for_participant,
    verify_receipt_signature,
)
from protocols.signing import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
    fingerprint,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_key_pem,
    public_key_raw,
    sign,
    verify,
)

__all__ = [
    "GENESIS_HASH",
    "PROTOCOL_VERSION",
    "ChainReport",
    "DPPlan",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "FedAdmetError",
    "InclusionProof",
    "MessageValidationError",
    "ProtocolError",
    "ReceiptLeaf",
    "ReceiptVerificationError",
    "Refusal",
    "RoundInstruction",
    "RoundReceipt",
    "SignatureError",
    "UpdateSubmission",
    "array_digest",
    "build_receipt",
    "canonical_json",
    "fingerprint",
    "inclusion_proof",
    "leaf_hash",
    "load_private_key",
    "load_public_key",
    "merkle_root",
    "node_hash",
    "parse_receipt",
    "private_key_pem",
    "proof_for",
    "public_key_pem",
    "public_key_raw",
    "receipt_hash",
    "sha256_hex",
    "sign",
    "sign_receipt",
    "tensors_digest",
    "verify",
    "verify_chain",
    "verify_inclusion",
    "verify_receipt_for_participant",
    "verify_receipt_signature",
]
