"""The only module that knows Flower's record keys.

Messages travel as Flower ``RecordDict``s: each wire message as its RFC 8785
canonical JSON in a ``ConfigRecord`` (so the bytes that were signed are the
bytes that arrive), arrays in an ``ArrayRecord`` keyed by parameter name,
aggregate metrics in a ``MetricRecord``. Decoding checks the record layout
exactly and raises :class:`MessageValidationError` (never ``KeyError``) on
anything missing, extra or mistyped.

Byte bounds. By the time a reply reaches this module Flower has already reassembled it in
the ServerApp's memory: the ServerApp's grid pulls every object of the reply's object tree
from the SuperLink's object store (one request per object, each an ``Array`` chunk of at
most 5 MiB from an honest node) and inflates them into one ``Message`` before
``Grid.pull_messages`` returns it. Nothing in Flower 1.41 caps a reply's total size: the
SuperLink stores whatever objects a node pushes for the tree it registered, and the nginx
in front of it caps each request body, not a message (docs/deployment.md). So the first
thing decoding does is count the reply's bytes from its records, without converting any
payload, and refuse one above :func:`reply_byte_budget` (``oversized``); the ServerApp
then drops it before the next reply is pulled, so it holds at most one reply beyond the
budget at a time. Then a train reply's delta is checked against the model before any
payload is converted: tensor names, ``stype``, ``dtype`` and ``shape`` come from each
``Array``'s metadata, and each payload's byte length must fit its declared shape (plus an
``.npy`` header). After conversion the array must still be what the metadata declared
(headers can lie).

Layout (record keys):

- train or evaluate instruction: ``fedadmet.instruction`` (ConfigRecord, ``json``) and
  ``fedadmet.global`` (ArrayRecord: the shared parameters);
- train reply: ``fedadmet.submission`` (ConfigRecord, ``json``), ``fedadmet.delta``
  (ArrayRecord), ``fedadmet.metrics`` (MetricRecord); or ``fedadmet.refusal`` alone;
- evaluate reply: ``fedadmet.metrics`` alone; or ``fedadmet.refusal`` alone.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from protocols.errors import MessageValidationError, ReplyBoundsError
from protocols.messages import Refusal, RoundInstruction, UpdateSubmission, Wire
from protocols.replies import TrainReply

__all__ = [
    "EVALUATE_REPLY_BUDGET",
    "NPY_HEADER_SLACK",
    "decode_evaluate_reply",
    "decode_instruction",
    "decode_train_reply",
    "encode_evaluate_reply",
    "encode_instruction",
    "encode_refusal",
    "encode_train_reply",
    "reply_byte_budget",
    "reply_bytes",
]

INSTRUCTION = "fedadmet.instruction"
GLOBAL = "fedadmet.global"
SUBMISSION = "fedadmet.submission"
DELTA = "fedadmet.delta"
METRICS = "fedadmet.metrics"
REFUSAL = "fedadmet.refusal"
_JSON = "json"
_NUMPY_STYPE = "numpy.ndarray"
# An .npy v1/v2 header is padded to a multiple of 64 bytes and is 128 bytes for any
# trunk tensor; 1 KiB per tensor leaves room for long shapes and nothing else.
NPY_HEADER_SLACK = 1024
# A signed submission is a few hundred bytes of canonical JSON.
MAX_WIRE_JSON_BYTES = 64 * 1024
MAX_METRICS = 256
# an evaluate reply is metrics (or a refusal) only
EVALUATE_REPLY_BUDGET = MAX_WIRE_JSON_BYTES + MAX_METRICS * 1024

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
        except (TypeError, ValueError, EOFError, OSError, MemoryError) as exc:
            # Array.numpy() loads .npy bytes (allow_pickle=False); anything else is refused here.
            raise MessageValidationError(f"array `{name}` in record `{key}` cannot be decoded",
                                         got=f"{type(exc).__name__}: {exc}",
                                         expected="a numpy-serialised array") from exc
    return out


def reply_byte_budget(shapes: Mapping[str, tuple[int, ...]], *, dtype: str = "float32") -> int:
    """The most bytes a train reply may carry: the model's tensors, headers, the JSON."""
    itemsize = np.dtype(dtype).itemsize
    return (sum(int(np.prod(s, dtype=np.int64)) * itemsize + NPY_HEADER_SLACK
                for s in shapes.values()) + MAX_WIRE_JSON_BYTES + MAX_METRICS * 1024)


