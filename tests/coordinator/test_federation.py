"""The real round loop against an in-memory grid: one test per attack, named after it."""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.config import PrivacyPlanConfig
from coordinator.federation import Federation, Weights
from protocols import flower_codec as codec
from protocols.errors import ConfigError, RoundFailedError
from protocols.messages import RoundInstruction
from protocols.receipts import RoundReceipt, parse_receipt
from protocols.signing import fingerprint
from tests.coordinator.grid_simulator import (
    OUTSIDER,
    Script,
    Site,
    error,
    federation,
    malformed,
    members,
    refusal,
    silent,
    task_identity,
    twice,
)
from tests.protocols.factories import MEMBERS

A, B, C, D = MEMBERS[:4]


@pytest.fixture(scope="module", autouse=True)
def _flower_task_identity() -> Iterator[None]:
    with task_identity():
        yield


def _receipt(fed: Federation, round: int = 1) -> RoundReceipt:
    return parse_receipt(fed.log.read(round))


def _leaves(fed: Federation, round: int = 1) -> dict[str, tuple[str, str | None, float]]:
    return {leaf.participant_fingerprint: (leaf.status, leaf.reason, leaf.weight)
            for leaf in _receipt(fed, round).leaves}


def test_honest_round_aggregates_and_signs_a_receipt(tmp_path: Path) -> None:
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1), 3: Site(key=C, seed=2)})
    before = {k: v.copy() for k, v in fed.weights.items()}
    summary = fed.run_round(1)
    assert (summary.accepted, summary.rejected, summary.dropped) == (3, 0, 0)
    leaves = _leaves(fed)
    assert {s for s, _, _ in leaves.values()} == {"accepted"}
    assert all(math.isclose(w, 1 / 3) for _, _, w in leaves.values())
    assert any(not np.array_equal(before[k], fed.weights[k]) for k in before)
    assert summary.evaluate["logd.mae"] == pytest.approx(0.4)


def test_every_kind_of_bad_reply_in_one_round_does_not_stop_it(tmp_path: Path) -> None:
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1), 3: malformed,
                                4: error, 5: silent, 6: refusal(D)},
                     enrolled=members(*MEMBERS))
    summary = fed.run_round(1)
    reasons = {pid: reason for pid, (_, reason, _) in _leaves(fed).items()}
    assert summary.accepted == 2
    assert reasons["node:3"] == "malformed"
    assert reasons["node:4"] == "client-error"  # never Flower's (site-written) error text
    assert reasons["node:5"] == "timeout"
    assert reasons[fingerprint(D)] == "budget-exhausted"
    assert all("Traceback" not in (r or "") for r in reasons.values())


def test_forged_refusal_does_not_stop_the_round(tmp_path: Path) -> None:
    # node 3 refuses in A's name: unsigned, and signed by its own key C
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1),
                                3: refusal(C, names=A, signed=False),
                                4: refusal(C, names=A)})
    fed.run_round(1)
    leaves = _leaves(fed)
    assert leaves[fingerprint(A)][0] == "accepted"
    assert leaves["node:3"][:2] == ("rejected", "bad-signature")
    assert leaves["node:4"][:2] == ("rejected", "bad-signature")
    assert "3" not in fed.node_ids and "4" not in fed.node_ids  # no node bound to A by a lie


def test_one_key_from_two_nodes_is_rejected(tmp_path: Path) -> None:
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1), 3: Site(key=A, seed=2)})
    summary = fed.run_round(1)
    leaves = _leaves(fed)
    assert summary.accepted == 2
    assert leaves["node:3"][:2] == ("rejected", "key-on-two-nodes")
    assert fed.node_ids["1"] == fingerprint(A)


def test_refusal_from_one_key_on_two_nodes_is_rejected(tmp_path: Path) -> None:
    # the crash: A's key answering from a second node made build_receipt raise
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1), 3: refusal(A)})
    fed.run_round(1)
    assert _leaves(fed)["node:3"][:2] == ("rejected", "key-on-two-nodes")


