import pytest

from coordinator.config import FederationConfig
from protocols.endpoints import EndpointSpec
from protocols.errors import ConfigError

RAW = {"federation": {"id": "fed"}, "model": {"endpoints": [
    {"name": "logd", "task": "regression", "unit": "log10", "target-offset": 2.0,
     "target-scale": 1.5},
    {"name": "herg", "task": "classification"}]}}


def test_federation_endpoints_are_the_contract_endpoint_spec() -> None:
    cfg = FederationConfig.from_mapping(RAW)
    assert cfg.model.endpoints == (
        EndpointSpec(name="logd", task="regression", unit="log10", target_offset=2.0,
                     target_scale=1.5),
        EndpointSpec(name="herg", task="classification"))


def test_config_digest_is_a_known_answer() -> None:
    # The attested config digest did not change when the endpoint type moved home; it did
    # change once, on purpose, when the plan's default optimizer became SGD (lr 1.0).
    assert FederationConfig.from_mapping(RAW).digest() == (
        "fb303f18388e9f3e386bde4eb8162131e7dd146be24b896fc5290f9db03d962d")


def test_an_endpoint_name_that_is_no_identifier_is_refused_at_load() -> None:
    bad = {**RAW, "model": {"endpoints": [{"name": "log d", "task": "regression"}]}}
    with pytest.raises(ConfigError, match=r"endpoint\.name"):
        FederationConfig.from_mapping(bad)
