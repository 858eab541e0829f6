"""SMILES standardisation with RDKit's own ``rdMolStandardize``.

The pipeline (version ``rdmolstd/v1``) is, in order:

1. parse (sanitised);
2. ``rdMolStandardize.Cleanup``: remove explicit Hs, disconnect metals,
   normalise functional groups, reionise;
3. ``LargestFragmentChooser(preferOrganic=True)``: drop salts and solvents;
4. ``Uncharger``: neutralise where a neutral form exists;
5. canonical isomeric SMILES.

It is deterministic for a given RDKit version, and idempotent. Any change to
the steps must bump :data:`STANDARDIZER_VERSION` (kept in
:mod:`chem.featurization_spec`, so a spec needs no RDKit), because cached
features and spec digests depend on it.

Bad input never crashes a run and is never dropped silently:
:func:`standardize_many` returns the valid rows and a report of the invalid
ones (row number, SMILES, reason).

Time bound. RDKit holds the GIL, so a watchdog thread cannot interrupt a slow
call; instead no SMILES longer than :data:`MAX_SMILES_LENGTH` characters
reaches RDKit (it is an invalid row). The pipeline's cost grows faster than
linearly with size: measured on a loaded 2-core machine, 1,000 characters
took at most 0.32 s (a 990-atom ring; chains, salts, fused aromatics, dense
stereo and symmetric dendrimers were faster), 2,000 characters 0.4 s, 5,000
characters 2.1 s, 10,000 characters up to 7.5 s, and 200,000 characters ran
past 300 s. Every step after parsing is bounded (Cleanup's normaliser has a
fixed restart limit; no tautomer enumeration), so the length bound is the
time bound. 1,000 characters holds every small-molecule drug and most
peptides and macrocycles of ADMET assays (cyclosporin is about 200).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from rdkit import Chem, rdBase
from rdkit.Chem.MolStandardize import rdMolStandardize

from chem.featurization_spec import STANDARDIZER_VERSION  # defined there: no RDKit needed
from protocols.errors import InvalidMoleculeError

__all__ = [
    "MAX_SHOWN",
    "MAX_SMILES_LENGTH",
    "STANDARDIZER_VERSION",
    "InvalidRow",
    "StandardizationReport",
    "standardize_many",
    "standardize_smiles",
]

MAX_SMILES_LENGTH = 1_000  # characters; see the module docstring for the measurement
MAX_SHOWN = 80  # characters of an offending value kept in a report


def shown(value: str) -> str:
    """``value`` cut to at most :data:`MAX_SHOWN` characters, saying how long it was."""
    if len(value) <= MAX_SHOWN:
        return value
    return f"{value[:MAX_SHOWN - 30]}... [{len(value):,} characters]"


@dataclass(frozen=True, kw_only=True)
class InvalidRow:
    """A row (or one of its cells) that could not be used, and why.

    The one type for every rejected input row: a SMILES that did not
    standardise, a label cell that is not a valid label, a duplicate whose
    labels conflict, a molecule that got no prediction. ``row`` is the 1-based
    data-row number; ``value`` is the offending cell, cut to
    :data:`MAX_SHOWN` characters on construction (a 5 MB cell is never kept
    or echoed in full); ``column`` and ``file`` say where it was, when known.
    """

    row: int
    value: str
    reason: str
    column: str = ""
    file: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", shown(str(self.value)))

    def describe(self) -> str:
        """``assays.csv row 4: unparsable SMILES (smiles = 'C1CC')``: one report line."""
        where = f"{self.file} row {self.row}" if self.file else f"row {self.row}"
        cell = f"{self.column} = {self.value!r}" if self.column else repr(self.value)
        return f"{where}: {self.reason} ({cell})"


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
    if len(text) > MAX_SMILES_LENGTH:
        raise InvalidMoleculeError(
            "SMILES too long", smiles=shown(text),
            reason=f"SMILES longer than {MAX_SMILES_LENGTH:,} characters")
    return _standardize(text)


@lru_cache(maxsize=1 << 15)  # a file's repeated SMILES, and a second look at a chunk
def _standardize(text: str) -> str:
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


def standardize_many(smiles: Sequence[object], *, first_row: int = 1,
                     column: str = "") -> StandardizationReport:
    """Standardise a column of SMILES; invalid rows are reported, valid rows go on.

    ``first_row`` is the row number of ``smiles[0]`` (1 for the first data row).
    Non-string cells (missing values) are reported as invalid, not dropped.
    Identical input strings are standardised once.
    """
    done: dict[str, str | InvalidMoleculeError] = {}
    valid: list[tuple[int, str]] = []
    invalid: list[InvalidRow] = []
    for offset, value in enumerate(smiles):
        row = first_row + offset
        if not isinstance(value, str):
            invalid.append(InvalidRow(row=row, value="" if value is None else str(value),
                                      reason="missing SMILES", column=column))
            continue
        got = done.get(value)
        if got is None:
            try:
                got = standardize_smiles(value)
            except InvalidMoleculeError as exc:
                got = exc
            done[value] = got
        if isinstance(got, InvalidMoleculeError):
            invalid.append(InvalidRow(row=row, value=value, reason=got.reason, column=column))
        else:
            valid.append((row, got))
    return StandardizationReport(valid=tuple(valid), invalid=tuple(invalid))
