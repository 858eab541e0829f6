"""Dataset splits: random, and TDC's scaffold split reimplemented exactly.

:func:`scaffold_split` follows ``tdc.utils.split.create_scaffold_split``
(Huang et al. 2021, Therapeutics Data Commons), step for step:

1. each molecule's Bemis-Murcko scaffold with ``includeChirality=False``;
   molecules RDKit cannot parse are left out of every split; row indices are
   grouped by scaffold in first-appearance order;
2. ``train_size = int(n * f0)``, ``val_size = int(n * f1)``, test gets the
   rest, where ``n`` counts parsable molecules only;
3. a group is "big" if ``len > val_size / 2`` or ``len > test_size / 2``;
4. ``random.Random(seed)`` shuffles the big groups, then the small ones
   (big first in the final order);
5. greedy fill: a group goes to train if it fits; otherwise to valid if it
   fits, or unconditionally when ``f2 == 0``; otherwise to test.

Scaffold groups therefore never straddle splits.
"""

from __future__ import annotations

import random as _random
from collections.abc import Sequence
from typing import Any

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem.Scaffolds import MurckoScaffold

from protocols.errors import ConfigError

__all__ = ["murcko_scaffold", "random_split", "scaffold_groups", "scaffold_split"]

Split = tuple[np.ndarray, np.ndarray, np.ndarray]


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError("fractions", "must be three non-negative numbers summing to 1",
                          got=list(fractions), expected="e.g. (0.8, 0.1, 0.1)")
    return float(fractions[0]), float(fractions[1]), float(fractions[2])


def murcko_scaffold(smiles: str) -> str | None:
    """Murcko scaffold SMILES without chirality, or None if RDKit cannot parse ``smiles``."""
    with rdBase.BlockLogs():
        try:  # TDC counts any RDKit error (non-string cells included) as an omitted row
            mol: Any = Chem.MolFromSmiles(smiles)
            if mol is None:
                return None
            return str(MurckoScaffold.MurckoScaffoldSmiles(  # type: ignore[no-untyped-call]
                mol=mol, includeChirality=False))
        except Exception:
            return None


def scaffold_groups(smiles: Sequence[str]) -> list[list[int]]:
    """Row indices grouped by scaffold, groups in first-appearance order."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(smiles):
        scaffold = murcko_scaffold(s)
        if scaffold is not None:
            groups.setdefault(scaffold, []).append(i)
    return list(groups.values())


def scaffold_split(smiles: Sequence[str], fractions: Sequence[float], *, seed: int) -> Split:
    """TDC's scaffold split; returns sorted (train, valid, test) index arrays."""
    f0, f1, f2 = _check_fractions(fractions)
    groups = scaffold_groups(smiles)
    n = sum(len(g) for g in groups)
    train_size = int(n * f0)
    val_size = int(n * f1)
    test_size = n - train_size - val_size
    big = [g for g in groups if len(g) > val_size / 2 or len(g) > test_size / 2]
    small = [g for g in groups if not (len(g) > val_size / 2 or len(g) > test_size / 2)]
    rng = _random.Random(seed)
    rng.shuffle(big)
    rng.shuffle(small)
    train: list[int] = []
    valid: list[int] = []
    test: list[int] = []
    for group in big + small:
        if len(train) + len(group) <= train_size:
            train += group
        elif f2 == 0 or len(valid) + len(group) <= val_size:
            valid += group
        else:
            test += group
    return (np.array(sorted(train), dtype=np.int64), np.array(sorted(valid), dtype=np.int64),
            np.array(sorted(test), dtype=np.int64))


def random_split(n: int, fractions: Sequence[float], *, seed: int) -> Split:
    """A seeded random split of ``range(n)`` into sorted (train, valid, test) arrays."""
    f0, f1, _ = _check_fractions(fractions)
    perm = np.random.default_rng(seed).permutation(n)
    a, b = int(n * f0), int(n * f0) + int(n * f1)
    return np.sort(perm[:a]), np.sort(perm[a:b]), np.sort(perm[b:])
