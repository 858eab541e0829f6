"""The worked example of docs/receipts.md, regenerated from fixed inputs."""

from __future__ import annotations

from protocols.merkle import leaf_hash
from protocols.receipts import GENESIS_HASH, ReceiptLeaf, RoundReceipt, build_receipt, receipt_hash
from protocols.signing import Ed25519PrivateKey, fingerprint, public_key_raw

COORDINATOR_SEED = bytes.fromhex(
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
MEMBER_A_SEED = bytes.fromhex(
    "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
MEMBER_B_SEED = bytes(range(32))


def example() -> dict[str, object]:
    coordinator = Ed25519PrivateKey.from_private_bytes(COORDINATOR_SEED)
    a = Ed25519PrivateKey.from_private_bytes(MEMBER_A_SEED)
    b = Ed25519PrivateKey.from_private_bytes(MEMBER_B_SEED)
    leaves = [
        ReceiptLeaf(participant_fingerprint=fingerprint(a), status="accepted",
                    update_digest="11" * 32, participant_signature="22" * 64, weight=0.75,
                    claimed_epsilon=2.5),
        ReceiptLeaf(participant_fingerprint=fingerprint(b), status="rejected",
                    reason="norm-exceeded", update_digest="33" * 32,
                    participant_signature="44" * 64, weight=0.0, claimed_epsilon=2.0),
    ]
    receipt: RoundReceipt = build_receipt(
        federation_id="example-consortium", round=1, issued_at="2026-11-22T12:00:00Z",
        previous_receipt_hash=GENESIS_HASH, model_digest_before="aa" * 32,
        model_digest_after="bb" * 32, config_digest="cc" * 32, leaves=leaves,
        coordinator_key=coordinator)
    return {
        "coordinator_seed": COORDINATOR_SEED.hex(),
        "coordinator_public_key": public_key_raw(coordinator.public_key()).hex(),
        "coordinator_fingerprint": fingerprint(coordinator),
        "leaf_json": [leaf.canonical_bytes().decode() for leaf in receipt.leaves],
        "leaf_hashes": [leaf_hash(leaf.canonical_bytes()).hex() for leaf in receipt.leaves],
        "merkle_root": receipt.merkle_root,
        "signing_payload": receipt.signing_payload().decode(),
        "signature": receipt.signature,
        "receipt_json": receipt.canonical_bytes().decode(),
        "receipt_hash": receipt_hash(receipt),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(example(), indent=2))
