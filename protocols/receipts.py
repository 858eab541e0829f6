"""Signed, hash-chained per-round audit receipts with Merkle inclusion proofs.

After every round the coordinator signs a :class:`RoundReceipt`: which
submissions it saw, which it accepted or rejected and why, their weights and
claimed privacy spend, the global model before and after, the digest of the
round's configuration, and the hash of the previous receipt. Participants and
auditors can then prove, without trusting the operator, which updates went
into which model under which privacy parameters. ``docs/receipts.md`` is the
normative specification of the bytes; this module implements it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from protocols import merkle
from protocols.canonical import require_canonical, sha256_hex, strict_json_loads
from protocols.errors import MessageValidationError, ReceiptVerificationError, SignatureError
from protocols.messages import (
    PROTOCOL_VERSION,
    Signed,
    Wire,
    check_digest,
    check_fingerprint,
    check_float,
    check_int,
    check_participant_id,
    check_signature,
    check_str,
    check_version,
)
from protocols.signing import Ed25519PrivateKey, Ed25519PublicKey, fingerprint, verify

__all__ = [
    "GENESIS_HASH",
    "STATUSES",
    "UNRECEIVED",
    "ChainReport",
    "InclusionProof",
    "ReceiptLeaf",
    "RoundReceipt",
    "build_receipt",
    "parse_receipt",
    "proof_for",
    "receipt_filename",
    "receipt_hash",
    "round_of_receipt_filename",
    "sign_receipt",
    "sort_receipt_filenames",
    "verify_chain",
    "verify_receipt_for_participant",
    "verify_receipt_signature",
    "verify_stored_chain",
]

GENESIS_HASH = "0" * 64
# "late": the member was sampled but the round closed (min-replies) before its reply came;
# sites count late and dropped leaves separately, each against its own halt limit
STATUSES = ("accepted", "rejected", "dropped", "late", "refused")
# the statuses of a leaf whose reply never reached aggregation, recorded without its digest
UNRECEIVED = ("dropped", "late")
# docs/receipts.md §1: exactly YYYY-MM-DDTHH:MM:SSZ (ASCII digits; \d would take any Unicode digit).
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_FILENAME = re.compile(r"receipt-([0-9]{6,})\.json")


@dataclass(frozen=True, kw_only=True)
class ReceiptLeaf(Wire):
    """One participant's line in a round receipt."""

    KIND: ClassVar[str] = "receipt-leaf"
    participant_fingerprint: str
    status: str
    reason: str | None = None
    update_digest: str | None = None
    participant_signature: str | None = None
    weight: float = 0.0
    claimed_epsilon: float | None = None

    def __post_init__(self) -> None:
        n = "ReceiptLeaf"
        check_participant_id(n, "participant_fingerprint", self.participant_fingerprint)
        if self.status not in STATUSES:
            raise MessageValidationError("ReceiptLeaf.status is invalid", got=self.status,
                                         expected=" | ".join(STATUSES))
        if self.reason is not None:
            check_str(n, "reason", self.reason)
        if self.update_digest is not None:
            check_digest(n, "update_digest", self.update_digest)
        check_signature(n, "participant_signature", self.participant_signature, optional=True)
        check_float(n, "weight", self.weight, lo=0.0, hi=1.0)
        if self.claimed_epsilon is not None:
            check_float(n, "claimed_epsilon", self.claimed_epsilon, lo=0.0)
        if self.status == "accepted" and (self.update_digest is None or self.reason is not None):
            raise MessageValidationError("an accepted leaf needs an update digest and no reason",
                                         got=self.to_dict())
        if self.status != "accepted" and (not self.reason or self.weight != 0.0):
            raise MessageValidationError("a non-accepted leaf needs a reason and zero weight",
                                         got=self.to_dict())

    def leaf_bytes(self) -> bytes:
        """The bytes hashed into the Merkle tree: canonical JSON of the leaf."""
        return self.canonical_bytes()


