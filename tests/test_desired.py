"""Desired state from Services and EndpointSlices: table-driven cases."""

from __future__ import annotations

import ipaddress

import pytest
from builders import endpoint_slice, service

from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
from ipvsproxy.core.model import (
    IPVS_FLAG_PERSISTENT,
    IPVS_FLAG_SOURCE_HASH,
    EndpointSlice,
    IPFamily,
    KernelState,
    Service,
)


def run(
    services: list[Service],
    slices: list[EndpointSlice],
    *,
    node: str = "node-a",
    scheduler: str = "rr",
) -> KernelState:
    return desired_state(
        services,
        slices,
        node=NodeInfo(name=node),
        settings=DesiredSettings(scheduler=scheduler),
    )


def servers(state: KernelState) -> dict[str, set[str]]:
    """virtual server "proto ip:port" -> {"ip:port"} of its real servers."""
    result = {}
    for key, reals in state.real_servers.items():
        label = f"{key.protocol.value} {key.address}:{key.port}"
        result[label] = {f"{rs.address}:{rs.port}" for rs in reals}
    return result


CASES = [
    pytest.param(
        [service("web", "10.96.0.10")],
        [endpoint_slice("web", "10.244.1.1", "10.244.2.1")],
        {"TCP 10.96.0.10:80": {"10.244.1.1:8080", "10.244.2.1:8080"}},
        id="two-ready-endpoints",
    ),
    pytest.param(
        [service("web", "10.96.0.10")],
        [],
        {"TCP 10.96.0.10:80": set()},
        id="no-endpoints-still-a-virtual-server",
    ),
    pytest.param(
        [service("web", "10.96.0.10")],
        [endpoint_slice("web", "10.244.1.1", ("10.244.2.1", False))],
        {"TCP 10.96.0.10:80": {"10.244.1.1:8080"}},
        id="not-ready-skipped",
    ),
    pytest.param(
        [service("web", "10.96.0.10")],
        [
            endpoint_slice("web", "10.244.1.1", name="web-1"),
            endpoint_slice("web", "10.244.1.1", "10.244.3.1", name="web-2"),
        ],
        {"TCP 10.96.0.10:80": {"10.244.1.1:8080", "10.244.3.1:8080"}},
        id="every-slice-deduplicated",
    ),
    pytest.param(
        [service("dns", "10.96.0.10", ports=(("dns", "UDP", 53), ("dns-tcp", "TCP", 53)))],
        [
            endpoint_slice(
                "dns", "10.244.1.5", ports=(("dns", "UDP", 5353), ("dns-tcp", "TCP", 5354))
            )
        ],
        {"UDP 10.96.0.10:53": {"10.244.1.5:5353"}, "TCP 10.96.0.10:53": {"10.244.1.5:5354"}},
        id="ports-matched-by-name",
    ),
    pytest.param(
        [service("web", "10.96.0.10", ports=(("", "TCP", 80),))],
        [endpoint_slice("web", "10.244.1.1", ports=(("other", "TCP", 9999),))],
        {"TCP 10.96.0.10:80": set()},
        id="unmatched-port-name-gives-no-endpoints",
    ),
    pytest.param(
        [service("sctp", "10.96.0.12", ports=(("s", "SCTP", 5000),))],
        [endpoint_slice("sctp", "10.244.1.1", ports=(("s", "SCTP", 5000),))],
        {"SCTP 10.96.0.12:5000": {"10.244.1.1:5000"}},
        id="sctp",
    ),
    pytest.param(
        [service("dual", "10.96.0.20", "fd00::20")],
        [
            endpoint_slice("dual", "10.244.1.1", name="dual-v4"),
            endpoint_slice("dual", "fd00:10:244::1", name="dual-v6"),
        ],
        {
            "TCP 10.96.0.20:80": {"10.244.1.1:8080"},
            "TCP fd00::20:80": {"fd00:10:244::1:8080"},
        },
        id="dual-stack-families-never-mix",
    ),
    pytest.param(
        [service("v6only", "fd00::30")],
        [endpoint_slice("v6only", "10.244.1.1", name="wrong-family")],
        {"TCP fd00::30:80": set()},
        id="ipv6-service-ignores-ipv4-slices",
    ),
    pytest.param(
        [service("web", "10.96.0.10", namespace="a"), service("web", "10.96.0.11", namespace="b")],
        [endpoint_slice("web", "10.244.9.9", namespace="b")],
        {"TCP 10.96.0.10:80": set(), "TCP 10.96.0.11:80": {"10.244.9.9:8080"}},
        id="slices-belong-to-their-namespace",
    ),
    pytest.param(
        [service("local", "10.96.0.40", internal_local=True)],
        [endpoint_slice("local", ("10.244.1.1", True, "node-a"), ("10.244.2.1", True, "node-b"))],
        {"TCP 10.96.0.40:80": {"10.244.1.1:8080"}},
        id="internal-traffic-policy-local",
    ),
]


