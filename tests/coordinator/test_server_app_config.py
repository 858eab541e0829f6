from pathlib import Path

import pytest

from coordinator.server_app import config_from_run_config
from protocols.errors import ConfigError

FEDERATION = """\
[federation]
id = "fed"
state-dir = "state"
members = "members.json"
signing-key = "receipt_key.pem"

[[model.endpoints]]
name = "solubility"
task = "regression"
"""


def test_run_config_names_federation_toml_and_may_override_its_paths(tmp_path: Path) -> None:
    path = tmp_path / "federation.toml"
    path.write_text(FEDERATION)
    plain = config_from_run_config({"config": str(path), "state-dir": "", "members": ""})
    assert plain.state_dir == (tmp_path / "state").resolve()
    assert plain.members_file == (tmp_path / "members.json").resolve()
    moved = config_from_run_config({"config": str(path), "state-dir": str(tmp_path / "s2"),
                                    "signing-key": str(tmp_path / "k.pem")})
    assert moved.state_dir == tmp_path / "s2" and moved.signing_key == tmp_path / "k.pem"
    assert moved.members_file == plain.members_file
    assert moved.digest() == plain.digest()  # paths are operational, not attested


def test_missing_or_malformed_run_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing"):
        config_from_run_config({})
    path = tmp_path / "federation.toml"
    path.write_text(FEDERATION)
    with pytest.raises(ConfigError, match="path string"):
        config_from_run_config({"config": str(path), "state-dir": 3})
