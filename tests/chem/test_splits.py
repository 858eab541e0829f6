"""The scaffold split is TDC's algorithm, exactly."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

from chem.splits import murcko_scaffold, random_split, scaffold_split
from tests.chem.conftest import DRUGS, GARBAGE

# Several molecules per scaffold so that groups matter.
MOLECULES = [*DRUGS, "c1ccccc1C", "c1ccccc1CC", "c1ccccc1O", "c1ccncc1C", "c1ccncc1N",
             "C1CCCCC1O", "C1CCCCC1N", "CCO", "CCCO", GARBAGE[0]]


def tdc_reference(smiles: list[str], seed: int, frac: list[float]) -> tuple[list[int], ...]:
    """TDC's create_scaffold_split, transcribed line by line (tdc/utils/split.py)."""
    rnd = random.Random(seed)
    scaffolds: dict[str, set[int]] = defaultdict(set)
    error_smiles = 0
    for i, s in enumerate(smiles):
        try:
            scaffold = MurckoScaffold.MurckoScaffoldSmiles(  # type: ignore[no-untyped-call]
                mol=Chem.MolFromSmiles(s), includeChirality=False)
            scaffolds[scaffold].add(i)
        except Exception:
            error_smiles += 1
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    train_size = int((len(smiles) - error_smiles) * frac[0])
    val_size = int((len(smiles) - error_smiles) * frac[1])
    test_size = (len(smiles) - error_smiles) - train_size - val_size
    index_sets = list(scaffolds.values())
    big, small = [], []
    for index_set in index_sets:
        if len(index_set) > val_size / 2 or len(index_set) > test_size / 2:
            big.append(index_set)
        else:
            small.append(index_set)
    rnd.seed(seed)
    rnd.shuffle(big)
    rnd.shuffle(small)
    index_sets = big + small
    if frac[2] == 0:
        for index_set in index_sets:
            if len(train) + len(index_set) <= train_size:
                train += index_set
            else:
                val += index_set
    else:
        for index_set in index_sets:
            if len(train) + len(index_set) <= train_size:
                train += index_set
            elif len(val) + len(index_set) <= val_size:
                val += index_set
            else:
                test += index_set
    return sorted(train), sorted(val), sorted(test)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([[0.8, 0.1, 0.1], [0.8, 0.0, 0.2],
                                                [0.875, 0.125, 0.0], [0.5, 0.25, 0.25]]))
def test_matches_tdc_reference(seed: int, frac: list[float]) -> None:
    ours = scaffold_split(MOLECULES, frac, seed=seed)
    assert tuple(a.tolist() for a in ours) == tdc_reference(MOLECULES, seed, frac)


def test_known_placement_for_seed_42() -> None:
    train, valid, test = scaffold_split(MOLECULES, (0.8, 0.0, 0.2), seed=42)
    assert len(MOLECULES) - 1 == len(train) + len(test)  # the garbage row is dropped
    assert MOLECULES.index(GARBAGE[0]) not in set(train) | set(valid) | set(test)
    benzene = [i for i, s in enumerate(MOLECULES) if murcko_scaffold(s) == "c1ccccc1"]
    assert len(benzene) >= 5 and (set(benzene) <= set(train) or set(benzene) <= set(test))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 0.8), st.floats(0.0, 0.2))
def test_scaffold_groups_never_straddle_splits(seed: int, f0: float, f1: float) -> None:
    frac = (f0, f1, 1.0 - f0 - f1)
    parts = scaffold_split(MOLECULES, frac, seed=seed)
    where: dict[str, int] = {}
    for k, idx in enumerate(parts):
        for i in idx:
            scaffold = murcko_scaffold(MOLECULES[int(i)])
            assert scaffold is not None
            assert where.setdefault(scaffold, k) == k


def test_random_split_is_a_seeded_partition() -> None:
    a = random_split(100, (0.7, 0.2, 0.1), seed=3)
    b = random_split(100, (0.7, 0.2, 0.1), seed=3)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert sorted(i for part in a for i in part.tolist()) == list(range(100))
    assert [len(p) for p in a] == [70, 20, 10]


def test_non_string_cells_are_omitted_like_tdc_omits_rdkit_errors() -> None:
    cells: list[str] = [*MOLECULES[:-1], float("nan"), None]  # type: ignore[list-item]
    ours = scaffold_split(cells, [0.8, 0.1, 0.1], seed=7)
    assert tuple(a.tolist() for a in ours) == tdc_reference(cells, 7, [0.8, 0.1, 0.1])
    assert len(cells) - 2 == sum(len(a) for a in ours)


# Hand-worked case: n = 10, fractions (0.6, 0.2, 0.2) -> train 6, valid 2, test 2, and a
# group is "big" when it has more than 1 molecule: benzene (6) and pyridine (2) are big,
# cyclohexane (1) and the acyclic molecule (1) are small.
HAND = ["c1ccccc1C", "c1ccccc1CC", "c1ccccc1O", "c1ccccc1N", "c1ccccc1F", "c1ccccc1Cl",
        "c1ccncc1C", "c1ccncc1O", "C1CCCCC1O", "CCCO"]
BENZENE, PYRIDINE, SMALL_ONES = [0, 1, 2, 3, 4, 5], [6, 7], [8, 9]


@pytest.mark.parametrize("seed", range(12))
def test_hand_worked_placements(seed: int) -> None:
    train, valid, test = (a.tolist() for a in scaffold_split(HAND, (0.6, 0.2, 0.2), seed=seed))
    big = ["benzene", "pyridine"]
    random.Random(seed).shuffle(big)  # TDC's first shuffle decides everything here
    if big[0] == "benzene":
        # benzene fills train exactly, pyridine fits valid, the small groups overflow to test
        assert (train, valid, test) == (BENZENE, PYRIDINE, SMALL_ONES)
    else:
        # pyridine goes to train, benzene fits neither train nor valid, small ones fill train
        assert (train, valid, test) == (PYRIDINE + SMALL_ONES, [], BENZENE)
