"""A rebooted node whose API server is reachable only at a node address, not through the
`kubernetes` Service: the DaemonSet's configuration (kubeadm's kube-proxy kubeconfig,
passed with --kubeconfig as deploy/ passes it) programs everything from an empty kernel;
the plain in-cluster configuration, which dials the Service's ClusterIP, cannot, and says
so in one line while /healthz stays unready."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentproc import AGENT_CONFIG, HEALTHZ_PORT, Agent, http_json, tool, wait_for
from ipvsproxy_testkit.testapi import TestAPIServer
from ipvsproxy_testkit.testapi.resources import ENDPOINT_SLICES, SERVICES

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
NODE_ADDRESS = "192.168.50.1"  # the control plane's own address, on this node
KUBERNETES_IP = "10.96.0.1"
SERVICE_ACCOUNT = Path("/run/secrets/kubernetes.io/serviceaccount")  # /var/run is /run
# kubeadm's kube-proxy ConfigMap, key kubeconfig.conf: the shape deploy/ mounts.
KUBEADM_KUBECONFIG = ROOT / "deploy/overlays/without-kube-proxy/kubeconfig.conf"


def kubernetes_service(api_port: int) -> list[tuple[Any, dict[str, Any]]]:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "spec": {
            "clusterIP": KUBERNETES_IP,
            "clusterIPs": [KUBERNETES_IP],
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": api_port}],
        },
    }
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubernetes"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "https", "port": api_port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [NODE_ADDRESS], "conditions": {"ready": True}}],
    }
    return [(SERVICES, service), (ENDPOINT_SLICES, endpoints)]


def deployed_kubeconfig(tmp_path: Path, server: str) -> Path:
    """deploy/'s kubeconfig with this API server's URL, its token file here."""
    document = yaml.safe_load(KUBEADM_KUBECONFIG.read_text())
    document["clusters"][0]["cluster"]["server"] = server
    document["users"][0]["user"]["tokenFile"] = str(SERVICE_ACCOUNT / "token")
    path = tmp_path / "kubeconfig.conf"
    path.write_text(yaml.safe_dump(document))
    return path


def virtual_servers() -> list[str]:
    return [line.split()[1] for line in tool("ipvsadm", "-Ln").splitlines()[3:] if "->" not in line]


def test_rebooted_node_reaches_the_api_server_only_without_a_service_ip(tmp_path: Path) -> None:
    tool("ip", "link", "add", "node0", "type", "dummy")
    tool("ip", "addr", "add", f"{NODE_ADDRESS}/24", "dev", "node0")
    tool("ip", "link", "set", "node0", "up")
    SERVICE_ACCOUNT.mkdir(parents=True, exist_ok=True)
    (SERVICE_ACCOUNT / "token").write_text("a-service-account-token\n")
    (SERVICE_ACCOUNT / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    config = tmp_path / "config.conf"
    config.write_text(AGENT_CONFIG)
    with TestAPIServer(host=NODE_ADDRESS).start() as api:
        port = int(api.url.rsplit(":", 1)[1])
        for resource, obj in kubernetes_service(port):
            api.store.create(resource, "default", obj)
        assert virtual_servers() == []  # rebooted: nothing of any proxy's

        # The plain in-cluster configuration: kubelet's KUBERNETES_SERVICE_HOST/PORT.
        env = {"KUBERNETES_SERVICE_HOST": KUBERNETES_IP, "KUBERNETES_SERVICE_PORT": "443"}
        stuck = Agent(tmp_path, None, config, env={**os.environ, **env})
        try:
            wait_for(
                "the line about the Service IP",
                lambda: "looks like a Service IP" in stuck.log(),
                90,
            )
            lines = [line for line in stuck.log().splitlines() if "looks like a Service IP" in line]
            assert len(lines) == 1, stuck.log()
            assert "KUBERNETES_SERVICE_HOST" in lines[0] and "--kubeconfig" in lines[0]
            print(lines[0])
            wait_for("the health server", lambda: _answers("/livez"), 30)
            status, body = http_json(HEALTHZ_PORT, "/healthz")
            assert status == 503 and body["healthy"] is False
            assert http_json(HEALTHZ_PORT, "/livez")[0] == 200  # no restart loop
            time.sleep(1)
            assert virtual_servers() == []
        finally:
            stuck.stop(signal.SIGKILL)

        # deploy/'s configuration: the control plane's own address, from kubeconfig.conf.
        agent = Agent(tmp_path, deployed_kubeconfig(tmp_path, api.url), config)
        try:
            agent.wait_synced()
            assert virtual_servers() == [f"{KUBERNETES_IP}:443"]
            assert f"{NODE_ADDRESS}:{port}" in tool("ipvsadm", "-Ln")
            wait_for("/healthz ready", lambda: http_json(HEALTHZ_PORT, "/healthz")[0] == 200, 10)
            assert "looks like a Service IP" not in agent.log()
            assert "is the ClusterIP of Service" not in agent.log()
        finally:
            agent.stop()

        # The Service IP again, now that the dataplane is in place: it works, for now,
        # and the agent says it will not after a reboot.
        through_service = deployed_kubeconfig(tmp_path, f"http://{KUBERNETES_IP}:443")
        lucky = Agent(tmp_path, through_service, config)
        try:
            lucky.wait_synced()
            wait_for("the warning", lambda: "is the ClusterIP of Service" in lucky.log(), 30)
            (line,) = [x for x in lucky.log().splitlines() if "is the ClusterIP of Service" in x]
            assert "default/kubernetes" in line and "--kubeconfig" in line
            print(line)
        finally:
            lucky.stop()


def _answers(path: str) -> bool:
    try:
        http_json(HEALTHZ_PORT, path)
    except OSError:
        return False
    return True
