"""Canonical bytes: RFC 8785 known answers and properties."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.canonical import array_digest, canonical_json, tensors_digest
from protocols.errors import MessageValidationError

# RFC 8785 §3.2.4 sample input and its canonical output.
RFC8785_INPUT = (
    '{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],'
    '"string":"\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
    '"literals":[null,true,false]}'
)
RFC8785_OUTPUT = (
    '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
    '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
).encode()


def test_rfc8785_sample() -> None:
    assert canonical_json(json.loads(RFC8785_INPUT)) == RFC8785_OUTPUT


@pytest.mark.parametrize(("value", "text"), [
    (0.0, "0"), (-0.0, "0"), (1e21, "1e+21"), (1e-7, "1e-7"), (123456789012345680000.0,
                                                               "123456789012345680000"),
    (5e-324, "5e-324"), (1.0, "1"), (-1.5, "-1.5"),
])
def test_rfc8785_number_serialisation(value: float, text: str) -> None:
    assert canonical_json(value) == text.encode()


def test_nan_and_bytes_are_refused() -> None:
    with pytest.raises(MessageValidationError):
        canonical_json({"x": float("nan")})
    with pytest.raises(MessageValidationError):
        canonical_json({"x": b"raw"})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
    # I-JSON (RFC 7493) range: larger floats print as integers JSON cannot round-trip.
    | st.floats(-(2.0**52), 2.0**52, allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=6), st.randoms())
def test_digest_does_not_depend_on_key_order(obj: dict[str, object], rnd: object) -> None:
    items = list(obj.items())
    rnd.shuffle(items)  # type: ignore[attr-defined]
    assert canonical_json(dict(items)) == canonical_json(obj)


@given(json_values)
def test_canonical_form_round_trips_exactly(obj: object) -> None:
    once = canonical_json(obj)
    assert canonical_json(json.loads(once)) == once


def test_array_digest_covers_dtype_shape_and_bytes() -> None:
    a = np.arange(6, dtype=np.float32)
    base = array_digest(a)
    assert array_digest(a.copy()) == base
    assert array_digest(a.reshape(2, 3)) != base
    assert array_digest(a.astype(np.float64)) != base
    assert array_digest(a.astype(">f4")) == base  # same values, canonical little-endian
    b = a.copy()
    b[3] = np.nextafter(b[3], np.float32(10))
    assert array_digest(b) != base
    assert array_digest(np.asfortranarray(a.reshape(2, 3))) == array_digest(a.reshape(2, 3))


@given(st.dictionaries(st.text(min_size=1, max_size=5),
                       st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=5),
                       min_size=1, max_size=4))
def test_tensors_digest_ignores_order_not_names(d: dict[str, list[float]]) -> None:
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in d.items()}
    reversed_order = dict(reversed(list(arrays.items())))
    assert tensors_digest(arrays) == tensors_digest(reversed_order)
    renamed = {k + "_": v for k, v in arrays.items()}
    assert tensors_digest(renamed) != tensors_digest(arrays)
