"""API JSON -> model values: valid objects, objects skipped on purpose, invalid objects."""

from __future__ import annotations

import copy
import re
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import pytest

from ipvsproxy.core.model import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    IPFamily,
    Node,
    Protocol,
    Service,
    ServicePort,
)
from ipvsproxy.errors import InvalidObject
from ipvsproxy.k8s import objects
from ipvsproxy.k8s.objects import (
    SERVICE_NAME_LABEL,
    endpoint_slice_from_dict,
    node_addresses_from_dict,
    node_from_dict,
    parse_ip,
    service_from_dict,
)

Obj = dict[str, Any]


def service(**spec: Any) -> Obj:
    """A Service as the API returns it, with spec fields replaced or added."""
    base: Obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.20",
            "clusterIPs": ["10.96.0.20"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            "sessionAffinity": "None",
        },
        "status": {"loadBalancer": {}},
    }
    base["spec"].update(spec)
    return base


def with_status(obj: Obj, status: Any) -> Obj:
    obj = copy.deepcopy(obj)
    obj["status"] = status
    return obj


def without(obj: Obj, *path: str) -> Obj:
    obj = copy.deepcopy(obj)
    target = obj
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return obj


def ip4(text: str) -> IPv4Address:
    return IPv4Address(text)


def ip6(text: str) -> IPv6Address:
    return IPv6Address(text)


# --- Services ------------------------------------------------------------------------------

WEB = Service(
    namespace="shop",
    name="web",
    type="ClusterIP",
    cluster_ips=(ip4("10.96.0.20"),),
    ports=(ServicePort(name="http", protocol=Protocol.TCP, port=80),),
)


def _web(**changes: Any) -> Service:
    fields = {name: getattr(WEB, name) for name in WEB.__dataclass_fields__}
    fields.update(changes)
    return Service(**fields)


VALID_SERVICES: list[tuple[str, Obj, Service]] = [
    ("plain ClusterIP", service(), WEB),
    (
        "UDP DNS-like with two protocols on one port",
        service(
            ports=[
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ]
        ),
        _web(
            ports=(
                ServicePort(name="dns", protocol=Protocol.UDP, port=53),
                ServicePort(name="dns-tcp", protocol=Protocol.TCP, port=53),
            )
        ),
    ),
    (
        "SCTP",
        service(ports=[{"port": 3868, "protocol": "SCTP"}]),
        _web(ports=(ServicePort(name="", protocol=Protocol.SCTP, port=3868),)),
    ),
    (
        "protocol and name default to TCP and empty",
        service(ports=[{"port": 8080}]),
        _web(ports=(ServicePort(name="", protocol=Protocol.TCP, port=8080),)),
    ),
    (
        "dual-stack, IPv6 primary",
        service(clusterIP="fd00::20", clusterIPs=["fd00::20", "10.96.0.20"]),
        _web(cluster_ips=(ip6("fd00::20"), ip4("10.96.0.20"))),
    ),
    (
        "only clusterIP, as hand-written objects have it",
        without(service(), "spec", "clusterIPs"),
        WEB,
    ),
    (
        "only clusterIPs",
        without(service(), "spec", "clusterIP"),
        WEB,
    ),
    (
        "legacy IPv4 with leading zeros is read as decimal, like Go's ParseIPSloppy",
        service(clusterIP="010.096.000.020", clusterIPs=["010.096.000.020"]),
        _web(cluster_ips=(ip4("10.96.0.20"),)),
    ),
    (
        "NodePort",
        service(
            type="NodePort",
            ports=[{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}],
        ),
        _web(
            type="NodePort",
            ports=(ServicePort(name="http", protocol=Protocol.TCP, port=80, node_port=30080),),
        ),
    ),
    (
        "ClientIP affinity with the default timeout",
        service(sessionAffinity="ClientIP"),
        _web(affinity_timeout=10800),
    ),
    (
        "ClientIP affinity with a timeout",
        service(
            sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
        ),
        _web(affinity_timeout=60),
    ),
    (
        "ClientIP affinity with a null timeout",
        service(
            sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": None}},
        ),
        _web(affinity_timeout=10800),
    ),
    (
        "affinity config without ClientIP affinity is ignored",
        service(sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}),
        WEB,
    ),
    (
        "external IPs, duplicates dropped",
        service(externalIPs=["192.0.2.1", "2001:db8::1", "192.0.2.1"]),
        _web(external_ips=(ip4("192.0.2.1"), ip6("2001:db8::1"))),
    ),
    (
        "LoadBalancer ingress: Proxy mode and hostname-only entries skipped",
        with_status(
            service(type="LoadBalancer"),
            {
                "loadBalancer": {
                    "ingress": [
                        {"ip": "203.0.113.1"},
                        {"ip": "203.0.113.2", "ipMode": "VIP"},
                        {"ip": "203.0.113.3", "ipMode": "Proxy"},
                        {"hostname": "lb.example.com"},
                        {"ip": "2001:db8::9", "hostname": "lb6.example.com"},
                    ]
                }
            },
        ),
        _web(
            type="LoadBalancer",
            load_balancer_ips=(ip4("203.0.113.1"), ip4("203.0.113.2"), ip6("2001:db8::9")),
        ),
    ),
    (
        "externalTrafficPolicy Local on a LoadBalancer",
        service(type="LoadBalancer", externalTrafficPolicy="Local"),
        _web(type="LoadBalancer", external_traffic_local=True),
    ),
    (
        "externalTrafficPolicy Local with external IPs",
        service(externalTrafficPolicy="Local", externalIPs=["192.0.2.1"]),
        _web(external_ips=(ip4("192.0.2.1"),), external_traffic_local=True),
    ),
    (
        "externalTrafficPolicy Local is moot without external reachability",
        service(externalTrafficPolicy="Local"),
        WEB,
    ),
    (
        "internalTrafficPolicy Local",
        service(internalTrafficPolicy="Local"),
        _web(internal_traffic_local=True),
    ),
    (
        "namespace defaults to default",
        without(service(), "metadata", "namespace"),
        _web(namespace="default"),
    ),
    (
        "null ports, externalIPs, status",
        with_status(service(ports=None, externalIPs=None), None),
        _web(ports=()),
    ),
]