def test_node_answering_for_another_member_in_a_later_round_is_rejected(tmp_path: Path) -> None:
    scripts = {1: Site(key=A), 2: Site(key=B, seed=1), 3: Site(key=C, seed=2)}
    fed = federation(tmp_path, scripts)
    fed.run_round(1)
    fed.grid.scripts[3] = refusal(D)  # type: ignore[attr-defined]
    fed.members = members(*MEMBERS)
    fed.run_round(2)
    assert _leaves(fed, 2)[fingerprint(C)][:2] == ("rejected", "node-bound-to-another-member")
    assert fingerprint(D) not in _leaves(fed, 2)


@pytest.mark.parametrize(("script", "reason"), [
    (refusal(OUTSIDER), "not-enrolled"),
    (refusal(C, federation_id="another-federation"), "wrong-federation"),
    (refusal(C, round=99), "wrong-round"),
])
def test_refusal_that_fails_authentication_is_a_rejected_leaf(tmp_path: Path, script: object,
                                                               reason: str) -> None:
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1), 3: script})  # type: ignore[dict-item]
    summary = fed.run_round(1)
    assert _leaves(fed)["node:3"][:2] == ("rejected", reason)
    assert summary.refused == 0 and "3" not in fed.node_ids


def test_duplicate_reply_counts_once(tmp_path: Path) -> None:
    fed = federation(tmp_path, {1: twice(Site(key=A)), 2: Site(key=B, seed=1)})
    summary = fed.run_round(1)
    leaves = _leaves(fed)
    assert summary.accepted == 2
    assert leaves[fingerprint(A)][0] == "accepted" and leaves[fingerprint(A)][2] == 0.5
    assert leaves["node:1"][:2] == ("rejected", "duplicate-reply")


def test_replayed_submission_for_another_round_is_rejected(tmp_path: Path) -> None:
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1),
                                3: Site(key=C, round_shift=98)})
    fed.run_round(1)
    assert _leaves(fed)["node:3"][:2] == ("rejected", "wrong-round")


def test_too_few_admitted_updates_fail_the_round_loudly(tmp_path: Path) -> None:
    fed = federation(tmp_path, {1: Site(key=A), 2: malformed, 3: silent})
    with pytest.raises(RoundFailedError, match="only 1 update"):
        fed.run_round(1)
    assert not fed.log.rounds()


def test_inflated_example_count_cannot_steer_the_model(tmp_path: Path) -> None:
    # capped weighting: the attacker claims 2**20 (a power of two, as the protocol asks)
    # with an enrolled cap of 128; it weighs no more than an honest member at its cap.
    enrolled = members(A, B, C)
    scripts = {1: Site(key=A), 2: Site(key=B, seed=1), 3: Site(key=C, seed=2,
                                                              claimed_count=2**20)}
    fed = federation(tmp_path, scripts, enrolled=enrolled, weighting="capped",
                     admission={"max-update-norm": 100.0})
    fed.run_round(1)
    leaves = _leaves(fed)
    attacker, honest = leaves[fingerprint(C)], leaves[fingerprint(A)]
    assert attacker[0] == "accepted"
    assert attacker[2] <= 128 / (128 * 3) + 1e-9 and attacker[2] == pytest.approx(honest[2])


def test_inflated_example_count_has_no_effect_under_uniform_weighting(tmp_path: Path) -> None:
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1),
                                3: Site(key=C, claimed_count=2**20)})
    fed.run_round(1)
    leaves = _leaves(fed)
    assert leaves[fingerprint(C)][:2] == ("rejected", "bad-count")  # no count is sent at all
    assert leaves[fingerprint(A)][2] == 0.5


def test_inflated_update_norm_is_rejected(tmp_path: Path) -> None:
    # the derived bound (coordinator/update_bound.py): real DP-SGD deltas pass, the same
    # delta scaled by 2 does not
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1),
                                3: Site(key=C, seed=2, scale=2.0)})
    fed.run_round(1)
    leaves = _leaves(fed)
    assert leaves[fingerprint(A)][0] == leaves[fingerprint(B)][0] == "accepted"
    assert leaves[fingerprint(C)][:2] == ("rejected", "norm-exceeded")


