"""What the image leaves out of the installed packages is never needed by the agent.

The Dockerfile removes listed paths under site-packages (`rm -rf .../site-packages/PATH`,
or `find .../PATH -mindepth 1 -not -name NAME -delete`), and the lock file leaves out the
distributions only the pruned paths import (NOT_INSTALLED). Here, in the development
environment (the same pinned packages), every module of the agent is imported and its way
to the API server is run for real (kubeconfig and --master, a list, an error) against the
test API server on loopback, with every left-out distribution unimportable; then no module
loaded may lie in a pruned path. tests/kernel/test_image_kernel.py runs the image itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes
import pytest
from ipvsproxy_testkit.image import NOT_INSTALLED, pruned

SITE = Path(kubernetes.__file__).resolve().parents[1]

_RUN = """
import importlib, importlib.abc, importlib.metadata, json, pkgutil, sys, tempfile

blocked = set()
for name in json.loads(sys.argv[1]):
    for file in importlib.metadata.distribution(name).files or ():
        top = file.parts[0]
        if not top.endswith((".dist-info", ".pth")) and top != "..":
            blocked.add(top.removesuffix(".py").split(".")[0])


class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"not in the image: {fullname}", name=fullname)
        return None


sys.meta_path.insert(0, Absent())

import ipvsproxy
from ipvsproxy_testkit.testapi import TestAPIServer

for module in pkgutil.walk_packages(ipvsproxy.__path__, "ipvsproxy."):
    importlib.import_module(module.name)

from ipvsproxy.errors import ApiError
from ipvsproxy.k8s.client import ClientSettings, connect

with TestAPIServer().start() as api, tempfile.NamedTemporaryFile("w", suffix=".yaml") as conf:
    conf.write(f'''
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{api.url}"}}}}]
users: [{{name: u, user: {{token: abc}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
''')
    conf.flush()
    for settings in (ClientSettings(master=api.url), ClientSettings(kubeconfig=conf.name)):
        connection = connect(settings)
        answer = connection.transport.get(
            "/api/v1/services", [("limit", "500")], timeout=(5.0, 5.0)
        )
        assert json.loads(answer.read())["kind"] == "ServiceList"
        try:
            connection.transport.get("/api/v1/nothing", [], timeout=(5.0, 5.0))
        except ApiError:
            pass
        else:
            raise AssertionError("a 404 was taken for an answer")
        connection.close()

loaded = sorted(m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None))
print(json.dumps({"blocked": sorted(blocked), "loaded": loaded}))
"""


@pytest.fixture(scope="module")
def agent_run() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _RUN, json.dumps(NOT_INSTALLED)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_the_dockerfile_prunes_paths_that_exist() -> None:
    paths = {p.path: p for p in pruned()}
    assert {"kubernetes/aio", "kubernetes/client/api", "kubernetes/client/models"} <= set(paths)
    assert paths["kubernetes/client/models"].keep == ("__init__.py",)
    for path in paths.values():
        assert (SITE / path.path).is_dir(), f"{path.path}: not in the installed packages"
        assert any(
            path.covers(PurePosixPath(f.relative_to(SITE))) for f in (SITE / path.path).iterdir()
        ), f"{path.path}: nothing of it is pruned"


def test_the_left_out_distributions_are_blocked(agent_run: dict[str, Any]) -> None:
    # The run had them unimportable: aiohttp's modules among them.
    assert {"aiohttp", "attr", "yarl", "multidict"} <= set(agent_run["blocked"])


def test_no_module_the_agent_loads_is_pruned(agent_run: dict[str, Any]) -> None:
    loaded = [Path(f).resolve() for f in agent_run["loaded"]]
    inside = [PurePosixPath(f.relative_to(SITE)) for f in loaded if f.is_relative_to(SITE)]
    # The requests went through the kubernetes client, and its models package was loaded.
    client = PurePosixPath("kubernetes/client")
    assert {client / "api_client.py", client / "rest.py", client / "models/__init__.py"} <= set(
        inside
    )
    for path in pruned():
        hit = [str(f) for f in inside if path.covers(f)]
        assert not hit, f"{path.path} is pruned from the image but the agent loads {hit[:3]}"
