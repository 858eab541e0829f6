"""Messages survive the trip through Flower records; malformed replies are refused cleanly."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from protocols import flower_codec as codec
from protocols.errors import MessageValidationError, ReplyBoundsError
from protocols.messages import Refusal
from tests.protocols.factories import MEMBERS, instruction, submission

ARRAYS = {"trunk.0.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
          "heads.logd.bias": np.array([0.5], dtype=np.float32)}
SHAPES = {k: tuple(v.shape) for k, v in ARRAYS.items()}


def test_instruction_round_trip() -> None:
    msg, arrays = codec.decode_instruction(codec.encode_instruction(instruction(3), ARRAYS))
    assert msg == instruction(3)
    assert set(arrays) == set(ARRAYS)
    assert all(np.array_equal(arrays[k], ARRAYS[k]) for k in ARRAYS)


def test_train_reply_round_trip() -> None:
    sub = submission(MEMBERS[0])
    reply = codec.decode_train_reply(codec.encode_train_reply(sub, ARRAYS, {"loss": 0.25,
                                                                            "num-examples": 10}),
                                     shapes=SHAPES)
    assert reply.submission == sub and reply.refusal is None
    assert reply.metrics == {"loss": 0.25, "num-examples": 10.0}


def test_refusal_round_trip() -> None:
    refusal = Refusal(protocol_version="fedadmet/1", federation_id="fed", round=1,
                      participant_fingerprint=submission(MEMBERS[0]).participant_fingerprint,
                      reason="budget-exhausted").signed(MEMBERS[0])
    reply = codec.decode_train_reply(codec.encode_refusal(refusal), shapes=SHAPES)
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
        codec.decode_train_reply(content, shapes=SHAPES)


def test_non_canonical_json_is_refused() -> None:
    sub = submission(MEMBERS[0])
    content = codec.encode_train_reply(sub, ARRAYS, {})
    pretty = sub.canonical_bytes().decode().replace(",", ", ")
    content["fedadmet.submission"] = ConfigRecord({"json": pretty})
    with pytest.raises(MessageValidationError):
        codec.decode_train_reply(content, shapes=SHAPES)


def test_extra_records_are_refused() -> None:
    content = codec.encode_train_reply(submission(MEMBERS[0]), ARRAYS, {})
    content["smuggled"] = ConfigRecord({"smiles": "CCO"})
    with pytest.raises(MessageValidationError):
        codec.decode_train_reply(content, shapes=SHAPES)


@pytest.mark.parametrize("payload", [b"", b"\x93NUMPY garbage", b"not an array at all"])
def test_undecodable_arrays_raise_validation_errors(payload: bytes) -> None:
    bad = Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=payload)
    content = _reply_with("trunk.0.weight", bad)
    with pytest.raises(MessageValidationError, match=r"cannot be decoded|no valid \.npy header"):
        codec.decode_train_reply(content, shapes=SHAPES)


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


# ---------------------------------------------------------------- decode bounds (issue 14 §4)
def _reply_with(name: str, array: Array) -> RecordDict:
    content = codec.encode_train_reply(submission(MEMBERS[0]), ARRAYS, {})
    delta = content["fedadmet.delta"]
    assert isinstance(delta, ArrayRecord)
    content["fedadmet.delta"] = ArrayRecord({**{k: delta[k] for k in delta}, name: array})
    return content


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every payload conversion (Array.numpy, np.load) is recorded."""
    seen: list[str] = []
    real_numpy, real_load = Array.numpy, np.load

    def spy_numpy(self: Array) -> np.ndarray:
        seen.append(f"Array.numpy {self.shape}")
        return real_numpy(self)

    def spy_load(*args: object, **kwargs: object) -> object:
        seen.append("np.load")
        return real_load(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Array, "numpy", spy_numpy)
    monkeypatch.setattr(np, "load", spy_load)
    return seen