@pytest.mark.parametrize(
    ("obj", "expected"),
    [case[1:] for case in VALID_SERVICES],
    ids=[case[0] for case in VALID_SERVICES],
)
def test_valid_service(obj: Obj, expected: Service) -> None:
    assert service_from_dict(obj) == expected


SKIPPED_SERVICES: list[tuple[str, Obj]] = [
    ("headless", service(clusterIP="None", clusterIPs=["None"])),
    ("headless, clusterIPs only", without(service(clusterIPs=["None"]), "spec", "clusterIP")),
    ("no cluster IP yet", service(clusterIP="", clusterIPs=[])),
    (
        "no cluster IP fields",
        without(without(service(), "spec", "clusterIP"), "spec", "clusterIPs"),
    ),
    (
        "ExternalName",
        without(
            service(type="ExternalName", externalName="db.example.com", clusterIPs=None),
            "spec",
            "clusterIP",
        ),
    ),
    ("ExternalName with a stale cluster IP", service(type="ExternalName")),
]


@pytest.mark.parametrize(
    "obj", [case[1] for case in SKIPPED_SERVICES], ids=[case[0] for case in SKIPPED_SERVICES]
)
def test_skipped_service(obj: Obj) -> None:
    assert service_from_dict(obj) is None


INVALID_SERVICES: list[tuple[str, Obj, str, str]] = [
    (
        "bad cluster IP",
        service(clusterIP="10.96.0.300", clusterIPs=["10.96.0.300"]),
        "shop/web",
        "spec.clusterIPs[0]: invalid IP address '10.96.0.300'",
    ),
    (
        "bad clusterIP without clusterIPs",
        without(service(clusterIP="ten"), "spec", "clusterIPs"),
        "shop/web",
        "spec.clusterIP: invalid IP address 'ten'",
    ),
    (
        "clusterIPs disagree with clusterIP",
        service(clusterIPs=["10.96.0.21"]),
        "shop/web",
        "spec.clusterIPs[0]: 10.96.0.21 differs from spec.clusterIP '10.96.0.20'",
    ),
    (
        "two cluster IPs of one family",
        service(clusterIPs=["10.96.0.20", "10.96.0.21"]),
        "shop/web",
        "spec.clusterIPs: two IPv4 addresses; dual-stack needs one per family",
    ),
    (
        "three cluster IPs",
        service(clusterIPs=["10.96.0.20", "fd00::1", "fd00::2"]),
        "shop/web",
        "spec.clusterIPs: at most 2 addresses (one per family), got 3",
    ),
    (
        "IPv6 zone index",
        service(clusterIP="fe80::1%eth0", clusterIPs=["fe80::1%eth0"]),
        "shop/web",
        "spec.clusterIPs[0]: invalid IP address 'fe80::1%eth0'",
    ),
    (
        "port 0",
        service(ports=[{"name": "http", "port": 0}]),
        "shop/web",
        "spec.ports[0].port: 0 is out of range 1-65535",
    ),
    (
        "port 65536",
        service(ports=[{"name": "a", "port": 80}, {"name": "b", "port": 65536}]),
        "shop/web",
        "spec.ports[1].port: 65536 is out of range 1-65535",
    ),
    (
        "missing port",
        service(ports=[{"name": "http"}]),
        "shop/web",
        "spec.ports[0].port: missing",
    ),
    (
        "port as a string",
        service(ports=[{"name": "http", "port": "80"}]),
        "shop/web",
        "spec.ports[0].port: expected an integer, got a string '80'",
    ),
    (
        "port as a boolean",
        service(ports=[{"name": "http", "port": True}]),
        "shop/web",
        "spec.ports[0].port: expected an integer, got a boolean True",
    ),
    (
        "nodePort out of range",
        service(type="NodePort", ports=[{"name": "http", "port": 80, "nodePort": 70000}]),
        "shop/web",
        "spec.ports[0].nodePort: 70000 is out of range 0-65535",
    ),
    (
        "unknown protocol",
        service(ports=[{"name": "ping", "port": 7, "protocol": "ICMP"}]),
        "shop/web",
        "spec.ports[0].protocol: unknown protocol 'ICMP' (expected TCP, UDP or SCTP)",
    ),
    (
        "lower-case protocol",
        service(ports=[{"name": "dns", "port": 53, "protocol": "udp"}]),
        "shop/web",
        "spec.ports[0].protocol: unknown protocol 'udp' (expected TCP, UDP or SCTP)",
    ),
    (
        "duplicate port name",
        service(ports=[{"name": "http", "port": 80}, {"name": "http", "port": 8080}]),
        "shop/web",
        "spec.ports[1].name: duplicate port name 'http'",
    ),
    (
        "two unnamed ports",
        service(ports=[{"port": 80}, {"port": 8080}]),
        "shop/web",
        "spec.ports[1].name: duplicate port name ''",
    ),
    (
        "duplicate port and protocol",
        service(ports=[{"name": "a", "port": 80}, {"name": "b", "port": 80}]),
        "shop/web",
        "spec.ports[1].port: duplicate port 80/TCP",
    ),
    (
        "ports not a list",
        service(ports={"name": "http", "port": 80}),
        "shop/web",
        "spec.ports: expected a list, got an object",
    ),
    (
        "affinity timeout 0",
        service(
            sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}}
        ),
        "shop/web",
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is out of range 1-86400",
    ),
    (
        "affinity timeout above a day",
        service(
            sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 86401}},
        ),
        "shop/web",
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 86401 is out of range 1-86400",
    ),
    (
        "unknown affinity",
        service(sessionAffinity="Cookie"),
        "shop/web",
        "spec.sessionAffinity: unknown value 'Cookie' (expected None or ClientIP)",
    ),
    (
        "bad external IP",
        service(externalIPs=["192.0.2.1", "example.com"]),
        "shop/web",
        "spec.externalIPs[1]: invalid IP address 'example.com'",
    ),
    (
        "bad load balancer IP",
        with_status(service(type="LoadBalancer"), {"loadBalancer": {"ingress": [{"ip": "x"}]}}),
        "shop/web",
        "status.loadBalancer.ingress[0].ip: invalid IP address 'x'",
    ),
    (
        "unknown ipMode",
        with_status(
            service(type="LoadBalancer"),
            {"loadBalancer": {"ingress": [{"ip": "203.0.113.1", "ipMode": "Direct"}]}},
        ),
        "shop/web",
        "status.loadBalancer.ingress[0].ipMode: unknown value 'Direct' (expected VIP or Proxy)",
    ),
    (
        "unknown externalTrafficPolicy",
        service(type="NodePort", externalTrafficPolicy="Global"),
        "shop/web",
        "spec.externalTrafficPolicy: unknown value 'Global' (expected Cluster or Local)",
    ),
    (
        "unknown internalTrafficPolicy",
        service(internalTrafficPolicy="Node"),
        "shop/web",
        "spec.internalTrafficPolicy: unknown value 'Node' (expected Cluster or Local)",
    ),
    (
        "unknown type",
        service(type="Ingress"),
        "shop/web",
        "spec.type: unknown Service type 'Ingress'",
    ),
    (
        "missing name",
        without(service(), "metadata", "name"),
        "shop/<no name>",
        "metadata.name: missing",
    ),
    (
        "spec not a mapping",
        {"kind": "Service", "metadata": {"name": "web", "namespace": "shop"}, "spec": ["x"]},
        "shop/web",
        "spec: expected an object, got a list",
    ),
    (
        "metadata not a mapping",
        {"kind": "Service", "metadata": "web"},
        "<no name>",
        "metadata: expected an object, got a string 'web'",
    ),
]


