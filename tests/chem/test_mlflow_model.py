"""The SMILES pyfunc model: round trip through a real SQLite MLflow store."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import rdkit
from mlflow.pyfunc.scoring_server import predictions_to_json
from mlflow.tracking import MlflowClient

from chem.featurizers import featurize, get_spec
from chem.mlflow_model import (
    FEATURIZATION_SPEC_FILE,
    MANIFEST_FILE,
    Predictor,
    load_predictor,
    save_predictor_files,
    with_missing_predictions,
)
from chem.models import ModelSpec, build_model, get_weights, predict
from chem.standardize import standardize_smiles
from protocols.endpoints import EndpointSpec
from protocols.errors import MissingColumnError, SpecMismatchError

SMILES = ["CC(=O)Oc1ccccc1C(=O)O", "not a smiles", "[Na+].[O-]C(=O)c1ccccc1", "CCN(CC)CC"]


@pytest.fixture
def spec() -> ModelSpec:
    return ModelSpec(input_dim=2048, hidden_dims=(32, 16), dropout=0.1, endpoints=(
        EndpointSpec(name="logd", task="regression", target_offset=2.0, target_scale=1.5),
        EndpointSpec(name="herg", task="classification")))


def _expected(model: object, smiles: list[str]) -> np.ndarray:
    fspec = get_spec("ecfp4-count-2048/v1")
    feats = featurize([standardize_smiles(s) for s in smiles], fspec, n_jobs=1)
    return predict(model, feats)  # type: ignore[arg-type]


def _no_constant(name: str) -> object:
    raise AssertionError(f"not strict JSON: bare {name}")


def test_pyfunc_round_trip_through_sqlite_store(tmp_path: Path, spec: ModelSpec) -> None:
    model = build_model(spec, seed=3)
    files = save_predictor_files(tmp_path / "files", get_weights(model), spec,
                                 get_spec("ecfp4-count-2048/v1"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    logged = client.create_logged_model(exp, name="m", source_run_id=run.info.run_id)
    local = tmp_path / "saved"
    mlflow.pyfunc.save_model(str(local), python_model=files.python_model,
                             artifacts=files.artifacts, signature=files.signature,
                             input_example=files.input_example,
                             pip_requirements=files.pip_requirements)
    client.log_model_artifacts(logged.model_id, str(local))
    # MLflow resolves models:/ against the process-wide URI; go through the location instead
    downloaded = mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_logged_model(logged.model_id).artifact_location,
        dst_path=str(tmp_path / "dl"), tracking_uri=uri)

    loaded = mlflow.pyfunc.load_model(downloaded)
    out = loaded.predict(pd.DataFrame({"smiles": SMILES}))

    assert list(out.columns) == ["logd", "herg", "valid", "error"]
    assert out["valid"].tolist() == [True, False, True, True]
    assert out.loc[1, "error"] == "unparsable SMILES"
    assert np.isnan(out.loc[1, ["logd", "herg"]].to_numpy(dtype=float)).all()
    ok = [0, 2, 3]
    want = _expected(model, [SMILES[i] for i in ok])
    np.testing.assert_allclose(out.loc[ok, ["logd", "herg"]].to_numpy(dtype=float), want,
                               rtol=1e-6)
    assert ((out.loc[ok, "herg"] > 0) & (out.loc[ok, "herg"] < 1)).all()
    # load_predictor gives the same through a URI, with an explicit tracking URI
    again = load_predictor(f"models:/{logged.model_id}", tracking_uri=uri).predict(SMILES)
    pd.testing.assert_frame_equal(with_missing_predictions(again), out)
    # what `mlflow models serve` writes: strict JSON, null for the invalid row
    buf = io.StringIO()
    predictions_to_json(out, buf)
    served = json.loads(buf.getvalue(), parse_constant=_no_constant)["predictions"]
    assert served[1]["logd"] is None and served[1]["herg"] is None
    assert served[1]["valid"] is False and served[1]["error"] == "unparsable SMILES"
    assert served[0]["logd"] == pytest.approx(want[0][0], rel=1e-6)


def test_predictor_files_load_without_mlflow_model(tmp_path: Path, spec: ModelSpec) -> None:
    model = build_model(spec, seed=1)
    save_predictor_files(tmp_path, get_weights(model), spec.to_dict(),
                         get_spec("ecfp4-count-2048/v1").to_dict())
    got = load_predictor(tmp_path).predict(["CCO", None, ""])
    assert got["valid"].tolist() == [True, False, False]
    assert got["error"].tolist()[1:] == ["missing SMILES", "empty SMILES"]
    np.testing.assert_allclose(got.loc[[0], ["logd", "herg"]].to_numpy(dtype=float),
                               _expected(model, ["CCO"]), rtol=1e-6)


def test_feature_spec_from_another_rdkit_is_refused(tmp_path: Path, spec: ModelSpec) -> None:
    model = build_model(spec, seed=1)
    save_predictor_files(tmp_path, get_weights(model), spec, get_spec("ecfp4-count-2048/v1"))
    path = tmp_path / FEATURIZATION_SPEC_FILE
    data = json.loads(path.read_text())
    data["rdkit_version"] = "2019.03.1"
    path.write_text(json.dumps(data))
    with pytest.raises(SpecMismatchError) as err:
        load_predictor(tmp_path)
    assert "2019.03.1" in str(err.value) and rdkit.__version__ in str(err.value)


def test_saving_with_a_foreign_rdkit_spec_is_refused(tmp_path: Path, spec: ModelSpec) -> None:
    foreign = dataclasses.replace(get_spec("ecfp4-count-2048/v1"), rdkit_version="2019.03.1")
    with pytest.raises(SpecMismatchError):
        save_predictor_files(tmp_path, get_weights(build_model(spec)), spec, foreign)
    assert not (tmp_path / MANIFEST_FILE).exists()


def test_weights_that_do_not_fit_the_spec_are_refused(tmp_path: Path, spec: ModelSpec) -> None:
    weights = get_weights(build_model(spec))
    weights.pop("heads.herg.weight")
    with pytest.raises(SpecMismatchError, match="do not fit"):
        save_predictor_files(tmp_path, weights, spec, get_spec("ecfp4-count-2048/v1"))


def test_tampered_model_spec_is_refused(tmp_path: Path, spec: ModelSpec) -> None:
    save_predictor_files(tmp_path, get_weights(build_model(spec)), spec,
                         get_spec("ecfp4-count-2048/v1"))
    path = tmp_path / "model_spec.json"
    data = json.loads(path.read_text())
    data["endpoints"][0]["target_scale"] = 100.0
    path.write_text(json.dumps(data))
    with pytest.raises(SpecMismatchError, match="digest"):
        load_predictor(tmp_path)


def test_frame_without_smiles_column_names_the_columns(spec: ModelSpec) -> None:
    predictor = Predictor(build_model(spec), get_spec("ecfp4-count-2048/v1"))
    with pytest.raises(MissingColumnError, match="molecule"):
        predictor.predict(pd.DataFrame({"molecule": ["CCO"]}))


def test_all_invalid_input_gives_nan_rows_not_a_crash(spec: ModelSpec) -> None:
    predictor = Predictor(build_model(spec), get_spec("ecfp4-count-2048/v1"))
    out = predictor.predict(pd.DataFrame({"smiles": ["C1CC", "[Xx]"]}, index=[10, 11]))
    assert out.index.tolist() == [10, 11]
    assert not out["valid"].any()
    assert all(out["error"])
    assert out[["logd", "herg"]].isna().all().all()
