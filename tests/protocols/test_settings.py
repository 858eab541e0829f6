"""The config reader refuses bad values with errors that name the key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import ConfigError
from protocols.settings import ConfigPaths, Table, read_toml


def test_reads_typed_values_and_defaults() -> None:
    t = Table({"rounds": 3, "lr": 0.5, "name": "x", "flag": True, "dims": [1, 2]})
    assert t.integer("rounds", 1) == 3
    assert t.number("lr", 1.0) == 0.5
    assert t.text("name", "y") == "x"
    assert t.boolean("flag", False) is True
    assert t.array("dims", [], item_type=int) == [1, 2]
    assert t.integer("absent", 7) == 7
    t.finish()


def test_unknown_key_is_refused_with_its_name() -> None:
    t = Table({"rounds": 3, "roudns": 4}, source="federation.toml")
    t.integer("rounds", 1)
    with pytest.raises(ConfigError) as err:
        t.finish()
    assert "roudns" in str(err.value)
    assert "federation.toml" in str(err.value)


def test_missing_required_key_names_the_nested_path() -> None:
    t = Table({"federation": {}})
    with pytest.raises(ConfigError) as err:
        t.table("federation").text("id", required=True)
    assert "federation.id" in str(err.value)


@pytest.mark.parametrize(
    ("value", "call"),
    [
        ("3", lambda t: t.integer("k", 1)),
        (True, lambda t: t.integer("k", 1)),
        (-1, lambda t: t.integer("k", 1, min=0)),
        ("x", lambda t: t.number("k", 1.0)),
        (math.nan, lambda t: t.number("k", 1.0)),
        (0.0, lambda t: t.number("k", 1.0, min=0.0, min_exclusive=True)),
        ("yes", lambda t: t.boolean("k", False)),
        ("z", lambda t: t.text("k", "a", choices=("a", "b"))),
        ([1, "2"], lambda t: t.array("k", [], item_type=int)),
    ],
)
def test_bad_values_name_key_and_value(value: object, call: object) -> None:
    t = Table({"k": value})
    with pytest.raises(ConfigError) as err:
        call(t)  # type: ignore[operator]
    assert "`k`" in str(err.value)
    assert err.value.key == "k"


def test_inf_only_where_allowed() -> None:
    assert Table({"e": "inf"}).number("e", 1.0, allow_inf=True) == math.inf
    with pytest.raises(ConfigError):
        Table({"e": "inf"}).number("e", 1.0)


@given(st.integers(min_value=-1000, max_value=1000), st.integers(0, 10), st.integers(0, 10))
def test_int_range_is_enforced_exactly(value: int, lo_off: int, hi_off: int) -> None:
    lo, hi = value - lo_off, value + hi_off
    assert Table({"k": value}).integer("k", 0, min=lo, max=hi) == value
    with pytest.raises(ConfigError):
        Table({"k": value}).integer("k", 0, min=value + 1)


def test_read_toml_names_file_and_line_of_a_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('a = 1\nb = "unterminated\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        read_toml(path)
    assert "line 2" in str(err.value) and str(path) in str(err.value)
    assert err.value.fix


def test_read_toml_refuses_bytes_that_are_not_utf8_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_bytes(b'a = 1\nname = "M\xfcller"\n')  # latin-1 ü
    with pytest.raises(ConfigError) as err:
        read_toml(path)
    assert "not UTF-8" in str(err.value) and "line 2" in str(err.value)
    assert str(path) in str(err.value) and "UTF-8" in (err.value.fix or "")


def test_read_toml_missing_file_carries_the_callers_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        read_toml(tmp_path / "nope.toml", key="scenario", fix="run init")
    assert err.value.key == "scenario" and err.value.fix == "run init"


def test_config_paths_resolve_relative_to_the_base_and_keep_absolute(tmp_path: Path) -> None:
    paths = ConfigPaths(tmp_path)
    assert paths("state") == tmp_path.resolve() / "state"
    assert paths(str(tmp_path / "abs")) == tmp_path / "abs"
    assert paths("~/x") == Path.home() / "x"
    assert paths(None) is None