@pytest.mark.parametrize(
    ("obj", "key", "reason"),
    [case[1:] for case in INVALID_SERVICES],
    ids=[case[0] for case in INVALID_SERVICES],
)
def test_invalid_service(obj: Obj, key: str, reason: str) -> None:
    with pytest.raises(InvalidObject) as caught:
        service_from_dict(obj)
    assert (caught.value.kind, caught.value.key, caught.value.reason) == ("Service", key, reason)
    assert str(caught.value) == f"Service {key}: {reason}"


def test_converter_does_not_modify_its_input() -> None:
    obj = service(externalIPs=["192.0.2.1"], sessionAffinity="ClientIP")
    before = copy.deepcopy(obj)
    service_from_dict(obj)
    assert obj == before


# --- EndpointSlices ------------------------------------------------------------------------


def endpoint(address: str = "10.244.1.5", **fields: Any) -> Obj:
    entry: Obj = {"addresses": [address], "nodeName": "worker-1"}
    entry.update(fields)
    return entry


def endpoint_slice(*endpoints: Obj, **top: Any) -> Obj:
    base: Obj = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "addressType": "IPv4",
        "metadata": {
            "name": "web-abc12",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web", "app": "web"},
        },
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": list(endpoints),
    }
    base.update(top)
    return base


