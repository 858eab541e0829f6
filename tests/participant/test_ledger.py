"""The privacy ledger: monotone, reloadable, refuses over budget, idempotent on retry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from participant.calibration import calibrate
from participant.ledger import PrivacyLedger, epsilon_for
from protocols.errors import CheckpointError, PrivacyBudgetExceeded

MECH: dict[str, Any] = {"noise_multiplier": 1.1, "sample_rate": 0.02, "steps": 50}


def _open(tmp_path: Path, max_epsilon: float = 10.0) -> PrivacyLedger:
    return PrivacyLedger.open(tmp_path, max_epsilon=max_epsilon, delta=1e-5)


def test_known_value_against_opacus() -> None:
    # Opacus's own golden value: RDP, sigma 1.5, q 0.04, 2250 steps, delta 1e-5.
    assert epsilon_for([(1.5, 0.04, 2250)], delta=1e-5) == pytest.approx(7.32911117143, rel=1e-6)


def test_spend_is_monotone_and_reload_gives_the_same_epsilon(tmp_path: Path) -> None:
    ledger = _open(tmp_path)
    values = [ledger.commit(federation_id="f", round=r, **MECH).epsilon_after for r in (1, 2, 3)]
    assert values == sorted(values) and values[0] > 0
    again = _open(tmp_path)
    assert again.epsilon() == pytest.approx(values[-1])
    assert [e.round for e in again.entries()] == [1, 2, 3]


def test_refusal_at_budget_leaves_the_file_unchanged(tmp_path: Path) -> None:
    ledger = _open(tmp_path, max_epsilon=1.5)
    ledger.commit(federation_id="f", round=1, **MECH)
    before = (tmp_path / "privacy_ledger.json").read_bytes()
    with pytest.raises(PrivacyBudgetExceeded):
        for r in range(2, 50):
            ledger.commit(federation_id="f", round=r, **MECH)
    refused_round = len(ledger.entries()) + 1
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.commit(federation_id="f", round=refused_round, **MECH)
    assert _open(tmp_path, 1.5).epsilon() <= 1.5
    assert len(ledger.entries()) >= 1 and before
    snapshot = (tmp_path / "privacy_ledger.json").read_bytes()
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.commit(federation_id="f", round=refused_round, **MECH)
    assert (tmp_path / "privacy_ledger.json").read_bytes() == snapshot


def test_retried_round_is_not_counted_twice(tmp_path: Path) -> None:
    ledger = _open(tmp_path)
    first = ledger.commit(federation_id="f", round=1, **MECH)
    again = ledger.commit(federation_id="f", round=1, **MECH)
    assert again == first and len(ledger.entries()) == 1
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.commit(federation_id="f", round=1, **{**MECH, "noise_multiplier": 0.5})


def test_edited_ledger_is_detected(tmp_path: Path) -> None:
    ledger = _open(tmp_path)
    ledger.commit(federation_id="f", round=1, **MECH)
    path = tmp_path / "privacy_ledger.json"
    path.write_text(path.read_text().replace('"noise_multiplier": 1.1', '"noise_multiplier": 9.0'))
    with pytest.raises(CheckpointError):
        _open(tmp_path)


def test_changing_delta_is_refused(tmp_path: Path) -> None:
    _open(tmp_path).commit(federation_id="f", round=1, **MECH)
    with pytest.raises(CheckpointError):
        PrivacyLedger.open(tmp_path, max_epsilon=10, delta=1e-6)


@settings(max_examples=6, deadline=None)
@given(st.floats(1.0, 10.0), st.integers(100, 5000), st.integers(1, 5), st.integers(1, 3))
def test_calibrated_noise_never_overshoots(eps: float, n: int, rounds: int, epochs: int) -> None:
    c = calibrate(n_examples=n, batch_size=64, rounds=rounds, local_epochs=epochs,
                  target_epsilon=eps, delta=1e-5, max_epsilon=eps + 1)
    total = epsilon_for([(c.noise_multiplier, c.sample_rate, c.steps_per_round * rounds)],
                        delta=1e-5)
    assert total <= eps + 1e-9


def test_calibration_respects_past_spend() -> None:
    history = [(1.0, 0.05, 200)]
    c = calibrate(n_examples=2000, batch_size=64, rounds=3, local_epochs=1, target_epsilon=8,
                  delta=1e-5, max_epsilon=8, history=history)
    total = epsilon_for([*history, (c.noise_multiplier, c.sample_rate, c.steps_per_round * 3)],
                        delta=1e-5)
    assert total <= 8.0
    with pytest.raises(PrivacyBudgetExceeded):
        calibrate(n_examples=2000, batch_size=64, rounds=3, local_epochs=1, target_epsilon=8,
                  delta=1e-5, max_epsilon=0.5, history=history)


def test_rounds_and_summary_report_the_committed_spend(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, max_epsilon=50.0, delta=1e-5)
    ledger.commit(federation_id="f", round=1, **MECH)
    ledger.commit(federation_id="f", round=2, **MECH)
    assert [r["round"] for r in ledger.rounds()] == [1, 2]
    summary = ledger.summary()
    assert summary["rounds"] == 2
    assert summary["epsilon"] == ledger.rounds()[-1]["epsilon_after"]
    assert summary["remaining"] == 50.0 - summary["epsilon"]
