"""Every field a site sends in a full round is a row of docs/threat-model.md.

A real site answers through the real ClientApp (in-process, as a SuperNode calls it): a train
round, the evaluation of its receipt-bound model, a refusal (receipts withheld), a data error,
an uncaught exception and a malformed instruction. Each reply is flattened to
``message/record/key`` paths (endpoint and parameter names abstracted) and every path must be
in the threat model's wire table, with a protection of DP, rounding or nothing. A new key on
the wire fails here until the table says what it reveals.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from participant.client_app import make_client_app
from participant.site import Site
from protocols import flower_codec as codec
from tests.participant.site_factory import SiteKit, make_site
from tests.participant.test_outgoing_message import _call, _expectations, task_identity

__all__ = ["task_identity"]  # the fixture, re-used from test_outgoing_message

DOC = Path(__file__).resolve().parents[2] / "docs" / "threat-model.md"
ROW = re.compile(r"^\| `([^`]+)` \| (.+?) \| (.+?) \|$")
PROTECTIONS = ("DP", "rounding", "nothing")
SECRET = "/srv/acme/project-zeta/herg-secret.csv"


def wire_table() -> dict[str, str]:
    """Path -> protection, from the doc's wire table."""
    rows = {}
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Wire table"):].split("\n## ", 1)[0]
    for line in section.splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = m.group(3)
    return rows


def paths(reply: Message, *, endpoints: set[str], parameters: set[str]) -> set[str]:
    """Every field of a reply as ``message/record/key``."""
    out = {f"metadata/{name}" for name in dir(Metadata)
           if isinstance(getattr(Metadata, name), property)}
    if reply.has_error():
        return out | {"error/error/code", "error/error/reason"}
    content = reply.content
    kind = ("refusal" if codec.REFUSAL in content else
            "train" if codec.SUBMISSION in content else "evaluate")

    def abstract(key: str) -> str:
        parts = key.split(".")
        return ".".join("<endpoint>" if p in endpoints else p for p in parts)

    for name, record in content.items():
        if isinstance(record, ConfigRecord):
            for k in record:
                value = record[k]
                if k == "json" and isinstance(value, str):
                    out |= {f"{kind}/{name}/{field}" for field in json.loads(value)}
                else:
                    out.add(f"{kind}/{name}/{k}")
        elif isinstance(record, MetricRecord):
            out |= {f"{kind}/{name}/{abstract(k)}" for k in record}
        else:
            out |= {f"{kind}/{name}/{'<parameter>' if k in parameters else k}"
                    for k in record}
    return out


def _raw(kit: SiteKit, content: RecordDict, kind: str) -> Message:
    client = make_client_app(lambda _context: kit.config)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    return client(Message(content, dst_node_id=7, message_type=kind), context)


@pytest.fixture(scope="module")
def round_replies(task_identity: None, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[SiteKit, dict[str, Message]]:
    kit = make_site(tmp_path_factory.mktemp("site"), n=120)
    replies = {"train": _call(kit, "train")}
    replies["withheld"] = _call(kit, "train", kit.instruction(round=2))
    submission = codec.decode_train_reply(replies["train"].content,
                                         shapes=_expectations(kit).shared_shapes).submission
    receipt = kit.receipt(1, submission=submission)
    replies["evaluate"] = _call(kit, "evaluate", kit.instruction(receipts=[receipt]))
    # a data error whose text names a secret path and the site's column names
    csv = kit.root / "assays.csv"
    moved = kit.root / "moved.csv"
    csv.rename(moved)
    text = kit.config_path.read_text()
    kit.config_path.write_text(text.replace('files = ["assays.csv"]', f'files = ["{SECRET}"]'))
    replies["data-error"] = _call(kit, "train", kit.instruction(round=2, receipts=[receipt]))
    kit.config_path.write_text(text)
    moved.rename(csv)
    # an exception nothing in the site expects, carrying the path in its text
    original = Site._specs

    def boom(self: Site, ins: object) -> None:
        raise RuntimeError(f"cannot open {SECRET} (column measured)")

    Site._specs = boom  # type: ignore[assignment]
    try:
        replies["uncaught"] = _call(kit, "train", kit.instruction(round=2, receipts=[receipt]))
    finally:
        Site._specs = original  # type: ignore[method-assign]
    replies["malformed"] = _raw(kit, RecordDict({codec.INSTRUCTION: ConfigRecord(
        {"json": json.dumps({"kind": "round-instruction", "path": SECRET})})}), "train")
    return kit, replies


def _every(kit: SiteKit, replies: dict[str, Message]) -> Iterator[tuple[str, set[str]]]:
    parameters = set(kit.global_weights)
    endpoints = set(kit.model_spec.endpoint_names)
    for what, reply in replies.items():
        yield what, paths(reply, endpoints=endpoints, parameters=parameters)


def test_every_field_a_site_sends_is_in_the_threat_model(
        round_replies: tuple[SiteKit, dict[str, Message]]) -> None:
    kit, replies = round_replies
    table = wire_table()
    assert len(table) > 30 and all(p.split(" ")[0] in PROTECTIONS for p in table.values())
    shapes = _expectations(kit).shared_shapes
    assert codec.decode_train_reply(replies["train"].content, shapes=shapes).submission is not None
    metrics, refusal = codec.decode_evaluate_reply(replies["evaluate"].content)
    assert refusal is None and metrics
    for what, found in _every(kit, replies):
        assert found - set(table) == set(), what
    # the delta and the evaluation metrics are what DP covers
    for path in ("train/fedadmet.delta/<parameter>", "evaluate/fedadmet.metrics/<endpoint>.mae",
                 "evaluate/fedadmet.metrics/<endpoint>.n"):
        assert table[path] == "DP"


def test_a_new_key_on_the_wire_fails_the_scan(
        round_replies: tuple[SiteKit, dict[str, Message]]) -> None:
    kit, replies = round_replies
    decoded = codec.decode_train_reply(replies["train"].content,
                                       shapes=_expectations(kit).shared_shapes)
    assert decoded.submission is not None
    planted = Message(codec.encode_train_reply(decoded.submission, decoded.delta,
                                               {**decoded.metrics, "train-loss": 0.7}),
                      dst_node_id=1, message_type="train")
    found = paths(planted, endpoints=set(kit.model_spec.endpoint_names),
                  parameters=set(kit.global_weights))
    assert found - set(wire_table()) == {"train/fedadmet.metrics/train-loss"}


def test_error_text_never_leaves_the_site(
        round_replies: tuple[SiteKit, dict[str, Message]]) -> None:
    _, replies = round_replies
    expected = {"withheld": "receipts-missing", "data-error": "data-error",
                "uncaught": "internal-error"}
    for what, reason in expected.items():
        _, refusal = codec.decode_evaluate_reply(replies[what].content)
        assert refusal is not None and refusal.reason == reason, what
        assert "detail" not in refusal.to_dict(), what  # no free-text field at all
    malformed = replies["malformed"]
    assert malformed.has_error() and malformed.error.reason == "malformed-instruction"
    for what, reply in replies.items():
        blobs = b"".join(o.deflate() for o in get_all_nested_objects(reply).values())
        for needle in (SECRET, "project-zeta", "herg-secret", "measured", "Traceback"):
            assert needle.encode() not in blobs, (what, needle)


def test_every_refusal_reason_code_is_documented() -> None:
    from protocols.messages import REFUSAL_REASONS

    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Refusals"):].split("\n## ", 1)[0]
    assert {code for code in REFUSAL_REASONS if f"`{code}`" not in section} == set()