HTTP = EndpointPort(name="http", protocol=Protocol.TCP, port=8080)


def _slice(*endpoints: Endpoint, **changes: Any) -> EndpointSlice:
    fields: dict[str, Any] = {
        "namespace": "shop",
        "name": "web-abc12",
        "service_name": "web",
        "family": IPFamily.V4,
        "ports": (HTTP,),
        "endpoints": endpoints,
    }
    fields.update(changes)
    return EndpointSlice(**fields)


def ep(address: str = "10.244.1.5", **changes: Any) -> Endpoint:
    fields: dict[str, Any] = {"address": ip_address(address), "node_name": "worker-1"}
    fields.update(changes)
    return Endpoint(**fields)


# (ready, serving, terminating) as written -> as read; None stands for null.
CONDITIONS: list[tuple[tuple[bool | None, bool | None, bool | None], tuple[bool, bool, bool]]] = [
    ((True, True, False), (True, True, False)),
    ((False, False, False), (False, False, False)),  # not ready
    ((False, True, True), (False, True, True)),  # terminating, still serving
    ((False, False, True), (False, False, True)),  # terminating, no longer serving
    ((None, None, None), (True, True, False)),  # unknown means ready
    ((False, None, None), (False, False, False)),  # serving defers to ready
    ((True, None, None), (True, True, False)),
    ((None, False, True), (True, False, True)),
]


