"""Standardisation is RDKit's, deterministic, idempotent, and reports bad rows."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chem.standardize import standardize_many, standardize_smiles
from protocols.errors import InvalidMoleculeError
from tests.chem.conftest import DRUGS, GARBAGE


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(DRUGS))
def test_standardisation_is_idempotent(smiles: str) -> None:
    once = standardize_smiles(smiles)
    assert standardize_smiles(once) == once


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(DRUGS), st.sampled_from(["", ".[Na+].[Cl-]", ".O", ".Cl"]))
def test_salts_and_solvents_are_stripped(smiles: str, extra: str) -> None:
    assert standardize_smiles(smiles + extra) == standardize_smiles(smiles)


def test_known_values() -> None:
    assert standardize_smiles("[Na+].[O-]C(=O)c1ccccc1") == "O=C(O)c1ccccc1"
    assert standardize_smiles("Cl.CN(C)CCCN1c2ccccc2CCc2ccccc21") == "CN(C)CCCN1c2ccccc2CCc2ccccc21"
    assert "@" in standardize_smiles("CC(C)Cc1ccc(cc1)[C@@H](C)C(=O)O")  # stereo is kept


@pytest.mark.parametrize("bad", [*GARBAGE, "", "   "])
def test_invalid_smiles_raise_with_a_reason(bad: str) -> None:
    with pytest.raises(InvalidMoleculeError) as err:
        standardize_smiles(bad)
    assert err.value.reason


def test_ten_percent_garbage_is_reported_by_row_and_the_rest_goes_on() -> None:
    column: list[object] = [*DRUGS[:18], GARBAGE[0], None]
    report = standardize_many(column)
    assert len(report.valid) == 18
    assert [(r.row, r.smiles) for r in report.invalid] == [(19, "C1CC"), (20, "")]
    assert {r.reason for r in report.invalid} == {"unparsable SMILES", "missing SMILES"}
    assert report.rows == list(range(1, 19))
