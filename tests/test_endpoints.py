"""Endpoint selection: conditions, traffic policies and topology, table-driven."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from ipvsproxy.core.endpoints import external_servers, internal_servers, select_endpoints
from ipvsproxy.core.model import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    IPFamily,
    Protocol,
    Service,
    ServicePort,
)

PORT = ServicePort("http", Protocol.TCP, 80)
NODE = {"node_name": "node-a", "zone": "zone-a"}


def ep(
    ip: str,
    *,
    ready: bool = True,
    serving: bool | None = None,
    terminating: bool = False,
    node: str | None = None,
    zones: tuple[str, ...] = (),
    nodes: tuple[str, ...] = (),
) -> Endpoint:
    return Endpoint(
        ipaddress.ip_address(ip),
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=terminating,
        node_name=node,
        zone_hints=zones,
        node_hints=nodes,
    )


def slice_of(*endpoints: Endpoint, name: str = "web-1", port: int = 8080) -> EndpointSlice:
    return EndpointSlice(
        namespace="default",
        name=name,
        service_name="web",
        family=IPFamily.V4,
        ports=(EndpointPort("http", Protocol.TCP, port),),
        endpoints=endpoints,
    )


def service(*, internal_local: bool = False, external_local: bool = False) -> Service:
    return Service(
        namespace="default",
        name="web",
        type="NodePort",
        cluster_ips=(ipaddress.ip_address("10.96.0.10"),),
        ports=(dataclasses.replace(PORT, node_port=30080),),
        internal_traffic_local=internal_local,
        external_traffic_local=external_local,
    )


def addresses(servers: object) -> set[str]:
    assert isinstance(servers, dict)
    return {str(key.address) for key in servers}


# (endpoints, expected cluster view, expected local view)
CASES = [
    pytest.param(
        [ep("10.0.0.1"), ep("10.0.0.2", ready=False)],
        {"10.0.0.1"},
        set(),
        id="ready-only",
    ),
    pytest.param(
        [
            ep("10.0.0.1", ready=False, serving=True, terminating=True),
            ep("10.0.0.2", ready=False, serving=False, terminating=True),
            ep("10.0.0.3", ready=False),
        ],
        {"10.0.0.1"},
        set(),
        id="no-ready-serving-terminating-used",
    ),
    pytest.param(
        [ep("10.0.0.1"), ep("10.0.0.2", ready=False, serving=True, terminating=True)],
        {"10.0.0.1"},
        set(),
        id="terminating-unused-while-one-is-ready",
    ),
    pytest.param(
        [
            ep("10.0.0.1", node="node-b"),
            ep("10.0.0.2", ready=False, serving=True, terminating=True, node="node-a"),
        ],
        {"10.0.0.1"},
        {"10.0.0.2"},
        id="local-view-falls-back-on-its-own",
    ),
    pytest.param(
        [ep("10.0.0.1", node="node-a"), ep("10.0.0.2", node="node-b")],
        {"10.0.0.1", "10.0.0.2"},
        {"10.0.0.1"},
        id="local-view-is-this-node",
    ),
    pytest.param(
        [ep("10.0.0.1", zones=("zone-a",)), ep("10.0.0.2", zones=("zone-b",))],
        {"10.0.0.1"},
        set(),
        id="zone-hints",
    ),
    pytest.param(
        [ep("10.0.0.1", zones=("zone-a",)), ep("10.0.0.2", zones=("zone-b", "zone-a"))],
        {"10.0.0.1", "10.0.0.2"},
        set(),
        id="zone-hints-several-zones",
    ),
    pytest.param(
        [ep("10.0.0.1", zones=("zone-a",)), ep("10.0.0.2")],
        {"10.0.0.1", "10.0.0.2"},
        set(),
        id="zone-hints-ignored-when-one-ready-endpoint-lacks-them",
    ),
    pytest.param(
        [ep("10.0.0.1", zones=("zone-a",)), ep("10.0.0.2", ready=False)],
        {"10.0.0.1"},
        set(),
        id="not-ready-endpoints-need-no-hints",
    ),
    pytest.param(
        [ep("10.0.0.1", zones=("zone-b",)), ep("10.0.0.2", zones=("zone-c",))],
        {"10.0.0.1", "10.0.0.2"},
        set(),
        id="zone-hints-ignored-when-none-for-this-zone",
    ),
    pytest.param(
        [
            ep("10.0.0.1", zones=("zone-a",), nodes=("node-a",)),
            ep("10.0.0.2", zones=("zone-a",), nodes=("node-x",)),
        ],
        {"10.0.0.1"},
        set(),
        id="node-hints-before-zone-hints",
    ),
    pytest.param(
        [
            ep("10.0.0.1", zones=("zone-a",), nodes=("node-x",)),
            ep("10.0.0.2", zones=("zone-b",), nodes=("node-y",)),
        ],
        {"10.0.0.1"},
        set(),
        id="node-hints-for-other-nodes-fall-to-zone-hints",
    ),
    pytest.param(
        [
            ep("10.0.0.1", zones=("zone-b",), node="node-a"),
            ep("10.0.0.2", zones=("zone-a",), node="node-b"),
        ],
        {"10.0.0.2"},
        {"10.0.0.1"},
        id="local-view-ignores-hints",
    ),
    pytest.param(
        [
            ep("10.0.0.1", ready=False, serving=True, terminating=True, zones=("zone-b",)),
            ep("10.0.0.2", ready=False, serving=True, terminating=True, zones=("zone-a",)),
        ],
        {"10.0.0.1", "10.0.0.2"},
        set(),
        id="hints-of-terminating-endpoints-ignored",
    ),
]


@pytest.mark.parametrize(("endpoints", "cluster", "local"), CASES)
def test_views(endpoints: list[Endpoint], cluster: set[str], local: set[str]) -> None:
    selected = select_endpoints(PORT, IPFamily.V4, [slice_of(*endpoints)], **NODE)
    assert addresses(selected.cluster) == cluster
    assert addresses(selected.local) == local


def test_node_without_zone_label_ignores_zone_hints() -> None:
    endpoints = [ep("10.0.0.1", zones=("zone-a",)), ep("10.0.0.2", zones=("zone-b",))]
    selected = select_endpoints(
        PORT, IPFamily.V4, [slice_of(*endpoints)], node_name="node-a", zone=""
    )
    assert addresses(selected.cluster) == {"10.0.0.1", "10.0.0.2"}


def test_hairpin_and_serving_ignore_policies() -> None:
    endpoints = [
        ep("10.0.0.1", node="node-a"),
        ep("10.0.0.2", ready=False, serving=False, node="node-a"),
        ep("10.0.0.3", ready=False, serving=True, terminating=True, node="node-b"),
        ep("10.0.0.4", node="node-b"),
    ]
    selected = select_endpoints(PORT, IPFamily.V4, [slice_of(*endpoints)], **NODE)
    assert [(str(a), p) for a, p in selected.hairpin] == [("10.0.0.1", 8080), ("10.0.0.2", 8080)]
    assert {str(a) for a in selected.serving} == {"10.0.0.1", "10.0.0.3", "10.0.0.4"}


def test_duplicates_later_slice_by_name_wins() -> None:
    older = slice_of(ep("10.0.0.1"), name="web-b")
    newer = slice_of(ep("10.0.0.1", ready=False), name="web-a")
    selected = select_endpoints(PORT, IPFamily.V4, [older, newer], **NODE)
    # web-b sorts after web-a, so its ready copy is the one kept.
    assert addresses(selected.cluster) == {"10.0.0.1"}


def test_ports_match_by_name_and_protocol() -> None:
    udp = EndpointSlice(
        namespace="default",
        name="web-udp",
        service_name="web",
        family=IPFamily.V4,
        ports=(EndpointPort("http", Protocol.UDP, 9999),),
        endpoints=(ep("10.0.0.9"),),
    )
    selected = select_endpoints(PORT, IPFamily.V4, [udp, slice_of(ep("10.0.0.1"))], **NODE)
    assert [(str(k.address), k.port) for k in selected.cluster] == [("10.0.0.1", 8080)]
    assert select_endpoints(PORT, IPFamily.V6, [slice_of(ep("10.0.0.1"))], **NODE).cluster == {}


# (internal policy Local, external policy Local, endpoints) -> (ClusterIP view, external view)
POLICIES = [
    pytest.param(False, False, "both", ({"L", "R"}, {"L", "R"}), id="cluster-cluster"),
    pytest.param(True, False, "both", ({"L"}, {"L", "R"}), id="itp-local"),
    pytest.param(False, True, "both", ({"L", "R"}, {"L"}), id="etp-local"),
    pytest.param(True, False, "remote", (set(), {"R"}), id="itp-local-never-falls-back"),
    pytest.param(False, True, "remote", ({"R"}, {"R"}), id="etp-local-falls-back-kubernetes-97081"),
    pytest.param(True, True, "remote", (set(), set()), id="both-local-no-cluster-view"),
]


@pytest.mark.parametrize(("itp", "etp", "where", "expected"), POLICIES)
def test_policy_views(
    itp: bool, etp: bool, where: str, expected: tuple[set[str], set[str]]
) -> None:
    local, remote = ep("10.0.0.1", node="node-a"), ep("10.0.0.2", node="node-b")
    endpoints = [local, remote] if where == "both" else [remote]
    selected = select_endpoints(PORT, IPFamily.V4, [slice_of(*endpoints)], **NODE)
    names = {"10.0.0.1": "L", "10.0.0.2": "R"}
    svc = service(internal_local=itp, external_local=etp)
    got_internal = {names[a] for a in addresses(internal_servers(selected, svc))}
    got_external = {names[a] for a in addresses(external_servers(selected, svc))}
    assert (got_internal, got_external) == expected
