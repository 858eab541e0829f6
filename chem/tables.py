"""Reading molecule tables (CSV, Parquet, SDF) into standardised, labelled arrays.

This is the one loader path: it decides every row's fate, and every caller
(``participant predict``/``finetune``, the site's training data, ``simulate``)
shows the same :class:`TableReport`. Nothing is lost quietly.

- **Files.** A path that does not exist, an empty file, a file without rows
  and a file that is not UTF-8 (with or without BOM; or the ``encoding``
  given) are clear errors naming the file; a decoding error names the byte
  offset and how to convert the file.
- **Rows.** Row numbers count data rows in the source file: in a CSV, row 1
  is the line after the header (so row ``r`` is on line ``r + 1`` when no
  field spans lines); in an SDF, row ``r`` is the ``r``-th record. A row
  whose SMILES is missing, longer than
  :data:`chem.standardize.MAX_SMILES_LENGTH`, unparsable or not
  standardisable is rejected and reported.
- **Labels.** An empty cell (or ``NA``, ``N/A``, ``null``, ``None``) is a
  missing label: masked, not reported. A regression label must be a finite
  number (``inf``, ``1e999`` and an explicit ``nan`` are rejected). A
  classification label must be 0/1, true/false or yes/no, case-insensitive
  (``0.0``/``1.0`` too, as pandas writes them); anything else (2, -1, 0.5) is
  rejected, never clamped. A rejected label is masked and reported; the
  row's other labels stand.
- **Duplicates.** Under record-level DP a compound measured ``k`` times would
  be ``k`` records and get roughly ``k`` epsilon, so rows are merged by
  standardised structure (across all files of one load): one row per
  structure, one label per endpoint. Regression labels are averaged.
  Classification labels take the majority; a tie is dropped (masked) and
  reported as ``conflicting duplicate labels``. The report counts the
  merged rows per endpoint. See ``docs/threat-model.md`` (privacy unit).

Standardisation is the slow step (about 1,000 molecules/s per core), so with
``cache_dir`` each file's standardised rows are cached under a key made of the
file's SHA-256, the columns, tasks and encoding, and the rules' versions.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chem.standardize import (
    MAX_SMILES_LENGTH,
    STANDARDIZER_VERSION,
    InvalidRow,
    standardize_many,
)
from protocols.atomic_files import write_json
from protocols.endpoints import Task
from protocols.errors import DataError, MissingColumnError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MoleculeTable", "TableReport", "check_file", "check_text", "load_table",
           "read_frame", "report_lines"]

log = logging.getLogger(__name__)

TABLE_RULES = "tables/v2"  # label, length and duplicate rules: part of the cache key
MISSING = frozenset({"", "na", "n/a", "null", "none"})
BINARY = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "false": 0.0, "true": 1.0,
          "no": 0.0, "yes": 1.0}
NOT_A_NUMBER = "label is not a number"
NOT_FINITE = "label is not finite"
NOT_BINARY = "label is not binary (0/1, true/false, yes/no)"
CONFLICT = "conflicting duplicate labels (tie): dropped"
REPORT_LIMIT = 20  # report lines printed before "... and N more"


@dataclass(frozen=True, kw_only=True)
class TableReport:
    """What happened to every row: read, standardised, rejected (and why), merged."""

    files: tuple[str, ...]
    rows_read: int
    standardised: int
    invalid: tuple[InvalidRow, ...]
    merged: dict[str, int] = field(default_factory=dict)  # endpoint -> rows merged away
    structures: int = 0

    @property
    def rejected(self) -> int:
        """Rows dropped because their SMILES could not be used."""
        return self.rows_read - self.standardised

    @property
    def reasons(self) -> dict[str, int]:
        """How many rows or cells were rejected for each reason."""
        return dict(Counter(r.reason for r in self.invalid).most_common())

    @property
    def duplicates(self) -> int:
        """Standardised rows that repeated an earlier structure (merged into it)."""
        return self.standardised - self.structures

    def summary(self) -> str:
        """One line: counts and the merge."""
        labels = len(self.invalid) - self.rejected
        text = (f"{self.rows_read} rows read, {self.standardised} standardised, "
                f"{self.rejected} rejected")
        if labels:
            text += f", {labels} label cells rejected"
        if self.duplicates:
            text += (f"; {self.duplicates} duplicate rows merged into {self.structures} "
                     "distinct structures")
        return text

    def to_dict(self, *, limit: int = REPORT_LIMIT) -> dict[str, Any]:
        """JSON-ready form, with the first ``limit`` invalid rows."""
        return {"files": list(self.files), "rows_read": self.rows_read,
                "standardised": self.standardised, "rejected": self.rejected,
                "reasons": self.reasons, "structures": self.structures,
                "duplicates_merged": dict(self.merged),
                "invalid_rows": [{"file": r.file, "row": r.row, "column": r.column,
                                  "value": r.value, "reason": r.reason}
                                 for r in self.invalid[:limit]],
                "invalid_rows_not_shown": max(0, len(self.invalid) - limit)}


def report_lines(invalid: Sequence[InvalidRow], *, limit: int = REPORT_LIMIT) -> list[str]:
    """The report every caller prints: one line per invalid row, at most ``limit``."""
    lines = [r.describe() for r in invalid[:limit]]
    if len(invalid) > limit:
        lines.append(f"... and {len(invalid) - limit} more invalid rows")
    return lines


@dataclass(frozen=True, kw_only=True)
class MoleculeTable:
    """One row per distinct standardised structure; ``labels`` is NaN where ``mask`` is 0.

    ``rows`` is the first source row of each structure.
    """

    smiles: tuple[str, ...]
    rows: np.ndarray
    endpoints: tuple[str, ...]
    labels: np.ndarray
    mask: np.ndarray
    report: TableReport

    def __len__(self) -> int:
        return len(self.smiles)


# ---------------------------------------------------------------- reading files
def _decode(path: Path, data: bytes, encoding: str | None) -> str:
    name = "utf-8" if encoding is None else encoding
    try:
        name = codecs.lookup(name).name
    except LookupError:
        raise DataError("unknown text encoding", got=encoding,
                        expected="a Python codec name such as utf-8, latin-1, cp1252") from None
    skip = len(codecs.BOM_UTF8) if name in ("utf-8", "utf-8-sig") and data.startswith(
        codecs.BOM_UTF8) else 0  # a BOM is not part of the header
    try:
        return data[skip:].decode(name)
    except UnicodeDecodeError as exc:
        start = exc.start + skip
        raise DataError(
            f"{path} is not valid {'UTF-8' if encoding is None else encoding} text: "
            f"byte offset {start} (0x{data[start]:02x}) cannot be decoded",
            got=data[max(0, start - 20):start + 20],
            expected="a UTF-8 file (with or without BOM)",
            fix=f"convert it, e.g. `iconv -f latin1 -t utf-8 {path} > "
                f"{path.with_name(path.stem + '.utf8' + path.suffix)}` (use -f cp1252 for "
                "Windows/Excel exports), or name its "
                "encoding with --encoding (or `encoding` in the data config)") from None


def check_file(path: Path) -> Path:
    """``path`` if it is an existing, non-empty file; else a :class:`DataError` naming it."""
    if not path.exists():
        raise DataError("data file not found", got=str(path), fix="check the path")
    if not path.is_file():
        raise DataError("data path is not a file", got=str(path),
                        expected="a .csv, .parquet or .sdf file")
    if path.stat().st_size == 0:
        raise DataError("data file is empty", got=str(path),
                        expected="a header row and at least one molecule")
    return path


def check_text(path: Path, *, encoding: str | None = None) -> Path:
    """A readable file whose text (CSV, SDF) decodes: the cheap checks a CLI makes first."""
    path = check_file(Path(path))
    if path.suffix.lower() in (".csv", ".sdf"):
        _decode(path, path.read_bytes(), encoding)
    return path


def read_frame(path: Path, *, encoding: str | None = None) -> pd.DataFrame:
    """Read a CSV, Parquet or SDF file into a DataFrame (SDF: a ``smiles`` column).

    CSV and SDF text must be UTF-8 (BOM allowed) unless ``encoding`` names another.
    """
    # pandas (~0.4 s to import) only when a file is parsed: a warm feature cache
    # never needs it, and every federated message starts a fresh process.
    import pandas as pd

    path = check_file(Path(path))
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq", ".sdf"):
        raise DataError("unsupported data file type", got=str(path),
                        expected=".csv | .parquet | .sdf")
    try:
        if suffix == ".csv":
            # Blank lines stay rows (reported as missing SMILES) so that row numbers
            # keep matching the file.
            frame = pd.read_csv(io.StringIO(_decode(path, path.read_bytes(), encoding)),
                                dtype=str, keep_default_na=False, skip_blank_lines=False)
        elif suffix == ".sdf":
            frame = _read_sdf(_decode(path, path.read_bytes(), encoding))
        else:
            frame = _read_parquet(path)
    except pd.errors.EmptyDataError as exc:
        raise DataError("data file has no columns", got=str(path),
                        expected="a header row and at least one molecule") from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"{path} is not a well-formed CSV file", got=str(exc)[:200],
                        fix="quote fields that contain commas or line breaks") from None
    if len(frame) == 0:
        raise DataError("data file has no rows", got=str(path),
                        expected="at least one molecule")
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path} is not a readable Parquet file", got=str(exc)[:200],
                        fix="export the table again, or as CSV") from None


def _read_sdf(text: str) -> pd.DataFrame:
    import pandas as pd
    from rdkit import Chem, rdBase

    records: list[dict[str, Any]] = []
    with rdBase.BlockLogs():
        supplier: Any = Chem.SDMolSupplier()
        supplier.SetData(text, sanitize=True)
        for mol in supplier:
            if mol is None:
                records.append({"smiles": None})
                continue
            record: dict[str, Any] = dict(mol.GetPropsAsDict())
            record["smiles"] = Chem.MolToSmiles(mol)
            records.append(record)
    return pd.DataFrame.from_records(records)


# ---------------------------------------------------------------- labels
def _label(cell: object, task: Task) -> float | str | None:
    """The label's value, ``None`` when missing, or the reason it is invalid."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return None  # a missing value in a typed (Parquet, SDF) column
    if isinstance(cell, str):
        text = cell.strip().lower()
        if text in MISSING:
            return None
        if task == "classification":
            return BINARY.get(text, NOT_BINARY)
        try:
            value = float(text)
        except ValueError:
            return NOT_A_NUMBER
        return value if math.isfinite(value) else NOT_FINITE
    if isinstance(cell, bool | np.bool_):
        return float(cell) if task == "classification" else NOT_A_NUMBER
    if isinstance(cell, int | float | np.integer | np.floating):
        value = float(cell)
        if not math.isfinite(value):
            return NOT_FINITE
        if task == "classification" and value not in (0.0, 1.0):
            return NOT_BINARY
        return value
    return NOT_A_NUMBER


