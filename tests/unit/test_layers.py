"""The house's floors: a package imports only packages below it (the launcher on
top, the roles on the floor below, the runtime under them, the contract at the
bottom; tools stand apart). Read from the source's imports, lazy ones included."""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
MAY_IMPORT: dict[str, set[str]] = {
    "bus_schema": set(),
    "runtime": {"bus_schema"},
    "edge": {"bus_schema", "runtime"},
    "room_actors": {"bus_schema", "runtime"},
    "webhooks": {"bus_schema", "runtime"},
    "tools": set(),
    "signaling": {"bus_schema", "runtime", "edge", "room_actors", "webhooks", "tools"},
}
"""Each package, and the project packages it may import besides itself."""


def imported_packages(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & MAY_IMPORT.keys()


def test_no_package_imports_one_above_it() -> None:
    wrong = []
    for package, allowed in MAY_IMPORT.items():
        files = sorted((ROOT / package).rglob("*.py"))
        assert files, package
        for path in files:
            for imported in sorted(imported_packages(path) - allowed - {package}):
                wrong.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert wrong == []


def test_every_package_has_a_floor() -> None:
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()} - {
        "tests",
        "bench",
        "examples",
    }
    assert packages == MAY_IMPORT.keys()
