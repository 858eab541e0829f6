"""The only module that knows Flower's record keys.

Messages travel as Flower ``RecordDict``s: each wire message as its RFC 8785
canonical JSON in a ``ConfigRecord`` (so the bytes that were signed are the
bytes that arrive), arrays in an ``ArrayRecord`` keyed by parameter name,
aggregate metrics in a ``MetricRecord``. Decoding checks the record layout
exactly and raises :class:`MessageValidationError` (never ``KeyError``) on
anything missing, extra or mistyped.

Layout (record keys):

- train or evaluate instruction: ``fedadmet.instruction`` (ConfigRecord, ``json``) and
  ``fedadmet.global`` (ArrayRecord: the shared parameters);
- train reply: ``fedadmet.submission`` (ConfigRecord, ``json``), ``fedadmet.delta``
  (ArrayRecord), ``fedadmet.metrics`` (MetricRecord); or ``fedadmet.refusal`` alone;
- evaluate reply: ``fedadmet.metrics`` alone; or ``fedadmet.refusal`` alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from protocols.errors import MessageValidationError
from protocols.messages import Refusal, RoundInstruction, UpdateSubmission, Wire

__all__ = [
    "TrainReply",
    "decode_evaluate_reply",
    "decode_instruction",
    "decode_train_reply",
    "encode_evaluate_reply",
    "encode_instruction",
    "encode_refusal",
    "encode_train_reply",
]

INSTRUCTION = "fedadmet.instruction"
GLOBAL = "fedadmet.global"
SUBMISSION = "fedadmet.submission"
DELTA = "fedadmet.delta"
METRICS = "fedadmet.metrics"
REFUSAL = "fedadmet.refusal"
_JSON = "json"

W = TypeVar("W", bound=Wire)


def _arrays(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _numpy(record: object, key: str) -> dict[str, np.ndarray]:
    if not isinstance(record, ArrayRecord):
        raise MessageValidationError(f"record `{key}` is not an ArrayRecord",
                                     got=type(record).__name__)
    out: dict[str, np.ndarray] = {}
    for name in record:
        try:
            out[name] = record[name].numpy()
        except (TypeError, ValueError, EOFError, OSError) as exc:
            # Array.numpy() loads .npy bytes (allow_pickle=False); anything else is refused here.
            raise MessageValidationError(f"array `{name}` in record `{key}` cannot be decoded",
                                         got=f"{type(exc).__name__}: {exc}",
                                         expected="a numpy-serialised array") from exc
    return out


def _wire(message: Wire) -> ConfigRecord:
    return ConfigRecord({_JSON: message.canonical_bytes().decode("utf-8")})


def _parse(record: object, key: str, cls: type[W]) -> W:
    if not isinstance(record, ConfigRecord) or set(record) != {_JSON}:
        raise MessageValidationError(f"record `{key}` must be a ConfigRecord with one `json` key",
                                     got=type(record).__name__)
    text = record[_JSON]
    if not isinstance(text, str):
        raise MessageValidationError(f"record `{key}` json is not a string", got=type(text))
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise MessageValidationError(f"record `{key}` is not JSON", got=str(exc)) from exc
    message = cls.from_dict(data)
    if message.canonical_bytes().decode("utf-8") != text:
        raise MessageValidationError(f"record `{key}` is not in canonical form",
                                     expected="RFC 8785 canonical JSON")
    return message


def _layout(content: RecordDict, allowed: set[str], what: str) -> None:
    keys = set(content.keys())
    if keys != allowed:
        raise MessageValidationError(f"{what} has the wrong records", got=sorted(keys),
                                     expected=sorted(allowed))


def _metrics(record: object) -> dict[str, float]:
    if not isinstance(record, MetricRecord):
        raise MessageValidationError(f"record `{METRICS}` is not a MetricRecord",
                                     got=type(record).__name__)
    out: dict[str, float] = {}
    for k in record:
        v = record[k]
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise MessageValidationError(f"metric `{k}` is not a scalar", got=v)
        out[k] = float(v)
    return out


# ---------------------------------------------------------------- instructions
def encode_instruction(instruction: RoundInstruction, global_arrays: Mapping[str, np.ndarray]
                       ) -> RecordDict:
    """Instruction plus the shared parameters."""
    return RecordDict({INSTRUCTION: _wire(instruction), GLOBAL: _arrays(global_arrays)})


def decode_instruction(content: RecordDict) -> tuple[RoundInstruction, dict[str, np.ndarray]]:
    """Inverse of :func:`encode_instruction`."""
    _layout(content, {INSTRUCTION, GLOBAL}, "instruction")
    return (_parse(content[INSTRUCTION], INSTRUCTION, RoundInstruction),
            _numpy(content[GLOBAL], GLOBAL))


# ---------------------------------------------------------------- replies
@dataclass(frozen=True)
class TrainReply:
    """A decoded train reply: a submission with its delta and metrics, or a refusal."""

    submission: UpdateSubmission | None
    delta: dict[str, np.ndarray]
    metrics: dict[str, float]
    refusal: Refusal | None


def encode_train_reply(submission: UpdateSubmission, delta: Mapping[str, np.ndarray],
                       metrics: Mapping[str, float]) -> RecordDict:
    """Signed submission, the delta arrays, and aggregate metrics."""
    return RecordDict({SUBMISSION: _wire(submission), DELTA: _arrays(delta),
                       METRICS: MetricRecord({k: float(v) for k, v in metrics.items()})})


def encode_refusal(refusal: Refusal) -> RecordDict:
    """A structured refusal, as the whole reply."""
    return RecordDict({REFUSAL: _wire(refusal)})


def decode_train_reply(content: RecordDict) -> TrainReply:
    """Inverse of :func:`encode_train_reply` / :func:`encode_refusal`."""
    if REFUSAL in content:
        _layout(content, {REFUSAL}, "refusal")
        return TrainReply(None, {}, {}, _parse(content[REFUSAL], REFUSAL, Refusal))
    _layout(content, {SUBMISSION, DELTA, METRICS}, "train reply")
    return TrainReply(_parse(content[SUBMISSION], SUBMISSION, UpdateSubmission),
                      _numpy(content[DELTA], DELTA), _metrics(content[METRICS]), None)


def encode_evaluate_reply(metrics: Mapping[str, float]) -> RecordDict:
    """Aggregate held-out metrics only."""
    return RecordDict({METRICS: MetricRecord({k: float(v) for k, v in metrics.items()})})


def decode_evaluate_reply(content: RecordDict) -> tuple[dict[str, float], Refusal | None]:
    """Metrics, or a refusal."""
    if REFUSAL in content:
        _layout(content, {REFUSAL}, "refusal")
        return {}, _parse(content[REFUSAL], REFUSAL, Refusal)
    _layout(content, {METRICS}, "evaluate reply")
    return _metrics(content[METRICS]), None
