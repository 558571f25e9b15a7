"""What the Dockerfile prunes from the installed packages is never loaded by the agent.

The image removes listed paths under site-packages (`rm -rf .../site-packages/PATH` in the
Dockerfile). Here, in the development environment (the same pinned packages), the agent's
way to the API server is exercised as far as it goes without a server, and every module it
has loaded by then must lie outside every pruned path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kubernetes
from ipvsproxy_testkit.image import pruned

SITE = Path(kubernetes.__file__).resolve().parents[1]

# connect() imports kubernetes.client and kubernetes.config (kubeconfig and in-cluster),
# then each request imports kubernetes.client.exceptions and urllib3.
_LOAD = """
import json, sys
from ipvsproxy.k8s.client import ClientSettings, connect
connect(ClientSettings(master="https://127.0.0.1:1"))
import kubernetes.client.exceptions, kubernetes.config, urllib3
print(json.dumps(sorted(
    m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)
)))
"""


def test_the_dockerfile_prunes_paths_that_exist() -> None:
    paths = pruned()
    assert "kubernetes/aio" in paths
    for path in paths:
        assert (SITE / path).exists(), f"{path}: not in the installed packages"


def test_no_module_the_agent_loads_is_pruned() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LOAD], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = [Path(f).resolve() for f in json.loads(done.stdout)]
    assert any(f.is_relative_to(SITE / "kubernetes" / "client") for f in loaded)
    for path in pruned():
        gone = SITE / path
        hit = [str(f) for f in loaded if f == gone or f.is_relative_to(gone)]
        assert not hit, f"{path} is pruned from the image but the agent loads {hit[:3]}"
