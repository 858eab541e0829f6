"""Nothing data-dependent leaves a site un-noised, and receipts are mandatory (issue 13, 2-3).

Each test plays a hostile coordinator against a real site (tests/participant/site_factory.py):
real keys, data, DP-SGD and ledger, instructions and signed receipts built as the coordinator
builds them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from participant.config import ParticipantConfig
from participant.ledger import PrivacyLedger
from participant.outbox import Outbox, OutboxEntry
from participant.site import Site, TrainResult
from protocols.canonical import tensors_digest
from protocols.errors import ConfigError
from protocols.receipts import RoundReceipt
from tests.participant.site_factory import SiteKit, make_site

N = 120


def _ledger(kit: SiteKit) -> PrivacyLedger:
    return PrivacyLedger.open(kit.config.state_dir, max_epsilon=20.0, delta=1e-5)


def _trained(tmp_path: Path, **config: str) -> tuple[SiteKit, Site, TrainResult]:
    kit = make_site(tmp_path, n=N)
    if config:
        text = kit.config_path.read_text()
        extra = "".join(f"{k} = {v}\n" for k, v in config.items())
        kit.config_path.write_text(text.replace("[participant]\n", "[participant]\n" + extra))
    site = Site(kit.config)
    result = site.train(kit.instruction(), kit.global_weights)
    assert result.submission is not None, result.refusal
    return kit, site, result


def _receipt(kit: SiteKit, result: TrainResult, round: int = 1,
             previous: RoundReceipt | None = None, **kw: object) -> RoundReceipt:
    return kit.receipt(round, submission=result.submission, previous=previous, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- train-loss
def test_train_reply_carries_no_loss(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="participant.site"):
        _, _, result = _trained(tmp_path)
    assert not any("loss" in k for k in result.metrics), result.metrics
    assert any("mean DP-SGD training loss" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- evaluate
def test_evaluate_without_a_receipt_is_refused(tmp_path: Path) -> None:
    kit, site, _ = _trained(tmp_path)
    metrics, refusal = site.evaluate(kit.instruction(), kit.global_weights)
    assert metrics == {} and refusal is not None and refusal.reason == "receipts-missing"
    assert "detail" not in refusal.to_dict()  # a reason code, no free text
    assert [e.release for e in _ledger(kit).entries()] == ["train"]


def test_evaluate_on_crafted_weights_is_refused(tmp_path: Path) -> None:
    kit, site, result = _trained(tmp_path)
    receipt = _receipt(kit, result)
    ok, refusal = site.evaluate(kit.instruction(receipts=[receipt]), kit.global_weights)
    assert refusal is None and ok
    # the receipt for round 1 is held: a crafted model for round 1 is refused and halts
    crafted = {k: np.zeros_like(v) for k, v in kit.global_weights.items()}
    metrics, refusal = site.evaluate(kit.instruction(weights=crafted), crafted)
    assert metrics == {} and refusal is not None
    assert refusal.reason == "receipt-verification-failed"
    halt = site.receipts.halted()
    assert halt is not None and halt.check == "model-digest"


def test_evaluate_on_crafted_weights_with_its_receipt_is_refused(tmp_path: Path) -> None:
    kit, site, result = _trained(tmp_path)
    crafted = {k: v + 1.0 for k, v in kit.global_weights.items()}
    metrics, refusal = site.evaluate(
        kit.instruction(receipts=[_receipt(kit, result)], weights=crafted), crafted)
    assert metrics == {} and refusal is not None
    assert refusal.reason == "receipt-verification-failed"
    assert [e.release for e in _ledger(kit).entries()] == ["train"]


def test_evaluate_twice_in_a_round_is_refused(tmp_path: Path) -> None:
    kit, site, result = _trained(tmp_path)
    ins = kit.instruction(receipts=[_receipt(kit, result)])
    first, refusal = site.evaluate(ins, kit.global_weights)
    assert refusal is None and first
    second, refusal = site.evaluate(ins, kit.global_weights)
    assert second == {} and refusal is not None and refusal.reason == "round-replay"
    assert [e.release for e in _ledger(kit).entries()] == ["train", "evaluate"]


def test_evaluate_when_halted_is_refused(tmp_path: Path) -> None:
    kit, site, result = _trained(tmp_path)
    site.receipts.halt("signature", 1, "test")
    metrics, refusal = site.evaluate(kit.instruction(receipts=[_receipt(kit, result)]),
                                     kit.global_weights)
    assert metrics == {} and refusal is not None and refusal.reason == "halted"


def test_evaluate_metrics_are_noised_bounded_and_charged(tmp_path: Path) -> None:
    kit, site, result = _trained(tmp_path)
    metrics, refusal = site.evaluate(kit.instruction(receipts=[_receipt(kit, result)]),
                                     kit.global_weights)
    assert refusal is None
    assert set(metrics) == {"solubility.mae", "solubility.n"}
    # clipped at the error bound (2 target scales): a finite metric in a known range
    assert 0.0 <= metrics["solubility.mae"] <= 2.0 and metrics["solubility.n"] >= 0
    entry = _ledger(kit).entries()[-1]
    assert (entry.release, entry.round, entry.noise_multiplier, entry.sample_rate,
            entry.steps) == ("evaluate", 1, 10.0, 1.0, 1)
    assert entry.epsilon_after > _ledger(kit).entries()[0].epsilon_after


def test_evaluate_kept_local_sends_and_charges_nothing(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    kit = make_site(tmp_path, n=N)
    kit.config_path.write_text(kit.config_path.read_text() + '\n[evaluation]\nrelease = "local"\n')
    site = Site(kit.config)
    result = site.train(kit.instruction(), kit.global_weights)
    with caplog.at_level(logging.INFO, logger="participant.site"):
        metrics, refusal = site.evaluate(kit.instruction(receipts=[_receipt(kit, result)]),
                                         kit.global_weights)
    assert metrics == {} and refusal is None
    assert [e.release for e in _ledger(kit).entries()] == ["train"]
    assert any("held-out metrics (exact, kept on site)" in r.getMessage()
               for r in caplog.records)


def test_training_leaves_budget_for_the_runs_evaluations(tmp_path: Path) -> None:
    """Calibration reserves the planned evaluation releases, so train + evaluate for every
    planned round stays within the federation's target ε."""
    kit = make_site(tmp_path, n=N)
    site = Site(kit.config)
    previous = None
    for r in (1, 2, 3):  # the site factory plans 3 rounds at target ε 8
        result = site.train(kit.instruction(round=r, receipts=[previous] if previous else []),
                            kit.global_weights)
        assert result.submission is not None, result.refusal
        previous = _receipt(kit, result, r, previous)
        _, refusal = site.evaluate(kit.instruction(round=r, receipts=[previous]),
                                   kit.global_weights)
        assert refusal is None, refusal
    ledger = _ledger(kit)
    assert [e.release for e in ledger.entries()] == ["train", "evaluate"] * 3
    assert ledger.epsilon() <= 8.0