# ---------------------------------------------------------------- one file
@dataclass(frozen=True, kw_only=True)
class _FileRows:
    """One file's standardised rows, before duplicates are merged (what is cached)."""

    rows_read: int
    rows: list[int]
    smiles: list[str]
    labels: list[list[float | None]]
    invalid: list[InvalidRow]


def _read_file(path: Path, smiles_column: str, mapping: Mapping[str, str],
               tasks: Mapping[str, Task], encoding: str | None) -> _FileRows:
    frame = read_frame(path, encoding=encoding)
    columns = [str(c) for c in frame.columns]
    if smiles_column not in frame.columns:
        raise MissingColumnError(smiles_column, columns, path=str(path))
    for column in mapping.values():
        if column not in frame.columns:
            raise MissingColumnError(column, columns, path=str(path))
    cells = [v if isinstance(v, str) and v.strip() else None for v in frame[smiles_column]]
    std = standardize_many(cells, column=smiles_column)
    invalid = [InvalidRow(row=r.row, value=r.value, reason=r.reason, column=r.column,
                          file=path.name) for r in std.invalid]
    keep = np.array(std.rows, dtype=np.int64) - 1
    labels: list[list[float | None]] = [[None] * len(mapping) for _ in keep]
    for j, (name, column) in enumerate(mapping.items()):
        raw = frame[column].to_numpy()[keep]
        for i, cell in enumerate(raw):
            got = _label(cell, tasks.get(name, "regression"))
            if isinstance(got, str):
                invalid.append(InvalidRow(row=int(keep[i]) + 1, value=str(cell), reason=got,
                                          column=column, file=path.name))
            else:
                labels[i][j] = got
    invalid.sort(key=lambda r: r.row)
    return _FileRows(rows_read=len(frame), rows=std.rows, smiles=std.smiles, labels=labels,
                     invalid=invalid)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_rows(path: Path, smiles_column: str, mapping: Mapping[str, str],
               tasks: Mapping[str, Task], encoding: str | None,
               cache_dir: Path | None) -> _FileRows:
    if cache_dir is None:
        return _read_file(path, smiles_column, mapping, tasks, encoding)
    check_file(path)  # before hashing: a missing file is a DataError, not an OSError
    key = hashlib.sha256(json.dumps(
        [_file_sha256(path), path.name, smiles_column, sorted(mapping.items()),
         sorted(tasks.items()), encoding, STANDARDIZER_VERSION, MAX_SMILES_LENGTH,
         TABLE_RULES]).encode()).hexdigest()
    cached = _cache_get(Path(cache_dir), key)
    if cached is not None:
        return cached
    got = _read_file(path, smiles_column, mapping, tasks, encoding)
    _cache_put(Path(cache_dir), key, got)
    return got


