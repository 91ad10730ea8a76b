"""Imports point one way, pipeline → transforms → model, so each layer can be tested and reused alone."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"model": {"pipeline", "transforms"}, "transforms": {"pipeline"}}


def imported_packages(source: str) -> set[str]:
    """Top-level package names a module imports."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_never_import_upper_ones(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path.read_text()) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


# pipeline/'s rooms and the rooms each may import (besides the shared modules errors.py, storage.py and failpoints.py,
# and the lower layers transforms and model); the README's layout table says the same. No arrow points back up, so no
# circle.
ROOMS = {
    "cli": {"run", "publish", "training"},
    "run": {"publish", "signals"},
    "publish": {"signals"},
    "signals": set(),
    "training": set(),
}
SHARED = {"errors", "storage", "failpoints"}


def imported_modules(source: str) -> set[str]:
    """Dotted names a module imports from (`from a.b import c` gives a.b and a.b.c)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update({node.module} | {f"{node.module}.{alias.name}" for alias in node.names})
    return names


def test_every_pipeline_module_sits_in_a_room_or_is_shared():
    loose = {p.stem for p in (ROOT / "pipeline").glob("*.py")} - SHARED - {"__init__", "__main__"}
    rooms = {p.name for p in (ROOT / "pipeline").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert (loose, rooms) == (set(), set(ROOMS))


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_rooms_import_only_the_rooms_below_them(room):
    offenders = {}
    for path in (ROOT / "pipeline" / room).rglob("*.py"):
        used = {name.split(".")[1] for name in imported_modules(path.read_text()) if name.startswith("pipeline.")}
        wrong = used - ROOMS[room] - SHARED - {room}
        if wrong:
            offenders[str(path.relative_to(ROOT))] = sorted(wrong)
    assert offenders == {}


def test_the_shared_modules_import_no_room():
    """errors.py and failpoints.py import nothing of the job; storage.py only the errors (its StorageError is one)."""
    allowed = {"errors": set(), "failpoints": set(), "storage": {"pipeline.errors", "pipeline.errors.JobError"}}
    for name in sorted(SHARED):
        used = {m for m in imported_modules((ROOT / "pipeline" / f"{name}.py").read_text()) if m.startswith("pipeline")}
        assert used <= allowed[name], name


# Private pyiceberg names are used in one module only, as transforms/beam_compat.py holds Beam's.
PYICEBERG_COMPAT = ROOT / "pipeline" / "publish" / "iceberg_compat.py"


def private_pyiceberg_uses(source: str) -> list[str]:
    """`_`-prefixed names imported from pyiceberg, and `_`-prefixed attributes of names imported from it."""
    tree = ast.parse(source)
    imported, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pyiceberg":
            for alias in node.names:
                imported.add(alias.asname or alias.name)
                if alias.name.startswith("_"):
                    found.append(f"{node.module}.{alias.name}")
    for node in ast.walk(tree):
        private = isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
        if private and isinstance(node.value, ast.Name) and node.value.id in imported:
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_private_pyiceberg_names_are_used_only_in_the_compat_module():
    offenders = {
        str(path.relative_to(ROOT)): private_pyiceberg_uses(path.read_text())
        for path in (ROOT / "pipeline").rglob("*.py")
        if path != PYICEBERG_COMPAT
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert private_pyiceberg_uses(PYICEBERG_COMPAT.read_text())  # the twin: the check sees what the module uses
