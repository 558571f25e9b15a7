"""The pure core stays pure: a tool-checked layering rule, in place of a linter plugin.

Core modules turn values into values; they must not import the kernel adapters, the
sandbox, process or netlink libraries, or the Kubernetes client. The `kubernetes` package
(seconds to import) is allowed under ipvsproxy/k8s/ only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ipvsproxy"
CORE = [
    "model.py",
    "operations.py",
    "ipsets.py",
    "rules.py",
    "desired.py",
    "endpoints.py",
    "conntrack.py",
    "graceful.py",
    "plan.py",
    "partial.py",
    "changes.py",
    "verify.py",
    "render.py",
    "errors.py",
    "k8s/objects.py",
]
FORBIDDEN_IN_CORE = (
    "ipvsproxy.dataplane",
    "ipvsproxy.sandbox",
    "ipvsproxy.cli",
    "pyroute2",
    "subprocess",
    "kubernetes",
)


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_effects(module: str) -> None:
    bad = {
        name
        for name in imports(PACKAGE / module)
        for prefix in FORBIDDEN_IN_CORE
        if name == prefix or name.startswith(prefix + ".")
    }
    assert not bad, f"{module} imports {sorted(bad)}"


def test_kubernetes_client_only_under_k8s() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "k8s" not in path.relative_to(PACKAGE).parts
        and any(n == "kubernetes" or n.startswith("kubernetes.") for n in imports(path))
    ]
    assert offenders == []