def test_twice_inflated_update_is_rejected_under_the_default_plan(tmp_path: Path) -> None:
    # the coordinator's own default plan (no [privacy] keys): the sites train with it
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1),
                                3: Site(key=C, seed=2, scale=2.0)}, plan={})
    assert fed.cfg.privacy == PrivacyPlanConfig()
    fed.run_round(1)
    leaves = _leaves(fed)
    assert leaves[fingerprint(A)][0] == leaves[fingerprint(B)][0] == "accepted"
    assert leaves[fingerprint(C)][:2] == ("rejected", "norm-exceeded")


def test_adam_plan_without_an_operator_bound_refuses_to_start(tmp_path: Path) -> None:
    # Adam's plan-derived bound admitted an update 812x an honest one: no bound, no start
    with pytest.raises(ConfigError, match="max-update-norm"):
        federation(tmp_path, {1: Site(key=A), 2: Site(key=B)}, privacy={"optimizer": "adam"})
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B)}, privacy={"optimizer": "adam"},
                     admission={"max-update-norm": 3.0})
    assert fed.cfg.admission.max_update_norm == 3.0


def test_claimed_epsilon_of_1e300_is_rejected(tmp_path: Path) -> None:
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1),
                                3: Site(key=C, claimed_epsilon=1e300),
                                4: Site(key=D, claimed_epsilon=7.0)},
                     enrolled={**members(A, B, C), **members(D, max_epsilon=6.0)})
    fed.run_round(1)
    leaves = _leaves(fed)
    assert leaves[fingerprint(C)][:2] == ("rejected", "over-budget")  # above the plan's ε 8
    assert leaves[fingerprint(D)][:2] == ("rejected", "over-budget")  # above its enrolled 6


@pytest.mark.parametrize(("extra", "leaf", "reason"), [
    # thousands of keys never reach admission: the codec refuses them before decoding
    ({f"junk{i}": 1.0 for i in range(2000)}, "node:3", "malformed"),
    ({"n.secret": 1.0}, "C", "undeclared-metric"),
    ({"num-examples": 1e308}, "C", "inconsistent-counts"),  # uniform: the signed count is null
])
def test_signed_junk_train_metrics_are_rejected(tmp_path: Path, extra: dict[str, float],
                                                leaf: str, reason: str) -> None:
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1),
                                3: Site(key=C, extra_metrics=extra)})
    summary = fed.run_round(1)
    key = fingerprint(C) if leaf == "C" else leaf
    assert _leaves(fed)[key][:2] == ("rejected", reason)
    assert summary.train == {}  # no training loss leaves a site


@pytest.mark.parametrize(("metrics", "reason"), [
    ({"logd.mae": float("nan"), "logd.n": 20.0}, "metric-out-of-range"),
    ({"logd.mae": -5e297, "logd.n": 1e12}, "metric-out-of-range"),
    ({"logd.mae": 0.4, "logd.n": float("inf")}, "metric-out-of-range"),
    ({"logd.brier": 1.5, "logd.n": 20.0}, "metric-out-of-range"),
    ({"loss": 0.5, "logd.mae": 0.4, "logd.n": 20.0}, "undeclared-metric"),
    ({"private.mae": 0.4}, "undeclared-metric"),
])
def test_nan_eval_metrics_are_dropped_with_a_reason(tmp_path: Path, metrics: dict[str, float],
                                                   reason: str) -> None:
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1),
                                3: Site(key=C, seed=2, eval_metrics=metrics)})
    summary = fed.run_round(1)
    assert summary.evaluate_reasons == {fingerprint(C): reason}
    assert summary.evaluate["logd.mae"] == pytest.approx(0.4)
    line = (tmp_path / "state" / "rounds.jsonl").read_text(encoding="utf-8")
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line)["evaluate_reasons"] == {fingerprint(C): reason}