# ---------------------------------------------------------------- merging
def _merge(parts: Sequence[_FileRows], files: Sequence[str], names: Sequence[str],
           tasks: Mapping[str, Task]) -> tuple[list[str], list[int], np.ndarray,
                                               dict[str, int], list[InvalidRow]]:
    """One row per structure; the endpoint rules of the module docstring."""
    order: dict[str, int] = {}
    first: list[int] = []
    where: list[list[tuple[str, int]]] = []
    values: list[list[list[float]]] = []
    for part, file in zip(parts, files, strict=True):
        for row, smi, labs in zip(part.rows, part.smiles, part.labels, strict=True):
            k = order.setdefault(smi, len(order))
            if k == len(first):
                first.append(row)
                where.append([])
                values.append([[] for _ in names])
            where[k].append((file, row))
            for j, v in enumerate(labs):
                if v is not None:
                    values[k][j].append(v)
    labels = np.full((len(order), len(names)), np.nan, dtype=np.float64)
    merged = dict.fromkeys(names, 0)
    conflicts: list[InvalidRow] = []
    for k, per in enumerate(values):
        for j, got in enumerate(per):
            if not got:
                continue
            merged[names[j]] += len(got) - 1
            if tasks.get(names[j], "regression") == "regression":
                labels[k, j] = float(np.mean(got))
                continue
            ones = sum(got)
            if 2 * ones == len(got):
                file, row = where[k][0]
                conflicts.append(InvalidRow(
                    row=row, file=file, column=names[j], reason=CONFLICT,
                    value=f"{int(ones)} x 1, {int(ones)} x 0 in rows "
                          + ", ".join(str(r) for _, r in where[k])))
            else:
                labels[k, j] = float(2 * ones > len(got))
    return list(order), first, labels, merged, conflicts