@dataclass(frozen=True, kw_only=True)
class RoundReceipt(Signed):
    """The coordinator's signed account of one round (signed like every :class:`Signed`)."""

    KIND: ClassVar[str] = "round-receipt"
    protocol_version: str
    federation_id: str
    round: int
    issued_at: str
    previous_receipt_hash: str
    model_digest_before: str
    model_digest_after: str
    config_digest: str
    leaves: tuple[ReceiptLeaf, ...]
    merkle_root: str
    coordinator_fingerprint: str

    def __post_init__(self) -> None:
        n = "RoundReceipt"
        check_version(n, self.protocol_version)
        check_str(n, "federation_id", self.federation_id)
        check_int(n, "round", self.round, minimum=1)
        _check_timestamp(n, "issued_at", self.issued_at)
        for name in ("previous_receipt_hash", "model_digest_before", "model_digest_after",
                     "config_digest", "merkle_root"):
            check_digest(n, name, getattr(self, name))
        check_fingerprint(n, "coordinator_fingerprint", self.coordinator_fingerprint)
        # Lower-case only: the signature is the one field it does not sign, so a parser that
        # took "D" for "d" would give one signed receipt many byte forms and chain heads.
        check_signature(n, "signature", self.signature)
        if not isinstance(self.leaves, tuple | list):
            raise MessageValidationError(f"{n}.leaves is invalid", got=self.leaves,
                                         expected="an array of receipt leaves")
        leaves = tuple(ReceiptLeaf.from_dict(leaf) if isinstance(leaf, Mapping) else leaf
                       for leaf in self.leaves)
        object.__setattr__(self, "leaves", leaves)
        ids = [leaf.participant_fingerprint for leaf in leaves]
        if ids != sorted(ids) or len(set(ids)) != len(ids):
            raise MessageValidationError("receipt leaves must be unique and sorted by fingerprint",
                                         got=ids)


def _check_timestamp(cls: str, name: str, value: object) -> None:
    ok = isinstance(value, str) and _TIMESTAMP.fullmatch(value) is not None
    if ok:
        try:  # the pattern fixed the layout; this refuses month 13, February 30 and the like
            datetime.fromisoformat(str(value)[:-1])
        except ValueError:
            ok = False
    if not ok:
        raise MessageValidationError(f"{cls}.{name} is invalid", got=value,
                                     expected="RFC 3339 UTC, exactly YYYY-MM-DDTHH:MM:SSZ")


@dataclass(frozen=True, kw_only=True)
class InclusionProof(Wire):
    """Proof that one leaf is in a receipt's Merkle tree."""

    KIND: ClassVar[str] = "inclusion-proof"
    round: int
    leaf_index: int
    tree_size: int
    path: tuple[str, ...]

    def __post_init__(self) -> None:
        n = "InclusionProof"
        check_int(n, "round", self.round, minimum=1)
        check_int(n, "leaf_index", self.leaf_index, minimum=0)
        check_int(n, "tree_size", self.tree_size, minimum=1)
        if self.leaf_index >= self.tree_size:
            raise MessageValidationError(f"{n}.leaf_index is invalid", got=self.leaf_index,
                                         expected=f"an index below tree_size ({self.tree_size})")
        if not isinstance(self.path, tuple | list):
            raise MessageValidationError(f"{n}.path is invalid", got=self.path,
                                         expected="a list of hex SHA-256 digests")
        object.__setattr__(self, "path", tuple(self.path))
        for i, h in enumerate(self.path):
            check_digest("InclusionProof", f"path[{i}]", h)


def _root_hex(leaves: Sequence[ReceiptLeaf]) -> str:
    return merkle.merkle_root([leaf.leaf_bytes() for leaf in leaves]).hex()


def build_receipt(*, federation_id: str, round: int, issued_at: str, previous_receipt_hash: str,
                  model_digest_before: str, model_digest_after: str, config_digest: str,
                  leaves: Sequence[ReceiptLeaf], coordinator_key: Ed25519PrivateKey
                  ) -> RoundReceipt:
    """Build and sign a receipt; leaves are sorted by fingerprint here."""
    ordered = tuple(sorted(leaves, key=lambda leaf: leaf.participant_fingerprint))
    unsigned = RoundReceipt(
        protocol_version=PROTOCOL_VERSION, federation_id=federation_id, round=round,
        issued_at=issued_at, previous_receipt_hash=previous_receipt_hash,
        model_digest_before=model_digest_before, model_digest_after=model_digest_after,
        config_digest=config_digest, leaves=ordered, merkle_root=_root_hex(ordered),
        coordinator_fingerprint=fingerprint(coordinator_key),
    )
    return sign_receipt(unsigned, coordinator_key)


def sign_receipt(receipt: RoundReceipt, key: Ed25519PrivateKey) -> RoundReceipt:
    """The receipt with the coordinator's signature over its signing payload."""
    return receipt.signed(key)


