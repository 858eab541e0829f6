"""What a site sends in a train round: no SMILES, nothing of per-example size.

The real ClientApp (``participant.client_app.make_client_app``) runs in-process on
a real site (a few hundred molecules, DP-SGD on), exactly as Flower 1.41 calls it:
``client_app(message, context)``. The reply is then walked record by record and,
as Flower serialises it for the wire, object by object.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.task_identity import TaskIdentity

from chem.models import build_model, shared_parameter_names
from chem.standardize import standardize_many
from participant.client_app import make_client_app
from participant.data import load_site_data
from participant.heads import PrivateHeadStore
from protocols import flower_codec as codec
from protocols.messages import RoundInstruction
from tests.participant.site_factory import SiteKit, make_site

# Shorter SMILES ("CC", "CCO") occur by chance in base64 signatures and float bytes;
# every molecule at least this long is searched for verbatim.
MIN_SEARCHED_SMILES = 6


def _findings(content: RecordDict, wire: Iterable[bytes], *, smiles: set[str],
              private_names: set[str], sizes: set[int],
              shared_shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Everything in a reply that looks like a leak, as readable lines (empty: clean)."""
    out: list[str] = []
    needles = sorted(s for s in smiles | private_names if len(s) >= MIN_SEARCHED_SMILES)

    def text(where: str, value: str) -> None:
        out.extend(f"{where}: contains {s!r}" for s in needles if s in value)

    for key, record in content.items():
        text(f"record name {key}", key)
        if isinstance(record, ArrayRecord):
            for name in record:
                text(f"array name {key}/{name}", name)
                arr = record[name].numpy()
                declared = shared_shapes.get(name) == tuple(arr.shape)
                if not declared:
                    out.append(f"array {key}/{name} {arr.shape} is not a declared shared "
                               "parameter")
                for n in sizes:
                    if n in arr.shape:
                        out.append(f"array {key}/{name} {arr.shape} has a dimension of {n}")
                    elif arr.size % n == 0 and not declared:
                        out.append(f"array {key}/{name} size {arr.size} is a multiple of {n}")
        elif isinstance(record, ConfigRecord):
            for name in record:
                text(f"config key {key}/{name}", name)
                text(f"config value {key}/{name}", str(record[name]))
        else:  # MetricRecord: the only other record type a RecordDict holds
            assert isinstance(record, MetricRecord)
            for name in record:
                text(f"metric key {key}/{name}", name)
                value = record[name]
                if isinstance(value, list):
                    out.append(f"metric {key}/{name} is a list of {len(value)}")
    for i, blob in enumerate(wire):
        out.extend(f"serialised object {i}: contains {s!r}" for s in needles
                   if s.encode("utf-8") in blob)
    return out


