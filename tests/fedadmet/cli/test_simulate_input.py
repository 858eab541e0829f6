"""Messy CSV endpoints through ``fedadmet simulate`` (issue 15).

``--check-data`` runs the same data path as a full run (scenario, sources
through ``chem.tables``, partition, each partner's files and its loader's
report) and stops before the federation; file-level errors are asserted on
the full command in a subprocess, where they stop it before Flower starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from fedadmet.cli.main import _mount, app
from tests.fedadmet.cli_process import fedadmet
from tests.participant.site_factory import sample_molecules

SCENARIO = """\
name = "messy"
partners = 2
rounds = 1
epsilon = 8.0
seeds = [0]
alpha = 1.0
min-partner-size = 5
hidden-dims = [16]

[endpoints.solubility]
csv = "solubility.csv"
value-column = "logS"
task = "regression"

[endpoints.herg]
csv = "herg.csv"
value-column = "blocker"
task = "classification"
"""
FIVE_MB = "Q" * 5_000_000


def _write(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    mols = sample_molecules("R_1291_LOGS.csv", n=80, seed=3)
    sol = pd.DataFrame({"smiles": mols["smiles"], "logS": mols["target"].astype(str)})
    bad = pd.DataFrame({"smiles": ["not a molecule", "", "CCO", "CCN", FIVE_MB],
                        "logS": ["1.0", "1.0", "inf", "1e999", "2.0"]})
    # 30 molecules measured twice: merged, so no partitioning trouble from duplicates
    again = sol.iloc[:30]
    pd.concat([sol, bad, again], ignore_index=True).to_csv(root / "solubility.csv", index=False)
    herg = pd.DataFrame({"smiles": mols["smiles"],
                         "blocker": (mols["target"] > mols["target"].median()).astype(int)
                         .astype(str)})
    herg.loc[[0, 1, 2, 3], "blocker"] = ["2", "7", "-1", "0.5"]
    herg.to_csv(root / "herg.csv", index=False)
    (root / "messy.toml").write_text(SCENARIO, encoding="utf-8")
    return root / "messy.toml"


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("messy")
    scenario = _write(root)
    _mount()
    out = root / "out"
    result = CliRunner().invoke(app, ["simulate", str(scenario), "--check-data", "--output",
                                      str(out), "--cache-dir", str(root / "cache")])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "data-report.json").read_text())
    return result, report["seeds"][0]["data"], out


def _rows(data: dict[str, Any], endpoint: str) -> list[tuple[int, str, str]]:
    return [(r["row"], r["column"], r["reason"])
            for r in data["endpoints"][endpoint]["invalid_rows"]]


def test_simulate_invalid_and_empty_smiles_are_reported_not_dropped(
        checked: tuple[Result, dict[str, Any], Path]) -> None:
    result, data, _ = checked
    sol = data["endpoints"]["solubility"]
    assert (81, "smiles", "unparsable SMILES") in _rows(data, "solubility")
    assert (82, "smiles", "missing SMILES") in _rows(data, "solubility")
    assert sol["rows_read"] == 115 and sol["rejected"] == 3
    assert "solubility.csv row 81: unparsable SMILES (smiles = 'not a molecule')" in result.output


def test_simulate_non_finite_labels_are_rejected_and_never_reach_train_csv(
        checked: tuple[Result, dict[str, Any], Path]) -> None:
    _, data, out = checked
    assert (83, "logS", "label is not finite") in _rows(data, "solubility")
    assert (84, "logS", "label is not finite") in _rows(data, "solubility")
    for partner in (0, 1):
        for kind in ("train", "test"):
            text = (out / "seed-0" / f"partner-{partner}" / f"{kind}.csv").read_text()
            assert "inf" not in text.lower()


def test_simulate_binary_labels_outside_0_1_are_rejected_never_clamped(
        checked: tuple[Result, dict[str, Any], Path]) -> None:
    result, data, out = checked
    assert _rows(data, "herg") == [(r, "blocker", "label is not binary (0/1, true/false, yes/no)")
                                   for r in (1, 2, 3, 4)]
    assert "herg.csv row 2: label is not binary (0/1, true/false, yes/no) (blocker = '7')" \
        in result.output
    labels = pd.concat([pd.read_csv(out / "seed-0" / f"partner-{k}" / f"{kind}.csv")["herg"]
                        for k in (0, 1) for kind in ("train", "test")]).dropna()
    assert set(labels) <= {0.0, 1.0} and len(labels) == 76


def test_simulate_duplicates_are_merged_and_counted_per_partner(
        checked: tuple[Result, dict[str, Any], Path]) -> None:
    result, data, _ = checked
    sol = data["endpoints"]["solubility"]
    assert sol["duplicates_merged"] == {"solubility": 30}
    assert sol["structures"] == 82  # 80 + CCO and CCN, whose labels were rejected
    assert "could not give every partner enough molecules" not in result.output
    partners = data["partners"]
    assert [p["partner"] for p in partners] == [0, 1]
    for p in partners:  # each partner's own loader: its file, all standardised, none rejected
        assert p["rows_read"] == p["standardised"] > 0 and p["rejected"] == 0
        assert sum(c["train"] for c in p["counts"].values()) == p["rows_read"]
    assert sum(c["train"] + c["test"] for p in partners
               for e, c in p["counts"].items() if e == "solubility") == 80  # CCO, CCN unlabelled


def test_simulate_a_5mb_line_is_reported_truncated(
        checked: tuple[Result, dict[str, Any], Path]) -> None:
    result, data, out = checked
    (row,) = [r for r in data["endpoints"]["solubility"]["invalid_rows"] if r["row"] == 85]
    assert "5,000,000 characters" in row["value"] and len(row["value"]) <= 80
    assert len(result.output) < 20_000
    assert (out / "data-report.json").stat().st_size < 50_000


def test_simulate_non_utf8_csv_is_a_clear_error(tmp_path: Path) -> None:
    scenario = _write(tmp_path)
    (tmp_path / "herg.csv").write_bytes("smiles,blocker\nCCO,1\nCCN,0 # é\n".encode("latin-1"))
    done = fedadmet("simulate", str(scenario), "--output", str(tmp_path / "out"),
                    "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"{tmp_path / 'herg.csv'} is not valid UTF-8 text: byte offset 29" in done.stderr
    assert "iconv -f latin1 -t utf-8" in done.stderr


def test_simulate_missing_csv_is_a_clear_error(tmp_path: Path) -> None:
    scenario = _write(tmp_path)
    (tmp_path / "herg.csv").unlink()
    done = fedadmet("simulate", str(scenario), "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "config key `endpoints.herg.csv`" in done.stderr and "file not found" in done.stderr
