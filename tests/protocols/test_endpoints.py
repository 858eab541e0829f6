import pytest

from protocols.endpoints import EndpointSpec
from protocols.errors import ConfigError


def test_an_endpoint_round_trips_through_its_dict_form() -> None:
    spec = EndpointSpec(name="log-d_7", task="regression", unit="log10", target_offset=2.0,
                        target_scale=1.5)
    assert spec.to_dict() == {"name": "log-d_7", "task": "regression", "unit": "log10",
                              "target_offset": 2.0, "target_scale": 1.5}
    assert EndpointSpec(**spec.to_dict()) == spec


@pytest.mark.parametrize(("changes", "field"), [
    ({"name": ""}, "endpoint.name"),
    ({"name": "log d"}, "endpoint.name"),
    ({"name": "heads.x"}, "endpoint.name"),
    ({"task": "ranking"}, "endpoint.task"),
    ({"target_scale": 0.0}, "endpoint.target_scale"),
    ({"target_scale": -1.0}, "endpoint.target_scale"),
])
def test_an_unusable_endpoint_is_refused_naming_its_field(changes: dict[str, object],
                                                          field: str) -> None:
    args: dict[str, object] = {"name": "logd", "task": "regression", **changes}
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        EndpointSpec(**args)  # type: ignore[arg-type]
