"""Scenario files: every shipped one loads, every bad value is refused by name."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from protocols.errors import ConfigError
from simulations.scenario import SCENARIO_DIR, load_scenario

BASE = """
name = "t"
partners = 3
rounds = 2
epsilon = 8.0
seeds = [0, 1]

[endpoints.lipophilicity]
dataset = "lipophilicity"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")))
def test_every_shipped_scenario_loads(name: str) -> None:
    s = load_scenario(name)
    assert s.partners >= 2 and s.consortium
    assert len(s.digest()) == 64


def test_default_scenario_is_the_admet_consortium() -> None:
    s = load_scenario(None)
    assert s.name == "admet-consortium" and s.partners == 4 and s.epsilon == 8.0
    assert [e.name for e in s.consortium] == ["lipophilicity", "solubility_aqsoldb", "bbb"]
    assert [(e.name, e.private_to) for e in s.private] == [("clintox", 0)]
    assert s.alpha == 0.5 and s.partition == "scaffold-dirichlet"


def test_dp_sweep_expands_to_one_scenario_per_epsilon() -> None:
    s = load_scenario("dp-sweep")
    runs = s.sweep()
    assert [r.epsilon for r in runs] == [1.0, 3.0, 8.0, math.inf]
    assert runs[-1].private_label.startswith("non-private")
    assert len({r.digest() for r in runs}) == 4
    assert load_scenario("tiny").sweep() == [load_scenario("tiny")]


def test_kebab_case_keys_become_snake_case_attributes(tmp_path: Path) -> None:
    s = load_scenario(_write(tmp_path, BASE.replace("rounds = 2", "rounds = 2\nlocal-epochs = 3")))
    assert s.local_epochs == 3 and s.seeds == (0, 1)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (("rounds = 2", "rounds = 2\nlocal-epochz = 3"), "local-epochz"),
        (("partners = 3", 'partners = "three"'), "partners"),
        (("partners = 3", "partners = 1"), "partners"),
        (("epsilon = 8.0", "epsilon = 0.0"), "epsilon"),
        (("epsilon = 8.0", "epsilon = -1.0"), "epsilon"),
        (("epsilon = 8.0", "epsilon = [1.0, 0.0]"), "epsilon"),
        (("epsilon = 8.0", 'epsilon = "lots"'), "epsilon"),
        (("rounds = 2", "rounds = 2\nalpha = 0.0"), "alpha"),
        (("rounds = 2", "rounds = 2\nalpha = -0.5"), "alpha"),
        (("rounds = 2", "rounds = 2\ndelta = 1.5"), "delta"),
        (("rounds = 2", "rounds = 0"), "rounds"),
        (("seeds = [0, 1]", "seeds = []"), "seeds"),
        (("seeds = [0, 1]", 'seeds = ["a"]'), "seeds"),
        (("rounds = 2", 'rounds = 2\npartition = "random"'), "partition"),
        (("rounds = 2", 'rounds = 2\nserver-optimizer = "sgd"'), "server-optimizer"),
        (('dataset = "lipophilicity"', 'dataset = "tox21"'), "endpoints.lipophilicity.dataset"),
        (('dataset = "lipophilicity"', 'dataset = "lipophilicity"\ncsv = "x.csv"'),
         "endpoints.lipophilicity.dataset"),
        (('dataset = "lipophilicity"', 'dataset = "lipophilicity"\nprivate-to = 7'),
         "endpoints.lipophilicity.private-to"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, edit: tuple[str, str], key: str) -> None:
    old, new = edit
    assert old in BASE
    with pytest.raises(ConfigError) as err:
        load_scenario(_write(tmp_path, BASE.replace(old, new, 1)))
    assert err.value.key.endswith(key), err.value
    assert key.split(".")[-1] in str(err.value)


def test_a_private_endpoint_alone_is_not_a_consortium(tmp_path: Path) -> None:
    text = BASE.replace('dataset = "lipophilicity"', 'dataset = "lipophilicity"\nprivate-to = 0')
    with pytest.raises(ConfigError, match="consortium endpoint"):
        load_scenario(_write(tmp_path, text))


def test_unknown_shipped_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="admet-consortium"):
        load_scenario("no-such-scenario")