def test_oversized_undeclared_tensor_is_rejected_before_decoding(
        conversions: list[str]) -> None:
    import tracemalloc

    size = 300 << 20  # 300 MiB of float32, declared honestly in its metadata
    huge = Array(dtype="float32", shape=(size // 4,), stype="numpy.ndarray", data=bytes(size))
    content = _reply_with("trunk.smuggled", huge)
    tracemalloc.start()
    try:
        with pytest.raises(ReplyBoundsError) as err:
            codec.decode_train_reply(content, shapes=SHAPES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the reply's byte count is checked first: over the model's budget, it is oversized
    # before its tensor names are looked at
    assert err.value.reason == "oversized"
    assert conversions == []  # not one payload was converted, not even the honest ones
    assert peak < 1 << 20  # and decoding allocated well under 1 MiB


def test_oversized_payload_under_a_declared_name_is_rejected_before_decoding(
        conversions: list[str]) -> None:
    """The right name, dtype and shape, but 64 MiB of bytes behind a (2, 3) tensor."""
    fake = Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=bytes(64 << 20))
    with pytest.raises(ReplyBoundsError) as err:
        codec.decode_train_reply(_reply_with("trunk.0.weight", fake), shapes=SHAPES)
    assert err.value.reason == "oversized" and conversions == []


@pytest.mark.parametrize(("dtype", "shape", "stype", "reason"), [
    ("float64", (2, 3), "numpy.ndarray", "wrong-dtype"),
    ("object", (2, 3), "numpy.ndarray", "wrong-dtype"),
    ("float32", (3, 2), "numpy.ndarray", "wrong-shape"),
    ("float32", (2, 3, 1), "numpy.ndarray", "wrong-shape"),
    ("float32", (2, 3), "torch.Tensor", "wrong-stype"),
])
def test_wrong_dtype_shape_or_stype_is_rejected_before_decoding(
        conversions: list[str], dtype: str, shape: tuple[int, ...], stype: str,
        reason: str) -> None:
    bad = Array(dtype=dtype, shape=shape, stype=stype, data=bytes(48))
    with pytest.raises(ReplyBoundsError) as err:
        codec.decode_train_reply(_reply_with("trunk.0.weight", bad), shapes=SHAPES)
    assert err.value.reason == reason and conversions == []


def test_extra_tensor_name_is_rejected_and_missing_one_too(conversions: list[str]) -> None:
    tiny = Array(np.zeros(1, dtype=np.float32))
    with pytest.raises(ReplyBoundsError) as err:
        codec.decode_train_reply(_reply_with("heads.private_assay.bias", tiny), shapes=SHAPES)
    assert err.value.reason == "undeclared-tensor"
    content = codec.encode_train_reply(submission(MEMBERS[0]),
                                       {"trunk.0.weight": ARRAYS["trunk.0.weight"]}, {})
    with pytest.raises(ReplyBoundsError) as err:
        codec.decode_train_reply(content, shapes=SHAPES)
    assert err.value.reason == "missing-tensor" and conversions == []


def test_lying_metadata_is_caught_after_decoding() -> None:
    """Metadata says float32 (2, 3); the .npy header inside says float16 (4, 3)."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 3), dtype=np.float16))
    liar = Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=buf.getvalue())
    with pytest.raises(ReplyBoundsError) as err:
        codec.decode_train_reply(_reply_with("trunk.0.weight", liar), shapes=SHAPES)
    assert err.value.reason == "metadata-mismatch"


def test_thousands_of_metric_keys_are_refused() -> None:
    content = codec.encode_train_reply(submission(MEMBERS[0]), ARRAYS,
                                       {f"junk.{i}": 0.0 for i in range(2000)})
    with pytest.raises(MessageValidationError, match="too many metrics"):
        codec.decode_train_reply(content, shapes=SHAPES)


def test_reply_byte_budget_is_the_model_plus_small_slack() -> None:
    model = {"trunk.0.weight": (512, 2048), "trunk.0.bias": (512,)}
    nbytes = 4 * (512 * 2048 + 512)
    budget = codec.reply_byte_budget(model)
    assert nbytes < budget < nbytes + 1.1 * (1 << 20)
    # an honest reply of that model fits the budget
    honest = {k: np.zeros(s, dtype=np.float32) for k, s in model.items()}
    content = codec.encode_train_reply(submission(MEMBERS[0]), honest, {"steps": 3})
    delta = content["fedadmet.delta"]
    assert isinstance(delta, ArrayRecord)
    assert sum(len(delta[k].data) for k in delta) <= budget
    assert set(codec.decode_train_reply(content, shapes=model).delta) == set(model)


def _with_npy_header(array: np.ndarray, header_shape: tuple[int, ...]) -> Array:
    """An Array whose metadata is honest but whose .npy header claims ``header_shape``."""
    honest = Array(array)
    data = honest.data
    assert isinstance(data, bytes)
    good = f"'shape': {tuple(array.shape)}".encode()
    forged = f"'shape': {header_shape}".encode()
    assert good in data[:128]
    head_end = data.index(b"\n") + 1
    header = data[:head_end].replace(good, forged)
    # keep the header's padded length so the payload offset stays where numpy expects it
    header = header[:-1].rstrip(b" ")
    pad = head_end - 1 - len(header)
    assert pad >= 0
    data = header + b" " * pad + b"\n" + data[head_end:]
    return Array(dtype=honest.dtype, shape=tuple(honest.shape), stype=honest.stype, data=data)


def test_npy_header_claiming_terabytes_is_rejected_before_loading() -> None:
    # Metadata says (2, 3); the header inside the payload says 2**40 floats. Loading it
    # would try to allocate 4 TiB (MemoryError) before any later check ran.
    content = codec.encode_train_reply(submission(MEMBERS[0]), ARRAYS, {})
    record = content["fedadmet.delta"]
    assert isinstance(record, ArrayRecord)
    record["trunk.0.weight"] = _with_npy_header(ARRAYS["trunk.0.weight"], (2**40,))
    with pytest.raises(ReplyBoundsError) as err:
        codec.decode_train_reply(content, shapes=SHAPES)
    assert err.value.reason == "metadata-mismatch"


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    content = RecordDict({"fedadmet.refusal": ConfigRecord({"json": "[" * 50_000})})
    with pytest.raises(MessageValidationError):
        codec.decode_train_reply(content, shapes=SHAPES)
