"""Virtual partners: deterministic under the seed, train and test scaffold-disjoint."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

from protocols.errors import ConfigError
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


# ---------------------------------------------------------------- column partition (issue 17, 4)
def _natural(tmp_path: Path, column: str = "lab") -> Path:
    rings = ["c1ccccc1", "C1CCCCC1", "c1ccncc1", "C1CCNCC1", "c1ccsc1", "C1CCOC1"]
    rows = [f"{ring}{'C' * n},{0.3 * n + r},{'lab-a' if r < 3 else 'lab-b'}"
            for r, ring in enumerate(rings) for n in range(1, 9)]
    rows.append("CCCCCCCCO,1.0,")  # a row naming no source is left out
    (tmp_path / "assay.csv").write_text("smiles,target,lab\n" + "\n".join(rows) + "\n")
    text = (f'name = "natural"\npartners = 2\nrounds = 1\nepsilon = 8.0\n'
            f'partition = "column"\npartner-column = "{column}"\nmin-partner-size = 5\n'
            '[endpoints.assay]\ncsv = "assay.csv"\ntask = "regression"\n')
    (tmp_path / "s.toml").write_text(text)
    return tmp_path / "s.toml"


def test_a_column_partition_gives_each_partner_its_own_sources_rows(tmp_path: Path) -> None:
    scenario = load_scenario(_natural(tmp_path))
    parts = build_partner_data(scenario, tmp_path / "out", seed=0, cache=tmp_path / "cache")
    frames = [pd.concat([pd.read_csv(p.train_csv), pd.read_csv(p.test_csv)]) for p in parts]
    # lab-a (sorted first) is partner 0: the first three ring systems; lab-b the rest
    assert _scaffolds(frames[0]["smiles"]) == {"c1ccccc1", "C1CCCCC1", "c1ccncc1"}
    assert _scaffolds(frames[1]["smiles"]) == {"C1CCNCC1", "c1ccsc1", "C1CCOC1"}
    assert [len(f) for f in frames] == [24, 24]  # the row without a source is in neither


def test_a_missing_partner_column_is_named(tmp_path: Path) -> None:
    scenario = load_scenario(_natural(tmp_path, column="site"))
    with pytest.raises(ConfigError, match=r"column 'site' is not in assay\.csv") as err:
        build_partner_data(scenario, tmp_path / "out", seed=0, cache=tmp_path / "cache")
    assert "lab" in str(err.value.got)


def test_a_source_count_other_than_the_partners_is_refused(tmp_path: Path) -> None:
    scenario = load_scenario(_natural(tmp_path)).with_overrides(partners=3)
    with pytest.raises(ConfigError, match="2 distinct sources, the scenario 3 partners"):
        build_partner_data(scenario, tmp_path / "out", seed=0, cache=tmp_path / "cache")
