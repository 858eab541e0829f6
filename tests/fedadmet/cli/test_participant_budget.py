"""`fedadmet participant budget` shows spend per round and what remains."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fedadmet.cli.main import _mount, app
from participant.ledger import PrivacyLedger


def _site(tmp_path: Path) -> Path:
    (tmp_path / "data.csv").write_text("smiles,logd\nCCO,1.0\n")
    cfg = tmp_path / "participant.toml"
    cfg.write_text('[participant]\nname = "acme"\nstate-dir = "state"\nmax-epsilon = 8.0\n'
                   'delta = 1e-5\n[data]\nfiles = ["data.csv"]\n'
                   '[endpoints.logd]\ntask = "regression"\n')
    ledger = PrivacyLedger.open(tmp_path / "state", max_epsilon=8.0, delta=1e-5)
    for r in (1, 2):
        ledger.commit(federation_id="fed", round=r, noise_multiplier=1.1, sample_rate=0.05,
                      steps=40)
    return cfg


def test_budget_table_and_json(tmp_path: Path) -> None:
    cfg = _site(tmp_path)
    _mount()
    out = CliRunner().invoke(app, ["participant", "budget", "--config", str(cfg)])
    assert out.exit_code == 0, out.output
    assert "acme" in out.output and "remaining" in out.output
    data = json.loads(CliRunner().invoke(
        app, ["participant", "budget", "--config", str(cfg), "--json"]).output)
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    spent = PrivacyLedger.open(tmp_path / "state", max_epsilon=8.0, delta=1e-5).epsilon()
    assert data["summary"]["epsilon"] == spent
    assert abs(data["summary"]["remaining"] - (8.0 - spent)) < 1e-9


def test_budget_of_a_fresh_site_is_zero(tmp_path: Path) -> None:
    cfg = tmp_path / "participant.toml"
    (tmp_path / "data.csv").write_text("smiles,logd\nCCO,1.0\n")
    cfg.write_text('[participant]\nname = "new"\nmax-epsilon = 3.0\n[data]\nfiles = ["data.csv"]\n'
                   '[endpoints.logd]\ntask = "regression"\n')
    _mount()
    out = CliRunner().invoke(app, ["participant", "budget", "--config", str(cfg), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["summary"]["epsilon"] == 0.0


def test_budget_prints_the_latest_verified_receipt_head(tmp_path: Path) -> None:
    from participant.receipt_store import ReceiptStore
    from protocols.receipts import proof_for, receipt_hash
    from protocols.signing import fingerprint
    from tests.protocols.factories import COORDINATOR, MEMBERS, chain

    cfg = _site(tmp_path)
    _mount()
    out = CliRunner().invoke(app, ["participant", "budget", "--config", str(cfg)])
    assert out.exit_code == 0 and "none verified yet" in out.output
    receipts, me = chain(2), fingerprint(MEMBERS[0])
    ReceiptStore(tmp_path / "state").accept(
        [r.to_dict() for r in receipts],
        [p.to_dict() if (p := proof_for(r, me)) else None for r in receipts],
        coordinator_key=COORDINATOR.public_key(), own_fingerprint=me,
        submitted={r.round: next(x.update_digest or "" for x in r.leaves
                                 if x.participant_fingerprint == me) for r in receipts},
        received_global_model_digest=receipts[-1].model_digest_after)
    head = receipt_hash(receipts[-1])
    out = CliRunner().invoke(app, ["participant", "budget", "--config", str(cfg)])
    assert out.exit_code == 0, out.output
    assert "round 2" in out.output and head in out.output and f"--expect-head {head}" in out.output
    data = json.loads(CliRunner().invoke(
        app, ["participant", "budget", "--config", str(cfg), "--json"]).output)
    assert data["receipt_head"] == {"federation_id": "fed", "round": 2, "receipt_hash": head}
