"""Deterministic keys and messages for protocol tests."""

from __future__ import annotations

from protocols.messages import PROTOCOL_VERSION, DPPlan, RoundInstruction, UpdateSubmission
from protocols.receipts import GENESIS_HASH, ReceiptLeaf, RoundReceipt, build_receipt, receipt_hash
from protocols.signing import Ed25519PrivateKey, fingerprint, sign


def key(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


COORDINATOR = key(200)
MEMBERS = [key(i) for i in range(1, 6)]


def plan() -> DPPlan:
    return DPPlan(max_grad_norm=1.0, rounds=3, local_epochs=1, target_epsilon=8.0, delta=1e-5,
                  batch_size=64)


def instruction(round: int = 1) -> RoundInstruction:
    return RoundInstruction(
        protocol_version=PROTOCOL_VERSION, federation_id="fed", round=round,
        global_model_digest="a" * 64, model_spec={"hidden": [4]}, model_spec_digest="b" * 64,
        featurization_spec={"name": "ecfp"}, featurization_spec_digest="c" * 64,
        config_digest="d" * 64, dp_plan=plan(), consortium_endpoints=("logd",))


def submission(member: Ed25519PrivateKey, round: int = 1, delta_digest: str = "e" * 64
               ) -> UpdateSubmission:
    unsigned = UpdateSubmission(
        protocol_version=PROTOCOL_VERSION, federation_id="fed", round=round,
        participant_fingerprint=fingerprint(member), base_model_digest="a" * 64,
        delta_digest=delta_digest, num_examples=100, claimed_epsilon=1.25, delta=1e-5,
        metrics_digest="f" * 64)
    d = unsigned.to_dict()
    d["signature"] = sign(member, unsigned.signing_payload())
    return UpdateSubmission.from_dict(d)


def chain(n_rounds: int, n_members: int = 3) -> list[RoundReceipt]:
    receipts: list[RoundReceipt] = []
    prev = GENESIS_HASH
    for r in range(1, n_rounds + 1):
        leaves = []
        for i, m in enumerate(MEMBERS[:n_members]):
            sub = submission(m, r, delta_digest=f"{r:02x}{i:02x}".ljust(64, "0"))
            leaves.append(ReceiptLeaf(participant_fingerprint=sub.participant_fingerprint,
                                      status="accepted", update_digest=sub.delta_digest,
                                      participant_signature=sub.signature,
                                      weight=1.0 / n_members, claimed_epsilon=1.25 * r))
        receipt = build_receipt(
            federation_id="fed", round=r, issued_at=f"2026-11-22T12:{r:02d}:00Z",
            previous_receipt_hash=prev, model_digest_before=f"{r - 1:064x}",
            model_digest_after=f"{r:064x}", config_digest="d" * 64, leaves=leaves,
            coordinator_key=COORDINATOR)
        receipts.append(receipt)
        prev = receipt_hash(receipt)
    return receipts
