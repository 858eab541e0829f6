"""Predicting a file of molecules with the global or a fine-tuned model, on site.

Every input row comes out, in input order: its 1-based data-row number (the
convention of ``chem.tables``: row 1 is the first molecule after the header),
the input columns, one ``predicted_<endpoint>`` column per endpoint (original
units; probabilities for classification), ``valid`` and ``error``. A row whose
SMILES is missing, too long, or cannot be standardised or featurised gets
empty predictions, ``valid = False`` and the reason: it is reported (as a
:class:`chem.standardize.InvalidRow`, the type every loader reports with),
never dropped, and it never stops the other rows. The file is read by
:func:`chem.tables.read_frame` (UTF-8 unless ``encoding`` says otherwise).
Rows are not merged: a prediction is made per input row, and ``duplicates``
counts the rows whose standardised structure repeats an earlier row's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from chem.mlflow_model import Predictor
from chem.standardize import InvalidRow, standardize_many
from chem.tables import read_frame
from protocols.atomic_files import atomic_open
from protocols.errors import DataError, MissingColumnError

__all__ = ["Predictions", "predict_file", "predict_frame"]

PREFIX = "predicted_"
ROW, VALID, ERROR = "row", "valid", "error"
_CHUNK = 20_000  # rows featurised at once: bounds memory on large files


@dataclass(frozen=True, kw_only=True)
class Predictions:
    """The output table and the rows it could not predict."""

    frame: pd.DataFrame
    invalid: tuple[InvalidRow, ...]
    duplicates: int = 0


def _cell(value: object) -> object:
    if isinstance(value, str):
        return value if value.strip() else None
    return None if value is None or pd.isna(value) else value  # type: ignore[call-overload]


def predict_frame(predictor: Predictor, frame: pd.DataFrame, *,
                  smiles_column: str = "smiles") -> Predictions:
    """Predict every row of ``frame`` (rows numbered from 1 in the order given)."""
    if smiles_column not in frame.columns:
        raise MissingColumnError(smiles_column, [str(c) for c in frame.columns])
    outputs = [ROW, *(PREFIX + e for e in predictor.endpoints), VALID, ERROR]
    clash = sorted(set(outputs) & {str(c) for c in frame.columns})
    if clash:
        raise DataError("input columns clash with the prediction columns", got=clash,
                        expected=f"no input column named {', '.join(outputs)}",
                        fix="rename those columns in the input file")
    cells = [_cell(v) for v in frame[smiles_column].tolist()]
    parts: list[pd.DataFrame] = []
    seen: set[str] = set()
    repeats = 0
    for i in range(0, len(cells), _CHUNK):
        parts.append(predictor.predict(cells[i:i + _CHUNK]))
        # standardise_smiles memoises, so this second look at the chunk costs little
        std = standardize_many(cells[i:i + _CHUNK]).smiles
        repeats += len(std) - len(set(std) - seen)
        seen.update(std)
    got = (pd.concat(parts, ignore_index=True) if parts
           else predictor.predict([]))
    out = frame.reset_index(drop=True).copy()
    out.insert(0, ROW, range(1, len(out) + 1))
    for e in predictor.endpoints:
        out[PREFIX + e] = got[e].to_numpy()
    out[VALID] = got["valid"].to_numpy()
    out[ERROR] = got["error"].to_numpy()
    invalid = tuple(
        InvalidRow(row=int(r), value="" if c is None else str(c), reason=str(why),
                   column=smiles_column)
        for r, c, ok, why in zip(out[ROW], cells, out[VALID], out[ERROR], strict=True)
        if not ok)
    return Predictions(frame=out, invalid=invalid, duplicates=repeats)


def predict_file(predictor: Predictor, input_path: Path, output_path: Path, *,
                 smiles_column: str = "smiles", encoding: str | None = None) -> Predictions:
    """Read a CSV/Parquet/SDF file, predict, and write CSV or Parquet atomically."""
    suffix = output_path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise DataError("unsupported output file type", got=str(output_path),
                        expected=".csv | .parquet")
    result = predict_frame(predictor, read_frame(Path(input_path), encoding=encoding),
                           smiles_column=smiles_column)
    with atomic_open(output_path) as f:
        if suffix == ".csv":
            result.frame.to_csv(f, index=False)
        else:
            result.frame.to_parquet(f, index=False)
    return result