def reply_bytes(content: RecordDict) -> int:
    """The payload bytes a reply holds, counted from its records (nothing is converted):
    every array's data, every config string or bytes value, eight per metric or scalar."""
    total = 0
    for key in content:
        record = content[key]
        if isinstance(record, ArrayRecord):
            for name in record:
                data = record[name].data
                total += len(name) + (len(data) if isinstance(data, bytes) else 0)
        elif isinstance(record, ConfigRecord | MetricRecord):
            for name in record:
                value = record[name]
                values = value if isinstance(value, list) else [value]
                total += len(name) + sum(len(v) if isinstance(v, str | bytes) else 8
                                         for v in values)
        total += len(key)
    return total


def _check_budget(content: RecordDict, budget: int, what: str) -> None:
    size = reply_bytes(content)
    if size > budget:
        raise ReplyBoundsError("oversized", f"{what} is larger than any honest one",
                               got=f"{size} bytes", expected=f"at most {budget}")


def _check_declared(record: ArrayRecord, key: str, shapes: Mapping[str, tuple[int, ...]],
                    dtype: str) -> None:
    """Names, stype, dtype, shape and payload size from metadata only (nothing converted)."""
    names = set(record.keys())
    if names - set(shapes):
        raise ReplyBoundsError("undeclared-tensor", f"record `{key}` holds undeclared tensors",
                               got=sorted(names - set(shapes))[:8],
                               expected="only the model's trunk tensors")
    if set(shapes) - names:
        raise ReplyBoundsError("missing-tensor", f"record `{key}` lacks model tensors",
                               got=sorted(set(shapes) - names)[:8])
    itemsize = np.dtype(dtype).itemsize
    for name in sorted(names):
        array = record[name]
        if array.stype != _NUMPY_STYPE:
            raise ReplyBoundsError("wrong-stype", f"array `{name}` is not a numpy array",
                                   got=array.stype, expected=_NUMPY_STYPE)
        if array.dtype != dtype:
            raise ReplyBoundsError("wrong-dtype", f"array `{name}` has the wrong dtype",
                                   got=array.dtype, expected=dtype)
        shape = tuple(array.shape) if isinstance(array.shape, tuple | list) else None
        if shape != tuple(shapes[name]):
            raise ReplyBoundsError("wrong-shape", f"array `{name}` has the wrong shape",
                                   got=array.shape, expected=tuple(shapes[name]))
        limit = int(np.prod(shape, dtype=np.int64)) * itemsize + NPY_HEADER_SLACK
        size = len(array.data) if isinstance(array.data, bytes) else limit + 1
        if size > limit:
            raise ReplyBoundsError("oversized",
                                   f"array `{name}` is larger than its declared shape allows",
                                   got=f"{size} bytes", expected=f"at most {limit}")


def _check_npy_header(name: str, data: bytes, shape: tuple[int, ...], dtype: str) -> None:
    """The .npy header inside the payload must say what the metadata said (nothing loaded).

    The header is the peer's too: one claiming shape (2**40,) would make numpy allocate
    terabytes before any later check ran.
    """
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise ReplyBoundsError("metadata-mismatch", f"array `{name}` has no valid .npy header",
                               got=f"{type(exc).__name__}: {str(exc)[:80]}") from exc
    if tuple(got_shape) != tuple(shape) or got_dtype != np.dtype(dtype) or fortran:
        raise ReplyBoundsError("metadata-mismatch",
                               f"array `{name}`'s .npy header does not match its metadata",
                               got=f"{got_dtype}{tuple(got_shape)[:4]}",
                               expected=f"{dtype}{tuple(shape)}")


