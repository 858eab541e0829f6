"""The federation's member list: who may submit, with which keys and budgets.

``members.json`` (written by ``fedadmet coordinator enroll``, or by the
simulation for virtual partners) lists each member's name, receipt-signing
Ed25519 public key (PEM), node-authentication public key (OpenSSH, optional
in simulation), declared ``max_epsilon`` and ``max_examples``, the example cap the
operator fixes at enrolment (it bounds the member's steps per round, hence its
update norm, and its weight under capped weighting). Loaded once and checked: a
duplicate key or name is an error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from coordinator.admission import Member
from protocols.atomic_files import write_json
from protocols.errors import ConfigError
from protocols.signing import fingerprint, load_public_key

__all__ = ["MemberRecord", "check_new_member", "enroll_member", "load_members", "save_members"]


@dataclass(frozen=True, kw_only=True)
class MemberRecord:
    """One enrolled member as stored on disk."""

    name: str
    receipt_key_pem: str
    node_key: str | None = None
    max_epsilon: float = math.inf
    max_examples: int | None = None


def load_members(path: Path) -> dict[str, Member]:
    """Fingerprint -> member, validated."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("federation.members", "member list not found", got=str(path),
                          fix="enrol members with `fedadmet coordinator enroll`") from None
    members: dict[str, Member] = {}
    names: set[str] = set()
    for i, entry in enumerate(raw.get("members", [])):
        try:
            record = MemberRecord(**entry)
        except TypeError as exc:
            raise ConfigError(f"members[{i}]", f"malformed entry ({exc})", got=entry) from exc
        key = load_public_key(record.receipt_key_pem.encode())
        fpr = fingerprint(key)
        if fpr in members or record.name in names:
            raise ConfigError(f"members[{i}]", "duplicate member key or name", got=record.name)
        names.add(record.name)
        cap = record.max_examples
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ConfigError(f"members[{i}].max_examples", "must be a positive integer",
                              got=cap)
        members[fpr] = Member(name=record.name, receipt_key=key,
                              max_epsilon=float(record.max_epsilon), max_examples=cap)
    return members


def save_members(path: Path, records: list[MemberRecord]) -> None:
    """Write the member list atomically."""
    data = {"members": [{"name": r.name, "receipt_key_pem": r.receipt_key_pem,
                         "node_key": r.node_key,
                         "max_epsilon": r.max_epsilon if math.isfinite(r.max_epsilon) else 1e308,
                         "max_examples": r.max_examples}
                        for r in records]}
    write_json(path, data, indent=2)


def check_new_member(path: Path, *, name: str, node_key: str, receipt_key_pem: str
                     ) -> list[MemberRecord]:
    """The enrolled records, after refusing a name, node key or receipt key already in them.

    ``coordinator enroll`` calls this before it registers the node key with the
    SuperLink: a duplicate must not leave a second authorised node behind.
    """
    records: list[MemberRecord] = []
    if path.exists():
        raw = json.loads(path.read_text(encoding="utf-8"))
        records = [MemberRecord(**e) for e in raw.get("members", [])]
    fpr = fingerprint(load_public_key(receipt_key_pem.encode()))
    for r in records:
        if (r.name == name or r.node_key == node_key
                or fingerprint(load_public_key(r.receipt_key_pem.encode())) == fpr):
            raise ConfigError("members", "member name or key already enrolled", got=name,
                              fix="each member enrols once, with its own node and receipt keys")
    return records


def enroll_member(path: Path, *, name: str, node_key: str, receipt_key_pem: str,
                  max_epsilon: float = math.inf, max_examples: int | None = None
                  ) -> MemberRecord:
    """Add one member to ``members.json`` atomically; duplicates are refused."""
    records = check_new_member(path, name=name, node_key=node_key,
                               receipt_key_pem=receipt_key_pem)
    record = MemberRecord(name=name, receipt_key_pem=receipt_key_pem, node_key=node_key,
                          max_epsilon=max_epsilon, max_examples=max_examples)
    save_members(path, [*records, record])
    load_members(path)  # re-read: what we wrote must load
    return record
