"""Versioned wire messages between coordinator and participants.

Every message is a frozen, keyword-only dataclass validated at construction,
with one parse path (:meth:`Wire.from_dict`, which refuses unknown, missing
or mistyped fields and other protocol versions) and one canonical byte form
(:meth:`Wire.canonical_bytes`, RFC 8785 JSON of :meth:`Wire.to_dict`) used
for hashing and signing. Arrays never appear here: they travel separately
and are referred to by digest (see :mod:`protocols.canonical`).

This module is also the one home of what every wire type shares: the
:class:`Wire` base, :class:`Signed` (the one signing payload: canonical bytes of
every field but ``signature``) and the public ``check_*`` field validators that
:mod:`protocols.receipts` uses too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Self

from protocols.canonical import canonical_json, sha256_hex
from protocols.errors import MessageValidationError
from protocols.signing import Ed25519PrivateKey, sign

__all__ = [
    "PROTOCOL_VERSION",
    "REFUSAL_REASONS",
    "WEIGHTINGS",
    "DPPlan",
    "Refusal",
    "RoundInstruction",
    "Signed",
    "UpdateSubmission",
    "Wire",
    "check_digest",
    "check_fingerprint",
    "check_float",
    "check_int",
    "check_participant_id",
    "check_signature",
    "check_str",
    "check_version",
    "count_bucket",
]

PROTOCOL_VERSION = "fedadmet/1"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FPR = re.compile(r"^sha256:[0-9a-f]{64}$")
_NODE = re.compile(r"^node:[0-9]+$")
_SIG = re.compile(r"^[0-9a-f]{128}$")

# Stable reason codes: the only thing a refusal says about why (detail stays in the site's log).
REFUSAL_REASONS = frozenset({
    "budget-exhausted", "spec-mismatch", "receipt-verification-failed", "code-mismatch",
    "halted", "protocol-version", "data-error", "round-replay",
    # a receipt for an earlier round this site spent ε in was never delivered
    "receipts-missing",
    # the site's own configuration is unusable, or anything else failed on site
    "config-error", "internal-error",
})

# How the coordinator weighs admitted updates (docs/threat-model.md):
# "uniform" sends no example count at all; "capped" sends a power-of-two bucket that the
# coordinator clips at the member's enrolled cap.
WEIGHTINGS = ("uniform", "capped")


def count_bucket(n: int) -> int:
    """``n`` rounded up to a power of two: the coarse count a site sends under "capped"."""
    return 1 << max(0, int(n) - 1).bit_length()


def _bad(cls: str, name: str, value: Any, expected: str) -> MessageValidationError:
    return MessageValidationError(f"{cls}.{name} is invalid", got=value, expected=expected)


def check_digest(cls: str, name: str, value: Any) -> None:
    """A lower-case hex SHA-256 digest."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise _bad(cls, name, value, "64 lower-case hex characters (SHA-256)")


def check_fingerprint(cls: str, name: str, value: Any) -> None:
    """A key fingerprint, ``sha256:<hex>``."""
    if not isinstance(value, str) or not _FPR.fullmatch(value):
        raise _bad(cls, name, value, "'sha256:' followed by 64 hex characters")


def check_participant_id(cls: str, name: str, value: Any) -> None:
    """A key fingerprint, or ``node:<id>`` for a node that never identified itself."""
    if not isinstance(value, str) or not (_FPR.fullmatch(value) or _NODE.fullmatch(value)):
        raise _bad(cls, name, value, "'sha256:<64 hex>' or 'node:<integer>'")


def check_signature(cls: str, name: str, value: Any, *, optional: bool = False) -> None:
    """A lower-case hex Ed25519 signature (or None, when ``optional``)."""
    if optional and value is None:
        return
    if not isinstance(value, str) or not _SIG.fullmatch(value):
        raise _bad(cls, name, value, "128 lower-case hex characters (Ed25519)")


def check_int(cls: str, name: str, value: Any, *, minimum: int) -> None:
    """An integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(cls, name, value, f"an integer >= {minimum}")


def check_float(cls: str, name: str, value: Any, *, lo: float, hi: float = math.inf,
                lo_open: bool = False) -> None:
    """A finite number (not a bool) in ``[lo, hi]``, or ``(lo, hi]`` when ``lo_open``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(cls, name, value, "a finite number")
    if value < lo or (lo_open and value == lo) or value > hi:
        bracket = "(" if lo_open else "["
        raise _bad(cls, name, value, f"a number in {bracket}{lo}, {hi}]")


def check_str(cls: str, name: str, value: Any) -> None:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise _bad(cls, name, value, "a non-empty string")