@pytest.mark.parametrize(("written", "read"), CONDITIONS, ids=[str(c[0]) for c in CONDITIONS])
def test_endpoint_conditions(
    written: tuple[bool | None, bool | None, bool | None], read: tuple[bool, bool, bool]
) -> None:
    conditions = dict(zip(("ready", "serving", "terminating"), written, strict=True))
    result = endpoint_slice_from_dict(endpoint_slice(endpoint(conditions=conditions)))
    assert result is not None
    (only,) = result.endpoints
    assert (only.ready, only.serving, only.terminating) == read


VALID_SLICES: list[tuple[str, Obj, EndpointSlice]] = [
    (
        "conditions absent",
        endpoint_slice(endpoint(zone="zone-a")),
        _slice(ep(zone="zone-a")),
    ),
    (
        "first address only, every address checked",
        endpoint_slice(endpoint(addresses=["10.244.1.5", "10.244.1.6"])),
        _slice(ep()),
    ),
    (
        "endpoint without addresses is ignored",
        endpoint_slice(endpoint(addresses=[]), endpoint("10.244.1.7", nodeName=None)),
        _slice(ep("10.244.1.7", node_name=None)),
    ),
    (
        "IPv6 slice",
        endpoint_slice(endpoint("fd00:10:244:1::5"), addressType="IPv6"),
        _slice(ep("fd00:10:244:1::5"), family=IPFamily.V6),
    ),
    (
        "port defaults: name empty, protocol TCP",
        endpoint_slice(endpoint(), ports=[{"port": 3868}]),
        _slice(ep(), ports=(EndpointPort(name="", protocol=Protocol.TCP, port=3868),)),
    ),
    (
        "SCTP and UDP ports",
        endpoint_slice(
            endpoint(),
            ports=[
                {"name": "diameter", "port": 3868, "protocol": "SCTP"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ],
        ),
        _slice(
            ep(),
            ports=(
                EndpointPort(name="diameter", protocol=Protocol.SCTP, port=3868),
                EndpointPort(name="dns", protocol=Protocol.UDP, port=53),
            ),
        ),
    ),
    (
        "null port and port 0 are ignored, like kube-proxy",
        endpoint_slice(
            endpoint(),
            ports=[
                {"name": "all", "port": None},
                {"name": "zero", "port": 0},
                {"name": "http", "port": 8080},
            ],
        ),
        _slice(ep()),
    ),
    (
        "no ports, no endpoints",
        endpoint_slice(ports=None, endpoints=None),
        _slice(ports=()),
    ),
    (
        "namespace defaults to default",
        without(endpoint_slice(endpoint()), "metadata", "namespace"),
        _slice(ep(), namespace="default"),
    ),
]


@pytest.mark.parametrize(
    ("obj", "expected"),
    [case[1:] for case in VALID_SLICES],
    ids=[case[0] for case in VALID_SLICES],
)
def test_valid_endpoint_slice(obj: Obj, expected: EndpointSlice) -> None:
    assert endpoint_slice_from_dict(obj) == expected


def test_fqdn_slice_is_skipped() -> None:
    obj = endpoint_slice(endpoint(addresses=["db.example.com"]), addressType="FQDN")
    assert endpoint_slice_from_dict(obj) is None


def _unlabelled() -> Obj:
    obj = endpoint_slice(endpoint())
    del obj["metadata"]["labels"]["kubernetes.io/service-name"]
    return obj


INVALID_SLICES: list[tuple[str, Obj, str, str]] = [
    (
        "missing service-name label",
        _unlabelled(),
        "shop/web-abc12",
        "metadata.labels: no kubernetes.io/service-name label",
    ),
    (
        "no labels at all",
        without(endpoint_slice(endpoint()), "metadata", "labels"),
        "shop/web-abc12",
        "metadata.labels: no kubernetes.io/service-name label",
    ),
    (
        "IPv6 address in an IPv4 slice",
        endpoint_slice(endpoint(), endpoint("fd00::5")),
        "shop/web-abc12",
        "endpoints[1].addresses[0]: fd00::5 is an IPv6 address in an IPv4 slice",
    ),
    (
        "IPv4 address in an IPv6 slice, second address",
        endpoint_slice(endpoint(addresses=["fd00::5", "10.0.0.1"]), addressType="IPv6"),
        "shop/web-abc12",
        "endpoints[0].addresses[1]: 10.0.0.1 is an IPv4 address in an IPv6 slice",
    ),
    (
        "invalid address",
        endpoint_slice(endpoint("10.244.1.256")),
        "shop/web-abc12",
        "endpoints[0].addresses[0]: invalid IP address '10.244.1.256'",
    ),
    (
        "unknown address type",
        endpoint_slice(endpoint(), addressType="IPv5"),
        "shop/web-abc12",
        "addressType: expected IPv4, IPv6 or FQDN, got 'IPv5'",
    ),
    (
        "port out of range",
        endpoint_slice(endpoint(), ports=[{"name": "http", "port": 65536}]),
        "shop/web-abc12",
        "ports[0].port: 65536 is out of range 1-65535",
    ),
    (
        "negative port",
        endpoint_slice(endpoint(), ports=[{"name": "http", "port": -1}]),
        "shop/web-abc12",
        "ports[0].port: -1 is out of range 1-65535",
    ),
    (
        "unknown protocol",
        endpoint_slice(endpoint(), ports=[{"name": "http", "port": 80, "protocol": "QUIC"}]),
        "shop/web-abc12",
        "ports[0].protocol: unknown protocol 'QUIC' (expected TCP, UDP or SCTP)",
    ),
    (
        "duplicate port name",
        endpoint_slice(endpoint(), ports=[{"name": "a", "port": 80}, {"name": "a", "port": 81}]),
        "shop/web-abc12",
        "ports[1].name: duplicate port name 'a'",
    ),
    (
        "ready as a string",
        endpoint_slice(endpoint(conditions={"ready": "true"})),
        "shop/web-abc12",
        "endpoints[0].conditions.ready: expected a boolean, got a string 'true'",
    ),
    (
        "nodeName not a string",
        endpoint_slice(endpoint(nodeName=5)),
        "shop/web-abc12",
        "endpoints[0].nodeName: expected a string, got an integer 5",
    ),
    (
        "missing name",
        without(endpoint_slice(endpoint()), "metadata", "name"),
        "shop/<no name>",
        "metadata.name: missing",
    ),
]


@pytest.mark.parametrize(
    ("obj", "key", "reason"),
    [case[1:] for case in INVALID_SLICES],
    ids=[case[0] for case in INVALID_SLICES],
)
def test_invalid_endpoint_slice(obj: Obj, key: str, reason: str) -> None:
    with pytest.raises(InvalidObject) as caught:
        endpoint_slice_from_dict(obj)
    assert (caught.value.kind, caught.value.key, caught.value.reason) == (
        "EndpointSlice",
        key,
        reason,
    )


# --- Nodes and addresses -------------------------------------------------------------------


def test_node_addresses() -> None:
    node: Obj = {
        "kind": "Node",
        "metadata": {"name": "worker-1"},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "172.18.0.3"},
                {"type": "Hostname", "address": "worker-1"},
                {"type": "InternalDNS", "address": "worker-1.internal"},
                {"type": "ExternalIP", "address": "2001:db8::3"},
                {"type": "InternalIP", "address": "172.18.0.3"},
            ]
        },
    }
    assert node_addresses_from_dict(node) == ("worker-1", (ip4("172.18.0.3"), ip6("2001:db8::3")))


