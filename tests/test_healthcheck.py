"""Health-check node port servers, on loopback: what they answer and how sync keeps them."""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
from collections.abc import Iterator

import pytest
from builders import endpoint_slice, service

from ipvsproxy.serve.service_health import HealthCheckServers, health_check_ports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(port: int, host: str = "127.0.0.1") -> tuple[int, dict[str, str], object]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/anything")
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), json.loads(reply.read())
    finally:
        conn.close()


@pytest.fixture
def servers() -> Iterator[HealthCheckServers]:
    running = HealthCheckServers()
    yield running
    running.close()


def test_answers_like_kube_proxy(servers: HealthCheckServers) -> None:
    port = free_port()
    assert servers.serve({port: ("shop/web", 2)}) == []
    status, headers, body = get(port)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Load-Balancing-Endpoint-Weight"] == "2"
    assert body == {
        "service": {"namespace": "shop", "name": "web"},
        "localEndpoints": 2,
        "serviceProxyHealthy": True,
    }


def test_no_local_endpoint_is_503_and_serve_updates_in_place(servers: HealthCheckServers) -> None:
    port = free_port()
    servers.serve({port: ("shop/web", 1)})
    assert get(port)[0] == 200
    servers.serve({port: ("shop/web", 0)})
    status, headers, body = get(port)
    assert (status, headers["X-Load-Balancing-Endpoint-Weight"]) == (503, "0")
    assert body["localEndpoints"] == 0  # type: ignore[index]


def test_unhealthy_proxy_is_503() -> None:
    healthy = [True]
    running = HealthCheckServers(healthy=lambda: healthy[0])
    try:
        port = free_port()
        running.serve({port: ("shop/web", 3)})
        healthy[0] = False
        status, _, body = get(port)
        assert status == 503
        assert body["serviceProxyHealthy"] is False  # type: ignore[index]
    finally:
        running.close()


def test_removed_port_stops_answering(servers: HealthCheckServers) -> None:
    keep, drop = free_port(), free_port()
    servers.serve({keep: ("a/one", 1), drop: ("a/two", 1)})
    servers.serve({keep: ("a/one", 1)})
    assert servers.ports == {keep}
    with pytest.raises(ConnectionRefusedError):
        get(drop)
    assert get(keep)[0] == 200


def test_busy_port_is_reported_and_retried(servers: HealthCheckServers) -> None:
    blocker = socket.socket(socket.AF_INET6)
    blocker.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    blocker.bind(("::", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        assert servers.serve({port: ("shop/web", 1)}) == [port]
        assert servers.ports == frozenset()
    finally:
        blocker.close()
    assert servers.serve({port: ("shop/web", 1)}) == []
    assert get(port)[0] == 200


def test_health_check_ports_count_local_ready_endpoints() -> None:
    web = dataclasses.replace(
        service("web", "10.96.0.10", "fd00::10"),
        type="LoadBalancer",
        external_traffic_local=True,
        health_check_node_port=31862,
    )
    other = dataclasses.replace(service("other", "10.96.0.11"), health_check_node_port=31863)
    slices = [
        endpoint_slice(
            "web",
            ("10.244.1.1", True, "node-a"),
            ("10.244.1.2", False, "node-a"),
            ("10.244.2.1", True, "node-b"),
            name="web-v4",
        ),
        endpoint_slice("web", ("fd00::1:1", True, "node-a"), name="web-v6"),
    ]
    assert health_check_ports([web, other], slices, node_name="node-a") == {
        31862: ("default/web", 1),  # one pod: its two families count once
        31863: ("default/other", 0),
    }


def test_a_sync_after_close_serves_nothing() -> None:
    # At shutdown a sync still running may call sync() after close(): it must not open a
    # server nobody will close.
    running = HealthCheckServers()
    port = free_port()
    running.serve({port: ("shop/web", 1)})
    running.close()
    assert running.serve({port: ("shop/web", 1)}) == []
    assert running.ports == frozenset()
    with pytest.raises(ConnectionRefusedError):
        get(port)