def test_custom_csv_endpoint_resolves_relative_to_the_file(tmp_path: Path) -> None:
    text = BASE + '\n[endpoints.herg]\ncsv = "herg.csv"\nsmiles-column = "SMILES"\n' \
        'value-column = "pIC50"\ntask = "regression"\n'
    (tmp_path / "herg.csv").write_text("SMILES,pIC50\nCCO,5\n")
    s = load_scenario(_write(tmp_path, text))
    herg = next(e for e in s.endpoints if e.name == "herg")
    assert herg.csv == (tmp_path / "herg.csv").resolve()
    assert (herg.smiles_column, herg.value_column, herg.task) == ("SMILES", "pIC50", "regression")


def test_custom_csv_endpoint_needs_a_task(tmp_path: Path) -> None:
    text = BASE + '\n[endpoints.herg]\ncsv = "herg.csv"\n'
    (tmp_path / "herg.csv").write_text("smiles,target\nCCO,5\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(_write(tmp_path, text))
    assert err.value.key == "endpoints.herg.task"


def test_overrides_are_applied_and_revalidated(tmp_path: Path) -> None:
    s = load_scenario(_write(tmp_path, BASE))
    o = s.with_overrides(rounds=7, partners=5, epsilon=math.inf, seeds=(3,), learning_rate=None)
    assert (o.rounds, o.partners, o.epsilon, o.seeds) == (7, 5, math.inf, (3,))
    assert o.learning_rate == s.learning_rate
    assert o.digest() != s.digest()
    assert s.with_overrides().digest() == s.digest()
    with pytest.raises(ConfigError, match="partners"):
        s.with_overrides(partners=1)
    with pytest.raises(ConfigError, match="epsilon"):
        s.with_overrides(epsilon=0.0)


def test_digest_ignores_where_the_file_lives(tmp_path: Path) -> None:
    a = load_scenario(_write(tmp_path, BASE))
    other = tmp_path / "elsewhere"
    other.mkdir()
    b = load_scenario(_write(other, BASE))
    assert a.source != b.source and a.digest() == b.digest()
    assert a.to_dict()["epsilon"] == 8.0
    assert a.with_overrides(epsilon=math.inf).to_dict()["epsilon"] == "inf"


def test_epsilon_override_replaces_a_dp_sweep() -> None:
    s = load_scenario("dp-sweep").with_overrides(epsilon=3.0, epsilon_sweep=())
    assert [r.epsilon for r in s.sweep()] == [3.0]


def test_sweep_output_folders_match_the_sweep_report() -> None:
    from simulations.report import eps_dir

    assert [eps_dir(r.epsilon) for r in load_scenario("dp-sweep").sweep()] == [
        "eps-1", "eps-3", "eps-8", "eps-inf"]


def test_hidden_dims_override_is_parsed_and_checked() -> None:
    from fedadmet.cli.simulate import _hidden_dims

    assert _hidden_dims("512,128") == (512, 128)
    with pytest.raises(ConfigError, match="hidden-dims"):
        _hidden_dims("512,x")


# ---------------------------------------------------------------- column partition (issue 17, 4)
COLUMN = """
name = "natural"
partners = 2
rounds = 1
epsilon = 8.0
partition = "column"
partner-column = "lab"

[endpoints.herg]
csv = "herg.csv"
task = "regression"
"""


def test_a_column_partition_names_its_partner_column(tmp_path: Path) -> None:
    (tmp_path / "herg.csv").write_text("smiles,target,lab\nCCO,5,a\n")
    s = load_scenario(_write(tmp_path, COLUMN))
    assert (s.partition, s.partner_column) == ("column", "lab")
    assert s.to_dict()["partner_column"] == "lab"
    assert "partner_column" not in load_scenario("tiny").to_dict()  # old digests unchanged


@pytest.mark.parametrize(("text", "key"), [
    (COLUMN.replace('partner-column = "lab"\n', ""), "partner-column"),
    (COLUMN.replace('partition = "column"\n', ""), "partner-column"),
    (COLUMN.replace('partner-column = "lab"', 'partner-column = "lab"\npartner-colum = "x"'),
     "partner-colum"),
    (COLUMN + '\n[endpoints.lipophilicity]\ndataset = "lipophilicity"\n', "partition"),
])
def test_a_bad_column_partition_is_refused_by_name(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "herg.csv").write_text("smiles,target,lab\nCCO,5,a\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(_write(tmp_path, text))
    assert err.value.key == key
