"""``coordinator.toml`` goes through the validated reader: a typo is refused, not ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.deployment import Deployment
from protocols.errors import ConfigError, DeploymentError

GOOD = """\
superlink-port = 9443
public-address = "fl.example.com:443"
state-dir = "state"
ca-cert = "tls/ca.crt"
server-cert = "tls/server.crt"
server-key = "tls/server.key"
"""


def test_coordinator_toml_loads_with_paths_against_its_directory(tmp_path: Path) -> None:
    (tmp_path / "coordinator.toml").write_text(GOOD, encoding="utf-8")
    dep = Deployment.load(tmp_path)
    assert (dep.port, dep.public_address) == (9443, "fl.example.com:443")
    assert dep.state_dir == tmp_path.resolve() / "state"
    assert dep.server_key == tmp_path.resolve() / "tls" / "server.key"


def test_typo_in_coordinator_toml_is_refused_naming_the_key(tmp_path: Path) -> None:
    # `pubic-address` used to be ignored: the coordinator then started loopback-only
    # with no proxy and nothing said why members could not connect
    typo = GOOD.replace("public-address", "pubic-address")
    (tmp_path / "coordinator.toml").write_text(typo, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        Deployment.load(tmp_path)
    assert err.value.key == "pubic-address"
    assert "coordinator.toml" in str(err.value) and "not a known option" in str(err.value)


@pytest.mark.parametrize(("line", "key"), [
    ('superlink-port = "9443"', "superlink-port"),  # a string, not a port
    ("superlink-port = 70000", "superlink-port"),
    ("", "superlink-port"),  # missing
])
def test_bad_or_missing_port_is_refused_naming_the_key(tmp_path: Path, line: str,
                                                       key: str) -> None:
    text = GOOD.replace("superlink-port = 9443", line)
    (tmp_path / "coordinator.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        Deployment.load(tmp_path)
    assert err.value.key == key


def test_broken_toml_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "coordinator.toml").write_text(GOOD + "state-dir =\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        Deployment.load(tmp_path)
    assert "line 7" in str(err.value) and "coordinator.toml" in str(err.value)


def test_no_coordinator_toml_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(DeploymentError) as err:
        Deployment.load(tmp_path)
    assert "fedadmet coordinator init" in str(err.value)
