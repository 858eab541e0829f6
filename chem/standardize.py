"""SMILES standardisation with RDKit's own ``rdMolStandardize``.

The pipeline (version ``rdmolstd/v1``) is, in order:

1. parse (sanitised);
2. ``rdMolStandardize.Cleanup``: remove explicit Hs, disconnect metals,
   normalise functional groups, reionise;
3. ``LargestFragmentChooser(preferOrganic=True)``: drop salts and solvents;
4. ``Uncharger``: neutralise where a neutral form exists;
5. canonical isomeric SMILES.

It is deterministic for a given RDKit version, and idempotent. Any change to
the steps must bump :data:`STANDARDIZER_VERSION`, because cached features and
spec digests depend on it.

Bad input never crashes a run and is never dropped silently:
:func:`standardize_many` returns the valid rows and a report of the invalid
ones (row number, SMILES, reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from rdkit import Chem, rdBase
from rdkit.Chem.MolStandardize import rdMolStandardize

from protocols.errors import InvalidMoleculeError

__all__ = [
    "STANDARDIZER_VERSION",
    "InvalidRow",
    "StandardizationReport",
    "standardize_many",
    "standardize_smiles",
]

STANDARDIZER_VERSION = "rdmolstd/v1"


@dataclass(frozen=True, kw_only=True)
class InvalidRow:
    """A row that could not be used, and why."""

    row: int
    smiles: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class StandardizationReport:
    """Standardised rows that go on, and invalid rows that are reported.

    Row numbers are 1-based data-row numbers (the header is not counted), so
    row 1 is the first molecule in the file.
    """

    valid: tuple[tuple[int, str], ...]
    invalid: tuple[InvalidRow, ...]

    @property
    def smiles(self) -> list[str]:
        """The standardised SMILES of the valid rows, in input order."""
        return [s for _, s in self.valid]

    @property
    def rows(self) -> list[int]:
        """Row numbers of the valid rows."""
        return [r for r, _ in self.valid]


@lru_cache(maxsize=1)
def _tools() -> tuple[object, object]:
    chooser = rdMolStandardize.LargestFragmentChooser(preferOrganic=True)
    uncharger = rdMolStandardize.Uncharger()
    return chooser, uncharger


def standardize_smiles(smiles: str) -> str:
    """Standardise one SMILES string.

    Raises
    ------
    InvalidMoleculeError
        With a ``reason`` when the input is empty, cannot be parsed, or fails
        standardisation.
    """
    if not isinstance(smiles, str) or not smiles.strip():
        raise InvalidMoleculeError("empty SMILES", smiles=str(smiles), reason="empty SMILES")
    text = smiles.strip()
    chooser, uncharger = _tools()
    # RDKit logs parse errors to stderr; the reason goes into the report instead.
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(text)
        if mol is None:
            raise InvalidMoleculeError("RDKit could not parse the SMILES", smiles=text,
                                       reason="unparsable SMILES")
        try:
            mol = rdMolStandardize.Cleanup(mol)
            mol = chooser.choose(mol)  # type: ignore[attr-defined]
            mol = uncharger.uncharge(mol)  # type: ignore[attr-defined]
            Chem.SanitizeMol(mol)
            out = Chem.MolToSmiles(mol, isomericSmiles=True, canonical=True)
        except Exception as exc:  # RDKit raises several unrelated types here
            raise InvalidMoleculeError("standardisation failed", smiles=text,
                                       reason=f"standardisation failed: {exc}") from exc
    if not out:
        raise InvalidMoleculeError("no atoms left after standardisation", smiles=text,
                                   reason="no atoms left after standardisation")
    return str(out)


def standardize_many(smiles: Sequence[object], *, first_row: int = 1) -> StandardizationReport:
    """Standardise a column of SMILES; invalid rows are reported, valid rows go on.

    ``first_row`` is the row number of ``smiles[0]`` (1 for the first data row).
    Non-string cells (missing values) are reported as invalid, not dropped.
    """
    valid: list[tuple[int, str]] = []
    invalid: list[InvalidRow] = []
    for offset, value in enumerate(smiles):
        row = first_row + offset
        if not isinstance(value, str):
            invalid.append(InvalidRow(row=row, smiles="" if value is None else str(value),
                                      reason="missing SMILES"))
            continue
        try:
            valid.append((row, standardize_smiles(value)))
        except InvalidMoleculeError as exc:
            invalid.append(InvalidRow(row=row, smiles=value, reason=exc.reason))
    return StandardizationReport(valid=tuple(valid), invalid=tuple(invalid))
