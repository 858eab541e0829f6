"""No code runs from a model file (issue 13 §5): predict and finetune never unpickle.

A tampered model folder used to run attacker code as the member's user
through ``fedadmet participant predict --model DIR``: MLflow's pyfunc loader
unpickles ``python_model.pkl``. The registered model is now MLflow "models
from code" with the predictor class from the installed fedadmet, and our
loader reads only ``.npz`` and JSON from a folder it has checked.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from chem.mlflow_model import (
    MODEL_CODE_FILE,
    load_predictor,
    save_predictor_files,
    with_missing_predictions,
)
from chem.models import build_model, get_weights
from fedadmet.cli.main import _mount, app
from participant.finetune import FineTuneOptions, run_finetune
from protocols.errors import DataError
from tests.participant.site_factory import SiteKit, make_site


class _Payload:
    """Unpickling this creates ``marker``: stands in for arbitrary attacker code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> tuple[SiteKit, Path]:
    root = tmp_path_factory.mktemp("model")
    kit = make_site(root / "site", n=60, private_endpoint=None)
    files = save_predictor_files(root / "files", get_weights(build_model(kit.model_spec, seed=0)),
                                 kit.model_spec, kit.featurization_spec)
    saved = root / "saved"
    mlflow.pyfunc.save_model(str(saved), python_model=files.python_model,
                             artifacts=files.artifacts, signature=files.signature,
                             input_example=files.input_example,
                             pip_requirements=files.pip_requirements)
    return kit, saved


def _tampered(genuine: Path, tmp_path: Path, how: str) -> tuple[Path, Path]:
    folder, marker = tmp_path / "tampered", tmp_path / "PWNED"
    shutil.copytree(genuine, folder)
    payload = pickle.dumps(_Payload(marker))
    conf = yaml.safe_load((folder / "MLmodel").read_text())
    pyfunc = conf["flavors"]["python_function"]
    if how == "old-format-pickle":  # what MLflow writes for a pickled python_model
        (folder / "python_model.pkl").write_bytes(payload)
        pyfunc["loader_module"] = "mlflow.pyfunc.model"
        pyfunc["python_model"] = "python_model.pkl"
        del pyfunc["model_code_path"]
    elif how == "pickle-beside-the-code":
        (folder / "artifacts" / "extra.pkl").write_bytes(payload)
    elif how == "replaced-code-file":
        (folder / MODEL_CODE_FILE.name).write_text(f"open({str(marker)!r}, 'w')\n")
    elif how == "extra-code-path":
        (folder / "code").mkdir()
        (folder / "code" / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w')\n")
        pyfunc["code"] = "code"
    (folder / "MLmodel").write_text(yaml.safe_dump(conf))
    return folder, marker


def test_the_planted_payload_does_run_when_unpickled(tmp_path: Path) -> None:
    """So the tests below can fail: the payload is live."""
    pickle.loads(pickle.dumps(_Payload(tmp_path / "PWNED")))
    assert (tmp_path / "PWNED").exists()


TAMPERINGS = ["old-format-pickle", "pickle-beside-the-code", "replaced-code-file",
              "extra-code-path"]


@pytest.mark.parametrize("how", TAMPERINGS)
def test_planted_model_code_does_not_run_through_predict(
        genuine: tuple[SiteKit, Path], tmp_path: Path, how: str) -> None:
    kit, saved = genuine
    folder, marker = _tampered(saved, tmp_path, how)
    _mount()
    molecules = tmp_path / "m.csv"
    molecules.write_text("smiles\nCCO\n")
    out = CliRunner().invoke(app, [
        "participant", "predict", "--model", str(folder), "--input", str(molecules),
        "--output", str(tmp_path / "p.csv"), "--config", str(kit.config_path)])
    assert out.exit_code != 0 and isinstance(out.exception, DataError), out.output
    assert not marker.exists()
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("how", TAMPERINGS)
def test_planted_model_code_does_not_run_through_finetune(
        genuine: tuple[SiteKit, Path], tmp_path: Path, how: str) -> None:
    kit, saved = genuine
    folder, marker = _tampered(saved, tmp_path, how)
    with pytest.raises(DataError):
        run_finetune(kit.config, model_ref=str(folder),
                     options=FineTuneOptions(endpoint="solubility", epochs=1))
    assert not marker.exists()


def test_a_genuine_registered_model_has_no_pickle_and_predicts_from_smiles(
        genuine: tuple[SiteKit, Path]) -> None:
    _, saved = genuine
    assert not [p for p in saved.rglob("*") if p.suffix in (".pkl", ".pickle")]
    conf = yaml.safe_load((saved / "MLmodel").read_text())["flavors"]["python_function"]
    assert "python_model" not in conf and conf["model_code_path"].endswith(MODEL_CODE_FILE.name)
    smiles = ["CCO", "not a smiles", "c1ccccc1N"]
    pyfunc = mlflow.pyfunc.load_model(str(saved)).predict(pd.DataFrame({"smiles": smiles}))
    ours = load_predictor(saved).predict(smiles)
    assert pyfunc["valid"].tolist() == [True, False, True]
    pd.testing.assert_frame_equal(pyfunc, with_missing_predictions(ours))
