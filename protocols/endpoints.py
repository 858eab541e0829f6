"""One consortium endpoint, as every party names it: the contract's prediction target.

The coordinator reads endpoints from ``federation.toml`` and announces them in each round's
model spec (``RoundInstruction.model_spec``); every site builds its heads from the same
:class:`EndpointSpec`. It lives here, in the contract, because both sides need it and
neither may import the other (``chem.models`` builds the model from it).

Regression targets are scaled with a fixed, agreed ``target_offset`` and ``target_scale``
(part of the spec, never estimated from one site's data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from protocols.errors import ConfigError

__all__ = ["TASKS", "EndpointSpec", "Task"]

Task = Literal["regression", "classification"]
TASKS: tuple[Task, ...] = ("regression", "classification")


@dataclass(frozen=True, kw_only=True)
class EndpointSpec:
    """One prediction target."""

    name: str
    task: Task
    unit: str = ""
    target_offset: float = 0.0
    target_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError("endpoint.name", "must be a non-empty identifier", got=self.name,
                              expected="letters, digits, '_' or '-'")
        if self.task not in TASKS:
            raise ConfigError("endpoint.task", "unknown task", got=self.task,
                              expected=" | ".join(TASKS))
        if not self.target_scale > 0:
            raise ConfigError("endpoint.target_scale", "must be positive", got=self.target_scale)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "task": self.task, "unit": self.unit,
                "target_offset": self.target_offset, "target_scale": self.target_scale}