@pytest.mark.parametrize(("services", "slices", "expected"), CASES)
def test_real_servers(
    services: list[Service], slices: list[EndpointSlice], expected: dict[str, set[str]]
) -> None:
    assert servers(run(services, slices)) == expected


def test_defaults_match_kube_proxy() -> None:
    state = run([service("web", "10.96.0.10")], [endpoint_slice("web", "10.244.1.1")])
    (server,) = state.virtual_servers.values()
    assert (server.scheduler, server.flags, server.timeout) == ("rr", 0, 0)
    (real,) = next(iter(state.real_servers.values())).values()
    assert (real.weight, real.forward.name) == (1, "MASQ")


def test_session_affinity_sets_persistence() -> None:
    state = run([service("sticky", "10.96.0.10", affinity=600)], [])
    (server,) = state.virtual_servers.values()
    assert (server.flags, server.timeout) == (IPVS_FLAG_PERSISTENT, 600)


def test_mh_scheduler_hashes_source_port() -> None:
    state = run([service("web", "10.96.0.10")], [], scheduler="mh")
    (server,) = state.virtual_servers.values()
    assert server.flags & IPVS_FLAG_SOURCE_HASH


def test_addresses_and_ipsets() -> None:
    state = run(
        [service("dual", "10.96.0.20", "fd00::20", ports=(("http", "TCP", 80), ("b", "UDP", 53)))],
        [endpoint_slice("dual", ("10.244.1.1", False, "node-a"), name="x")],
    )
    assert state.addresses == {ipaddress.ip_address("10.96.0.20"), ipaddress.ip_address("fd00::20")}
    assert state.ipsets["KUBE-CLUSTER-IP"] == {"10.96.0.20,tcp:80", "10.96.0.20,udp:53"}
    assert state.ipsets["KUBE-6-CLUSTER-IP"] == {"fd00::20,tcp:80", "fd00::20,udp:53"}
    assert state.ipsets["KUBE-IPVS-IPS"] == {"10.96.0.20"}
    assert state.ipsets["KUBE-6-IPVS-IPS"] == {"fd00::20"}
    # Hairpin: a local endpoint, ready or not, may reach itself through its own service.
    assert state.ipsets["KUBE-LOOP-BACK"] == {"10.244.1.1,tcp:8080,10.244.1.1"}
    assert len(state.ipsets) == 36  # 18 sets, both families, even when empty


def test_iptables_rule_count_does_not_grow_with_services() -> None:
    def rule_count(n: int) -> int:
        services = [service(f"s{i}", str(ipaddress.ip_address("10.96.0.0") + i)) for i in range(n)]
        slices = [endpoint_slice(f"s{i}", f"10.244.{i // 250}.{i % 250 + 1}") for i in range(n)]
        state = run(services, slices)
        return sum(
            len(rules)
            for ruleset in state.iptables.values()
            for chains in ruleset.tables.values()
            for rules in chains.values()
        )

    assert rule_count(1) == rule_count(500)
    assert rule_count(1) > 0


def test_family_filter() -> None:
    state = desired_state(
        [service("dual", "10.96.0.20", "fd00::20")],
        [],
        node=NodeInfo(),
        settings=DesiredSettings(families=(IPFamily.V4,)),
    )
    assert {k.address.version for k in state.virtual_servers} == {4}
    assert set(state.iptables) == {IPFamily.V4}


def test_port_clash_keeps_the_first_service_and_warns() -> None:
    from loguru import logger

    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m.record["extra"])), level="WARNING")
    try:
        state = run(
            [service("first", "10.96.0.10"), service("second", "10.96.0.10")],
            [endpoint_slice("first", "10.244.1.1"), endpoint_slice("second", "10.244.2.1")],
        )
    finally:
        logger.remove(sink)
    assert servers(state) == {"TCP 10.96.0.10:80": {"10.244.1.1:8080"}}
    assert len(messages) == 1
    assert "default/first" in messages[0] and "default/second" in messages[0]
