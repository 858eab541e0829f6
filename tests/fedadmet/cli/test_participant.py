"""``fedadmet participant finetune`` and ``predict`` as a member types them."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from chem.mlflow_model import save_predictor_files
from chem.models import build_model, get_weights
from fedadmet.cli.main import _mount, app
from tests.participant.site_factory import make_site


def test_participant_help_lists_every_command() -> None:
    _mount()
    out = CliRunner().invoke(app, ["participant", "--help"])
    assert out.exit_code == 0
    for command in ("init", "start", "budget", "finetune", "predict"):
        assert re.search(rf"^\W*{command}\s", out.output, re.MULTILINE), command


def test_finetune_then_predict_with_the_locally_registered_model(tmp_path: Path) -> None:
    _mount()
    kit = make_site(tmp_path / "site", n=150, private_endpoint=None)
    save_predictor_files(tmp_path / "global", get_weights(build_model(kit.model_spec, seed=0)),
                         kit.model_spec, kit.featurization_spec)
    runner = CliRunner()
    out = runner.invoke(app, [
        "participant", "finetune", "--model", str(tmp_path / "global"),
        "--data", str(kit.root / "assays.csv"), "--endpoint", "solubility",
        "--column", "measured", "--mode", "head-only", "--epochs", "3",
        "--config", str(kit.config_path)])
    assert out.exit_code == 0, out.output
    before = re.search(r"validation mae before: ([\d.]+) \(global model\)", out.stdout)
    after = re.search(r"validation mae after:  ([\d.]+) \(best epoch \d of 3\)", out.stdout)
    assert before and after, out.stdout
    assert "registered locally as models:/finetuned-solubility/1" in out.stdout

    molecules = tmp_path / "molecules.csv"
    pd.DataFrame({"id": ["a", "b", "c", "d"],
                  "smiles": ["CCO", "C1CC", "", "c1ccccc1N"]}).to_csv(molecules, index=False)
    out = runner.invoke(app, [
        "participant", "predict", "--model", "models:/finetuned-solubility/1",
        "--input", str(molecules), "--output", str(tmp_path / "pred.csv"),
        "--config", str(kit.config_path)])
    assert out.exit_code == 0, out.output
    assert "2 of 4 rows predicted; 2 invalid" in out.stdout
    assert "molecules.csv row 2:" in out.stderr and "molecules.csv row 3: missing SMILES" \
        in out.stderr
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert list(pred["id"]) == ["a", "b", "c", "d"]
    assert list(pred["valid"]) == [True, False, False, True]
    assert pred["predicted_solubility"].notna().tolist() == [True, False, False, True]


def test_finetune_errors_name_the_flag(tmp_path: Path) -> None:
    _mount()
    kit = make_site(tmp_path / "site", n=60, private_endpoint=None)
    save_predictor_files(tmp_path / "global", get_weights(build_model(kit.model_spec, seed=0)),
                         kit.model_spec, kit.featurization_spec)
    out = CliRunner().invoke(app, [
        "participant", "finetune", "--model", str(tmp_path / "global"), "--endpoint", "new",
        "--column", "measured", "--config", str(kit.config_path)])
    assert out.exit_code != 0
    assert "--task" in str(out.exception)


def test_predict_with_a_model_uri_needs_the_config(tmp_path: Path) -> None:
    _mount()
    (tmp_path / "m.csv").write_text("smiles\nCCO\n")
    out = CliRunner().invoke(app, [
        "participant", "predict", "--model", "models:/x/1", "--input", str(tmp_path / "m.csv"),
        "--output", str(tmp_path / "p.csv"), "--config", str(tmp_path / "missing.toml")])
    assert out.exit_code != 0 and "--config" in str(out.exception)