def test_node_zone_and_deletion() -> None:
    node: Obj = {
        "kind": "Node",
        "metadata": {
            "name": "worker-1",
            "labels": {"topology.kubernetes.io/zone": "eu-1a"},
            "deletionTimestamp": "2024-05-01T10:00:00Z",
        },
        "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1714557600"}]},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.3"}]},
    }
    expected = Node(
        name="worker-1",
        addresses=(ip4("172.18.0.3"),),
        zone="eu-1a",
        deleting=True,
        to_be_deleted=True,
    )
    assert node_from_dict(node) == expected
    assert not expected.eligible
    plain = node_from_dict({"metadata": {"name": "w2"}, "spec": {"taints": [{"key": "other"}]}})
    assert plain == Node(name="w2") and plain.eligible


def test_node_pod_cidrs() -> None:
    node: Obj = {
        "kind": "Node",
        "metadata": {"name": "worker-2"},
        "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24", "fd00:244:2::/64"]},
    }
    assert [str(c) for c in node_from_dict(node).pod_cidrs] == ["10.244.2.0/24", "fd00:244:2::/64"]
    # Only the older single field: still read.
    old: Obj = {"kind": "Node", "metadata": {"name": "n"}, "spec": {"podCIDR": "10.1.0.0/24"}}
    assert [str(c) for c in node_from_dict(old).pod_cidrs] == ["10.1.0.0/24"]
    with pytest.raises(InvalidObject, match=r"spec\.podCIDRs\[0\]: invalid CIDR"):
        node_from_dict({"kind": "Node", "metadata": {"name": "n"}, "spec": {"podCIDR": "x"}})


