"""No Flower process inherits a hostile variable; telemetry and update checks stay off."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocols.flower_env import ALLOWED, QUIET, flower_env

HOSTILE = {"FLWR_INTERNAL_GRPC_CONTROL_API": "1", "FLWR_INTERNAL_GRPC_FLEET_API": "1",
           "FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE": "999999999", "FLWR_OIDC_ENABLED": "1",
           "FLWR_ENABLE_EVENT_LOG": "1", "LD_PRELOAD": "/tmp/evil.so",
           "PYTHONSTARTUP": "/tmp/evil.py", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}


def test_hostile_flower_variables_in_the_parent_never_reach_a_flower_process() -> None:
    env = flower_env({**HOSTILE, "PATH": "/usr/bin", "LC_ALL": "C.UTF-8",
                      "HTTPS_PROXY": "http://proxy:3128"})
    assert not set(HOSTILE) & set(env)
    assert env["PATH"] == "/usr/bin" and env["LC_ALL"] == "C.UTF-8"
    assert env["HTTPS_PROXY"] == "http://proxy:3128"


def test_telemetry_and_update_check_cannot_be_turned_back_on() -> None:
    on = {"FLWR_TELEMETRY_ENABLED": "1", "FLWR_DISABLE_UPDATE_CHECK": "0",
          "FLWR_TRACING_ENABLED": "1"}
    env = flower_env(on, on)  # neither the parent nor a launcher's extras win
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert {k: env[k] for k in QUIET} == dict(QUIET)


def test_launcher_extras_pass_as_given() -> None:
    assert flower_env({}, {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"})[
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.2"


@given(st.dictionaries(st.text(st.characters(codec="ascii", categories=["Lu", "Nd"],
                                             include_characters="_"), min_size=1),
                       st.text(max_size=8), max_size=20))
def test_only_allow_listed_names_pass(parent: dict[str, str]) -> None:
    env = flower_env(parent)
    assert set(env) - set(QUIET) <= {k for k in parent
                                      if k in ALLOWED or k.startswith("LC_")}