# ---------------------------------------------------------------- receipts
def test_coordinator_withholding_receipts_stops_training(tmp_path: Path) -> None:
    kit, site, result = _trained(tmp_path)
    refused = site.train(kit.instruction(round=2), kit.global_weights)
    assert refused.submission is None and refused.refusal is not None
    assert refused.refusal.reason == "receipts-missing"
    assert "detail" not in refused.refusal.to_dict()
    assert len(_ledger(kit).entries()) == 1  # no ε spent on the withheld round
    # the late receipt is accepted (the outbox kept what it is checked against)
    again = site.train(kit.instruction(round=2, receipts=[_receipt(kit, result)]),
                       kit.global_weights)
    assert again.submission is not None, again.refusal


def test_receipt_delivered_after_ten_rounds_is_still_checked(tmp_path: Path) -> None:
    """The outbox keeps an unverified round however many later ones are stored."""
    box = Outbox(tmp_path, keep=2)
    for r in range(1, 13):
        box.put(OutboxEntry(round=r, base_model_digest="a" * 64,
                            delta={"w": np.full(2, r, np.float32)}, payload={}))
    box.prune(verified=set(range(1, 13)) - {3})
    assert sorted(box.submitted()) == [3, 11, 12]
    assert box.submitted()[3] == tensors_digest({"w": np.full(2, 3, np.float32)})


