"""The federation's member list: who may submit, with which keys and budgets.

``members.json`` (written by ``fedadmet coordinator enroll``, or by the
simulation for virtual partners) lists each member's name, receipt-signing
Ed25519 public key (PEM), node-authentication public key (OpenSSH, optional
in simulation) and declared ``max_epsilon``. Loaded once and checked: a
duplicate key or name is an error.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from coordinator.admission import Member
from protocols.errors import ConfigError
from protocols.signing import fingerprint, load_public_key

__all__ = ["MemberRecord", "enroll_member", "load_members", "save_members"]


@dataclass(frozen=True, kw_only=True)
class MemberRecord:
    """One enrolled member as stored on disk."""

    name: str
    receipt_key_pem: str
    node_key: str | None = None
    max_epsilon: float = math.inf


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
        members[fpr] = Member(name=record.name, receipt_key=key,
                              max_epsilon=float(record.max_epsilon))
    return members


def save_members(path: Path, records: list[MemberRecord]) -> None:
    """Write the member list atomically."""
    data = {"members": [{"name": r.name, "receipt_key_pem": r.receipt_key_pem,
                         "node_key": r.node_key,
                         "max_epsilon": r.max_epsilon if math.isfinite(r.max_epsilon) else 1e308}
                        for r in records]}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".members-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def enroll_member(path: Path, *, name: str, node_key: str, receipt_key_pem: str,
                  max_epsilon: float = math.inf) -> MemberRecord:
    """Add one member to ``members.json`` atomically; duplicates are refused."""
    records: list[MemberRecord] = []
    if path.exists():
        raw = json.loads(path.read_text(encoding="utf-8"))
        records = [MemberRecord(**e) for e in raw.get("members", [])]
    fpr = fingerprint(load_public_key(receipt_key_pem.encode()))
    for r in records:
        if (r.name == name or r.node_key == node_key
                or fingerprint(load_public_key(r.receipt_key_pem.encode())) == fpr):
            raise ConfigError("members", "member name or key already enrolled", got=name)
    record = MemberRecord(name=name, receipt_key_pem=receipt_key_pem, node_key=node_key,
                          max_epsilon=max_epsilon)
    save_members(path, [*records, record])
    load_members(path)  # re-read: what we wrote must load
    return record
