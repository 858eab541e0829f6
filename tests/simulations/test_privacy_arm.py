"""`simulate --privacy-audit` audits the scenario's own training plan."""

from __future__ import annotations

from typer.testing import CliRunner

from fedadmet.cli.main import _mount, app
from simulations.privacy_arm import audit_plan
from simulations.scenario import load_scenario


def test_audit_plan_reproduces_the_scenarios_training() -> None:
    sc = load_scenario("admet-consortium")
    plan = audit_plan(sc, runs=6)
    assert (plan.featurizer, plan.hidden_dims, plan.batch_size, plan.local_epochs,
            plan.rounds, plan.learning_rate, plan.max_grad_norm, plan.epsilon) == (
        sc.featurizer, sc.hidden_dims, sc.batch_size, sc.local_epochs, sc.rounds,
        sc.learning_rate, sc.max_grad_norm, sc.epsilon)
    assert plan.runs == 6


def test_a_non_private_scenario_is_audited_at_epsilon_8() -> None:
    sc = load_scenario("admet-consortium").with_overrides(epsilon=float("inf"))
    assert audit_plan(sc).epsilon == 8.0


def test_simulate_offers_the_privacy_audit_flag() -> None:
    _mount()
    out = CliRunner().invoke(app, ["simulate", "--help"], terminal_width=200)
    assert "--privacy-audit" in out.output
