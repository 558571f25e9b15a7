"""The API server reached through a Service IP: detected at start, said in one line."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator

import pytest
from builders import service
from loguru import logger

from ipvsproxy.agent.api_path import (
    FIX,
    check_api_path,
    dial_address,
    only_default_route,
    service_named,
    unreachable,
)
from ipvsproxy.core.model import IPAddress

# /proc/net/route of a node: a default route via 192.0.2.1, and 192.0.2.0/24 on eth0.
ROUTES = (
    "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
    "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
)
KUBERNETES = service("kubernetes", "10.96.0.1", ports=(("https", "TCP", 443),))


def test_dial_address() -> None:
    assert dial_address("https://10.96.0.1:443") == (ipaddress.ip_address("10.96.0.1"), 443)
    assert dial_address("https://[fd00::1]") == (ipaddress.ip_address("fd00::1"), 443)
    assert dial_address("http://192.0.2.5") == (ipaddress.ip_address("192.0.2.5"), 80)
    assert dial_address("https://cp.example:6443") is None


def test_only_default_route() -> None:
    assert only_default_route(ipaddress.ip_address("10.96.0.1"), ROUTES)
    assert not only_default_route(ipaddress.ip_address("192.0.2.7"), ROUTES)
    assert not only_default_route(ipaddress.ip_address("fd00::1"), ROUTES)  # unknown
    assert not only_default_route(ipaddress.ip_address("10.96.0.1"), None)


def test_service_named() -> None:
    address = ipaddress.ip_address("10.96.0.1")
    assert service_named(address, 443, [KUBERNETES]) == "default/kubernetes"
    assert service_named(address, 6443, [KUBERNETES]) is None


def test_a_refused_connection_is_a_host_not_a_service_ip() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    assert unreachable(ipaddress.ip_address("127.0.0.1"), port) is None


@pytest.fixture
def lines() -> Iterator[list[str]]:
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(str(m.record["message"])), level="WARNING")
    yield seen
    logger.remove(sink)


def check(server: str, *, in_cluster: bool, probe_says: str | None, listed: object) -> str | None:
    def probe(_address: IPAddress, _port: int) -> str | None:
        return probe_says

    return check_api_path(
        server,
        in_cluster=in_cluster,
        listed=lambda: listed,  # type: ignore[arg-type,return-value]
        stop=threading.Event(),
        probe=probe,
        routes=lambda: ROUTES,
        poll=0.01,
    )


def test_unreachable_cluster_ip_in_cluster_is_one_line_naming_the_fix(lines: list[str]) -> None:
    line = check("https://10.96.0.1:443", in_cluster=True, probe_says="ENETUNREACH", listed=None)
    assert line is not None and FIX in line and "10.96.0.1:443" in line
    assert lines == [line]


def test_unreachable_address_with_only_a_default_route_is_the_trap_too(lines: list[str]) -> None:
    assert check("https://10.96.0.1", in_cluster=False, probe_says="timeout", listed=None)
    assert len(lines) == 1


def test_unreachable_host_on_a_connected_network_is_left_to_the_reflectors(
    lines: list[str],
) -> None:
    assert (
        check("https://192.0.2.7:6443", in_cluster=False, probe_says="timeout", listed=None) is None
    )
    assert lines == []


def test_reachable_cluster_ip_of_a_listed_service_is_warned_about(lines: list[str]) -> None:
    line = check("https://10.96.0.1:443", in_cluster=True, probe_says=None, listed=[KUBERNETES])
    assert line is not None and "default/kubernetes" in line and FIX in line
    assert lines == [line]


def test_control_plane_address_says_nothing(lines: list[str]) -> None:
    assert (
        check("https://192.0.2.7:6443", in_cluster=False, probe_says=None, listed=[KUBERNETES])
        is None
    )
    assert lines == []
