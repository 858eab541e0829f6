"""Canonical bytes for hashing and signing.

JSON values are canonicalised with RFC 8785 (JSON Canonicalization Scheme):
sorted keys, no insignificant whitespace, ECMAScript number formatting. Arrays
are digested separately (they are too large for JSON) as

    SHA-256( canonical_json({"dtype": "<f4", "shape": [2, 3]}) || 0x00 || C-order bytes )

where ``dtype`` is numpy's explicit little-endian type string. Any byte-order
or layout difference therefore changes the digest, and two parties that agree
on values, dtype and shape always agree on the digest.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import rfc8785

from protocols.errors import MessageValidationError

__all__ = [
    "array_digest",
    "canonical_json",
    "finite_float",
    "require_canonical",
    "sha256_hex",
    "strict_json_loads",
    "tensors_digest",
]


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 canonical JSON bytes of ``obj``.

    Raises
    ------
    MessageValidationError
        If ``obj`` holds something JSON cannot represent exactly (NaN, Inf,
        integers beyond IEEE 754's exact range, non-string keys, bytes).
    """
    try:
        return bytes(rfc8785.dumps(obj))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise MessageValidationError(
            "value cannot be canonicalised as RFC 8785 JSON",
            got=f"{type(exc).__name__}: {exc}",
            expected="str keys; str, bool, None, finite numbers, lists and objects",
            fix="encode bytes as hex and avoid NaN/Inf",
        ) from exc


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"duplicate member name(s) {repeated}")
    return dict(pairs)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def strict_json_loads(data: bytes, *, what: str) -> Any:
    """Parse UTF-8 JSON bytes, refusing what :func:`json.loads` would let through.

    ``json.loads`` keeps the *last* of duplicate member names, accepts
    ``NaN``/``Infinity`` and guesses UTF-16/32 encodings: each would let one
    value have several byte forms, so each is refused here.
    """
    try:
        text = bytes(data).decode("utf-8")
        return json.loads(text, object_pairs_hook=_refuse_duplicates,
                          parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # decode errors; "[[[[..." nested too deep
        raise MessageValidationError(f"{what} is not valid JSON", got=str(exc),
                                     expected="UTF-8 JSON (RFC 8259) without duplicate names"
                                     ) from exc


def require_canonical(data: bytes, canonical: bytes, *, what: str) -> None:
    """Refuse ``data`` unless it is byte for byte ``canonical`` (its value's one byte form)."""
    if bytes(data) == canonical:
        return
    at = next((i for i, (a, b) in enumerate(zip(data, canonical, strict=False)) if a != b),
              min(len(data), len(canonical)))
    raise MessageValidationError(
        f"{what} bytes are not in canonical form", got=f"first difference at byte {at}",
        expected="RFC 8785 canonical JSON of the parsed value, byte for byte",
        fix="re-encode with RFC 8785; never edit stored receipts by hand")


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def array_digest(array: np.ndarray) -> str:
    """SHA-256 hex over dtype, shape and C-order little-endian bytes."""
    arr = np.asarray(array)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    header = canonical_json({"dtype": arr.dtype.str, "shape": list(arr.shape)})
    h = hashlib.sha256()
    h.update(header)
    h.update(b"\x00")
    h.update(np.ascontiguousarray(arr).tobytes(order="C"))
    return h.hexdigest()


def tensors_digest(tensors: Mapping[str, np.ndarray]) -> str:
    """Digest of a named set of arrays (a model or a delta).

    SHA-256 of the canonical JSON object mapping each name to its
    :func:`array_digest`. Names are part of what is attested; order is not.
    """
    return sha256_hex(canonical_json({name: array_digest(a) for name, a in tensors.items()}))


def finite_float(value: float, *, field: str) -> float:
    """``value`` as a float, refusing NaN and infinities (JSON cannot carry them)."""
    number = float(value)
    if not math.isfinite(number):
        raise MessageValidationError(f"field `{field}` must be finite", got=value,
                                     expected="a finite number")
    return number