def receipt_hash(receipt: RoundReceipt) -> str:
    """SHA-256 hex of the full signed receipt's canonical bytes (what the next receipt chains)."""
    return sha256_hex(receipt.canonical_bytes())


def receipt_filename(round: int) -> str:
    """The stored receipt's file name: ``receipt-`` and the round zero-padded to six digits."""
    return f"receipt-{round:06d}.json"


def round_of_receipt_filename(name: str) -> int | None:
    """The round a file name stands for, or None unless it is exactly :func:`receipt_filename`.

    ``receipt-10.json``, ``receipt-0000010.json`` and ``receipt-000000.json`` name no round.
    """
    match = _FILENAME.fullmatch(name)
    if match is None:
        return None
    round_ = int(match.group(1))
    return round_ if round_ >= 1 and receipt_filename(round_) == name else None


def sort_receipt_filenames(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """(names that are some round's :func:`receipt_filename`, in round order; the strays)."""
    rounds = {name: round_of_receipt_filename(name) for name in names}
    strays = sorted(name for name, round_ in rounds.items() if round_ is None)
    good = sorted((round_, name) for name, round_ in rounds.items() if round_ is not None)
    return [name for _, name in good], strays


def parse_receipt(data: bytes | Mapping[str, Any]) -> RoundReceipt:
    """Parse stored bytes (which must be exactly canonical) or a JSON object.

    Bytes are refused unless they are the receipt's one byte form
    (docs/receipts.md §4): UTF-8, no duplicate member names, every field in
    its stated encoding, and RFC 8785 canonical JSON of the whole, byte for byte.
    """
    if isinstance(data, bytes | bytearray):
        receipt = RoundReceipt.from_dict(strict_json_loads(data, what="receipt"))
        require_canonical(data, receipt.canonical_bytes(), what="receipt")
        return receipt
    return RoundReceipt.from_dict(data)


def proof_for(receipt: RoundReceipt, participant: str) -> InclusionProof | None:
    """Inclusion proof of ``participant``'s leaf, or None if it has none."""
    ids = [leaf.participant_fingerprint for leaf in receipt.leaves]
    if participant not in ids:
        return None
    index = ids.index(participant)
    path = merkle.inclusion_proof(index, [leaf.leaf_bytes() for leaf in receipt.leaves])
    return InclusionProof(round=receipt.round, leaf_index=index, tree_size=len(ids),
                          path=tuple(h.hex() for h in path))


def verify_receipt_signature(receipt: RoundReceipt, key: Ed25519PublicKey) -> None:
    """Signature by the pinned coordinator key, and a Merkle root that matches the leaves."""
    if receipt.coordinator_fingerprint != fingerprint(key):
        raise ReceiptVerificationError("signature", "receipt names another coordinator key",
                                       round=receipt.round, got=receipt.coordinator_fingerprint,
                                       expected=fingerprint(key))
    try:
        verify(key, receipt.signing_payload(), receipt.signature, what="round receipt")
    except SignatureError as exc:
        raise ReceiptVerificationError("signature", exc.message, round=receipt.round) from exc
    if _root_hex(receipt.leaves) != receipt.merkle_root:
        raise ReceiptVerificationError("merkle-root", "leaves do not hash to the Merkle root",
                                       round=receipt.round)


def verify_receipt_for_participant(
    receipt: RoundReceipt, proof: InclusionProof | None, *, coordinator_key: Ed25519PublicKey,
    last_receipt_hash: str | None, last_round: int, own_fingerprint: str,
    own_update_digest: str | None, received_global_model_digest: str | None,
    federation_id: str | None = None, config_digest: str | None = None,
) -> ReceiptLeaf | None:
    """The participant's five checks, in order; returns its own leaf if it has one.

    1. ``signature``: signed by the coordinator key pinned at enrolment;
    2. ``chain``: links to the last receipt this participant holds;
    3. ``inclusion``: its own submission is in the tree with the digest it sent;
    4. ``model-digest``: the global model it now receives is the receipt's "after";
    5. ``round-monotone``: the round number is above every round it holds;

    and, when given, ``instruction``: the receipt names the ``federation_id`` and
    ``config_digest`` of the instruction it came with (a receipt from another federation
    or configuration is not this federation's history).

    ``own_update_digest`` is None when the participant sent nothing that round;
    ``received_global_model_digest`` is None when this is not the newest receipt.
    """
    verify_receipt_signature(receipt, coordinator_key)
    for name, want in (("federation_id", federation_id), ("config_digest", config_digest)):
        if want is not None and getattr(receipt, name) != want:
            raise ReceiptVerificationError(
                "instruction", f"the receipt's {name} is not the instruction's",
                round=receipt.round, got=getattr(receipt, name), expected=want,
                fix="stop: the coordinator delivered another federation's receipts")
    expected_prev = last_receipt_hash if last_receipt_hash is not None else GENESIS_HASH
    if receipt.round <= last_round:
        raise ReceiptVerificationError("round-monotone", "round number did not increase",
                                       round=receipt.round, got=receipt.round,
                                       expected=f"> {last_round}")
    if receipt.previous_receipt_hash != expected_prev:
        raise ReceiptVerificationError("chain", "does not link to the last receipt held",
                                       round=receipt.round, got=receipt.previous_receipt_hash,
                                       expected=expected_prev)
    own: ReceiptLeaf | None = None
    if own_update_digest is not None:
        if proof is None:
            raise ReceiptVerificationError("inclusion", "no inclusion proof for our submission",
                                           round=receipt.round)
        leaves = {leaf.participant_fingerprint: leaf for leaf in receipt.leaves}
        own = leaves.get(own_fingerprint)
        # A reply lost in transit, or one the round closed before, is honestly recorded as
        # dropped or late, without a digest.
        lost = own is not None and own.status in UNRECEIVED and own.update_digest is None
        if own is None or (own.update_digest != own_update_digest and not lost):
            raise ReceiptVerificationError(
                "inclusion", "our submission is missing or altered", round=receipt.round,
                got=None if own is None else own.update_digest, expected=own_update_digest)
        position = [leaf.participant_fingerprint for leaf in receipt.leaves].index(own_fingerprint)
        # The proof alone does not bind tree size or position; the signed leaves do.
        if (proof.round, proof.leaf_index, proof.tree_size) != (
                receipt.round, position, len(receipt.leaves)):
            raise ReceiptVerificationError(
                "inclusion", "proof does not describe our leaf in this receipt",
                round=receipt.round, got=(proof.round, proof.leaf_index, proof.tree_size),
                expected=(receipt.round, position, len(receipt.leaves)))
        merkle.verify_inclusion(own.leaf_bytes(), proof.leaf_index, proof.tree_size,
                                [bytes.fromhex(h) for h in proof.path],
                                bytes.fromhex(receipt.merkle_root))
    if (received_global_model_digest is not None
            and received_global_model_digest != receipt.model_digest_after):
        raise ReceiptVerificationError(
            "model-digest", "the global model received is not the one the receipt attests",
            round=receipt.round, got=received_global_model_digest,
            expected=receipt.model_digest_after,
            fix="stop: the coordinator sent a model other than the aggregate it signed")
    return own


@dataclass(frozen=True, kw_only=True)
class ChainReport:
    """Result of an offline chain verification.

    ``head_hash``/``head_round`` are the last receipt verified (64 zeros and 0
    before round 1). ``expected_head_round`` is the round whose receipt hashes
    to the expected head, when one was given and found.
    """

    ok: bool
    verified: int
    head_hash: str
    head_round: int = 0
    first_bad_index: int | None = None
    first_bad_round: int | None = None
    first_bad_name: str | None = None
    reason: str | None = None
    expected_head_round: int | None = None


def verify_chain(receipts: Sequence[bytes], *, coordinator_key: Ed25519PublicKey,
                 federation_id: str | None = None, names: Sequence[str] | None = None,
                 expect_head: str | None = None, expect_rounds: int | None = None
                 ) -> ChainReport:
    """Verify stored receipts in order; report the first bad one and why.

    Detects a changed byte (not canonical, bad signature or Merkle root),
    a removed receipt (a gap in rounds), reordered or inserted receipts,
    forks (two receipts for one round, or a link to something else), a
    receipt from another federation, a model swapped between rounds
    (``model_digest_before`` of round r must be ``model_digest_after`` of
    round r-1), and, given ``names``, a file not named for its round
    (docs/receipts.md §4-5). The end of a chain cannot be checked from the
    receipts alone: ``expect_head`` (a receipt hash the chain must contain,
    such as a member's last verified head) and ``expect_rounds`` (how many
    rounds it must hold, exactly) detect a truncated one.
    """
    if names is not None and len(names) != len(receipts):
        raise ValueError("one name per receipt")
    if expect_head is not None:
        check_digest("verify_chain", "expect_head", expect_head)
    prev_hash, prev_round = GENESIS_HASH, 0
    prev: RoundReceipt | None = None
    seen_rounds: set[int] = set()
    hashes: dict[str, int] = {}
    for i, raw in enumerate(receipts):
        name = None if names is None else names[i]

        def bad(reason: str, round_: int | None = None, i: int = i, head: str = prev_hash,
                head_round: int = prev_round, name: str | None = name) -> ChainReport:
            return ChainReport(ok=False, verified=i, head_hash=head, head_round=head_round,
                               first_bad_index=i, first_bad_round=round_,
                               first_bad_name=name, reason=reason)
        try:
            receipt = parse_receipt(raw)
        except MessageValidationError as exc:
            return bad(f"changed or malformed bytes: {exc.message}")
        if name is not None and name != receipt_filename(receipt.round):
            return bad(f"misnamed file: {name} holds round {receipt.round}, so it must be "
                       f"named {receipt_filename(receipt.round)}", receipt.round)
        try:
            verify_receipt_signature(receipt, coordinator_key)
        except ReceiptVerificationError as exc:
            return bad(f"bad signature or altered content: {exc.message}", receipt.round)
        expected_federation = federation_id if prev is None else prev.federation_id
        if expected_federation is not None and receipt.federation_id != expected_federation:
            return bad(f"foreign receipt: federation {receipt.federation_id!r}, expected "
                       f"{expected_federation!r}", receipt.round)
        if receipt.round in seen_rounds:
            return bad(f"forked chain: a second receipt for round {receipt.round}", receipt.round)
        if receipt.round < prev_round:
            return bad(f"reordered receipts: round {receipt.round} after round {prev_round}",
                       receipt.round)
        if receipt.round > prev_round + 1:
            return bad(f"removed receipt(s): round {receipt.round} follows round {prev_round}",
                       receipt.round)
        if receipt.previous_receipt_hash != prev_hash:
            return bad("forked chain or inserted receipt: previous-receipt hash does not "
                       "match the receipt before it", receipt.round)
        if prev is not None and receipt.model_digest_before != prev.model_digest_after:
            return bad(f"swapped global model: round {receipt.round} starts from "
                       f"{receipt.model_digest_before[:12]}, not the "
                       f"{prev.model_digest_after[:12]} round {prev.round} produced",
                       receipt.round)
        seen_rounds.add(receipt.round)
        prev, prev_hash, prev_round = receipt, sha256_hex(bytes(raw)), receipt.round
        hashes[prev_hash] = prev_round
    end = ChainReport(ok=True, verified=len(receipts), head_hash=prev_hash, head_round=prev_round,
                      expected_head_round=None if expect_head is None else hashes.get(expect_head))
    if expect_head is not None and end.expected_head_round is None:
        return _short(end, f"truncated or forked chain: no receipt hashes to the expected head "
                           f"{expect_head}; the chain ends at round {prev_round}")
    if expect_rounds is not None and prev_round != expect_rounds:
        what = "truncated chain" if prev_round < expect_rounds else "longer chain than expected"
        return _short(end, f"{what}: it holds {prev_round} round(s), expected {expect_rounds}")
    return end


def _short(end: ChainReport, reason: str) -> ChainReport:
    return ChainReport(ok=False, verified=end.verified, head_hash=end.head_hash,
                       head_round=end.head_round, reason=reason)


def verify_stored_chain(files: Mapping[str, bytes], *, coordinator_key: Ed25519PublicKey,
                        federation_id: str | None = None, expect_head: str | None = None,
                        expect_rounds: int | None = None) -> ChainReport:
    """The auditor's procedure over a directory: ``files`` maps every entry name
    matching ``receipt-*.json`` to its bytes.

    A name that is not exactly :func:`receipt_filename` of some round is a
    stray and fails the chain; the rest are verified in round order, each
    against its own name (:func:`verify_chain`).
    """
    names, strays = sort_receipt_filenames(files)
    if strays:
        return ChainReport(
            ok=False, verified=0, head_hash=GENESIS_HASH, first_bad_name=strays[0],
            reason=f"stray file(s) {', '.join(strays)}: a receipt file is named "
                   f"receipt-NNNNNN.json for its round (zero-padded to six digits, from 1)")
    return verify_chain([files[name] for name in names], coordinator_key=coordinator_key,
                        federation_id=federation_id, names=names, expect_head=expect_head,
                        expect_rounds=expect_rounds)
