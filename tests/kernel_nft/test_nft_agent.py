"""`ipvsproxy run` against the test API server on a node whose iptables is nft.

One change, as the user-mode-linux agent tests do many: the agent (its own process, as a
DaemonSet runs it) detects the nft backend, programs it, follows an endpoint change, and
its periodic full syncs leave the nft chains exactly as they were (each jump once).
The agent imports the kubernetes client, which takes tens of seconds in this guest.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ipvsproxy.dataplane.iptables import parse_save
from ipvsproxy.rules import JUMP_RULES
from ipvsproxy.sandbox.pods import PodNetwork
from ipvsproxy.testapi import TestAPIServer, kubeconfig
from ipvsproxy.testapi.resources import ENDPOINT_SLICES, SERVICES

pytestmark = pytest.mark.kernel_qemu

START_TIMEOUT = 400.0


def tool(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True).stdout


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def endpoint_slice(*addresses: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-1",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
    }


SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {
        "type": "ClusterIP",
        "clusterIP": "10.96.0.10",
        "clusterIPs": ["10.96.0.10"],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
    },
}


def real_servers() -> set[str]:
    return {
        line.split()[1]
        for line in tool("ipvsadm", "-Ln").splitlines()[3:]
        if line.startswith("  -> ")
    }


def syncs() -> float:
    """Syncs the agent finished, full and partial, from its /metrics."""
    with urllib.request.urlopen("http://127.0.0.1:10249/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ipvsproxy_syncs_total")
    )


def test_agent_programs_nft_and_follows_one_change(tmp_path: Path, pod_network: PodNetwork) -> None:
    for index in (1, 2):
        pod_network.add_pod(f"web{index}", f"10.244.{index}.1")
    pod_network.serve(8080)
    with TestAPIServer().start() as api:
        api.store.create(SERVICES, "shop", SERVICE)
        api.store.create(ENDPOINT_SLICES, "shop", endpoint_slice("10.244.1.1"))
        (tmp_path / "kubeconfig").write_text(kubeconfig(api.url))
        (tmp_path / "kube-proxy.yaml").write_text(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
            "mode: ipvs\nsyncPeriod: 2s\nminSyncPeriod: 0s\nclusterCIDR: 10.244.0.0/16\n"
        )
        log = tmp_path / "agent.log"
        with log.open("w") as out:
            agent = subprocess.Popen(
                [
                    *(sys.executable, "-m", "ipvsproxy.cli", "run"),
                    *("--kubeconfig", str(tmp_path / "kubeconfig")),
                    *("--config", str(tmp_path / "kube-proxy.yaml")),
                    *("--hostname-override", "node-a"),
                    *("--healthz-bind-address", "127.0.0.1:10256"),
                    *("--metrics-bind-address", "127.0.0.1:10249"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for("the first sync", lambda: real_servers() == {"10.244.1.1:8080"}, START_TIMEOUT)
            assert "backend=nft" in log.read_text()
            first = parse_save(tool("iptables-nft-save"))
            assert "KUBE-SERVICES" in first["nat"]
            assert "KUBE-" not in tool("iptables-legacy-save")

            api.store.replace(
                ENDPOINT_SLICES, "shop", "web-1", endpoint_slice("10.244.1.1", "10.244.2.1")
            )
            wait_for(
                "the second endpoint",
                lambda: real_servers() == {"10.244.1.1:8080", "10.244.2.1:8080"},
                60.0,
            )
            replies = pod_network.tcp_requests("10.96.0.10", 80, 4)
            assert sorted(replies) == ["web1", "web1", "web2", "web2"]
            # Two more periodic full syncs: the nft chains stay as they were.
            seen = syncs()
            wait_for("two periodic syncs", lambda: syncs() >= seen + 2, 60.0)
            after = parse_save(tool("iptables-nft-save"))
            assert after == first
            assert [after[j.table][j.chain].count(j.rule) for j in JUMP_RULES] == [1] * len(
                JUMP_RULES
            )
        except BaseException:
            print(f"--- agent log ---\n{log.read_text()}")
            raise
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=20)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
    assert agent.returncode == 0, log.read_text()
