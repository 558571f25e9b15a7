"""The architecture, checked: the pure core is a folder, and imports only flow downward.

- Every module under ipvsproxy/core/ turns values into values: it may import the standard
  library's pure modules, loguru, ipvsproxy.errors and other core modules, nothing else (no
  kernel adapter, process, socket I/O or Kubernetes client). The rule is a glob over the
  folder, so a new core module is checked without anyone adding it to a list.
- The object converter (k8s/objects.py) is pure too: API JSON in, core values out.
- The `kubernetes` package (seconds to import) is allowed under ipvsproxy/k8s/ only.
- The product never imports the test kit; the test kit is a distribution of its own.
- Packages depend downward only: core <- config <- dataplane, k8s, serve <- agent <- cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ipvsproxy"

# Standard-library modules a pure module may use: data structures and value types only.
PURE_STDLIB = {
    "__future__",
    "collections",
    "collections.abc",
    "contextlib",
    "dataclasses",
    "datetime",
    "enum",
    "functools",
    "gc",
    "ipaddress",
    "itertools",
    "operator",
    "re",
    "socket",  # address-family constants only (AF_INET, AF_INET6)
    "sys",
    "typing",
}
PURE_THIRD_PARTY = {"loguru"}
PURE_OWN = ("ipvsproxy.core", "ipvsproxy.errors")

# Which of the product's packages each package may import (besides itself). Top-level modules
# (errors, logs) are shared by everyone; cli is the composition root and may import anything.
ALLOWED_OWN_IMPORTS = {
    "core": {"core"},
    "dataplane": {"core", "config"},  # settings are values: sysctl applies them
    "config": {"core"},
    "k8s": {"core"},
    "serve": {"core", "config"},
    "agent": {"core", "dataplane", "k8s", "config", "serve"},
}
SHARED_TOP_LEVEL = {"errors", "logs", "version"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _pure_violations(path: Path) -> set[str]:
    return {
        name
        for name in imports(path)
        if name not in PURE_STDLIB
        and name.split(".")[0] not in PURE_THIRD_PARTY
        and not any(name == own or name.startswith(own + ".") for own in PURE_OWN)
    }


CORE_MODULES = sorted(path.name for path in (PACKAGE / "core").glob("*.py"))


def test_the_core_folder_holds_the_planners() -> None:
    # The glob below must find the core; an empty folder would pass every check vacuously.
    assert {"model.py", "desired.py", "full_plan.py", "partial_plan.py"} <= set(CORE_MODULES)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_nothing_with_effects(module: str) -> None:
    bad = _pure_violations(PACKAGE / "core" / module)
    assert not bad, f"core/{module} imports {sorted(bad)}"


def test_object_converter_is_pure() -> None:
    assert _pure_violations(PACKAGE / "k8s" / "objects.py") == set()


def test_kubernetes_client_only_under_k8s() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "k8s" not in path.relative_to(PACKAGE).parts
        and any(n == "kubernetes" or n.startswith("kubernetes.") for n in imports(path))
    ]
    assert offenders == []


def test_product_never_imports_the_test_kit() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(n.split(".")[0] == "ipvsproxy_testkit" for n in imports(path))
    ]
    assert offenders == []


@pytest.mark.parametrize("package", sorted(ALLOWED_OWN_IMPORTS))
def test_packages_depend_downward_only(package: str) -> None:
    allowed = ALLOWED_OWN_IMPORTS[package] | {package} | SHARED_TOP_LEVEL
    bad: dict[str, set[str]] = {}
    for path in (PACKAGE / package).rglob("*.py"):
        own = {n.split(".")[1] for n in imports(path) if n.startswith("ipvsproxy.")}
        if own - allowed:
            bad[str(path.relative_to(PACKAGE))] = own - allowed
    assert bad == {}


def test_readme_layout_lists_every_module() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    listed: set[str] = set()
    folder = ""
    for line in section.splitlines():
        if not line.startswith("      ") or not line.strip():
            continue
        name = line.split()[0]
        if line.startswith("      ") and not line.startswith("        ") and name.endswith("/"):
            folder = name
        elif name.endswith(".py"):
            listed.add((folder if line.startswith("        ") else "") + name)
    modules = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name not in {"__init__.py", "__main__.py"}
    }
    assert modules, "no modules found"
    assert sorted(modules - listed) == [], "modules missing from the README's Layout"
    assert sorted(listed - modules) == [], "the README's Layout lists modules that do not exist"
