"""The whole import rule, read statically from every module (function-level imports included).

Imports flow one way: ``protocols`` <- ``chem`` <- ``participant``, and ``protocols`` <-
``coordinator`` (which also builds the shared model from ``chem``). ``fedadmet`` (the command
line) may import everything and nothing imports it; ``simulations`` may import everything but
``fedadmet`` and only ``fedadmet`` imports it. ``chem`` never imports Flower, and inside
``protocols`` only the codec knows Flower.

State is written one way: inside ``protocols`` only ``atomic_files`` writes to disk (the rest is
a pure contract), and nowhere in the tree does any other module rename or link a file into
place: every state file goes through ``protocols.atomic_files``.
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
# The one module of the tree that renames or links files into place, and the one module
# of protocols that writes to disk.
ATOMIC_FILES = "protocols/atomic_files.py"
# Scanned for hand-written atomic writes besides the packages (they write result files).
ALSO_SCANNED = ("benchmarks", "scripts")
# Calls that put a file in place: ``os.replace(tmp, path)`` and its relatives.
PLACING = frozenset({"os.replace", "os.rename", "os.renames", "os.link", "shutil.move"})
PLACING_METHODS = frozenset({"rename", "hardlink_to"})  # Path methods (str has neither)
# What protocols' pure modules must not call: everything that writes, creates or removes.
WRITING = PLACING | frozenset({
    "os.open", "os.write", "os.fsync", "os.remove", "os.unlink", "os.mkdir", "os.makedirs",
    "os.chmod", "os.fchmod", "tempfile.mkstemp", "tempfile.mkdtemp",
    "tempfile.NamedTemporaryFile", "tempfile.TemporaryDirectory", "shutil.rmtree",
    "shutil.copy", "shutil.copyfile", "np.save", "np.savez", "np.savez_compressed",
    "numpy.save", "numpy.savez"})
WRITING_METHODS = PLACING_METHODS | frozenset({"write_text", "write_bytes", "mkdir", "touch",
                                               "unlink", "rmdir", "tofile"})


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


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def file_calls(path: Path, *, functions: frozenset[str], methods: frozenset[str],
               writing_open: bool = False) -> list[str]:
    """Calls in ``path`` to ``functions`` (dotted, as written) or to any ``.method``, by line.

    ``from os import replace`` counts too, and with ``writing_open`` so does ``open`` in a
    writing (or computed) mode.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if f"{node.module}.{a.name}" in functions]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name == "open":
            if writing_open and _writing_mode(node):
                found.append(f"{node.lineno}: open(..., {_writing_mode(node)!r})")
        elif name in functions:
            found.append(f"{node.lineno}: {name}()")
        elif isinstance(node.func, ast.Attribute) and node.func.attr in methods:
            found.append(f"{node.lineno}: .{node.func.attr}()")
    return sorted(found, key=lambda f: int(f.split(":")[0]))


def _writing_mode(call: ast.Call) -> str | None:
    mode = call.args[1] if len(call.args) > 1 else next(
        (k.value for k in call.keywords if k.arg == "mode"), None)
    if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
        return mode.value if set(mode.value) & set("wax+") else None
    return None if mode is None else "<computed>"


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_follow_the_rule(package: str) -> None:
    assert violations(package) == []


def test_only_atomic_files_puts_files_in_place() -> None:
    # A hand-written temp-file-and-rename is how partial state and stray temp files come back.
    found = []
    for top in (*PACKAGES, *ALSO_SCANNED):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel != ATOMIC_FILES:
                found += [f"{rel}:{c}" for c in file_calls(path, functions=PLACING,
                                                            methods=PLACING_METHODS)]
    assert found == []


def test_only_atomic_files_writes_to_disk_in_protocols() -> None:
    found = []
    for path in sorted((ROOT / "protocols").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel != ATOMIC_FILES:
            found += [f"{rel}:{c}" for c in file_calls(path, functions=WRITING,
                                                        methods=WRITING_METHODS,
                                                        writing_open=True)]
    assert found == []


def test_the_write_scanner_sees_hand_written_atomic_writes(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os, tempfile\nfrom os import link\n"
                      "def f(p, tmp):\n    os.replace(tmp, p)\n    tmp.rename(p)\n"
                      "    'a'.replace('a', 'b')\n    open(p, 'wb')\n    open(p)\n"
                      "    tempfile.mkstemp()\n    p.write_text('x')\n")
    assert file_calls(module, functions=PLACING, methods=PLACING_METHODS) == [
        "2: from os import link", "4: os.replace()", "5: .rename()"]
    assert file_calls(module, functions=WRITING, methods=WRITING_METHODS,
                      writing_open=True) == [
        "2: from os import link", "4: os.replace()", "5: .rename()", "7: open(..., 'wb')",
        "9: tempfile.mkstemp()", "10: .write_text()"]


def test_the_scanner_sees_function_level_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from coordinator.config import x\n    import flwr.app\n")
    assert imported_top_levels(module) == {"coordinator", "flwr"}


def test_every_package_is_scanned() -> None:
    # A new top-level package must be placed in the rule before it can import anything.
    present = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} - {"tests"}
    assert present == set(PACKAGES)
