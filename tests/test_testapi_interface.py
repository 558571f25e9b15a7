"""The test API server's modules meet through public names only, and import one way.

The handler and the control requests see the server through `ServedAPI`; none of the
package's modules reaches into another object's private members (`x._name` with x other
than self or cls), and the handler, the control requests and the interface never import
the server.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from ipvsproxy_testkit.testapi import interface

TESTAPI = Path(interface.__file__).resolve().parent
MODULES = sorted(path.name for path in TESTAPI.glob("*.py"))


def test_the_glob_finds_the_server_modules() -> None:
    assert {"server.py", "handler.py", "control.py", "interface.py"} <= set(MODULES)


def _foreign_private_access(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("module", MODULES)
def test_no_module_touches_another_objects_private_members(module: str) -> None:
    assert _foreign_private_access(TESTAPI / module) == []


def _own_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    prefix = "ipvsproxy_testkit.testapi."
    return {name.removeprefix(prefix) for name in names if name.startswith(prefix)}


@pytest.mark.parametrize(
    ("module", "must_not_import"),
    [
        ("handler.py", {"server"}),
        ("control.py", {"server", "handler"}),
        ("interface.py", {"server", "handler", "control"}),
    ],
)
def test_imports_go_from_the_server_down(module: str, must_not_import: set[str]) -> None:
    assert _own_imports(TESTAPI / module) & must_not_import == set()
