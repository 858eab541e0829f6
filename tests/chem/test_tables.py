"""Bad input gets a clear error and nothing is lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chem.tables import load_table
from protocols.errors import DataError, MissingColumnError
from tests.chem.conftest import DRUGS, GARBAGE


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_table(_csv(tmp_path / "empty.csv", ""))
    assert "empty" in str(err.value)


def test_header_only_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        load_table(_csv(tmp_path / "h.csv", "smiles,logd\n"))


def test_missing_smiles_column_names_what_was_found(tmp_path: Path) -> None:
    path = _csv(tmp_path / "x.csv", "SMILES_str,logd\nCCO,1.0\n")
    with pytest.raises(MissingColumnError) as err:
        load_table(path, endpoints={"logd": "logd"})
    assert "SMILES_str" in str(err.value) and "logd" in str(err.value)
    assert err.value.found == ["SMILES_str", "logd"]


def test_missing_endpoint_column_names_what_was_found(tmp_path: Path) -> None:
    path = _csv(tmp_path / "x.csv", "smiles,logd\nCCO,1.0\n")
    with pytest.raises(MissingColumnError) as err:
        load_table(path, endpoints={"sol": "solubility"})
    assert err.value.column == "solubility"


def test_nan_labels_are_masked_not_dropped(tmp_path: Path) -> None:
    path = _csv(tmp_path / "x.csv", "smiles,a,b\nCCO,1.5,\nCCN,,0\nCCC,NaN,1\n")
    table = load_table(path)
    assert len(table) == 3
    assert table.mask.tolist() == [[1, 0], [0, 1], [0, 1]]
    assert table.labels[0, 0] == 1.5 and np.isnan(table.labels[1, 0])
    assert table.bad_labels == ()


def test_non_numeric_labels_are_masked_and_reported(tmp_path: Path) -> None:
    table = load_table(_csv(tmp_path / "x.csv", "smiles,a\nCCO,>10\nCCN,2\n"))
    assert table.mask[:, 0].tolist() == [0, 1]
    assert [(b.row, b.column, b.value) for b in table.bad_labels] == [(1, "a", ">10")]


def test_blank_line_is_reported_and_row_numbers_still_match_the_file(tmp_path: Path) -> None:
    path = _csv(tmp_path / "d.csv", f"smiles,y\n{DRUGS[0]},1\n\n{DRUGS[2]},3\nC1CC,4\n")
    table = load_table(path)
    assert table.rows.tolist() == [1, 3]
    assert [(r.row, r.reason) for r in table.report.invalid] == [(2, "missing SMILES"),
                                                                 (4, "unparsable SMILES")]
    lines = path.read_text().splitlines()
    assert lines[4].startswith("C1CC")  # row r is on line r + 1 (1-based)


def test_ten_percent_garbage_smiles_reported_with_row_numbers(tmp_path: Path) -> None:
    smiles = DRUGS[:18] + GARBAGE[:2]
    frame = pd.DataFrame({"smiles": smiles, "y": np.arange(20, dtype=float)})
    frame.to_csv(tmp_path / "d.csv", index=False)
    table = load_table(tmp_path / "d.csv")
    assert len(table) == 18
    assert [r.row for r in table.report.invalid] == [19, 20]
    assert table.rows.tolist() == list(range(1, 19))
    assert table.labels[:, 0].tolist() == list(range(18))  # labels stay aligned


def test_all_invalid_is_an_error_that_quotes_rows(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_table(_csv(tmp_path / "x.csv", "smiles,y\nC1CC,1\n"))
    assert "row 1" in str(err.value)


def test_parquet_is_supported(tmp_path: Path) -> None:
    pd.DataFrame({"smiles": ["CCO", "c1ccccc1"], "y": [1.0, 2.0]}).to_parquet(tmp_path / "d.pq")
    table = load_table(tmp_path / "d.pq")
    assert table.smiles == ("CCO", "c1ccccc1") and table.labels[:, 0].tolist() == [1.0, 2.0]


def test_sdf_is_supported(tmp_path: Path) -> None:
    from rdkit import Chem

    writer = Chem.SDWriter(str(tmp_path / "d.sdf"))
    for smi, value in [("CCO", 1.0), ("c1ccccc1", 2.0)]:
        mol = Chem.MolFromSmiles(smi)
        mol.SetProp("logd", str(value))
        writer.write(mol)
    writer.close()
    table = load_table(tmp_path / "d.sdf", endpoints={"logd": "logd"})
    assert table.smiles == ("CCO", "c1ccccc1") and table.labels[:, 0].tolist() == [1.0, 2.0]


def test_table_cache_round_trips(tmp_path: Path) -> None:
    path = _csv(tmp_path / "x.csv", "smiles,a\nCCO,1\nC1CC,2\nCCN,\n")
    cold = load_table(path, cache_dir=tmp_path / "c")
    warm = load_table(path, cache_dir=tmp_path / "c")
    assert warm.smiles == cold.smiles and np.array_equal(warm.mask, cold.mask)
    assert warm.report == cold.report
