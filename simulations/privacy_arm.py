"""``simulate --privacy-audit``: the member's privacy audit on a finished simulation.

Partner 0 (the largest in the shipped scenarios, and the holder of the
private endpoint) runs ``fedadmet audit privacy`` on its own site directory
with the scenario's training plan; the federated global model it received is
attacked too, on its real members (the partner's training split) against the
held-out scaffold split, which the report marks as confounded. The audit's section is
appended to ``report.md``; its files go to ``<out>/privacy-audit/``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from participant.privacy_audit import AuditPlan
from simulations.scenario import Scenario

__all__ = ["audit_plan", "privacy_audit_arm"]


def audit_plan(scenario: Scenario, **changes: Any) -> AuditPlan:
    """The audit reproducing the scenario's training plan (at its ε; inf is audited at 8)."""
    eps = scenario.epsilon if np.isfinite(scenario.epsilon) else 8.0
    return AuditPlan(featurizer=scenario.featurizer, hidden_dims=scenario.hidden_dims,
                     dropout=scenario.dropout, batch_size=scenario.batch_size,
                     local_epochs=scenario.local_epochs, rounds=scenario.rounds,
                     learning_rate=scenario.learning_rate,
                     max_grad_norm=scenario.max_grad_norm, epsilon=eps, **changes)


def privacy_audit_arm(scenario: Scenario, results: dict[str, Any], out: Path, *,
                      progress: Callable[[str, int, int], None] | None = None,
                      partner: int = 0, **plan_changes: Any) -> dict[str, Path]:
    """Audit ``partner``'s site of the first seed; append the section to ``report.md``."""
    from chem.models import build_model, set_weights
    from coordinator.config import FederationConfig
    from coordinator.server_app import model_spec_for
    from participant.config import ParticipantConfig
    from participant.privacy_audit import run_privacy_audit
    from participant.privacy_audit_report import markdown_section, write_audit

    seed_run = results["seeds"][0]
    state = Path(seed_run["receipts_dir"]).parent
    federation = FederationConfig.load(state.parent / "federation.toml")
    model = build_model(model_spec_for(federation))
    with np.load(state / "global_model.npz") as npz:
        set_weights(model, {k: npz[k] for k in npz.files})
    cfg = ParticipantConfig.load(out / f"seed-{seed_run['seed']}" / f"partner-{partner}"
                                 / "participant.toml")
    result = run_privacy_audit(cfg, audit_plan(scenario, **plan_changes),
                               received={"federated global model": model}, progress=progress)
    paths = write_audit(result, out / "privacy-audit")
    report = out / "report.md"
    section = markdown_section(result, plot_name=f"privacy-audit/{paths['roc'].name}")
    report.write_text(report.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + section,
                      encoding="utf-8")
    return paths
