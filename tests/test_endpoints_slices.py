"""Endpoint selection over many slices, worked out per slice and kept with each slice.

select_endpoints is checked against a reference: kube-proxy's rules applied endpoint by
endpoint over every slice at once (the plain algorithm, as it stood before the per-slice
parts), on random Services of many slices whose endpoints change conditions, hints,
nodes and addresses, move between slices and appear twice.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import random
from collections.abc import Sequence
from typing import Any

import pytest

from ipvsproxy.core import ipsets
from ipvsproxy.core.endpoints import MergedServers, PortEndpoints, select_endpoints
from ipvsproxy.core.model import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    IPAddress,
    IPFamily,
    Protocol,
    RealServer,
    RealServerKey,
    ServicePort,
)

PORT = ServicePort("http", Protocol.TCP, 80)
Entry = tuple[RealServerKey, tuple[Endpoint, RealServer]]


def reference(
    port: ServicePort,
    family: IPFamily,
    slices: Sequence[EndpointSlice],
    name: str,
    zone: str,
) -> tuple[list[Any], ...]:
    """(cluster, local, hairpin, serving) as kube-proxy's rules give them, endpoint by
    endpoint: slices in name order, a later duplicate ip:port replacing an earlier one."""
    found: dict[RealServerKey, tuple[Endpoint, RealServer]] = {}
    for endpoint_slice in sorted(slices, key=lambda s: s.name):
        if endpoint_slice.family is not family:
            continue
        target = next(
            (
                p.port
                for p in endpoint_slice.ports
                if (p.name, p.protocol) == (port.name, port.protocol)
            ),
            0,
        )
        if not target:
            continue
        for endpoint in endpoint_slice.endpoints:
            found[RealServerKey(endpoint.address, target)] = (
                endpoint,
                RealServer(endpoint.address, target),
            )
    entries = list(found.items())
    ready = [e for e, _ in found.values() if e.ready]

    def usable(candidates: list[Entry]) -> list[Entry]:
        chosen = [item for item in candidates if item[1][0].ready]
        return chosen or [i for i in candidates if i[1][0].serving and i[1][0].terminating]

    if (
        ready
        and name
        and all(e.node_hints for e in ready)
        and any(name in e.node_hints for e in ready)
    ):
        cluster = [i for i in entries if i[1][0].ready and name in i[1][0].node_hints]
    elif (
        ready
        and zone
        and all(e.zone_hints for e in ready)
        and any(zone in e.zone_hints for e in ready)
    ):
        cluster = [i for i in entries if i[1][0].ready and zone in i[1][0].zone_hints]
    else:
        cluster = usable(entries)
    on_node = [i for i in entries if name and i[1][0].node_name == name]
    return (
        [(k, s) for k, (_, s) in cluster],
        [(k, s) for k, (_, s) in usable(on_node)],
        [(s.address, s.port) for _, (_, s) in on_node],
        sorted({str(e.address) for e, _ in found.values() if e.serving}),
    )


def observed(selected: PortEndpoints) -> tuple[list[Any], ...]:
    return (
        list(selected.cluster.items()),
        list(selected.local.items()),
        list(selected.hairpin),
        sorted(str(a) for a in selected.serving),
    )


def random_endpoint(rng: random.Random, address: IPAddress) -> Endpoint:
    ready = rng.random() < 0.8
    hinted = rng.random() < 0.3
    return Endpoint(
        address,
        ready=ready,
        serving=ready or rng.random() < 0.5,
        terminating=not ready and rng.random() < 0.7,
        node_name=rng.choice(["node-a", "node-b", "node-c", None]),
        zone_hints=tuple(rng.sample(["zone-a", "zone-b"], rng.randint(1, 2))) if hinted else (),
        node_hints=(rng.choice(["node-a", "node-b"]),) if hinted and rng.random() < 0.5 else (),
    )


def random_slice(rng: random.Random, index: int, family: IPFamily) -> EndpointSlice:
    base = ipaddress.ip_address("10.1.0.0" if family is IPFamily.V4 else "fd00::")
    # Each slice has addresses of its own, now and then one twice or one of another
    # slice's (an endpoint moving between slices).
    endpoints = tuple(
        random_endpoint(
            rng,
            base + 100 * (index if rng.random() < 0.97 else rng.randrange(12)) + rng.randint(0, 40),
        )
        for _ in range(rng.randint(0, 12))
    )
    target = rng.choice([8080, 8080, 8080, 9090])
    ports = [EndpointPort("http", Protocol.TCP, target), EndpointPort("dns", Protocol.UDP, 53)]
    if rng.random() < 0.1:
        ports = [EndpointPort("other", Protocol.TCP, target)]  # lacks the Service's port
    return EndpointSlice("ns", f"web-{index}", "web", family, tuple(ports), endpoints)


@pytest.mark.parametrize("seed", range(2))
def test_many_slices_match_the_endpoint_by_endpoint_rules(seed: int) -> None:
    rng = random.Random(seed)
    slices = [random_slice(rng, i, rng.choice(list(IPFamily))) for i in range(10)]
    merged = 0
    for _ in range(30):
        for name, zone in (("node-a", "zone-a"), ("node-b", ""), ("", "zone-b"), ("", "")):
            for port in (PORT, ServicePort("dns", Protocol.UDP, 53)):
                for family, some in itertools.product(IPFamily, (slices, slices[:1])):
                    selected = select_endpoints(port, family, some, node_name=name, zone=zone)
                    assert observed(selected) == reference(port, family, some, name, zone)
                    merged += isinstance(selected.cluster, MergedServers)
                    assert list(selected.loop_back) == [
                        ipsets.ip_port_ip_entry(a, port.protocol, p, a) for a, p in selected.hairpin
                    ]
        # One slice changes (or goes, or comes), as a watch event would have it.
        index = rng.randrange(len(slices))
        slices[index] = random_slice(rng, rng.randrange(12), slices[index].family)
    assert merged > 50  # many took the per-slice path, not only the endpoint-by-endpoint one


def test_a_slice_is_worked_out_once_and_a_changed_slice_anew() -> None:
    def slice_of(name: str, *addresses: str) -> EndpointSlice:
        return EndpointSlice(
            "ns",
            name,
            "web",
            IPFamily.V4,
            (EndpointPort("http", Protocol.TCP, 8080),),
            tuple(Endpoint(ipaddress.ip_address(a)) for a in addresses),
        )

    one, two = slice_of("web-1", "10.0.0.1", "10.0.0.2"), slice_of("web-2", "10.0.0.3")
    first = select_endpoints(PORT, IPFamily.V4, [one, two], node_name="n", zone="")
    again = select_endpoints(PORT, IPFamily.V4, [two, one], node_name="n", zone="")
    assert isinstance(first.cluster, MergedServers) and isinstance(again.cluster, MergedServers)
    # The same real server objects, and the very parts each slice contributed.
    assert all(a is b for a, b in zip(first.cluster.values(), again.cluster.values(), strict=True))
    assert [id(p) for p in first.cluster.parts] == [id(p) for p in again.cluster.parts]
    # A changed slice is another object: its part is new, the untouched slice's is kept.
    changed = dataclasses.replace(one, endpoints=one.endpoints[:1])
    assert changed == slice_of("web-1", "10.0.0.1")  # the memo is no part of equality
    after = select_endpoints(PORT, IPFamily.V4, [changed, two], node_name="n", zone="")
    assert isinstance(after.cluster, MergedServers)
    assert [str(k.address) for k in after.cluster] == ["10.0.0.1", "10.0.0.3"]
    assert after.cluster.parts[0] is not first.cluster.parts[0]
    assert after.cluster.parts[1] is first.cluster.parts[1]
    # A slice alone gives its own part, not a copy.
    alone = select_endpoints(PORT, IPFamily.V4, [two], node_name="n", zone="")
    assert alone.cluster is first.cluster.parts[1]
