"""Predicting a file of molecules on site (``participant.predict``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chem.featurizers import feature_dim, get_spec
from chem.mlflow_model import Predictor
from chem.models import ModelSpec, build_model
from participant.predict import predict_file, predict_frame
from protocols.endpoints import EndpointSpec
from protocols.errors import DataError, MissingColumnError

GOOD = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC"]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    fspec = get_spec("ecfp4-count-2048/v1")
    spec = ModelSpec(input_dim=feature_dim(fspec), hidden_dims=(16,), dropout=0.0, endpoints=(
        EndpointSpec(name="logd", task="regression", target_offset=2.0, target_scale=1.5),
        EndpointSpec(name="herg", task="classification")))
    return Predictor(build_model(spec, seed=0), fspec)


def _mixed() -> pd.DataFrame:
    # rows 1..7: good, garbage, good, empty, unclosed ring, good, good
    smiles = [GOOD[0], "not a molecule", GOOD[1], "", "C1CC", GOOD[2], GOOD[3]]
    return pd.DataFrame({"compound_id": [f"X{i}" for i in range(1, 8)], "smiles": smiles})


def test_invalid_rows_are_reported_with_row_numbers_and_never_dropped(
        predictor: Predictor) -> None:
    result = predict_frame(predictor, _mixed())
    out = result.frame
    assert len(out) == 7 and list(out["row"]) == list(range(1, 8))
    assert list(out["compound_id"]) == [f"X{i}" for i in range(1, 8)]
    assert [b.row for b in result.invalid] == [2, 4, 5]
    assert result.invalid[0].value == "not a molecule"
    assert result.invalid[1].reason == "missing SMILES"
    assert all(b.reason for b in result.invalid)
    bad = out["row"].isin([2, 4, 5])
    assert not out.loc[bad, "valid"].any() and out.loc[~bad, "valid"].all()
    for col in ("predicted_logd", "predicted_herg"):
        assert out.loc[bad, col].isna().all() and np.isfinite(out.loc[~bad, col]).all()
    assert out.loc[~bad, "predicted_herg"].between(0, 1).all()
    assert (out.loc[~bad, "error"] == "").all()


def test_a_molecule_gets_the_same_prediction_whatever_its_neighbours(
        predictor: Predictor) -> None:
    mixed = predict_frame(predictor, _mixed()).frame
    alone = predict_frame(predictor, pd.DataFrame({"smiles": GOOD})).frame
    got = mixed.loc[mixed["valid"].astype(bool), ["predicted_logd", "predicted_herg"]]
    np.testing.assert_allclose(got.to_numpy(), alone[["predicted_logd", "predicted_herg"]]
                               .to_numpy(), rtol=1e-6)


def test_predict_file_csv_round_trip_and_parquet(predictor: Predictor, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    _mixed().to_csv(src, index=False)
    result = predict_file(predictor, src, tmp_path / "out" / "pred.csv")
    back = pd.read_csv(tmp_path / "out" / "pred.csv", keep_default_na=True)
    assert len(back) == 7 and list(back["row"]) == list(range(1, 8))
    assert list(back["valid"]) == [True, False, True, False, False, True, True]
    assert back.loc[1, "error"] == result.invalid[0].reason
    predict_file(predictor, src, tmp_path / "pred.parquet")
    pq = pd.read_parquet(tmp_path / "pred.parquet")
    np.testing.assert_allclose(pq["predicted_logd"].to_numpy(),
                               back["predicted_logd"].to_numpy(), equal_nan=True)
    assert not list(tmp_path.glob(".pred*"))  # no temp file left behind


def test_other_smiles_column_and_clear_input_errors(predictor: Predictor,
                                                     tmp_path: Path) -> None:
    frame = pd.DataFrame({"SMILES": GOOD})
    assert predict_frame(predictor, frame, smiles_column="SMILES").frame["valid"].all()
    with pytest.raises(MissingColumnError, match="SMILES"):
        predict_frame(predictor, frame)
    with pytest.raises(DataError, match="clash"):
        predict_frame(predictor, pd.DataFrame({"smiles": GOOD, "valid": 1}))
    src = tmp_path / "in.csv"
    frame.to_csv(src, index=False)
    with pytest.raises(DataError, match="output file type"):
        predict_file(predictor, src, tmp_path / "out.xlsx", smiles_column="SMILES")