@pytest.mark.parametrize(("weighting", "attacker_weight"), [("uniform", 1.0), ("capped", 128.0)])
def test_inflated_evaluate_count_cannot_steer_the_learning_curve(
        tmp_path: Path, weighting: str, attacker_weight: float) -> None:
    # C claims 2**40 held-out molecules with a terrible MAE: it counts as one reply under
    # uniform weighting and at most its enrolled cap (128) under capped
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1),
                                3: Site(key=C, seed=2,
                                        eval_metrics={"logd.mae": 100.0, "logd.n": 2.0**40})},
                     weighting=weighting)
    summary = fed.run_round(1)
    honest = 1.0 if weighting == "uniform" else 20.0  # the honest sites' n is 20
    want = (2 * honest * 0.4 + attacker_weight * 100.0) / (2 * honest + attacker_weight)
    assert summary.evaluate["logd.mae"] == pytest.approx(want)
    assert summary.evaluate["logd.mae"] < 100.0 * 0.9


def test_silent_member_holds_the_round_for_the_timeout_without_min_replies(
        tmp_path: Path) -> None:
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1), 3: silent},
                     **{"round-timeout": 1.0})
    t0 = time.monotonic()
    fed.run_round(1)
    assert time.monotonic() - t0 >= 2.0  # train and evaluate each waited
    assert _leaves(fed)["node:3"][:2] == ("dropped", "timeout")


def test_silent_member_does_not_hold_the_round_once_min_replies_arrived(
        tmp_path: Path) -> None:
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1), 3: silent},
                     **{"round-timeout": 60.0, "min-replies": 2})
    t0 = time.monotonic()
    summary = fed.run_round(1)
    assert time.monotonic() - t0 < 30.0  # far below the 2 x 60 s a silent member would cost
    assert summary.accepted == 2
    assert _leaves(fed)["node:3"][:2] == ("late", "round-closed")


def test_slow_member_closed_out_by_min_replies_is_late_not_dropped(tmp_path: Path) -> None:
    # C (bound to node 1 in round 1) answers too slowly in round 2: its leaf must not be
    # the "dropped" its site halts on, but "late", counted on its own limit
    fed = federation(tmp_path, {1: Site(key=C, seed=2), 2: Site(key=A), 3: Site(key=B, seed=1)},
                     **{"min-replies": 2})
    fed.run_round(1)  # C and A are admitted first; the round closes on B
    assert _leaves(fed, 1)["node:3"][:2] == ("late", "round-closed")
    fed.grid.scripts[1] = silent  # type: ignore[attr-defined]
    summary = fed.run_round(2)
    assert _leaves(fed, 2)[fingerprint(C)] == ("late", "round-closed", 0.0)
    assert (summary.late, summary.dropped) == (1, 0)


def test_rounds_chain_and_bindings_survive_a_resume(tmp_path: Path) -> None:
    scripts = {1: Site(key=A), 2: Site(key=B, seed=1), 3: refusal(C)}
    fed = federation(tmp_path, scripts)
    fed.run_round(1)
    again = federation(tmp_path, scripts)
    assert again.start_round == 2 and again.node_ids == fed.node_ids
    again.run_round(2)
    assert _receipt(again, 2).previous_receipt_hash != "0" * 64
    assert _leaves(again, 2)[fingerprint(C)][:2] == ("refused", "budget-exhausted")