def check_version(cls: str, value: Any) -> None:
    """This protocol version, :data:`PROTOCOL_VERSION`, exactly."""
    if value != PROTOCOL_VERSION:
        raise MessageValidationError(
            f"{cls}: unsupported protocol version", got=value, expected=PROTOCOL_VERSION,
            fix="run the same fedadmet protocol version as the rest of the federation")


def _encode(value: Any) -> Any:
    if isinstance(value, Wire):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, kw_only=True)
class Wire:
    """Base of all wire messages: dict form, canonical bytes, digest."""

    KIND: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, including ``kind``."""
        out = {"kind": self.KIND}
        out.update({f.name: _encode(getattr(self, f.name)) for f in fields(self)})
        return out

    def canonical_bytes(self) -> bytes:
        """RFC 8785 canonical JSON of :meth:`to_dict`."""
        return canonical_json(self.to_dict())

    def digest(self) -> str:
        """SHA-256 hex of :meth:`canonical_bytes`."""
        return sha256_hex(self.canonical_bytes())

    @classmethod
    def _fields_from(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise MessageValidationError(f"{cls.__name__} must be a JSON object", got=data)
        if data.get("kind") != cls.KIND:
            raise MessageValidationError(f"not a {cls.__name__}", got=data.get("kind"),
                                         expected=repr(cls.KIND))
        names = {f.name for f in fields(cls)}
        present = set(data) - {"kind"}
        if present - names:
            raise MessageValidationError(f"{cls.__name__} has unknown fields",
                                         got=sorted(present - names), expected=sorted(names))
        required = {f.name for f in fields(cls)
                    if f.default is MISSING and f.default_factory is MISSING}
        if required - present:
            raise MessageValidationError(f"{cls.__name__} is missing fields",
                                         got=sorted(present), expected=sorted(required))
        return {k: v for k, v in data.items() if k != "kind"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The one parse path: validates everything, raises MessageValidationError."""
        return cls(**cls._fields_from(data))


@dataclass(frozen=True, kw_only=True)
class Signed(Wire):
    """A message its sender signs over every other field.

    Participants sign submissions and refusals with their enrolled key; the coordinator
    signs round receipts (:class:`protocols.receipts.RoundReceipt`) with its receipt key.
    """

    signature: str = field(default="0" * 128)

    def signing_payload(self) -> bytes:
        """Canonical bytes of every field except ``signature``."""
        d = self.to_dict()
        del d["signature"]
        return canonical_json(d)

    def signed(self, key: Ed25519PrivateKey) -> Self:
        """This message with ``key``'s signature (parsed again, so it is valid as sent)."""
        return self.from_dict({**self.to_dict(), "signature": sign(key, self.signing_payload())})


@dataclass(frozen=True, kw_only=True)
class DPPlan(Wire):
    """The record-level DP plan each site calibrates its own noise against."""

    KIND: ClassVar[str] = "dp-plan"
    max_grad_norm: float
    rounds: int
    local_epochs: int
    target_epsilon: float
    delta: float
    batch_size: int
    accountant: str = "rdp"
    learning_rate: float = 1.0
    optimizer: str = "sgd"
    unsafe_no_dp: bool = False

    def __post_init__(self) -> None:
        n = "DPPlan"
        check_float(n, "max_grad_norm", self.max_grad_norm, lo=0.0, lo_open=True)
        check_int(n, "rounds", self.rounds, minimum=1)
        check_int(n, "local_epochs", self.local_epochs, minimum=1)
        check_float(n, "target_epsilon", self.target_epsilon, lo=0.0, lo_open=True)
        check_float(n, "delta", self.delta, lo=0.0, hi=1.0, lo_open=True)
        check_int(n, "batch_size", self.batch_size, minimum=1)
        check_float(n, "learning_rate", self.learning_rate, lo=0.0, lo_open=True)
        if self.accountant not in ("rdp", "prv"):
            raise _bad(n, "accountant", self.accountant, "rdp | prv")
        if self.optimizer not in ("adam", "sgd"):
            raise _bad(n, "optimizer", self.optimizer, "adam | sgd")
        if not isinstance(self.unsafe_no_dp, bool):
            raise _bad(n, "unsafe_no_dp", self.unsafe_no_dp, "true | false")


