"""Virtual partners: deterministic under the seed, train and test scaffold-disjoint."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

from simulations.partners import build_partner_data
from simulations.scenario import load_scenario


def _scaffolds(smiles: pd.Series) -> set[str]:
    out = set()
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        out.add(str(MurckoScaffold.MurckoScaffoldSmiles(  # type: ignore[no-untyped-call]
            mol=mol, includeChirality=False)))
    return out


@pytest.mark.slow  # loads and standardises two full vendored datasets three times
def test_tiny_partners_are_deterministic_and_scaffold_disjoint(tmp_path: Path) -> None:
    scenario = load_scenario("tiny")
    cache = tmp_path / "cache"
    a = build_partner_data(scenario, tmp_path / "a", seed=0, cache=cache)
    b = build_partner_data(scenario, tmp_path / "b", seed=0, cache=cache)
    c = build_partner_data(scenario, tmp_path / "c", seed=1, cache=cache)
    assert len(a) == scenario.partners
    for pa, pb in zip(a, b, strict=True):
        assert pa.train_csv.read_bytes() == pb.train_csv.read_bytes()
        assert pa.test_csv.read_bytes() == pb.test_csv.read_bytes()
        assert pa.counts == pb.counts
    assert any(pa.train_csv.read_bytes() != pc.train_csv.read_bytes()
               for pa, pc in zip(a, c, strict=True))
    names = [e.name for e in scenario.endpoints]
    for p in a:
        train, test = pd.read_csv(p.train_csv), pd.read_csv(p.test_csv)
        assert list(train.columns) == ["smiles", *names]
        # one label per row: rows stay per endpoint, NaN elsewhere
        assert (train[names].notna().sum(axis=1) == 1).all()
        for e in p.endpoints:
            tr, te = train[train[e].notna()], test[test[e].notna()]
            assert (len(tr), len(te)) == p.counts[e] and len(tr) > 0 and len(te) > 0
            assert not _scaffolds(tr["smiles"]) & _scaffolds(te["smiles"]), (p.index, e)
    # every molecule of an endpoint went to exactly one partner (train or test)
    for source in scenario.endpoints:
        total = sum(int(sum(p.counts.get(source.name, (0, 0)))) for p in a)
        assert total == source.max_molecules