def test_dropped_own_leaf_halts_after_limit(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    kit, site, result = _trained(tmp_path)  # max-dropped-rounds defaults to 2
    first = _receipt(kit, result, status="dropped")
    with caplog.at_level(logging.ERROR, logger="participant.site"):
        second_round = site.train(kit.instruction(round=2, receipts=[first]), kit.global_weights)
    assert second_round.submission is not None, second_round.refusal
    assert any("DROPPED" in r.getMessage() for r in caplog.records)
    from fedadmet.cli.main import _mount, app

    _mount()
    out = CliRunner().invoke(app, ["participant", "budget", "--config", str(kit.config_path),
                                   "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["dropped_after_submit"] == [1]
    second = _receipt(kit, second_round, 2, first, status="dropped")
    halted = site.train(kit.instruction(round=3, receipts=[second]), kit.global_weights)
    assert halted.refusal is not None and halted.refusal.reason == "halted"
    halt = site.receipts.halted()
    assert halt is not None and halt.check == "dropped-limit"
    assert len([e for e in _ledger(kit).entries() if e.release == "train"]) == 2


def test_slow_member_closed_out_by_min_replies_is_not_halted_as_dropped(tmp_path: Path) -> None:
    # two late leaves reach max-dropped-rounds (2): a site that counted them as dropped
    # would halt; late has its own limit (3)
    kit, site, result = _trained(tmp_path)
    first = _receipt(kit, result, status="late")
    second_round = site.train(kit.instruction(round=2, receipts=[first]), kit.global_weights)
    assert second_round.submission is not None, second_round.refusal
    second = _receipt(kit, second_round, 2, first, status="late")
    third = site.train(kit.instruction(round=3, receipts=[second]), kit.global_weights)
    assert third.submission is not None, third.refusal
    assert site.receipts.halted() is None
    from fedadmet.cli.main import _mount, app

    _mount()
    out = CliRunner().invoke(app, ["participant", "budget", "--config", str(kit.config_path),
                                   "--json"])
    assert out.exit_code == 0, out.output
    budget = json.loads(out.output)
    assert (budget["late_after_submit"], budget["dropped_after_submit"]) == ([1, 2], [])
    assert budget["max_late_rounds"] == 3


def test_coordinator_labelling_drops_as_late_cannot_burn_epsilon_without_bound(
        tmp_path: Path) -> None:
    kit, site, result = _trained(tmp_path, **{"max-late-rounds": "1"})
    late = _receipt(kit, result, status="late")
    halted = site.train(kit.instruction(round=2, receipts=[late]), kit.global_weights)
    assert halted.refusal is not None and halted.refusal.reason == "halted"
    halt = site.receipts.halted()
    assert halt is not None and halt.check == "late-limit"
    assert len([e for e in _ledger(kit).entries() if e.release == "train"]) == 1


def test_dropped_limit_is_a_validated_config_key(tmp_path: Path) -> None:
    kit = make_site(tmp_path, n=N)
    text = kit.config_path.read_text()
    kit.config_path.write_text(text.replace("[participant]\n", "[participant]\n"
                                            "max-dropped-rounds = 0\n"))
    with pytest.raises(ConfigError, match="max-dropped-rounds"):
        ParticipantConfig.load(kit.config_path)
    kit.config_path.write_text(text.replace("[participant]\n", "[participant]\n"
                                            "max-dropped-rounds = 5\n"))
    assert ParticipantConfig.load(kit.config_path).max_dropped_rounds == 5
    kit.config_path.write_text(text + '\n[evaluation]\nrelease = "exact"\n')
    with pytest.raises(ConfigError, match="release"):
        ParticipantConfig.load(kit.config_path)