@dataclass(frozen=True, kw_only=True)
class RoundInstruction(Wire):
    """What the coordinator asks of a participant for one training round.

    The shared parameters travel next to it; ``global_model_digest`` is their
    :func:`~protocols.canonical.tensors_digest`. ``receipts`` delivers the
    signed receipts this participant has not yet verified (oldest first, as
    JSON objects) and ``inclusion_proofs`` its proof of inclusion in each
    (``None`` for rounds it had no leaf in).
    """

    KIND: ClassVar[str] = "round-instruction"
    protocol_version: str
    federation_id: str
    round: int
    global_model_digest: str
    model_spec: Mapping[str, Any]
    model_spec_digest: str
    featurization_spec: Mapping[str, Any]
    featurization_spec_digest: str
    config_digest: str
    dp_plan: DPPlan
    consortium_endpoints: tuple[str, ...]
    receipts: tuple[Mapping[str, Any], ...] = ()
    inclusion_proofs: tuple[Mapping[str, Any] | None, ...] = ()
    weighting: str = "uniform"

    def __post_init__(self) -> None:
        n = "RoundInstruction"
        if self.weighting not in WEIGHTINGS:
            raise _bad(n, "weighting", self.weighting, " | ".join(WEIGHTINGS))
        check_version(n, self.protocol_version)
        check_str(n, "federation_id", self.federation_id)
        check_int(n, "round", self.round, minimum=1)
        for name in ("global_model_digest", "model_spec_digest", "featurization_spec_digest",
                     "config_digest"):
            check_digest(n, name, getattr(self, name))
        if isinstance(self.dp_plan, Mapping):
            object.__setattr__(self, "dp_plan", DPPlan.from_dict(self.dp_plan))
        if not isinstance(self.dp_plan, DPPlan):
            raise _bad(n, "dp_plan", self.dp_plan, "a DPPlan")
        endpoints: Any = self.consortium_endpoints
        if isinstance(endpoints, list):
            object.__setattr__(self, "consortium_endpoints", tuple(endpoints))
        if not self.consortium_endpoints or not all(
                isinstance(e, str) and e for e in self.consortium_endpoints):
            raise _bad(n, "consortium_endpoints", endpoints, "a non-empty list of names")
        for name in ("model_spec", "featurization_spec"):
            if not isinstance(getattr(self, name), Mapping):
                raise _bad(n, name, getattr(self, name), "a JSON object")
        object.__setattr__(self, "receipts", tuple(self.receipts))
        object.__setattr__(self, "inclusion_proofs", tuple(self.inclusion_proofs))
        if len(self.receipts) != len(self.inclusion_proofs):
            raise _bad(n, "inclusion_proofs", len(self.inclusion_proofs),
                       f"one entry (or null) per receipt ({len(self.receipts)})")


@dataclass(frozen=True, kw_only=True)
class UpdateSubmission(Signed):
    """A participant's signed claim about the update it returns.

    ``signature`` is the participant's Ed25519 signature over
    :meth:`signing_payload`: the canonical bytes of every other field.
    ``num_examples`` is None under uniform weighting (no count leaves the site) and a
    power-of-two bucket under capped weighting.
    """

    KIND: ClassVar[str] = "update-submission"
    protocol_version: str
    federation_id: str
    round: int
    participant_fingerprint: str
    base_model_digest: str
    delta_digest: str
    num_examples: int | None
    claimed_epsilon: float
    delta: float
    metrics_digest: str

    def __post_init__(self) -> None:
        n = "UpdateSubmission"
        check_version(n, self.protocol_version)
        check_str(n, "federation_id", self.federation_id)
        check_int(n, "round", self.round, minimum=1)
        check_fingerprint(n, "participant_fingerprint", self.participant_fingerprint)
        for name in ("base_model_digest", "delta_digest", "metrics_digest"):
            check_digest(n, name, getattr(self, name))
        if self.num_examples is not None:
            check_int(n, "num_examples", self.num_examples, minimum=1)
        check_float(n, "claimed_epsilon", self.claimed_epsilon, lo=0.0)
        check_float(n, "delta", self.delta, lo=0.0, hi=1.0)
        check_signature(n, "signature", self.signature)


@dataclass(frozen=True, kw_only=True)
class Refusal(Signed):
    """A participant's signed "no" for a round: a stable reason code and nothing else.

    Signed like a submission, so no one can refuse in another member's name; free-text
    detail never crosses the firewall (it may describe the site's data).
    """

    KIND: ClassVar[str] = "refusal"
    protocol_version: str
    federation_id: str
    round: int
    participant_fingerprint: str
    reason: str

    def __post_init__(self) -> None:
        n = "Refusal"
        check_version(n, self.protocol_version)
        check_str(n, "federation_id", self.federation_id)
        check_int(n, "round", self.round, minimum=1)
        check_fingerprint(n, "participant_fingerprint", self.participant_fingerprint)
        if self.reason not in REFUSAL_REASONS:
            raise _bad(n, "reason", self.reason, " | ".join(sorted(REFUSAL_REASONS)))
        check_signature(n, "signature", self.signature)