@pytest.fixture(scope="module", autouse=True)
def task_identity() -> Iterator[None]:
    """Flower's process-wide task identity, which a SuperNode's runtime sets before a
    ClientApp runs (Message() reads it); restored afterwards."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _call(kit: SiteKit, kind: str, instruction: RoundInstruction | None = None) -> Message:
    """One message through the real ClientApp, in-process, as a SuperNode would deliver it."""
    cfg = kit.config
    client = make_client_app(lambda _context: cfg)
    msg = Message(codec.encode_instruction(instruction or kit.instruction(), kit.global_weights),
                  dst_node_id=7, message_type=kind)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    return client(msg, context)


@pytest.fixture(scope="module")
def site_reply(task_identity: None,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[SiteKit, Message]:
    kit = make_site(tmp_path_factory.mktemp("site"), n=300)
    return kit, _call(kit, "train")


@dataclass(frozen=True)
class Expected:
    """What the site holds: its molecules, its example counts, the declared shared set."""

    smiles: set[str]
    sizes: set[int]
    shared_shapes: dict[str, tuple[int, ...]]
    private_names: set[str]


def _expectations(kit: SiteKit) -> Expected:
    cfg = kit.config
    data = load_site_data(cfg, kit.featurization_spec)
    raw = {str(s) for s in kit.data["smiles"]}
    std = set(standardize_many(list(raw)).smiles)
    sizes = {data.n_train, len(data.x_valid), data.n_train + len(data.x_valid), len(kit.data)}
    shared = shared_parameter_names(build_model(kit.model_spec),
                                    kit.model_spec.endpoint_names)
    shapes = {k: tuple(v.shape) for k, v in kit.global_weights.items() if k in shared}
    return Expected(smiles=raw | std, sizes=sizes, shared_shapes=shapes,
                    private_names={e for e in cfg.data.endpoint_names
                                   if e not in kit.model_spec.endpoint_names})


def test_train_reply_leaks_no_smiles_or_per_example_data(
        site_reply: tuple[SiteKit, Message]) -> None:
    kit, reply = site_reply
    assert not reply.has_error(), reply.error
    decoded = codec.decode_train_reply(reply.content, shapes=_expectations(kit).shared_shapes)
    assert decoded.refusal is None and decoded.submission is not None
    exp = _expectations(kit)
    assert min(exp.sizes) > 30 and len(exp.smiles) >= 250
    assert exp.private_names == {"private_assay"}
    # the update is exactly the declared shared set, trained (not all zero)
    assert set(decoded.delta) == set(exp.shared_shapes)
    assert any(np.abs(v).sum() > 0 for v in decoded.delta.values())
    assert decoded.submission.num_examples is None  # uniform weighting: no count leaves
    wire = [obj.deflate() for obj in get_all_nested_objects(reply).values()]
    # the scan saw the float bytes of the whole delta, not just headers
    assert sum(len(b) for b in wire) > 4 * sum(v.size for v in decoded.delta.values())
    found = _findings(reply.content, wire, smiles=exp.smiles, private_names=exp.private_names,
                      sizes=exp.sizes, shared_shapes=exp.shared_shapes)
    assert found == []


def test_train_metrics_are_the_reviewed_aggregates_only(
        site_reply: tuple[SiteKit, Message]) -> None:
    """A new metric must be reviewed here first: e.g. the DP-SGD wall time would track the
    Poisson batch sizes, which the accountant assumes hidden."""
    kit, reply = site_reply
    decoded = codec.decode_train_reply(reply.content, shapes=_expectations(kit).shared_shapes)
    endpoints = {f"n.{e}" for e in kit.model_spec.endpoint_names}
    # uniform weighting (the default): no count, no step count (n / batch size), no loss, and
    # each n.<endpoint> only says whether the site holds that endpoint's labels
    assert set(decoded.metrics) == endpoints
    assert {decoded.metrics[e] for e in endpoints} <= {0.0, 1.0}


def test_training_time_is_logged_on_site(task_identity: None, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    kit = make_site(tmp_path, n=120)
    with caplog.at_level(logging.INFO, logger="participant.site"):
        reply = _call(kit, "train")
    assert not reply.has_error(), reply.error
    lines = [r.getMessage() for r in caplog.records if "DP-SGD steps in" in r.getMessage()]
    fed = kit.instruction().federation_id
    assert len(lines) == 1 and re.fullmatch(rf"{re.escape(fed)} round 1: \d+ DP-SGD steps in "
                                            r"[0-9.]+ s", lines[0]), lines


def test_leak_scan_catches_a_planted_smiles_and_a_per_example_array(
        site_reply: tuple[SiteKit, Message]) -> None:
    """The scan above can fail: a SMILES in the metrics, in a config value, or a
    per-example array next to the delta are each reported."""
    kit, reply = site_reply
    exp = _expectations(kit)
    smiles = sorted(s for s in exp.smiles if len(s) >= 12)[0]
    n_train = min(exp.sizes)
    decoded = codec.decode_train_reply(reply.content, shapes=_expectations(kit).shared_shapes)
    assert decoded.submission is not None
    planted = {
        "metric": codec.encode_train_reply(decoded.submission, decoded.delta,
                                           {**decoded.metrics, f"loss.{smiles}": 1.0}),
        "per-example": codec.encode_train_reply(
            decoded.submission, {**decoded.delta, "trunk.0.losses": np.zeros(n_train)},
            decoded.metrics),
        "config": RecordDict({**reply.content, "extra": ConfigRecord({"note": smiles})}),
    }
    for what, content in planted.items():
        message = Message(content, dst_node_id=1, message_type="train")
        wire = [o.deflate() for o in get_all_nested_objects(message).values()]
        found = _findings(content, wire, smiles=exp.smiles, private_names=set(),
                          sizes=exp.sizes, shared_shapes=exp.shared_shapes)
        assert found, what


def test_private_head_stays_on_site(site_reply: tuple[SiteKit, Message]) -> None:
    """The private head was trained and stored locally, and is absent from the reply."""
    kit, reply = site_reply
    heads = PrivateHeadStore(kit.config.state_dir).load()
    assert set(heads) == {"heads.private_assay.weight", "heads.private_assay.bias"}
    delta = codec.decode_train_reply(reply.content, shapes=_expectations(kit).shared_shapes).delta
    assert not any(k.startswith("heads.private_assay") for k in delta)


def test_evaluate_reply_leaks_no_smiles_or_per_example_data(
        site_reply: tuple[SiteKit, Message]) -> None:
    kit, train_reply = site_reply
    submission = codec.decode_train_reply(train_reply.content,
                                          shapes=_expectations(kit).shared_shapes).submission
    receipt = kit.receipt(1, submission=submission)
    reply = _call(kit, "evaluate", kit.instruction(receipts=[receipt]))
    metrics, refusal = codec.decode_evaluate_reply(reply.content)
    assert refusal is None and metrics
    exp = _expectations(kit)
    wire = [obj.deflate() for obj in get_all_nested_objects(reply).values()]
    # a private endpoint's name and metrics stay on site too
    assert _findings(reply.content, wire, smiles=exp.smiles, private_names=exp.private_names,
                     sizes=exp.sizes, shared_shapes=exp.shared_shapes) == []
    assert {k.split(".")[0] for k in metrics if "." in k} == set(kit.model_spec.endpoint_names)
