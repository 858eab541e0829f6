"""Reading molecule tables (CSV, Parquet, SDF) into standardised, labelled arrays.

Nothing is lost quietly: rows whose SMILES cannot be standardised are
reported with their 1-based data-row number and reason and the rest go on.
Row numbers count data rows in the source file: in a CSV, row 1 is the line
after the header (so row ``r`` is on line ``r + 1`` when no field spans
lines); in an SDF, row ``r`` is the ``r``-th record.
missing or non-numeric labels are masked (and non-numeric ones reported);
a missing column names the columns that were found.

Standardisation is the slow step (about 1,000 molecules/s per core), so with
``cache_dir`` the standardised table is cached under a key made of the file's
SHA-256, the column mapping and the standardiser version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chem.standardize import (
    STANDARDIZER_VERSION,
    InvalidRow,
    StandardizationReport,
    standardize_many,
)
from protocols.errors import DataError, MissingColumnError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BadLabel", "MoleculeTable", "load_table", "read_frame"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class BadLabel:
    """A label cell that is present but not a number."""

    row: int
    column: str
    value: str


@dataclass(frozen=True, kw_only=True)
class MoleculeTable:
    """Valid molecules with labels; ``labels`` is NaN where ``mask`` is 0."""

    smiles: tuple[str, ...]
    rows: np.ndarray
    endpoints: tuple[str, ...]
    labels: np.ndarray
    mask: np.ndarray
    report: StandardizationReport
    bad_labels: tuple[BadLabel, ...] = ()

    def __len__(self) -> int:
        return len(self.smiles)


def read_frame(path: Path) -> pd.DataFrame:
    """Read a CSV, Parquet or SDF file into a DataFrame (SDF: a ``smiles`` column)."""
    # pandas (~0.4 s to import) only when a file is parsed: a warm feature cache
    # never needs it, and every federated message starts a fresh process.
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise DataError("data file not found", got=str(path), fix="check the path in the config")
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise DataError("data file is empty", got=str(path),
                        expected="a header row and at least one molecule")
    try:
        if suffix == ".csv":
            # Blank lines stay rows (reported as missing SMILES) so that row numbers
            # keep matching the file.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix == ".sdf":
            frame = _read_sdf(path)
        else:
            raise DataError("unsupported data file type", got=str(path),
                            expected=".csv | .parquet | .sdf")
    except pd.errors.EmptyDataError as exc:
        raise DataError("data file has no columns", got=str(path),
                        expected="a header row and at least one molecule") from exc
    if len(frame) == 0:
        raise DataError("data file has no rows", got=str(path),
                        expected="at least one molecule")
    return frame


def _read_sdf(path: Path) -> pd.DataFrame:
    import pandas as pd
    from rdkit import Chem, rdBase

    records: list[dict[str, Any]] = []
    with rdBase.BlockLogs():
        supplier: Any = Chem.SDMolSupplier(str(path), sanitize=True)
        for mol in supplier:
            if mol is None:
                records.append({"smiles": None})
                continue
            record: dict[str, Any] = dict(mol.GetPropsAsDict())
            record["smiles"] = Chem.MolToSmiles(mol)
            records.append(record)
    return pd.DataFrame.from_records(records)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_table(path: str | Path, *, smiles_column: str = "smiles",
               endpoints: Mapping[str, str] | None = None,
               cache_dir: Path | None = None) -> MoleculeTable:
    """Load, standardise and label a molecule table.

    ``endpoints`` maps endpoint name to column name (default: every column
    other than the SMILES column, each under its own name).
    """
    path = Path(path)
    key = None
    if cache_dir is not None and path.is_file():  # a missing file: read_frame's DataError
        key = hashlib.sha256(json.dumps(
            [_file_sha256(path), smiles_column, sorted((endpoints or {}).items()),
             STANDARDIZER_VERSION]).encode()).hexdigest()
        cached = _cache_get(Path(cache_dir), key)
        if cached is not None:
            return cached
    table = _load(path, smiles_column, endpoints)
    if cache_dir is not None and key is not None:
        _cache_put(Path(cache_dir), key, table)
    return table


def _load(path: Path, smiles_column: str, endpoints: Mapping[str, str] | None) -> MoleculeTable:
    import pandas as pd

    frame = read_frame(path)
    columns = [str(c) for c in frame.columns]
    if smiles_column not in frame.columns:
        raise MissingColumnError(smiles_column, columns, path=str(path))
    mapping = dict(endpoints) if endpoints else {c: c for c in columns if c != smiles_column}
    for column in mapping.values():
        if column not in frame.columns:
            raise MissingColumnError(column, columns, path=str(path))
    cells = [v if isinstance(v, str) and v.strip() else None for v in frame[smiles_column]]
    report = standardize_many(cells)
    keep = np.array(report.rows, dtype=np.int64) - 1
    names = tuple(mapping)
    labels = np.full((len(keep), len(names)), np.nan, dtype=np.float64)
    bad: list[BadLabel] = []
    for j, name in enumerate(names):
        raw = frame[mapping[name]].to_numpy()[keep]
        values = pd.to_numeric(pd.Series(raw), errors="coerce").to_numpy(dtype=np.float64)
        for i in np.flatnonzero(np.isnan(values)):
            cell = raw[i]
            if cell is not None and str(cell).strip() not in ("", "nan", "NaN", "NA", "None"):
                bad.append(BadLabel(row=int(keep[i]) + 1, column=mapping[name], value=str(cell)))
        labels[:, j] = values
    for b in bad:
        log.warning("%s row %d: non-numeric value %r in column %s is treated as missing",
                    path.name, b.row, b.value, b.column)
    if not report.valid:
        raise DataError("no valid molecules in the file", got=str(path),
                        expected="at least one standardisable SMILES",
                        fix=f"check the `{smiles_column}` column; first problems: "
                        + "; ".join(f"row {r.row}: {r.reason}" for r in report.invalid[:3]))
    return MoleculeTable(
        smiles=tuple(report.smiles), rows=keep + 1, endpoints=names, labels=labels,
        mask=(~np.isnan(labels)).astype(np.float32), report=report, bad_labels=tuple(bad),
    )


# ---------------------------------------------------------------- table cache
def _cache_get(directory: Path, key: str) -> MoleculeTable | None:
    path = directory / f"table-{key}.json"
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        labels = np.array([[np.nan if v is None else v for v in row] for row in d["labels"]],
                          dtype=np.float64).reshape(len(d["smiles"]), len(d["endpoints"]))
        report = StandardizationReport(
            valid=tuple((int(r), s) for r, s in d["valid"]),
            invalid=tuple(InvalidRow(row=int(r), smiles=s, reason=why)
                          for r, s, why in d["invalid"]),
        )
        return MoleculeTable(
            smiles=tuple(d["smiles"]), rows=np.array(d["rows"], dtype=np.int64),
            endpoints=tuple(d["endpoints"]), labels=labels,
            mask=(~np.isnan(labels)).astype(np.float32), report=report,
            bad_labels=tuple(BadLabel(row=r, column=c, value=v) for r, c, v in d["bad"]),
        )
    except (ValueError, KeyError, TypeError):
        log.warning("table cache entry %s is unreadable; rebuilding", path.name)
        return None


def _cache_put(directory: Path, key: str, table: MoleculeTable) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    d = {
        "smiles": list(table.smiles), "rows": table.rows.tolist(),
        "endpoints": list(table.endpoints),
        "labels": [[None if np.isnan(v) else float(v) for v in row] for row in table.labels],
        "valid": [list(v) for v in table.report.valid],
        "invalid": [[r.row, r.smiles, r.reason] for r in table.report.invalid],
        "bad": [[b.row, b.column, b.value] for b in table.bad_labels],
    }
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(d, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / f"table-{key}.json")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