def load_table(path: str | Path | Sequence[str | Path], *, smiles_column: str = "smiles",
               endpoints: Mapping[str, str] | None = None,
               tasks: Mapping[str, Task] | None = None,
               encoding: str | None = None,
               cache_dir: Path | None = None) -> MoleculeTable:
    """Load, standardise, label and merge one or more molecule files.

    ``endpoints`` maps endpoint name to column name (default: every column
    other than the SMILES column of the first file, each under its own name).
    ``tasks`` maps endpoint name to its task (default regression).
    """
    paths = [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]
    if not paths:
        raise DataError("no data files given", expected="at least one file")
    if endpoints:
        mapping = dict(endpoints)
    else:
        columns = [str(c) for c in read_frame(paths[0], encoding=encoding).columns]
        mapping = {c: c for c in columns if c != smiles_column}
    task_of: dict[str, Task] = {n: (tasks or {}).get(n, "regression") for n in mapping}
    parts = [_file_rows(p, smiles_column, mapping, task_of, encoding, cache_dir) for p in paths]
    names = tuple(mapping)
    files = [p.name for p in paths]
    smiles, first, labels, merged, conflicts = _merge(parts, files, names, task_of)
    invalid = [r for part in parts for r in part.invalid] + conflicts
    report = TableReport(files=tuple(str(p) for p in paths),
                         rows_read=sum(p.rows_read for p in parts),
                         standardised=sum(len(p.rows) for p in parts),
                         invalid=tuple(invalid), merged=merged, structures=len(smiles))
    if not smiles:
        raise DataError("no valid molecules in the file" if len(paths) == 1 else
                        "no valid molecules in the files", got=[str(p) for p in paths],
                        expected="at least one standardisable SMILES",
                        fix=f"check the `{smiles_column}` column; first problems: "
                        + "; ".join(r.describe() for r in invalid[:3]))
    return MoleculeTable(smiles=tuple(smiles), rows=np.asarray(first, dtype=np.int64),
                         endpoints=names, labels=labels,
                         mask=(~np.isnan(labels)).astype(np.float32), report=report)


# ---------------------------------------------------------------- table cache
def _cache_get(directory: Path, key: str) -> _FileRows | None:
    path = directory / f"table-{key}.json"
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return _FileRows(
            rows_read=int(d["rows_read"]), rows=[int(r) for r in d["rows"]],
            smiles=[str(s) for s in d["smiles"]],
            labels=[[None if v is None else float(v) for v in row] for row in d["labels"]],
            invalid=[InvalidRow(row=int(r), value=str(v), reason=str(why), column=str(c),
                                file=str(f)) for f, r, c, v, why in d["invalid"]])
    except (ValueError, KeyError, TypeError):
        log.warning("table cache entry %s is unreadable; rebuilding", path.name)
        return None


def _cache_put(directory: Path, key: str, rows: _FileRows) -> None:
    d = {"rows_read": rows.rows_read, "rows": rows.rows, "smiles": rows.smiles,
         "labels": rows.labels,
         "invalid": [[r.file, r.row, r.column, r.value, r.reason] for r in rows.invalid]}
    write_json(directory / f"table-{key}.json", d)
