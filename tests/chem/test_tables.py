"""Bad input gets a clear error and nothing is lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chem.tables import load_table
from protocols.errors import DataError, FedAdmetError, MissingColumnError
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


def test_missing_labels_are_masked_not_dropped(tmp_path: Path) -> None:
    path = _csv(tmp_path / "x.csv", "smiles,a,b\nCCO,1.5,\nCCN,,0\nCCC,NA,1\n")
    table = load_table(path)
    assert len(table) == 3
    assert table.mask.tolist() == [[1, 0], [0, 1], [0, 1]]
    assert table.labels[0, 0] == 1.5 and np.isnan(table.labels[1, 0])
    assert table.report.invalid == ()


def test_non_numeric_labels_are_masked_and_reported(tmp_path: Path) -> None:
    table = load_table(_csv(tmp_path / "x.csv", "smiles,a\nCCO,>10\nCCN,2\n"))
    assert table.mask[:, 0].tolist() == [0, 1]
    assert [(b.row, b.column, b.value, b.reason) for b in table.report.invalid] == [
        (1, "a", ">10", "label is not a number")]


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


# ---------------------------------------------------------------- issue 15: messy member data
def test_latin1_file_is_an_error_naming_file_offset_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "eln.csv"
    path.write_bytes("smiles,name\nCCO,éthanol\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_table(path, endpoints={})
    text = str(err.value)
    assert str(path) in text and "byte offset 16 (0xe9)" in text
    assert "iconv -f latin1 -t utf-8" in text and "--encoding" in text


def test_utf8_with_and_without_bom_read_the_same(tmp_path: Path) -> None:
    body = "smiles,logd\nCCO,1.0\nc1ccccc1,2.0\n"
    plain = _csv(tmp_path / "plain.csv", body)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + body.encode())
    a, b = load_table(plain), load_table(bom)
    assert a.endpoints == b.endpoints == ("logd",)
    assert a.smiles == b.smiles and np.array_equal(a.labels, b.labels)


def test_an_encoding_reads_a_latin1_file_and_an_unknown_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "eln.csv"
    path.write_bytes("smiles,logd,note\nCCO,1.0,é\n".encode("latin-1"))
    table = load_table(path, endpoints={"logd": "logd"}, encoding="latin-1")
    assert table.smiles == ("CCO",)
    with pytest.raises(DataError, match="unknown text encoding"):
        load_table(path, endpoints={"logd": "logd"}, encoding="klingon")


def test_missing_path_is_a_data_error_even_with_a_cache(tmp_path: Path) -> None:
    # the cache key hashes the file: that must not be what reports a missing file
    with pytest.raises(DataError, match="not found"):
        load_table(tmp_path / "nope.csv", endpoints={"y": "y"}, cache_dir=tmp_path / "c")


@pytest.mark.parametrize("cell", ["inf", "-inf", "1e999", "nan", "NaN", "Infinity"])
def test_non_finite_labels_are_invalid_rows_with_a_reason(tmp_path: Path, cell: str) -> None:
    table = load_table(_csv(tmp_path / "x.csv", f"smiles,y,z\nCCO,{cell},1\nCCN,2,2\n"))
    assert table.mask.tolist() == [[0, 1], [1, 1]]  # the row's other label stands
    assert [(r.row, r.column, r.value, r.reason) for r in table.report.invalid] == [
        (1, "y", cell, "label is not finite")]


@pytest.mark.parametrize(("cell", "value"), [
    ("0", 0), ("1", 1), ("true", 1), ("FALSE", 0), ("Yes", 1), ("no", 0), (" 1 ", 1),
    ("1.0", 1), ("0.0", 0)])
def test_binary_labels_accept_0_1_true_false_yes_no(tmp_path: Path, cell: str,
                                                    value: int) -> None:
    table = load_table(_csv(tmp_path / "x.csv", f"smiles,herg\nCCO,{cell}\n"),
                       tasks={"herg": "classification"})
    assert table.labels.tolist() == [[value]] and table.report.invalid == ()


@pytest.mark.parametrize("cell", ["2", "7", "-1", "0.5", "maybe", "inf", "y"])
def test_other_binary_labels_are_invalid_rows_never_clamped(tmp_path: Path, cell: str) -> None:
    table = load_table(_csv(tmp_path / "x.csv", f"smiles,herg\nCCO,{cell}\nCCN,1\n"),
                       tasks={"herg": "classification"})
    assert table.mask[:, 0].tolist() == [0, 1] and np.isnan(table.labels[0, 0])
    assert [(r.row, r.value, r.reason) for r in table.report.invalid] == [
        (1, cell, "label is not binary (0/1, true/false, yes/no)")]


def test_binary_parquet_column_of_numbers_and_bools(tmp_path: Path) -> None:
    pd.DataFrame({"smiles": ["CCO", "CCN", "CCC", "CCCC"],
                  "herg": [1.0, 0.0, 2.0, np.nan]}).to_parquet(tmp_path / "d.pq")
    table = load_table(tmp_path / "d.pq", tasks={"herg": "classification"})
    assert table.mask[:, 0].tolist() == [1, 1, 0, 0]
    assert [(r.row, r.reason) for r in table.report.invalid] == [
        (3, "label is not binary (0/1, true/false, yes/no)")]


def test_overlong_smiles_is_invalid_before_rdkit_sees_it(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from rdkit import Chem

    import chem.standardize as std

    parse = Chem.MolFromSmiles

    def guarded(text: str, *args: object) -> object:
        assert len(text) <= std.MAX_SMILES_LENGTH, "a too-long SMILES reached RDKit"
        return parse(text, *args)

    monkeypatch.setattr(std.Chem, "MolFromSmiles", guarded)
    std._standardize.cache_clear()
    long = "C" * 200_000
    table = load_table(_csv(tmp_path / "x.csv", f"smiles,y\n{long},1\nCCO,2\n"))
    assert table.smiles == ("CCO",)
    (bad,) = table.report.invalid
    assert bad.row == 1 and bad.reason == f"SMILES longer than {std.MAX_SMILES_LENGTH:,} characters"
    assert len(bad.value) <= std.MAX_SHOWN and "200,000 characters" in bad.value


def test_a_five_megabyte_line_is_reported_truncated(tmp_path: Path) -> None:
    from chem.standardize import MAX_SHOWN

    junk = "x" * 5_000_000
    table = load_table(_csv(tmp_path / "x.csv", f"smiles,y\n{junk},1\nCCO,2\n"),
                       cache_dir=tmp_path / "c")
    (bad,) = table.report.invalid
    assert len(bad.describe()) < 200 and len(bad.value) <= MAX_SHOWN
    assert "5,000,000 characters" in bad.value
    # nor is it kept in full in the cache
    assert all(p.stat().st_size < 10_000 for p in (tmp_path / "c").iterdir())


def test_duplicate_structures_merge_mean_majority_and_ties_are_dropped(tmp_path: Path) -> None:
    # ethanol written three ways; benzoate as the sodium salt and the acid (same parent)
    text = ("smiles,logd,herg\n"
            "CCO,1.0,1\n"
            "OCC,2.0,1\n"
            "C(O)C,3.0,0\n"
            "[Na+].[O-]C(=O)c1ccccc1,0.5,1\n"
            "OC(=O)c1ccccc1,,0\n"
            "CCN,4.0,1\n")
    table = load_table(_csv(tmp_path / "x.csv", text),
                       tasks={"logd": "regression", "herg": "classification"})
    assert table.smiles == ("CCO", "O=C(O)c1ccccc1", "CCN")
    assert table.rows.tolist() == [1, 4, 6]
    np.testing.assert_allclose(table.labels[:, 0], [2.0, 0.5, 4.0])
    assert table.labels[0, 1] == 1.0 and table.labels[2, 1] == 1.0  # 2 of 3 say 1
    assert table.mask[1, 1] == 0  # benzoic acid: one 1, one 0, a tie: dropped
    (tie,) = table.report.invalid
    assert (tie.row, tie.column) == (4, "herg") and "conflicting" in tie.reason
    assert "rows 4, 5" in tie.value
    assert table.report.merged == {"logd": 2, "herg": 3}
    assert table.report.duplicates == 3 and table.report.structures == 3
    assert "3 duplicate rows merged into 3 distinct structures" in table.report.summary()


def test_duplicates_merge_across_files(tmp_path: Path) -> None:
    a = _csv(tmp_path / "a.csv", "smiles,y\nCCO,1.0\nCCN,5.0\n")
    b = _csv(tmp_path / "b.csv", "smiles,y\nOCC,3.0\n")
    table = load_table([a, b], endpoints={"y": "y"}, cache_dir=tmp_path / "c")
    assert table.smiles == ("CCO", "CCN") and table.labels[:, 0].tolist() == [2.0, 5.0]
    assert table.report.rows_read == 3 and table.report.merged == {"y": 1}


def test_report_lines_are_bounded_and_name_file_row_value_reason(tmp_path: Path) -> None:
    from chem.tables import report_lines

    rows = "".join(f"bad{i},1\n" for i in range(30))
    table = load_table(_csv(tmp_path / "m.csv", f"smiles,y\nCCO,1\n{rows}"))
    lines = report_lines(table.report.invalid, limit=5)
    assert lines[0] == "m.csv row 2: unparsable SMILES (smiles = 'bad0')"
    assert len(lines) == 6 and lines[-1] == "... and 25 more invalid rows"
    d = table.report.to_dict(limit=3)
    assert d["rejected"] == 30 and d["reasons"] == {"unparsable SMILES": 30}
    assert len(d["invalid_rows"]) == 3 and d["invalid_rows_not_shown"] == 27


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".sdf", ".parquet"]))
def test_arbitrary_bytes_never_raise_anything_but_our_errors(tmp_path: Path, data: bytes,
                                                             suffix: str) -> None:
    path = tmp_path / f"any{suffix}"
    path.write_bytes(data)
    try:
        table = load_table(path)
    except FedAdmetError:
        return
    assert table.report.rows_read >= len(table)


@given(st.text(max_size=300))
def test_shown_values_are_bounded_and_idempotent(text: str) -> None:
    from chem.standardize import MAX_SHOWN, shown

    once = shown(text)
    assert len(once) <= MAX_SHOWN and shown(once) == once
    assert once == text or len(text) > MAX_SHOWN