def _declared_numpy(record: object, key: str, shapes: Mapping[str, tuple[int, ...]],
                    dtype: str) -> dict[str, np.ndarray]:
    if not isinstance(record, ArrayRecord):
        raise MessageValidationError(f"record `{key}` is not an ArrayRecord",
                                     got=type(record).__name__)
    _check_declared(record, key, shapes, dtype)
    for name in record:
        _check_npy_header(name, record[name].data, tuple(shapes[name]), dtype)
    out = _numpy(record, key)
    for name, array in out.items():
        if array.dtype != np.dtype(dtype) or tuple(array.shape) != tuple(shapes[name]):
            raise ReplyBoundsError("metadata-mismatch",
                                   f"array `{name}` does not match its own metadata",
                                   got=f"{array.dtype}{tuple(array.shape)}",
                                   expected=f"{dtype}{tuple(shapes[name])}")
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
    if len(text) > MAX_WIRE_JSON_BYTES:
        raise MessageValidationError(f"record `{key}` is too large", got=f"{len(text)} chars",
                                     expected=f"at most {MAX_WIRE_JSON_BYTES}")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
        raise MessageValidationError(f"record `{key}` is not JSON",
                                     got=f"{type(exc).__name__}: {str(exc)[:80]}") from exc
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
    if len(record) > MAX_METRICS:
        raise MessageValidationError(f"record `{METRICS}` holds too many metrics",
                                     got=len(record), expected=f"at most {MAX_METRICS}")
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
def encode_train_reply(submission: UpdateSubmission, delta: Mapping[str, np.ndarray],
                       metrics: Mapping[str, float]) -> RecordDict:
    """Signed submission, the delta arrays, and aggregate metrics."""
    return RecordDict({SUBMISSION: _wire(submission), DELTA: _arrays(delta),
                       METRICS: MetricRecord({k: float(v) for k, v in metrics.items()})})


def encode_refusal(refusal: Refusal) -> RecordDict:
    """A structured refusal, as the whole reply."""
    return RecordDict({REFUSAL: _wire(refusal)})


def decode_train_reply(content: RecordDict, *, shapes: Mapping[str, tuple[int, ...]],
                       dtype: str = "float32") -> TrainReply:
    """Inverse of :func:`encode_train_reply` / :func:`encode_refusal`.

    ``shapes`` (the model's trunk tensors) and ``dtype`` bound the delta: its metadata is
    checked before any payload is converted, so an oversized or undeclared tensor costs
    nothing beyond the bytes Flower already holds.
    """
    _check_budget(content, reply_byte_budget(shapes, dtype=dtype), "train reply")
    if REFUSAL in content:
        _layout(content, {REFUSAL}, "refusal")
        return TrainReply(None, {}, {}, _parse(content[REFUSAL], REFUSAL, Refusal))
    _layout(content, {SUBMISSION, DELTA, METRICS}, "train reply")
    submission = _parse(content[SUBMISSION], SUBMISSION, UpdateSubmission)
    delta = _declared_numpy(content[DELTA], DELTA, shapes, dtype)
    return TrainReply(submission, delta, _metrics(content[METRICS]), None)


def encode_evaluate_reply(metrics: Mapping[str, float]) -> RecordDict:
    """Aggregate held-out metrics only."""
    return RecordDict({METRICS: MetricRecord({k: float(v) for k, v in metrics.items()})})


def decode_evaluate_reply(content: RecordDict) -> tuple[dict[str, float], Refusal | None]:
    """Metrics, or a refusal."""
    _check_budget(content, EVALUATE_REPLY_BUDGET, "evaluate reply")
    if REFUSAL in content:
        _layout(content, {REFUSAL}, "refusal")
        return {}, _parse(content[REFUSAL], REFUSAL, Refusal)
    _layout(content, {METRICS}, "evaluate reply")
    return _metrics(content[METRICS]), None
