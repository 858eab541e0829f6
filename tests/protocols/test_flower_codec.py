"""Messages survive the trip through Flower records; malformed replies are refused cleanly."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from protocols import flower_codec as codec
from protocols.errors import MessageValidationError
from protocols.messages import Refusal
from tests.protocols.factories import MEMBERS, instruction, submission

ARRAYS = {"trunk.0.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
          "heads.logd.bias": np.array([0.5], dtype=np.float32)}


def test_instruction_round_trip() -> None:
    msg, arrays = codec.decode_instruction(codec.encode_instruction(instruction(3), ARRAYS))
    assert msg == instruction(3)
    assert set(arrays) == set(ARRAYS)
    assert all(np.array_equal(arrays[k], ARRAYS[k]) for k in ARRAYS)


def test_train_reply_round_trip() -> None:
    sub = submission(MEMBERS[0])
    reply = codec.decode_train_reply(codec.encode_train_reply(sub, ARRAYS, {"loss": 0.25,
                                                                            "num-examples": 10}))
    assert reply.submission == sub and reply.refusal is None
    assert reply.metrics == {"loss": 0.25, "num-examples": 10.0}


def test_refusal_round_trip() -> None:
    refusal = Refusal(protocol_version="fedadmet/1", federation_id="fed", round=1,
                      participant_fingerprint=submission(MEMBERS[0]).participant_fingerprint,
                      reason="budget-exhausted").signed(MEMBERS[0])
    reply = codec.decode_train_reply(codec.encode_refusal(refusal))
    assert reply.refusal == refusal and reply.submission is None


@pytest.mark.parametrize("content", [
    RecordDict({}),
    RecordDict({"fedadmet.delta": ArrayRecord({})}),
    RecordDict({"fedadmet.submission": ConfigRecord({"json": "{"}),
                "fedadmet.delta": ArrayRecord({}), "fedadmet.metrics": MetricRecord({})}),
    RecordDict({"fedadmet.submission": ConfigRecord({"json": "{}", "x": 1}),
                "fedadmet.delta": ArrayRecord({}), "fedadmet.metrics": MetricRecord({})}),
])
def test_malformed_replies_raise_validation_errors_not_key_errors(content: RecordDict) -> None:
    with pytest.raises(MessageValidationError):
        codec.decode_train_reply(content)


def test_non_canonical_json_is_refused() -> None:
    sub = submission(MEMBERS[0])
    content = codec.encode_train_reply(sub, ARRAYS, {})
    pretty = sub.canonical_bytes().decode().replace(",", ", ")
    content["fedadmet.submission"] = ConfigRecord({"json": pretty})
    with pytest.raises(MessageValidationError):
        codec.decode_train_reply(content)


def test_extra_records_are_refused() -> None:
    content = codec.encode_train_reply(submission(MEMBERS[0]), ARRAYS, {})
    content["smuggled"] = ConfigRecord({"smiles": "CCO"})
    with pytest.raises(MessageValidationError):
        codec.decode_train_reply(content)


@pytest.mark.parametrize("payload", [b"", b"\x93NUMPY garbage", b"not an array at all"])
def test_undecodable_arrays_raise_validation_errors(payload: bytes) -> None:
    content = codec.encode_train_reply(submission(MEMBERS[0]), ARRAYS, {})
    good = content["fedadmet.delta"]["trunk.0.weight"]  # type: ignore[index]
    bad = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=payload)
    content["fedadmet.delta"] = ArrayRecord({"trunk.0.weight": bad})
    with pytest.raises(MessageValidationError, match="cannot be decoded"):
        codec.decode_train_reply(content)


def test_pickled_object_arrays_are_never_loaded() -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"smuggled": 1}], dtype=object), allow_pickle=True)
    content = codec.encode_instruction(instruction(1), ARRAYS)
    good = content["fedadmet.global"]["trunk.0.weight"]  # type: ignore[index]
    evil = Array(dtype="object", shape=(1,), stype=good.stype, data=buf.getvalue())
    content["fedadmet.global"] = ArrayRecord({"trunk.0.weight": evil})
    with pytest.raises(MessageValidationError):
        codec.decode_instruction(content)