def test_endpoint_hints() -> None:
    obj: Obj = {
        "kind": "EndpointSlice",
        "metadata": {
            "name": "s",
            "namespace": "d",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80}],
        "endpoints": [
            {
                "addresses": ["10.0.0.1"],
                "hints": {"forZones": [{"name": "a"}, {"name": "b"}], "forNodes": [{"name": "n1"}]},
            },
            {"addresses": ["10.0.0.2"]},
        ],
    }
    parsed = endpoint_slice_from_dict(obj)
    assert parsed is not None
    first, second = parsed.endpoints
    assert (first.zone_hints, first.node_hints) == (("a", "b"), ("n1",))
    assert (second.zone_hints, second.node_hints) == ((), ())


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ("2024-05-01T10:00:00Z", 1714557600.0),
        ("2024-05-01T10:00:00.250+02:00", 1714550400.25),
        ("yesterday", None),
        (None, None),
    ],
)
def test_endpoint_slice_trigger_time(annotation: str | None, expected: float | None) -> None:
    obj = endpoint_slice(endpoint())
    if annotation is not None:
        annotations = {"endpoints.kubernetes.io/last-change-trigger-time": annotation}
        obj["metadata"]["annotations"] = annotations
    converted = endpoint_slice_from_dict(obj)
    assert converted is not None and converted.trigger_time == expected


@pytest.mark.parametrize(
    ("node", "key", "reason"),
    [
        ({"kind": "Node", "metadata": {}}, "<no name>", "metadata.name: missing"),
        (
            {
                "kind": "Node",
                "metadata": {"name": "n1"},
                "status": {"addresses": [{"type": "InternalIP", "address": "n1.local"}]},
            },
            "n1",
            "status.addresses[0].address: invalid IP address 'n1.local'",
        ),
        (
            {"kind": "Node", "metadata": {"name": "n1"}, "spec": {"taints": "none"}},
            "n1",
            "spec.taints: expected a list, got a string 'none'",
        ),
    ],
    ids=["no name", "bad address", "bad taints"],
)
def test_invalid_node(node: Obj, key: str, reason: str) -> None:
    with pytest.raises(InvalidObject) as caught:
        node_from_dict(node)
    assert (caught.value.kind, caught.value.key, caught.value.reason) == ("Node", key, reason)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", ip4("10.0.0.1")),
        ("010.001.000.255", ip4("10.1.0.255")),
        ("fd00::1", ip6("fd00::1")),
        ("::ffff:10.0.0.1", ip6("::ffff:10.0.0.1")),
    ],
)
def test_parse_ip(text: str, expected: object) -> None:
    assert parse_ip(text) == expected


