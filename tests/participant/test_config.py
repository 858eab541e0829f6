"""One participant.toml schema: ``init`` writes it, every command loads it the same way."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedadmet.cli.main import _mount, app
from participant.config import ParticipantConfig, supernode_plan
from protocols.errors import ConfigError, DeploymentError


def _init(tmp_path: Path) -> Path:
    _mount()
    site = tmp_path / "acme-site"
    out = CliRunner().invoke(app, [
        "participant", "init", str(site), "--coordinator", "fl.acme.test:8443",
        "--root-certificate", str(tmp_path / "ca.crt"), "--local-port", "9200"])
    assert out.exit_code == 0, out.output
    return site / "participant.toml"


def test_init_template_loads_and_drives_the_daemon_plan(tmp_path: Path) -> None:
    toml = _init(tmp_path)
    site = toml.parent.resolve()
    cfg = ParticipantConfig.load(toml)
    assert cfg.name == "acme-site" and cfg.state_dir == site / "state"
    assert cfg.max_epsilon == 8.0 and cfg.delta == 1e-5
    assert cfg.receipt_key == site / "keys" / "receipt_key.pem" and cfg.receipt_key.exists()
    assert cfg.coordinator is not None
    assert cfg.coordinator.address == "fl.acme.test:8443"
    assert cfg.coordinator.root_certificate == (tmp_path / "ca.crt").resolve()
    assert cfg.coordinator.node_key == site / "keys" / "node_key"
    assert cfg.coordinator.node_key.exists() and cfg.node_key == cfg.coordinator.node_key
    assert cfg.coordinator.local_port == 9200 and cfg.coordinator.task_poll_interval == 0.2
    assert [(e.endpoint, e.column, e.task) for e in cfg.data.endpoints] == [
        ("lipophilicity", "logD", "regression")]
    assert cfg.data.files == (site / "data" / "assays.csv",)
    assert cfg.training.trunk_lr_factor == 0.1
    assert cfg.training.secure_mode is False  # full-state OS-entropy generators by default
    plan = supernode_plan(cfg)
    assert (plan.superlink, plan.port, plan.node_key) == ("fl.acme.test:8443", 9200,
                                                         site / "keys" / "node_key")
    assert plan.root_certificates == (tmp_path / "ca.crt").resolve()
    assert plan.task_poll_interval == 0.2
    assert plan.node_config == {"config": str(toml.resolve()), "state-dir": str(site / "state")}
    # the plan's --node-config points the ClientApp at the same file
    assert ParticipantConfig.from_node_config(dict(plan.node_config)) == cfg


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    toml = _init(tmp_path)
    before = toml.read_text()
    out = CliRunner().invoke(app, ["participant", "init", str(toml.parent)])
    assert isinstance(out.exception, DeploymentError)
    assert toml.read_text() == before


@pytest.mark.parametrize(("old", "new", "key", "shown"), [
    ('address = "fl.acme.test:8443"', 'adress = "fl.acme.test:8443"', "coordinator.adress",
     "adress"),
    ('address = "fl.acme.test:8443"', 'address = "fl.acme.test"', "coordinator.address",
     "fl.acme.test"),
    ("local-port = 9200", "local-port = 70000", "coordinator.local-port", "70000"),
    ("local-port = 9200", 'local-port = "9200"', "coordinator.local-port", "9200"),
    ("task-poll-interval = 0.2", "task-poll-interval = 0.0", "coordinator.task-poll-interval",
     "0.0"),
    ("task-poll-interval = 0.2", "task-poll-interval = 90", "coordinator.task-poll-interval",
     "90"),
    ('node-key = "keys/node_key"\n', "", "coordinator.node-key", "required"),
    ("max-epsilon = 8.0", "max-epsilon = -1.0", "participant.max-epsilon", "-1.0"),
    ('task = "regression"', 'task = "regresion"', "endpoints.lipophilicity.task",
     "regresion"),
    ("valid-fraction = 0.15", "valid-fraction = 0.9", "data.valid-fraction", "0.9"),
    ('files = ["data/assays.csv"]', 'files = ["data/assays.xlsx"]', "data.files",
     "assays.xlsx"),
    ("trunk-lr-factor = 0.1", "trunk-lr-factor = 3.0", "training.trunk-lr-factor", "3.0"),
    ("finetune-epochs = 100", "finetune-epoch = 100", "training.finetune-epoch",
     "finetune-epoch"),
    ("secure-mode = false", 'secure-mode = "yes"', "training.secure-mode", "yes"),
    ("secure-mode = false", "secure_mode = true", "training.secure_mode", "secure_mode"),
    ("delta = 1e-5", 'delta = 1e-5\nnode-key = "keys/node_key"', "coordinator.node-key",
     "twice"),
])
def test_bad_keys_and_values_name_the_key_and_value(tmp_path: Path, old: str, new: str,
                                                    key: str, shown: str) -> None:
    toml = _init(tmp_path)
    text = toml.read_text()
    assert old in text
    toml.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        ParticipantConfig.load(toml)
    assert err.value.key == key
    assert shown in str(err.value) and str(toml.resolve()) in str(err.value)


def test_secure_mode_key_turns_on_the_csprng(tmp_path: Path) -> None:
    toml = _init(tmp_path)
    toml.write_text(toml.read_text().replace("secure-mode = false", "secure-mode = true"))
    assert ParticipantConfig.load(toml).training.secure_mode is True


def test_start_reads_the_coordinator_table_through_the_config(tmp_path: Path) -> None:
    """A site without [coordinator] (fine-tune-only, or the old flat layout moved out)
    loads for every other command, and `start` refuses it by name."""
    toml = _init(tmp_path)
    text = toml.read_text()
    head, _, tail = text.partition("[coordinator]")
    toml.write_text(head + tail[tail.index("[data]"):])
    cfg = ParticipantConfig.load(toml)
    assert cfg.coordinator is None
    out = CliRunner().invoke(app, ["participant", "start", "--config", str(toml)])
    assert isinstance(out.exception, ConfigError) and out.exception.key == "coordinator"


def test_the_old_flat_layout_is_refused_by_key(tmp_path: Path) -> None:
    toml = tmp_path / "participant.toml"
    toml.write_text('coordinator = "fl.example.com:443"\nlocal-port = 9094\n'
                    '[participant]\nname = "x"\nmax-epsilon = 1.0\n')
    with pytest.raises(ConfigError) as err:
        ParticipantConfig.load(toml)
    assert err.value.key in ("data", "coordinator")


def test_node_key_in_participant_table_is_still_read(tmp_path: Path) -> None:
    """Existing files keep node-key under [participant]; it serves [coordinator]."""
    toml = _init(tmp_path)
    text = toml.read_text().replace('node-key = "keys/node_key"\n', "", 1)
    toml.write_text(text.replace("delta = 1e-5", 'delta = 1e-5\nnode-key = "keys/node_key"'))
    cfg = ParticipantConfig.load(toml)
    assert cfg.coordinator is not None
    assert cfg.coordinator.node_key == toml.parent.resolve() / "keys" / "node_key"


def test_daemon_is_pinned_to_the_installed_code_unless_the_config_says_otherwise(
        tmp_path: Path) -> None:
    from participant.pinning import CodePin

    toml = _init(tmp_path)
    assert supernode_plan(ParticipantConfig.load(toml)).code_pin == CodePin.installed()
    text = toml.read_text()
    fab = "ab" * 32
    toml.write_text(text + f'\n[code-pin]\nfab-sha256 = ["{fab}"]\n')
    plan = supernode_plan(ParticipantConfig.load(toml))
    assert plan.code_pin is not None and plan.code_pin.fab_sha256 == frozenset({fab})
    assert not plan.code_pin.installed_fedadmet and not plan.unsafe_run_unpinned_code


def test_unpinned_daemon_needs_the_unsafe_key_and_never_with_a_pin(tmp_path: Path) -> None:
    toml = _init(tmp_path)
    text = toml.read_text().replace("[coordinator]\n",
                                    "[coordinator]\nunsafe-run-unpinned-code = true\n")
    toml.write_text(text)
    plan = supernode_plan(ParticipantConfig.load(toml))
    assert plan.code_pin is None and plan.unsafe_run_unpinned_code
    toml.write_text(text + '\n[code-pin]\ninstalled-fedadmet = true\n')
    with pytest.raises(ConfigError) as err:
        ParticipantConfig.load(toml)
    assert "unsafe-run-unpinned-code" in str(err.value)


def test_code_pin_typo_is_refused_by_name(tmp_path: Path) -> None:
    toml = _init(tmp_path)
    toml.write_text(toml.read_text() + '\n[code-pin]\nfab-sha = ["00"]\n')
    with pytest.raises(ConfigError) as err:
        ParticipantConfig.load(toml)
    assert "fab-sha" in str(err.value)