_POOL = {
    "honest-a": Site(key=A), "honest-b": Site(key=B, seed=1), "honest-c": Site(key=C, seed=2),
    "twice-a": twice(Site(key=A)), "refuse-a": refusal(A), "refuse-as-b": refusal(C, names=B),
    "unsigned-as-a": refusal(C, names=A, signed=False), "outsider": refusal(OUTSIDER),
    "round-99": refusal(C, round=99), "elsewhere": refusal(D, federation_id="x"),
    "malformed": malformed, "error": error, "silent": silent,
    "inflated": Site(key=D, scale=2.0), "junk": Site(key=D, extra_metrics={"x": 1.0}),
}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(sorted(_POOL)), min_size=1, max_size=6))
def test_no_mix_of_replies_crashes_a_round_or_its_receipt(names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fed = federation(Path(tmp), {i + 1: _POOL[n] for i, n in enumerate(names)},
                         enrolled=members(*MEMBERS), **{"round-timeout": 0.05,
                                                        "min-participants": 1})
        try:
            fed.run_round(1)
        except RoundFailedError:
            assert not fed.log.rounds()
            return
        receipt = _receipt(fed)
        ids = [leaf.participant_fingerprint for leaf in receipt.leaves]
        # never two leaves under one id (what made build_receipt raise); one per node, and a
        # second (duplicate-reply) leaf under node:<id> only for a node that answered twice
        assert len(ids) == len(set(ids))
        assert len(names) <= len(ids) <= len(names) + names.count("twice-a")
        accepted = [leaf for leaf in receipt.leaves if leaf.status == "accepted"]
        assert math.isclose(sum(leaf.weight for leaf in accepted), 1.0, rel_tol=1e-9)


def _nested_json(msg: Message, ins: RoundInstruction, weights: Weights) -> list[Message]:
    """A 50 kB reply of nested brackets: json.loads raises RecursionError."""
    return [Message(RecordDict({"fedadmet.refusal": ConfigRecord({"json": "[" * 50_000})}),
                    reply_to=msg)]


def _lying_npy_header(site: Site) -> Script:
    """An honest submission whose delta's .npy header claims 2**40 floats (4 TiB)."""
    def script(msg: Message, ins: RoundInstruction, weights: Weights) -> list[Message]:
        from tests.protocols.test_flower_codec import _with_npy_header

        sub, delta, metrics = site.submission(ins, weights)
        content = codec.encode_train_reply(sub, delta, metrics)
        record = content["fedadmet.delta"]
        assert isinstance(record, ArrayRecord)
        name = sorted(delta)[0]
        record[name] = _with_npy_header(delta[name], (2**40,))
        return [Message(content, reply_to=msg)]
    return script


def test_tiny_reply_with_a_lying_npy_header_does_not_crash_the_round(tmp_path: Path) -> None:
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1),
                                3: _lying_npy_header(Site(key=C, seed=2))})
    summary = fed.run_round(1)
    assert summary.accepted == 2
    assert _leaves(fed)["node:3"][:2] == ("rejected", "metadata-mismatch")


def test_deeply_nested_json_reply_does_not_crash_train_or_evaluate(tmp_path: Path) -> None:
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1), 3: _nested_json})
    summary = fed.run_round(1)
    assert summary.accepted == 2
    assert _leaves(fed)["node:3"][:2] == ("rejected", "malformed")
    assert summary.evaluate_reasons.get("node:3") == "malformed"
    assert len(fed.log.rounds()) == 1  # the round's line was written: nothing left pending


def _padded(site: Site, *, mib: int) -> Script:
    """An honest train reply plus ``mib`` MiB in an extra record; its evaluate reply
    padded the same way."""
    def script(msg: Message, ins: RoundInstruction, weights: Weights) -> list[Message]:
        pad = ArrayRecord({"pad": Array(np.zeros(mib << 18, np.float32))})
        if msg.metadata.message_type == "evaluate":
            content = codec.encode_evaluate_reply({"logd.mae": 0.4, "logd.n": 20.0})
        else:
            content = codec.encode_train_reply(*site.submission(ins, weights))
        content["fedadmet.padding"] = pad
        return [Message(content, reply_to=msg)]
    return script


def test_reply_over_the_byte_budget_is_rejected_before_decoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the reply Flower reassembled is 8 MiB over a 0.5 MiB model: refused by its size,
    # with no payload of it converted, in train and in evaluate
    fed = federation(tmp_path, {1: Site(key=A), 2: Site(key=B, seed=1),
                                3: _padded(Site(key=C, seed=2), mib=8)})
    budget = codec.reply_byte_budget({k: v.shape for k, v in fed.weights.items()})
    assert budget < 1 << 20
    converted: list[int] = []
    numpy = Array.numpy
    monkeypatch.setattr(Array, "numpy", lambda self: converted.append(len(self.data))
                        or numpy(self))
    summary = fed.run_round(1)
    assert _leaves(fed)["node:3"][:2] == ("rejected", "oversized")
    assert summary.evaluate_reasons.get("node:3") == "oversized"
    assert summary.accepted == 2 and max(converted) < 1 << 20  # never the 8 MiB pad
