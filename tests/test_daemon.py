"""`run`'s wiring in one process: the test API server, the real reflectors and client, the
agent on the fake kernel, and healthz / metrics over real HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ipvsproxy.agent import AgentSettings
from ipvsproxy.apply import Dataplanes
from ipvsproxy.config import BindAddress, ProxyConfig
from ipvsproxy.daemon import run_daemon
from ipvsproxy.dataplane.fake import FakeIptables, FakeKernel
from ipvsproxy.desired import NodeInfo
from ipvsproxy.testapi import TestAPIServer, kubeconfig
from ipvsproxy.testapi.resources import ENDPOINT_SLICES, SERVICES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition the daemon's threads bring about (not a timer of the code under test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def svc(name: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }


def eps(name: str, service: str, *ips: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
    }


@pytest.fixture
def api() -> Iterator[TestAPIServer]:
    with TestAPIServer(bookmark_interval=0.2) as server:
        yield server


def test_run_follows_the_api_server_and_serves_health_and_metrics(
    api: TestAPIServer, tmp_path: Path
) -> None:
    config_file = tmp_path / "kubeconfig"
    config_file.write_text(kubeconfig(api.url))
    healthz, metrics = free_port(), free_port()
    config = ProxyConfig(
        kubeconfig=str(config_file),
        healthz_bind_address=BindAddress.parse(f"127.0.0.1:{healthz}", default_port=0),
        metrics_bind_address=BindAddress.parse(f"127.0.0.1:{metrics}", default_port=0),
    )
    api.store.create(SERVICES, "default", svc("web", "10.96.0.10"))
    kernel = FakeKernel()
    dataplanes = Dataplanes(ipvs=kernel, links=kernel, ipsets=kernel, iptables=FakeIptables(kernel))
    stop = threading.Event()
    daemon = threading.Thread(
        target=run_daemon,
        args=(config, dataplanes, AgentSettings(node=NodeInfo(name="n1"))),
        kwargs={"stop": stop, "traffic": kernel.stats},
        daemon=True,
    )
    daemon.start()
    try:
        wait_for(lambda: len(kernel.services) == 1)
        api.store.create(
            ENDPOINT_SLICES, "default", eps("web-1", "web", "10.244.1.1", "10.244.2.2")
        )
        wait_for(lambda: sum(len(d) for d in kernel.destinations.values()) == 2)
        api.store.delete(SERVICES, "default", "web")
        wait_for(lambda: not kernel.services and not kernel.links["kube-ipvs0"])

        with urllib.request.urlopen(f"http://127.0.0.1:{healthz}/healthz") as answer:
            body = json.loads(answer.read())
        assert answer.status == 200 and body["nodeEligible"] is True
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics") as answer:
            text = answer.read().decode()
        assert "kubeproxy_sync_partial_proxy_rules_duration_seconds_count" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/proxyMode") as answer:
            assert answer.read() == b"ipvs"
    finally:
        started = time.monotonic()
        stop.set()
        daemon.join(5)
        assert not daemon.is_alive()
        assert time.monotonic() - started < 1.0


def test_run_serves_health_check_node_ports(api: TestAPIServer, tmp_path: Path) -> None:
    config_file = tmp_path / "kubeconfig"
    config_file.write_text(kubeconfig(api.url))
    health_port = free_port()
    config = ProxyConfig(
        kubeconfig=str(config_file),
        healthz_bind_address=BindAddress.parse(f"127.0.0.1:{free_port()}", default_port=0),
        metrics_bind_address=BindAddress.parse(f"127.0.0.1:{free_port()}", default_port=0),
    )
    lb = svc("lb", "10.96.0.20")
    lb["spec"] |= {
        "type": "LoadBalancer",
        "externalTrafficPolicy": "Local",
        "healthCheckNodePort": health_port,
    }
    lb["spec"]["ports"][0]["nodePort"] = 30080
    api.store.create(SERVICES, "default", lb)
    local = eps("lb-1", "lb", "10.244.1.1")
    local["endpoints"][0]["nodeName"] = "n1"
    api.store.create(ENDPOINT_SLICES, "default", local)
    kernel = FakeKernel()
    dataplanes = Dataplanes(ipvs=kernel, links=kernel, ipsets=kernel, iptables=FakeIptables(kernel))
    stop = threading.Event()
    daemon = threading.Thread(
        target=run_daemon,
        args=(config, dataplanes, AgentSettings(node=NodeInfo(name="n1"))),
        kwargs={"stop": stop},
        daemon=True,
    )
    daemon.start()

    def answer() -> tuple[int, dict[str, Any]] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/") as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return None

    try:
        wait_for(lambda: answer() is not None)
        assert answer() == (
            200,
            {
                "service": {"namespace": "default", "name": "lb"},
                "localEndpoints": 1,
                "serviceProxyHealthy": True,
            },
        )
        local["endpoints"][0]["nodeName"] = "n2"  # the only endpoint moves off this node
        api.store.replace(ENDPOINT_SLICES, "default", "lb-1", local)
        wait_for(lambda: (answer() or (0, {}))[0] == 503)
        api.store.delete(SERVICES, "default", "lb")
        wait_for(lambda: answer() is None)
    finally:
        stop.set()
        daemon.join(5)
        assert not daemon.is_alive()
