"""The whole import rule, read statically from every module (function-level imports included).

Imports flow one way: ``protocols`` <- ``chem`` <- ``participant``, and ``protocols`` <-
``coordinator`` (which also builds the shared model from ``chem``). ``fedadmet`` (the command
line) may import everything and nothing imports it; ``simulations`` may import everything but
``fedadmet`` and only ``fedadmet`` imports it. ``chem`` never imports Flower, and inside
``protocols`` only the codec knows Flower.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocols", "chem", "participant", "coordinator", "simulations", "fedadmet")

# package -> top-level names it must never import
FORBIDDEN: dict[str, frozenset[str]] = {
    "protocols": frozenset({"chem", "participant", "coordinator", "simulations", "fedadmet"}),
    "chem": frozenset({"participant", "coordinator", "simulations", "fedadmet", "flwr"}),
    "participant": frozenset({"coordinator", "simulations", "fedadmet"}),
    "coordinator": frozenset({"participant", "simulations", "fedadmet"}),
    "simulations": frozenset({"fedadmet"}),
    "fedadmet": frozenset(),
}
# The one module of protocols that may know Flower's records.
FLOWER_IN_PROTOCOLS = {"protocols/flower_codec.py"}


def imported_top_levels(path: Path) -> set[str]:
    """Top-level package names imported anywhere in ``path`` (absolute imports only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        banned = set(FORBIDDEN[package])
        if package == "protocols" and rel not in FLOWER_IN_PROTOCOLS:
            banned.add("flwr")
        found += [f"{rel} imports {name}" for name in sorted(imported_top_levels(path) & banned)]
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_follow_the_rule(package: str) -> None:
    assert violations(package) == []


def test_the_scanner_sees_function_level_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from coordinator.config import x\n    import flwr.app\n")
    assert imported_top_levels(module) == {"coordinator", "flwr"}


def test_every_package_is_scanned() -> None:
    # A new top-level package must be placed in the rule before it can import anything.
    present = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} - {"tests"}
    assert present == set(PACKAGES)
