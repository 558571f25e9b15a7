"""Decoding shares equal immutable parts between objects, and builds some values in
quicker ways than their constructors: none of that may alias mutable state or change a
value."""

from __future__ import annotations

import dataclasses
import json
import socket
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest

from ipvsproxy.core.model import Endpoint, EndpointSlice, IPFamily, Service
from ipvsproxy.k8s import objects
from ipvsproxy.k8s.objects import SERVICE_NAME_LABEL, endpoint_slice_from_dict, service_from_dict

Obj = dict[str, Any]


def fresh(obj: Obj) -> Obj:
    """The object as another API answer would decode it: equal strings, distinct objects."""
    return dict(json.loads(json.dumps(obj)))


def service(name: str, *, ports: list[Obj] | None = None) -> Obj:
    return {
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.20",
            "ports": ports or [{"name": "http", "port": 80, "protocol": "TCP"}],
        },
    }


def endpoint_slice(name: str, *, family: str = "IPv4", address: str = "10.0.0.1") -> Obj:
    return {
        "metadata": {"name": name, "namespace": "shop", "labels": {SERVICE_NAME_LABEL: "web"}},
        "addressType": family,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [address],
                "conditions": {"ready": True},
                "nodeName": "node-1",
                "zone": "zone-a",
            },
            {
                "addresses": [address],
                "nodeName": "node-1",
                "zone": "zone-a",
                "hints": {"forZones": [{"name": "zone-a"}], "forNodes": [{"name": "node-1"}]},
            },
        ],
    }


def decoded_service(obj: Obj) -> Service:
    value = service_from_dict(fresh(obj))
    assert value is not None
    return value


def decoded_slice(obj: Obj) -> EndpointSlice:
    value = endpoint_slice_from_dict(fresh(obj))
    assert value is not None
    return value


def test_equal_port_lists_are_one_tuple_of_frozen_values() -> None:
    a, b = decoded_service(service("a")), decoded_service(service("b"))
    assert a.ports is b.ports
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.ports[0].port = 81  # type: ignore[misc]
    other = decoded_service(service("c", ports=[{"name": "http", "port": 81}]))
    assert other.ports is not a.ports and other.ports[0].port == 81
    assert decoded_slice(endpoint_slice("s1")).ports is decoded_slice(endpoint_slice("s2")).ports


def test_equal_slices_stay_distinct_objects_with_their_own_memos() -> None:
    # EndpointSlice keeps work derived from it in a mutable memo: it must never be shared.
    first, second = decoded_slice(endpoint_slice("s")), decoded_slice(endpoint_slice("s"))
    assert first == second and first is not second
    assert not set(map(id, first.endpoints)) & set(map(id, second.endpoints))
    first.memo()["derived"] = 1
    assert second._memo is None and "derived" not in second.memo()
    assert second.memo() is not first.memo()


def test_repeated_names_are_one_string() -> None:
    a, b = decoded_slice(endpoint_slice("s1")), decoded_slice(endpoint_slice("s2"))
    svc = decoded_service(service("web"))
    quick, careful = a.endpoints  # the second has hints: read by the validating path
    for x, y in ((a.namespace, b.namespace), (a.namespace, svc.namespace)):
        assert x is y
    assert a.service_name is svc.name
    assert a.ports[0].name is svc.ports[0].name is b.ports[0].name
    assert quick.node_name is careful.node_name is b.endpoints[0].node_name
    assert quick.zone is careful.zone is careful.zone_hints[0]
    assert careful.node_hints[0] is quick.node_name


def test_the_shared_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objects, "_SHARED_MAX", 3)
    objects._SERVICE_PORTS.clear()
    for port in range(1, 10):
        svc = decoded_service(service("a", ports=[{"port": port}]))
        assert svc.ports[0].port == port
        assert 1 <= len(objects._SERVICE_PORTS) <= 3


@pytest.mark.parametrize(
    ("ready", "serving", "terminating", "node", "zone"),
    [
        (True, True, False, "n1", "z1"),
        (False, True, True, None, None),
        (False, False, False, "", ""),
    ],
)
def test_the_quick_endpoint_builder_builds_the_dataclass_value(
    ready: bool, serving: bool, terminating: bool, node: str | None, zone: str | None
) -> None:
    address = IPv4Address("10.0.0.1")
    built = objects._new_endpoint(address, ready, serving, terminating, node, zone)
    expected = Endpoint(address, ready, serving, terminating, node, zone)
    assert type(built) is Endpoint
    for field in dataclasses.fields(Endpoint):
        assert getattr(built, field.name) == getattr(expected, field.name), field.name
    assert built == expected and hash(built) == hash(expected) and repr(built) == repr(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.ready = not ready  # type: ignore[misc]


@pytest.mark.parametrize(
    "text", ["0.0.0.0", "10.1.2.3", "255.255.255.255", "::", "fd00::1", "::ffff:10.0.0.1", "1::8"]
)
def test_the_quick_address_builders_build_what_the_constructors_build(text: str) -> None:
    v6 = ":" in text
    packed = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, text)
    built = (objects._ipv6_from_packed if v6 else objects._ipv4_from_packed)(packed)
    expected = IPv6Address(text) if v6 else IPv4Address(text)
    assert type(built) is type(expected)
    assert built == expected and hash(built) == hash(expected)
    assert str(built) == str(expected) and built.packed == packed
    assert {built: 1}[expected] == 1
    if isinstance(built, IPv6Address):
        assert built.scope_id is None and built.ipv4_mapped == IPv6Address(text).ipv4_mapped
    assert objects.parse_ip(text) == expected


@pytest.mark.parametrize(
    "raw",
    [
        {"addresses": ["fd00::1"]},
        {"addresses": ["FD00:0::0001"], "conditions": {"ready": False, "serving": True}},
        {"addresses": ["fd00::1"], "nodeName": "n1", "zone": "z1"},
        {"addresses": ["10.0.0.1"]},  # an IPv4 address in an IPv6 slice: refused by name
        {"addresses": ["fe80::1%eth0"]},
        {"addresses": ["fd00::1\x00"]},
    ],
)
def test_the_quick_ipv6_reading_agrees_with_the_validating_one(raw: Obj) -> None:
    af, build = objects._SOCKET_FAMILIES[IPFamily.V6]
    quick = objects._plain_endpoint(raw, af, build)
    try:
        careful = objects._endpoint(0, raw, IPFamily.V6)
    except objects._BadField:
        assert quick is None
        return
    assert quick == careful
