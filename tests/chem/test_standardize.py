"""Standardisation is RDKit's, deterministic, idempotent, and reports bad rows."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rdkit import Chem

from chem.standardize import standardize_many, standardize_smiles
from protocols.errors import InvalidMoleculeError
from tests.chem.conftest import DRUGS, GARBAGE


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(DRUGS))
def test_standardisation_is_idempotent(smiles: str) -> None:
    once = standardize_smiles(smiles)
    assert standardize_smiles(once) == once


def _random_smiles(smiles: str, seed: int) -> str:
    """The same molecule written from another atom order (RDKit's random SMILES)."""
    mol = Chem.MolFromSmiles(smiles)
    return str(Chem.MolToRandomSmilesVect(mol, 1, randomSeed=seed)[0])


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(DRUGS), st.integers(0, 2**31 - 1))
def test_standardisation_ignores_how_the_smiles_is_written(smiles: str, seed: int) -> None:
    variant = _random_smiles(smiles, seed)
    out = standardize_smiles(variant)
    assert out == standardize_smiles(smiles)
    assert standardize_smiles(out) == out


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(DRUGS), st.sampled_from(["", ".[Na+].[Cl-]", ".O", ".Cl"]))
def test_salts_and_solvents_are_stripped(smiles: str, extra: str) -> None:
    assert standardize_smiles(smiles + extra) == standardize_smiles(smiles)


def test_known_values() -> None:
    assert standardize_smiles("[Na+].[O-]C(=O)c1ccccc1") == "O=C(O)c1ccccc1"
    assert standardize_smiles("Cl.CN(C)CCCN1c2ccccc2CCc2ccccc21") == "CN(C)CCCN1c2ccccc2CCc2ccccc21"
    assert "@" in standardize_smiles("CC(C)Cc1ccc(cc1)[C@@H](C)C(=O)O")  # stereo is kept
    assert standardize_smiles("C/C=C\\C") == "C/C=C\\C"  # double-bond stereo is kept
    # A quaternary ammonium has no neutral form: the counter-ion goes, the charge stays.
    assert standardize_smiles("C[N+](C)(C)CCOC(N)=O.[Cl-]") == "C[N+](C)(C)CCOC(N)=O"
    assert standardize_smiles("[NH3+]CCc1ccc(O)c(O)c1.[Cl-]") == "NCCc1ccc(O)c(O)c1"


@pytest.mark.parametrize("bad", [*GARBAGE, "", "   "])
def test_invalid_smiles_raise_with_a_reason(bad: str) -> None:
    with pytest.raises(InvalidMoleculeError) as err:
        standardize_smiles(bad)
    assert err.value.reason


def test_ten_percent_garbage_is_reported_by_row_and_the_rest_goes_on() -> None:
    column: list[object] = [*DRUGS[:18], GARBAGE[0], None]
    report = standardize_many(column)
    assert len(report.valid) == 18
    assert [(r.row, r.value) for r in report.invalid] == [(19, "C1CC"), (20, "")]
    assert {r.reason for r in report.invalid} == {"unparsable SMILES", "missing SMILES"}
    assert report.rows == list(range(1, 19))