@pytest.mark.parametrize("text", ["", "10.0.0", "10.0.0.256", "0300.0.0.1", "fe80::1%eth0", "x"])
def test_parse_ip_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ip(text)


@pytest.mark.parametrize(
    "raw",
    [
        {"addresses": ["10.0.0.1"]},
        {"addresses": ["10.0.0.1"], "conditions": None, "nodeName": None, "zone": None},
        {"addresses": ["10.0.0.1"], "conditions": {"ready": False, "serving": True}},
        {"addresses": ["10.0.0.1"], "conditions": {"ready": False, "terminating": True}},
        {"addresses": ["10.0.0.1"], "conditions": {}, "nodeName": "n1", "zone": "z1"},
        {"addresses": ["010.0.0.1"]},
        {"addresses": ["10.0.0.1", "10.0.0.2"]},
        {"addresses": ["10.0.0.1"], "hints": {"forZones": [{"name": "z1"}]}},
    ],
)
def test_the_quick_endpoint_reading_agrees_with_the_validating_one(raw: dict[str, Any]) -> None:
    quick = objects._plain_endpoint(raw)
    careful = objects._endpoint(0, raw, IPFamily.V4)
    assert quick is None or quick == careful
    slice_obj = {
        "metadata": {"name": "s", "namespace": "ns", "labels": {SERVICE_NAME_LABEL: "svc"}},
        "addressType": "IPv4",
        "endpoints": [raw],
        "ports": [{"port": 80}],
    }
    decoded = endpoint_slice_from_dict(slice_obj)
    assert decoded is not None and decoded.endpoints == (careful,)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"addresses": ["10.0.0"]}, "endpoints[0].addresses[0]"),
        ({"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}, "conditions.ready"),
        ({"addresses": ["10.0.0.1"], "nodeName": 7}, "endpoints[0].nodeName"),
        ({"addresses": [7]}, "endpoints[0].addresses[0]"),
    ],
)
def test_what_the_quick_reading_declines_is_still_refused_by_name(
    raw: dict[str, Any], field: str
) -> None:
    assert objects._plain_endpoint(raw) is None
    slice_obj = {
        "metadata": {"name": "s", "namespace": "ns", "labels": {SERVICE_NAME_LABEL: "svc"}},
        "addressType": "IPv4",
        "endpoints": [raw],
    }
    with pytest.raises(InvalidObject, match=re.escape(field)):
        endpoint_slice_from_dict(slice_obj)


@pytest.mark.parametrize(
    "ports",
    [
        [],
        [{"name": "http", "port": 80}],
        [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP", "name": "t"}],
        [{"name": "a", "port": 80, "nodePort": 30080, "protocol": "SCTP"}],
        [{"name": "a", "port": 80, "nodePort": None, "protocol": None, "targetPort": 8080}],
        [{"name": "a", "port": 80}, {"name": "a", "port": 81}],
        [{"name": "a", "port": 80}, {"name": "b", "port": 80}],
        [{"name": "a", "port": 0}],
        [{"name": "a", "port": 65536}],
        [{"name": "a", "port": True}],
        [{"name": "a", "port": "80"}],
        [{"name": "a"}],
        [{"name": 7, "port": 80}],
        [{"name": "a", "port": 80, "nodePort": -1}],
        [{"name": "a", "port": 80, "nodePort": False}],
        [{"name": "a", "port": 80, "protocol": "ICMP"}],
        [{"name": "a", "port": 80, "protocol": ""}],
        ["http"],
    ],
)
def test_service_ports_read_quickly_as_the_checked_path_reads_them(
    ports: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def read() -> object:
        try:
            return service_from_dict(service(ports=ports))
        except InvalidObject as exc:
            return str(exc)

    quick = read()
    # The quick path reads every valid list itself, and leaves the rest to the checks.
    assert (objects._plain_service_ports(ports) is not None) == (type(quick) is not str)
    monkeypatch.setattr(objects, "_plain_service_ports", lambda raw: None)
    assert quick == read()
