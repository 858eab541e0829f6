"""Messy member data through ``fedadmet participant predict`` and ``finetune`` (issue 15).

Row-level cases run through typer's runner and assert the report's rows on
stderr; file-level errors run the real entry point in a subprocess and assert
the exit status and the ``error:`` line a member sees.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from chem.mlflow_model import save_predictor_files
from chem.models import build_model, get_weights
from chem.standardize import MAX_SMILES_LENGTH
from fedadmet.cli.main import _mount, app
from tests.fedadmet.cli_process import fedadmet
from tests.participant.site_factory import SiteKit, make_site

TOO_LONG = f"SMILES longer than {MAX_SMILES_LENGTH:,} characters"
FIVE_MB = "Q" * 5_000_000


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[SiteKit, Path]:
    root = tmp_path_factory.mktemp("cli-input")
    kit = make_site(root / "site", n=120, private_endpoint=None)
    save_predictor_files(root / "global", get_weights(build_model(kit.model_spec, seed=0)),
                         kit.model_spec, kit.featurization_spec)
    return kit, root / "global"


def _invoke(*args: str) -> Result:
    _mount()
    return CliRunner().invoke(app, list(args))


def _latin1(path: Path) -> Path:
    path.write_bytes("smiles,measured,note\nCCO,1.0,éthanol\n".encode("latin-1"))
    return path


# ---------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def predicted(site: tuple[SiteKit, Path], tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Result, pd.DataFrame]:
    _, model = site
    out = tmp_path_factory.mktemp("predict")
    smiles = ["CCO", "not a molecule", "", "OCC", "C" * 200_000, FIVE_MB, "c1ccccc1N"]
    pd.DataFrame({"id": list("abcdefg"), "smiles": smiles}).to_csv(out / "in.csv", index=False)
    result = _invoke("participant", "predict", "--model", str(model), "--input",
                     str(out / "in.csv"), "--output", str(out / "pred.csv"))
    return result, pd.read_csv(out / "pred.csv")


def test_predict_reports_invalid_and_empty_smiles_by_row(
        predicted: tuple[Result, pd.DataFrame]) -> None:
    result, pred = predicted
    assert result.exit_code == 0, result.output
    assert "in.csv row 2: unparsable SMILES (smiles = 'not a molecule')" in result.stderr
    assert "in.csv row 3: missing SMILES (smiles = '')" in result.stderr
    assert list(pred["valid"]) == [True, False, False, True, False, False, True]
    assert "3 of 7 rows predicted; 4 invalid" in result.stdout


def test_predict_a_200k_character_smiles_is_an_invalid_row_not_a_hang(
        predicted: tuple[Result, pd.DataFrame]) -> None:
    result, pred = predicted
    assert f"in.csv row 5: {TOO_LONG}" in result.stderr
    assert pred.loc[4, "error"] == TOO_LONG


def test_predict_a_5mb_invalid_line_is_reported_truncated_never_echoed(
        predicted: tuple[Result, pd.DataFrame]) -> None:
    result, _ = predicted
    line = next(x for x in result.stderr.splitlines() if "row 6:" in x)
    assert TOO_LONG in line and "5,000,000 characters" in line and len(line) < 200
    assert len(result.output) < 5_000


def test_predict_flags_rows_that_repeat_a_structure(
        predicted: tuple[Result, pd.DataFrame]) -> None:
    result, pred = predicted
    # OCC (row 4) is CCO (row 1): both predicted, and said
    assert "1 rows repeat an earlier row's standardised structure" in result.stdout
    assert pred.loc[0, "predicted_solubility"] == pytest.approx(
        pred.loc[3, "predicted_solubility"], rel=1e-5)


def test_predict_non_utf8_input_is_a_clear_error(site: tuple[SiteKit, Path],
                                                 tmp_path: Path) -> None:
    _, model = site
    src = _latin1(tmp_path / "eln.csv")
    done = fedadmet("participant", "predict", "--model", str(model), "--input", str(src),
                    "--output", str(tmp_path / "p.csv"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert re.search(rf"error: {re.escape(str(src))} is not valid UTF-8 text: byte offset 29 "
                     r"\(0xe9\)", done.stderr), done.stderr
    assert "iconv -f latin1 -t utf-8" in done.stderr and "--encoding" in done.stderr
    ok = _invoke("participant", "predict", "--model", str(model), "--input", str(src),
                 "--output", str(tmp_path / "p.csv"), "--encoding", "latin-1")
    assert ok.exit_code == 0, ok.output
    assert "1 of 1 rows predicted" in ok.stdout


def test_predict_missing_input_is_a_clear_error(site: tuple[SiteKit, Path],
                                                tmp_path: Path) -> None:
    _, model = site
    done = fedadmet("participant", "predict", "--model", str(model), "--input",
                    str(tmp_path / "nope.csv"), "--output", str(tmp_path / "p.csv"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "config key `--input`: file not found" in done.stderr
    assert str(tmp_path / "nope.csv") in done.stderr


# ---------------------------------------------------------------- finetune
def _finetune(kit: SiteKit, model: Path, data: Path, *extra: str) -> Result:
    return _invoke("participant", "finetune", "--model", str(model), "--data", str(data),
                   "--endpoint", "solubility", "--column", "measured", "--mode", "head-only",
                   "--epochs", "2", "--config", str(kit.config_path), *extra)


@pytest.fixture(scope="module")
def finetuned(site: tuple[SiteKit, Path], tmp_path_factory: pytest.TempPathFactory) -> Result:
    kit, model = site
    frame = kit.data[["smiles", "measured"]].astype({"measured": str}).copy()
    bad = pd.DataFrame({"smiles": ["not a molecule", "", "CCO", "CCN", FIVE_MB],
                        "measured": ["1.0", "2.0", "inf", "1e999", "3.0"]})
    # every site molecule measured a second time: merged, never two records
    twice = kit.data[["smiles", "measured"]].iloc[:40].astype({"measured": str})
    data = tmp_path_factory.mktemp("finetune") / "messy.csv"
    pd.concat([frame, bad, twice], ignore_index=True).to_csv(data, index=False)
    return _finetune(kit, model, data)


def test_finetune_reports_invalid_and_empty_smiles_by_row(finetuned: Result) -> None:
    assert finetuned.exit_code == 0, finetuned.output
    assert "messy.csv row 121: unparsable SMILES (smiles = 'not a molecule')" in finetuned.stderr
    assert "messy.csv row 122: missing SMILES (smiles = '')" in finetuned.stderr


def test_finetune_non_finite_labels_are_invalid_rows(finetuned: Result) -> None:
    assert "messy.csv row 123: label is not finite (measured = 'inf')" in finetuned.stderr
    assert "messy.csv row 124: label is not finite (measured = '1e999')" in finetuned.stderr


def test_finetune_a_5mb_line_is_reported_truncated(finetuned: Result) -> None:
    line = next(x for x in finetuned.stderr.splitlines() if "row 125:" in x)
    assert TOO_LONG in line and len(line) < 200
    assert len(finetuned.output) < 10_000


def test_finetune_merges_duplicates_and_says_so(finetuned: Result) -> None:
    assert "40 duplicate rows merged into" in finetuned.stderr, finetuned.stderr
    # the training split counts distinct structures: 120 site molecules + CCO/CCN rows
    # (labels rejected, so unlabelled), never 160
    m = re.search(r"(\d+) training, (\d+) validation molecules", finetuned.stdout)
    assert m and int(m[1]) + int(m[2]) == 120, finetuned.stdout


def test_finetune_binary_labels_outside_0_1_are_invalid_rows_never_clamped(
        site: tuple[SiteKit, Path], tmp_path: Path) -> None:
    kit, model = site
    y = (kit.data["measured"] > kit.data["measured"].median()).astype(int).astype(str)
    frame = pd.DataFrame({"smiles": kit.data["smiles"], "herg": y})
    frame.loc[[0, 1, 2, 3, 4], "herg"] = ["2", "7", "-1", "0.5", "yes"]
    frame.to_csv(tmp_path / "binary.csv", index=False)
    out = _invoke("participant", "finetune", "--model", str(model), "--data",
                  str(tmp_path / "binary.csv"), "--endpoint", "herg", "--task",
                  "classification", "--column", "herg", "--epochs", "2",
                  "--config", str(kit.config_path))
    assert out.exit_code == 0, out.output
    for row, value in ((1, "2"), (2, "7"), (3, "-1"), (4, "0.5")):
        assert (f"binary.csv row {row}: label is not binary (0/1, true/false, yes/no) "
                f"(herg = '{value}')") in out.stderr
    assert "row 5:" not in out.stderr  # "yes" is a label
    m = re.search(r"(\d+) training, (\d+) validation molecules", out.stdout)
    assert m and int(m[1]) + int(m[2]) == len(np.unique(kit.data["smiles"])) - 4


def test_finetune_one_structure_measured_many_times_is_not_a_column_problem(
        site: tuple[SiteKit, Path], tmp_path: Path) -> None:
    kit, model = site
    pd.DataFrame({"smiles": ["CCO", "OCC", "C(O)C"] * 10,
                  "measured": np.linspace(0, 1, 30)}).to_csv(tmp_path / "same.csv", index=False)
    done = fedadmet("participant", "finetune", "--model", str(model), "--data",
                    str(tmp_path / "same.csv"), "--endpoint", "solubility", "--column",
                    "measured", "--epochs", "1", "--config", str(kit.config_path), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "too few distinct structures to fine-tune solubility" in done.stderr
    assert "29 duplicate rows were merged" in done.stderr and "check --column" not in done.stderr


def test_finetune_missing_data_file_is_a_clear_error_not_a_hash_traceback(
        site: tuple[SiteKit, Path], tmp_path: Path) -> None:
    kit, model = site
    done = fedadmet("participant", "finetune", "--model", str(model), "--data",
                    str(tmp_path / "nope.csv"), "--endpoint", "solubility",
                    "--config", str(kit.config_path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "FileNotFoundError" not in done.stderr and "Traceback" not in done.stderr
    assert "config key `--data`: file not found" in done.stderr


def test_finetune_non_utf8_data_is_a_clear_error(site: tuple[SiteKit, Path],
                                                 tmp_path: Path) -> None:
    kit, model = site
    src = _latin1(tmp_path / "eln.csv")
    done = fedadmet("participant", "finetune", "--model", str(model), "--data", str(src),
                    "--endpoint", "solubility", "--config", str(kit.config_path), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"{src} is not valid UTF-8 text: byte offset 29 (0xe9)" in done.stderr
    assert "iconv -f latin1 -t utf-8" in done.stderr
