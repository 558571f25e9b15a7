"""The real kubectl against the test API server: create, replace, get, watch, apply, delete.

kubectl must be installed (Debian's kubernetes-client package; ./setup.sh installs it when
no kubectl is on the PATH): without it these tests fail rather than skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ipvsproxy_testkit.testapi import TestAPIServer, kubeconfig

DATA = Path(__file__).parent / "data"

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: true}
ports:
- name: http
  port: 8080
  protocol: TCP
"""


def kubectl_binary() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl is not installed: install Debian's kubernetes-client package "
            "(apt-get install kubernetes-client, or run ./setup.sh)"
        )
    return found


class Kubectl:
    def __init__(self, config: Path, cache: Path) -> None:
        self.base = [kubectl_binary(), "--kubeconfig", str(config), "--cache-dir", str(cache)]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=60, check=False
        )
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)


@pytest.fixture
def server() -> Iterator[TestAPIServer]:
    with TestAPIServer() as running:
        yield running


@pytest.fixture
def kubectl(server: TestAPIServer, tmp_path: Path) -> Kubectl:
    config = tmp_path / "kubeconfig"
    config.write_text(kubeconfig(server.url))
    return Kubectl(config, tmp_path / "cache")


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "web.yaml"
    path.write_text(SERVICE)
    return path


def test_create_get_replace_delete(kubectl: Kubectl, manifest: Path) -> None:
    created = kubectl("create", "-f", str(manifest)).stdout
    assert "service/web created" in created
    assert "endpointslice.discovery.k8s.io/web-abc created" in created

    services = kubectl.json("get", "svc", "-A")
    [web] = [s for s in services["items"] if s["metadata"]["name"] == "web"]
    assert web["spec"]["clusterIP"].startswith("10.96.")
    assert web["spec"]["ports"] == [
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}
    ]
    slices = kubectl.json("get", "endpointslices", "-A")
    assert [s["metadata"]["name"] for s in slices["items"]] == ["web-abc"]
    assert slices["items"][0]["endpoints"][0]["addresses"] == ["10.244.1.5"]

    manifest.write_text(SERVICE.replace("10.244.1.5", "10.244.1.6"))
    assert "replaced" in kubectl("replace", "-f", str(manifest)).stdout
    replaced = kubectl.json("get", "endpointslice", "-n", "shop", "web-abc")
    assert replaced["endpoints"][0]["addresses"] == ["10.244.1.6"]
    # The cluster IP allocated at creation survives a replace that does not name it.
    assert (
        kubectl.json("get", "svc", "-n", "shop", "web")["spec"]["clusterIP"]
        == (web["spec"]["clusterIP"])
    )

    deleted = kubectl("delete", "-f", str(manifest)).stdout
    assert 'service "web" deleted' in deleted
    assert kubectl.json("get", "svc", "-n", "shop")["items"] == []
    missing = kubectl("get", "svc", "-n", "shop", "web", check=False)
    assert missing.returncode != 0 and 'services "web" not found' in missing.stderr


def test_apply_patch_and_label(kubectl: Kubectl, manifest: Path) -> None:
    kubectl("apply", "-f", str(manifest))
    kubectl("label", "svc", "-n", "shop", "web", "tier=front")
    kubectl("patch", "svc", "-n", "shop", "web", "-p", '{"spec":{"sessionAffinity":"ClientIP"}}')
    second = kubectl("apply", "-f", str(manifest)).stdout
    assert "endpointslice.discovery.k8s.io/web-abc unchanged" in second

    manifest.write_text(SERVICE.replace("port: 80\n", "port: 81\n"))
    kubectl("apply", "-f", str(manifest))
    web = kubectl.json("get", "svc", "-n", "shop", "web")
    # Strategic merge: the port list is merged by port, the label and the patch are kept.
    assert web["spec"]["ports"] == [
        {"name": "http", "port": 81, "protocol": "TCP", "targetPort": 8080}
    ]
    assert web["metadata"]["labels"] == {"app": "web", "tier": "front"}
    assert web["spec"]["sessionAffinity"] == "ClientIP"


def test_get_watch_prints_changes(server: TestAPIServer, kubectl: Kubectl, manifest: Path) -> None:
    kubectl("create", "-f", str(manifest))
    with subprocess.Popen(
        [*kubectl.base, "get", "svc", "-A", "--watch", "-o", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as watcher:
        try:
            assert watcher.stdout is not None
            decoder = json.JSONDecoder()
            buffer = ""
            seen: list[dict[str, Any]] = []
            while len(seen) < 2:
                line = watcher.stdout.readline()
                assert line, (
                    f"kubectl ended early: {watcher.stderr.read() if watcher.stderr else ''}"
                )
                buffer += line
                if line.startswith("}"):
                    seen.append(decoder.decode(buffer))
                    buffer = ""
                    if len(seen) == 1:
                        kubectl("label", "svc", "-n", "shop", "web", "tier=front")
        finally:
            watcher.kill()
    assert seen[0]["metadata"]["name"] == "web" and "tier" not in seen[0]["metadata"]["labels"]
    assert seen[1]["metadata"]["labels"]["tier"] == "front"
    assert int(seen[1]["metadata"]["resourceVersion"]) > int(seen[0]["metadata"]["resourceVersion"])


def test_command_line_serves_a_file_to_kubectl(tmp_path: Path) -> None:
    config = tmp_path / "kc"
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ipvsproxy_testkit.testapi",
            "-f",
            str(DATA / "k8s_example.yaml"),
            "--port",
            "0",
            "--kubeconfig-out",
            str(config),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            kubectl = Kubectl(config, tmp_path / "cache")
            services = kubectl.json("get", "svc", "-A")
            names = {
                f"{s['metadata']['namespace']}/{s['metadata']['name']}" for s in services["items"]
            }
            assert {"default/kubernetes", "kube-system/kube-dns"} <= names
            assert url in config.read_text()
        finally:
            process.terminate()
        assert process.wait(timeout=10) == 0


def test_get_prints_the_columns_kubectl_shows_for_a_real_server(
    kubectl: Kubectl, manifest: Path
) -> None:
    kubectl("create", "-f", str(manifest))
    ip = kubectl.json("get", "svc", "-n", "shop", "web")["spec"]["clusterIP"]
    header, row = kubectl("get", "svc", "-n", "shop").stdout.splitlines()
    assert header.split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert row.split()[:5] == ["web", "ClusterIP", ip, "<none>", "80/TCP"]
    header, row = kubectl("get", "endpointslices", "-A").stdout.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    assert row.split()[:5] == ["shop", "web-abc", "IPv4", "8080", "10.244.1.5"]
