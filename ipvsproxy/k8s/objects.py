"""Kubernetes API objects, as plain JSON dicts, converted to validated model values.

The input is what the API server returns and what `kubectl get -o yaml|json` writes:
camelCase keys, optional fields absent or null. The output is the small frozen values of
`ipvsproxy.core.model`; nothing of the API representation leaves this module.

Three outcomes per object:
- a model value;
- None for objects kube-proxy skips on purpose (headless or ExternalName Services, Services
  without a cluster IP, FQDN EndpointSlices), logged at debug level only;
- `InvalidObject` naming the field and value at fault, for objects kube-proxy could not
  program. The caller logs it and skips the object.

The `kubernetes` client package is deliberately not imported: it takes seconds to load and
its models would only be converted again.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import re
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Final, NoReturn, TypeVar

from loguru import logger

from ipvsproxy.core.model import (
    DEFAULT_AFFINITY_TIMEOUT,
    FLAGGED_SCHEDULERS,
    IPVS_FLAG_SCHED1,
    IPVS_FLAG_SCHED3,
    IPVS_FLAG_SOURCE_HASH,
    KERNEL_SCHEDULERS,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    IPAddress,
    IPFamily,
    IPNetwork,
    Node,
    Protocol,
    Service,
    ServicePort,
)
from ipvsproxy.errors import InvalidObject

__all__ = [
    "HEADLESS_LABEL",
    "MAX_AFFINITY_TIMEOUT",
    "SCHEDULER_ANNOTATIONS",
    "SCHEDULER_FLAGS_ANNOTATIONS",
    "SERVICE_NAME_LABEL",
    "SERVICE_PROXY_NAME_LABEL",
    "TRIGGER_TIME_ANNOTATION",
    "endpoint_slice_from_dict",
    "node_addresses_from_dict",
    "node_from_dict",
    "parse_ip",
    "service_from_dict",
]

SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
"""Label that ties an EndpointSlice to its Service."""

TRIGGER_TIME_ANNOTATION: Final = "endpoints.kubernetes.io/last-change-trigger-time"
"""Annotation on an EndpointSlice: when the change it reflects was triggered (RFC 3339)."""

ZONE_LABEL: Final = "topology.kubernetes.io/zone"
TO_BE_DELETED_TAINT: Final = "ToBeDeletedByClusterAutoscaler"
SERVICE_PROXY_NAME_LABEL: Final = "service.kubernetes.io/service-proxy-name"
"""Label naming another proxy that serves the object; kube-proxy's informers select only
objects without it (and without HEADLESS_LABEL), whatever its value."""

HEADLESS_LABEL: Final = "service.kubernetes.io/headless"
"""Label the EndpointSlice controller puts on the slices of headless Services."""

MAX_AFFINITY_TIMEOUT: Final = 86400
"""Largest sessionAffinityConfig.clientIP.timeoutSeconds the API accepts (one day)."""

_SERVICE_TYPES: Final = frozenset({"ClusterIP", "NodePort", "LoadBalancer"})
_EXTERNALLY_REACHABLE_TYPES: Final = frozenset({"NodePort", "LoadBalancer"})
_NODE_ADDRESS_TYPES: Final = frozenset({"InternalIP", "ExternalIP"})
_ADDRESS_FAMILIES: Final = {"IPv4": IPFamily.V4, "IPv6": IPFamily.V6}
_PROTOCOLS: Final = {protocol.value: protocol for protocol in Protocol}
_NO_NAME: Final = "<no name>"


class _BadField(Exception):
    """A field of the object being converted is invalid; becomes InvalidObject."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")


def _fail(path: str, reason: str) -> NoReturn:
    raise _BadField(path, reason)


# --- typed field access --------------------------------------------------------------------

_TYPE_NAMES: Final[Mapping[type, str]] = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
}


def _describe(value: object) -> str:
    if value is None:
        return "null"
    name = _TYPE_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, dict | list):
        return name
    return f"{name} {value!r}"


def _mapping(value: object, path: str) -> Mapping[str, object]:
    """An optional object field; absent or null reads as empty."""
    if type(value) is dict or isinstance(value, Mapping):  # the exact type first: ABCs are slow
        return value
    if value is None:
        return {}
    _fail(path, f"expected an object, got {_describe(value)}")


def _list(value: object, path: str) -> Sequence[object]:
    """An optional list field; absent or null reads as empty."""
    if type(value) is list or isinstance(value, list | tuple):
        return value
    if value is None:
        return ()
    _fail(path, f"expected a list, got {_describe(value)}")


def _str(value: object, path: str, default: str) -> str:
    if value is None:
        return default
    if isinstance(value, str):
        return value
    _fail(path, f"expected a string, got {_describe(value)}")


def _optional_str(value: object, path: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    _fail(path, f"expected a string, got {_describe(value)}")


def _optional_int(value: object, path: str) -> int | None:
    # bool is an int subclass in Python; `port: true` must not read as port 1.
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    _fail(path, f"expected an integer, got {_describe(value)}")


def _optional_bool(value: object, path: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    _fail(path, f"expected a boolean, got {_describe(value)}")


def _in_range(value: int, path: str, low: int, high: int) -> int:
    if not low <= value <= high:
        _fail(path, f"{value} is out of range {low}-{high}")
    return value


def _protocol(value: object, path: str) -> Protocol:
    text = _str(value, path, "TCP")
    protocol = _PROTOCOLS.get(text)
    if protocol is None:
        _fail(path, f"unknown protocol {text!r} (expected TCP, UDP or SCTP)")
    return protocol


# --- IP addresses --------------------------------------------------------------------------

_SLOPPY_IPV4: Final = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


def _packed_address_builders() -> tuple[
    Callable[[bytes], ipaddress.IPv4Address], Callable[[bytes], ipaddress.IPv6Address]
]:
    """IPv4Address(packed) and IPv6Address(packed) for the 4 and 16 bytes inet_pton gives,
    four times faster: the constructors check their argument's type and length in Python,
    and a cold start builds one address per endpoint. They set the number the class keeps
    (a private slot, unchanged since Python 3.3); should a Python version keep it otherwise,
    the check below falls back to the constructors."""
    new, from_bytes = object.__new__, int.from_bytes
    v4, v6 = ipaddress.IPv4Address, ipaddress.IPv6Address

    def build_v4(packed: bytes) -> ipaddress.IPv4Address:
        address = new(v4)
        address._ip = from_bytes(packed, "big")  # type: ignore[attr-defined]
        return address

    def build_v6(packed: bytes) -> ipaddress.IPv6Address:
        address = new(v6)
        address._ip = from_bytes(packed, "big")  # type: ignore[attr-defined]
        address._scope_id = None  # type: ignore[attr-defined]
        return address

    try:
        for build, cls, size in ((build_v4, v4, 4), (build_v6, v6, 16)):
            packed = bytes(range(200, 200 + size))
            built, expected = build(packed), cls(packed)
            if not (
                built == expected and str(built) == str(expected) and hash(built) == hash(expected)
            ):
                raise TypeError(f"{cls.__name__} keeps its address otherwise")
    except (AttributeError, TypeError):
        return v4, v6
    return build_v4, build_v6


_ipv4_from_packed, _ipv6_from_packed = _packed_address_builders()


def parse_ip(text: str) -> IPAddress:
    """Parse an IP address the way kube-proxy does (netutils.ParseIPSloppy).

    Go's sloppy parser reads IPv4 octets with leading zeros as decimal ("010.0.0.1" is
    10.0.0.1); Python's ipaddress rejects them. Old API objects may still hold such values,
    so accept them here. IPv6 zone indexes ("fe80::1%eth0") are never valid in the API.

    Raises ValueError for anything else that is not an IP address.
    """
    # The C parser first: it takes what ipaddress takes, in a fraction of the time, and
    # refuses what ipaddress refuses (leading zeros, zone indexes); the rest goes on below.
    try:
        return _ipv4_from_packed(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError, TypeError):
        pass
    try:
        return _ipv6_from_packed(socket.inet_pton(socket.AF_INET6, text))
    except (OSError, ValueError, TypeError):
        pass
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if _SLOPPY_IPV4.fullmatch(text) is None:
            raise
        octets = [int(octet, 10) for octet in text.split(".")]
        if any(octet > 255 for octet in octets):
            raise
        return ipaddress.IPv4Address(bytes(octets))
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise ValueError(f"{text!r} has a zone index")
    return address


def _ip(value: object, path: str) -> IPAddress:
    text = _str(value, path, "")
    try:
        return parse_ip(text)
    except ValueError:
        _fail(path, f"invalid IP address {text!r}")


def _ip_of_family(value: object, path: str, family: IPFamily) -> IPAddress:
    address = _ip(value, path)
    if address.version != family:
        _fail(path, f"{address} is an IPv{address.version} address in an IPv{family} slice")
    return address


def _unique(addresses: list[IPAddress]) -> tuple[IPAddress, ...]:
    return tuple(dict.fromkeys(addresses))


# --- sharing equal values ------------------------------------------------------------------

T = TypeVar("T")

# Most Services have one of a few port lists ("http" TCP 80, ...), and so do their slices:
# equal lists decode to the very same tuple of frozen values, saving memory and the
# building. Keyed by the fields as plain tuples; cleared when full, so a cluster whose ports
# keep changing cannot grow it without bound.
_SHARED_MAX: Final = 4096
_SERVICE_PORTS: Final[dict[tuple[tuple[object, ...], ...], tuple[ServicePort, ...]]] = {}
_ENDPOINT_PORTS: Final[dict[tuple[tuple[object, ...], ...], tuple[EndpointPort, ...]]] = {}


def _shared(
    cache: dict[tuple[tuple[object, ...], ...], tuple[T, ...]],
    fields: tuple[tuple[object, ...], ...],
    build: Callable[..., T],
) -> tuple[T, ...]:
    """The one tuple of values built from these fields (each value frozen, all hashable)."""
    found = cache.get(fields)
    if found is None:
        if len(cache) >= _SHARED_MAX:
            cache.clear()
        found = cache[fields] = tuple(build(*entry) for entry in fields)
    return found


# --- metadata ------------------------------------------------------------------------------


def _metadata(kind: str, obj: Mapping[str, object], *, namespaced: bool) -> tuple[str, str]:
    """(namespace, name); raises InvalidObject when metadata.name is missing."""
    try:
        metadata = _mapping(obj.get("metadata"), "metadata")
        namespace = _str(metadata.get("namespace"), "metadata.namespace", "") or "default"
        name = _str(metadata.get("name"), "metadata.name", "")
        # A few namespaces hold thousands of objects: one copy of each name.
        namespace = sys.intern(namespace)
    except _BadField as exc:
        raise InvalidObject(kind, _NO_NAME, str(exc)) from None
    if not name:
        key = f"{namespace}/{_NO_NAME}" if namespaced else _NO_NAME
        raise InvalidObject(kind, key, "metadata.name: missing")
    return namespace, name


# --- Service -------------------------------------------------------------------------------


def service_from_dict(obj: Mapping[str, object]) -> Service | None:
    """A v1 Service as a model Service, or None for one kube-proxy skips on purpose.

    Skipped (None): type ExternalName, headless (clusterIP "None"), no cluster IP.
    external_traffic_local is set only for a Service reachable from outside (NodePort,
    LoadBalancer or external IPs), as kube-proxy's ExternalPolicyLocal() does.

    Raises InvalidObject with a reason naming the field and value at fault.
    """
    namespace, name = _metadata("Service", obj, namespaced=True)
    key = f"{namespace}/{name}"
    try:
        return _service(namespace, name, obj)
    except _BadField as exc:
        raise InvalidObject("Service", key, str(exc)) from None


def _ignored_by_label(obj: Mapping[str, object]) -> str | None:
    """The label for which kube-proxy never sees this object, or None."""
    metadata = _mapping(obj.get("metadata"), "metadata")
    labels = _mapping(metadata.get("labels"), "metadata.labels")
    for label in (SERVICE_PROXY_NAME_LABEL, HEADLESS_LABEL):
        if label in labels:
            return label
    return None


def _service(namespace: str, name: str, obj: Mapping[str, object]) -> Service | None:
    key = f"{namespace}/{name}"
    label = _ignored_by_label(obj)
    if label is not None:
        logger.debug("skipping Service {key}: label {label}", key=key, label=label)
        return None
    spec = _mapping(obj.get("spec"), "spec")
    service_type = _str(spec.get("type"), "spec.type", "") or "ClusterIP"
    if service_type == "ExternalName":
        logger.debug("skipping Service {key}: type ExternalName", key=key)
        return None
    if service_type not in _SERVICE_TYPES:
        _fail("spec.type", f"unknown Service type {service_type!r}")

    cluster_ips = _cluster_ips(spec)
    if not cluster_ips:
        logger.debug("skipping Service {key}: headless or without a cluster IP", key=key)
        return None

    ports = _service_ports(spec)
    affinity_timeout = _affinity_timeout(spec)
    external_ips = _unique(
        [
            _ip(value, f"spec.externalIPs[{index}]")
            for index, value in enumerate(_list(spec.get("externalIPs"), "spec.externalIPs"))
        ]
    )
    load_balancer_ips = _load_balancer_ips(obj)
    scheduler, scheduler_flags = _scheduler(key, obj)

    external_policy = _traffic_policy(spec, "externalTrafficPolicy")
    internal_policy = _traffic_policy(spec, "internalTrafficPolicy")
    externally_reachable = service_type in _EXTERNALLY_REACHABLE_TYPES or bool(external_ips)
    external_local = external_policy == "Local" and externally_reachable
    health_check_node_port = 0
    if service_type == "LoadBalancer" and external_local:  # kube-proxy's NeedsHealthCheck
        path = "spec.healthCheckNodePort"
        health_check_node_port = _optional_int(spec.get("healthCheckNodePort"), path) or 0
        _in_range(health_check_node_port, path, 0, 65535)

    return Service(
        namespace=namespace,
        name=sys.intern(name),  # shared with its slices' service_name
        type=sys.intern(service_type),
        cluster_ips=cluster_ips,
        ports=ports,
        affinity_timeout=affinity_timeout,
        external_ips=external_ips,
        load_balancer_ips=load_balancer_ips,
        external_traffic_local=external_local,
        internal_traffic_local=internal_policy == "Local",
        load_balancer_source_ranges=_source_ranges(spec),
        health_check_node_port=health_check_node_port,
        scheduler=scheduler,
        scheduler_flags=scheduler_flags,
    )


# A Service's own IPVS scheduler and its flags: ours first, then kube-router's names, so
# Services annotated for kube-router keep their scheduler.
SCHEDULER_ANNOTATIONS: Final = ("ipvsproxy.io/scheduler", "kube-router.io/service.scheduler")
SCHEDULER_FLAGS_ANNOTATIONS: Final = (
    "ipvsproxy.io/scheduler-flags",
    "kube-router.io/service.schedflags",
)
# Flag names: ipvsadm's (--sched-flags) and kube-router's. sh and mh give the same bits
# the same meaning; a name carries the scheduler it was written for, or None.
_SCHEDULER_FLAGS: Final[Mapping[str, tuple[int, str | None]]] = {
    "sh-fallback": (IPVS_FLAG_SCHED1, "sh"),
    "sh-port": (IPVS_FLAG_SOURCE_HASH, "sh"),
    "mh-fallback": (IPVS_FLAG_SCHED1, "mh"),
    "mh-port": (IPVS_FLAG_SOURCE_HASH, "mh"),
    "flag-1": (IPVS_FLAG_SCHED1, None),
    "flag-2": (IPVS_FLAG_SOURCE_HASH, None),
    "flag-3": (IPVS_FLAG_SCHED3, None),
}


def _annotation(metadata: Mapping[str, object], names: Sequence[str]) -> tuple[str, str] | None:
    """(name, value) of the first of `names` the object carries as a string."""
    annotations = metadata.get("annotations")
    if type(annotations) is not dict and not isinstance(annotations, Mapping):  # ABCs are slow
        return None
    for name in names:
        value = annotations.get(name)
        if isinstance(value, str):
            return name, value
    return None


def _scheduler(key: str, obj: Mapping[str, object]) -> tuple[str | None, int | None]:
    """The Service's scheduler and scheduler flags from its annotations; (None, None) for
    the node's. What cannot be used is warned about, naming the Service, and left out:
    an unknown scheduler gives the node's, an unknown or misplaced flag is dropped. The
    Service itself stays valid (a typo in an annotation must not take it down)."""
    metadata = _mapping(obj.get("metadata"), "metadata")
    found = _annotation(metadata, SCHEDULER_ANNOTATIONS)
    scheduler: str | None = None
    if found is not None:
        annotation, value = found
        name = value.strip().lower()
        if name in KERNEL_SCHEDULERS:
            scheduler = name
        elif name:
            logger.warning(
                "Service {key}: unknown IPVS scheduler {value!r} in {annotation}; using the node's",
                key=key,
                value=value,
                annotation=annotation,
                known=" ".join(sorted(KERNEL_SCHEDULERS)),
            )
    found = _annotation(metadata, SCHEDULER_FLAGS_ANNOTATIONS)
    if found is None:
        return scheduler, None
    annotation, value = found
    flags = 0
    for token in (part.strip().lower() for part in value.split(",")):
        if not token:
            continue
        bit, meant_for = _SCHEDULER_FLAGS.get(token, (0, None))
        problem = None
        if not bit:
            problem = f"unknown scheduler flag {token!r}"
        elif meant_for is not None and scheduler is not None and meant_for != scheduler:
            problem = f"flag {token!r} is for {meant_for}, not {scheduler}"
        if problem is not None:
            logger.warning(
                "Service {key}: {problem} in {annotation}; ignored",
                key=key,
                problem=problem,
                annotation=annotation,
            )
            continue
        flags |= bit
    if scheduler is not None and scheduler not in FLAGGED_SCHEDULERS and flags:
        logger.warning(
            "Service {key}: scheduler {scheduler} takes no flags; {annotation} ignored",
            key=key,
            scheduler=scheduler,
            annotation=annotation,
        )
        return scheduler, None
    return scheduler, flags


def _source_ranges(spec: Mapping[str, object]) -> tuple[IPNetwork, ...]:
    """spec.loadBalancerSourceRanges. Like kube-proxy, padding is trimmed and host bits
    are masked ("10.0.0.1/8" is 10.0.0.0/8). An invalid range makes the Service invalid
    rather than being dropped: dropping the only range would open the firewall."""
    field = "spec.loadBalancerSourceRanges"
    networks: list[IPNetwork] = []
    for index, value in enumerate(_list(spec.get("loadBalancerSourceRanges"), field)):
        text = _str(value, f"{field}[{index}]", "").strip()
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            _fail(f"{field}[{index}]", f"invalid CIDR {text!r}")
    return tuple(dict.fromkeys(networks))


def _cluster_ips(spec: Mapping[str, object]) -> tuple[IPAddress, ...]:
    """The Service's cluster IPs, primary first; empty when headless or unset.

    spec.clusterIPs (dual-stack, since 1.20) holds the primary IP first and must agree with
    spec.clusterIP; objects written by hand may carry only one of the two.
    """
    single = _str(spec.get("clusterIP"), "spec.clusterIP", "")
    many = _list(spec.get("clusterIPs"), "spec.clusterIPs")
    primary = single or (_str(many[0], "spec.clusterIPs[0]", "") if many else "")
    if not primary or primary == "None":
        return ()  # kube-proxy's ShouldSkipService: headless or no cluster IP

    if not many:
        return (_ip(single, "spec.clusterIP"),)
    if len(many) > 2:
        _fail("spec.clusterIPs", f"at most 2 addresses (one per family), got {len(many)}")
    addresses = tuple(_ip(value, f"spec.clusterIPs[{i}]") for i, value in enumerate(many))
    if single and _ip(single, "spec.clusterIP") != addresses[0]:
        _fail("spec.clusterIPs[0]", f"{addresses[0]} differs from spec.clusterIP {single!r}")
    if len(addresses) == 2 and addresses[0].version == addresses[1].version:
        family = addresses[0].version
        _fail("spec.clusterIPs", f"two IPv{family} addresses; dual-stack needs one per family")
    return addresses


def _service_ports(spec: Mapping[str, object]) -> tuple[ServicePort, ...]:
    raw_ports = spec.get("ports")
    plain = _plain_service_ports(raw_ports) if type(raw_ports) is list else None
    if plain is not None:
        return _shared(_SERVICE_PORTS, plain, ServicePort)
    ports: list[tuple[str, Protocol, int, int]] = []
    names: set[str] = set()
    numbers: set[tuple[int, Protocol]] = set()
    for index, raw in enumerate(_list(spec.get("ports"), "spec.ports")):
        path = f"spec.ports[{index}]"
        entry = _mapping(raw, path)
        name = sys.intern(_str(entry.get("name"), f"{path}.name", ""))
        protocol = _protocol(entry.get("protocol"), f"{path}.protocol")
        port = _optional_int(entry.get("port"), f"{path}.port")
        if port is None:
            _fail(f"{path}.port", "missing")
        _in_range(port, f"{path}.port", 1, 65535)
        node_port = _optional_int(entry.get("nodePort"), f"{path}.nodePort") or 0
        _in_range(node_port, f"{path}.nodePort", 0, 65535)
        if name in names:
            _fail(f"{path}.name", f"duplicate port name {name!r}")
        if (port, protocol) in numbers:
            _fail(f"{path}.port", f"duplicate port {port}/{protocol.value}")
        names.add(name)
        numbers.add((port, protocol))
        ports.append((name, protocol, port, node_port))
    return _shared(_SERVICE_PORTS, tuple(ports), ServicePort)


def _plain_service_ports(
    raw_ports: list[object],
) -> tuple[tuple[str, Protocol, int, int], ...] | None:
    """The fields of spec.ports as _service_ports reads them, for the common list that
    passes every check, without building the paths of the messages (most of the time
    it took); None for anything else, which _service_ports reads and reports on."""
    ports: list[tuple[str, Protocol, int, int]] = []
    for entry in raw_ports:
        if type(entry) is not dict:
            return None
        name, protocol_name = entry.get("name"), entry.get("protocol")
        port, node_port = entry.get("port"), entry.get("nodePort")
        if name is None:
            name = ""
        if protocol_name is None:
            protocol_name = "TCP"
        if node_port is None:
            node_port = 0
        if type(name) is not str or type(port) is not int or type(node_port) is not int:
            return None
        protocol = _PROTOCOLS.get(protocol_name) if type(protocol_name) is str else None
        if protocol is None or not (0 < port <= 65535 and 0 <= node_port <= 65535):
            return None
        ports.append((_intern(name), protocol, port, node_port))
    if len({p[0] for p in ports}) != len(ports) or len({p[1:3] for p in ports}) != len(ports):
        return None  # a duplicate name or port
    return tuple(ports)


def _affinity_timeout(spec: Mapping[str, object]) -> int | None:
    affinity = _str(spec.get("sessionAffinity"), "spec.sessionAffinity", "") or "None"
    if affinity == "None":
        return None
    if affinity != "ClientIP":
        _fail("spec.sessionAffinity", f"unknown value {affinity!r} (expected None or ClientIP)")
    path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
    config = _mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig")
    client_ip = _mapping(config.get("clientIP"), "spec.sessionAffinityConfig.clientIP")
    timeout = _optional_int(client_ip.get("timeoutSeconds"), path)
    if timeout is None:
        return DEFAULT_AFFINITY_TIMEOUT
    return _in_range(timeout, path, 1, MAX_AFFINITY_TIMEOUT)


def _load_balancer_ips(obj: Mapping[str, object]) -> tuple[IPAddress, ...]:
    status = _mapping(obj.get("status"), "status")
    balancer = _mapping(status.get("loadBalancer"), "status.loadBalancer")
    addresses: list[IPAddress] = []
    for index, raw in enumerate(_list(balancer.get("ingress"), "status.loadBalancer.ingress")):
        path = f"status.loadBalancer.ingress[{index}]"
        ingress = _mapping(raw, path)
        ip_mode = _str(ingress.get("ipMode"), f"{path}.ipMode", "") or "VIP"
        if ip_mode not in ("VIP", "Proxy"):
            _fail(f"{path}.ipMode", f"unknown value {ip_mode!r} (expected VIP or Proxy)")
        text = _str(ingress.get("ip"), f"{path}.ip", "")
        # ipMode Proxy: the load balancer delivers to the node, not to the VIP (KEP-1860);
        # hostname-only entries (e.g. AWS ELB) have no address to program.
        if ip_mode == "Proxy" or not text:
            continue
        addresses.append(_ip(text, f"{path}.ip"))
    return _unique(addresses)


def _traffic_policy(spec: Mapping[str, object], field: str) -> str:
    policy = _str(spec.get(field), f"spec.{field}", "") or "Cluster"
    if policy not in ("Cluster", "Local"):
        _fail(f"spec.{field}", f"unknown value {policy!r} (expected Cluster or Local)")
    return policy


# --- EndpointSlice -------------------------------------------------------------------------


def endpoint_slice_from_dict(obj: Mapping[str, object]) -> EndpointSlice | None:
    """A discovery.k8s.io/v1 EndpointSlice as a model value; None for addressType FQDN.

    Follows kube-proxy where the API leaves room: only an endpoint's first address is used,
    an endpoint without addresses and a port without a number (or port 0) are ignored.
    Conditions follow the API documentation: ready null means ready, serving null defers
    to ready, terminating null means not terminating.

    Raises InvalidObject with a reason naming the field and value at fault.
    """
    namespace, name = _metadata("EndpointSlice", obj, namespaced=True)
    try:
        return _endpoint_slice(namespace, name, obj)
    except _BadField as exc:
        raise InvalidObject("EndpointSlice", f"{namespace}/{name}", str(exc)) from None


def _endpoint_slice(namespace: str, name: str, obj: Mapping[str, object]) -> EndpointSlice | None:
    address_type = _str(obj.get("addressType"), "addressType", "")
    if address_type == "FQDN":
        logger.debug("skipping EndpointSlice {key}: addressType FQDN", key=f"{namespace}/{name}")
        return None
    family = _ADDRESS_FAMILIES.get(address_type)
    if family is None:
        _fail("addressType", f"expected IPv4, IPv6 or FQDN, got {address_type!r}")
    label = _ignored_by_label(obj)
    if label is not None:
        key = f"{namespace}/{name}"
        logger.debug("skipping EndpointSlice {key}: label {label}", key=key, label=label)
        return None

    metadata = _mapping(obj.get("metadata"), "metadata")
    labels = _mapping(metadata.get("labels"), "metadata.labels")
    service_name = labels.get(SERVICE_NAME_LABEL)
    if not isinstance(service_name, str) or not service_name:
        _fail("metadata.labels", f"no {SERVICE_NAME_LABEL} label")

    return EndpointSlice(
        namespace=namespace,
        name=name,
        service_name=sys.intern(service_name),
        family=family,
        ports=_endpoint_ports(obj),
        endpoints=_endpoints(obj, family),
        trigger_time=_trigger_time(namespace, name, metadata),
    )


def _trigger_time(namespace: str, name: str, metadata: Mapping[str, object]) -> float | None:
    # Only a metric depends on it, so an unreadable value is dropped, not the slice
    # (kube-proxy's endpointslicecache likewise ignores one it cannot parse).
    annotations = metadata.get("annotations")
    if type(annotations) is not dict and not isinstance(annotations, Mapping):  # ABCs are slow
        return None
    text = annotations.get(TRIGGER_TIME_ANNOTATION)
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        logger.debug(
            "EndpointSlice {key}: ignoring unreadable {annotation} {value!r}",
            key=f"{namespace}/{name}",
            annotation=TRIGGER_TIME_ANNOTATION,
            value=text,
        )
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _endpoint_ports(obj: Mapping[str, object]) -> tuple[EndpointPort, ...]:
    ports: list[tuple[str, Protocol, int]] = []
    names: set[str] = set()
    for index, raw in enumerate(_list(obj.get("ports"), "ports")):
        path = f"ports[{index}]"
        entry = _mapping(raw, path)
        name = sys.intern(_str(entry.get("name"), f"{path}.name", ""))
        protocol = _protocol(entry.get("protocol"), f"{path}.protocol")
        if name in names:
            _fail(f"{path}.name", f"duplicate port name {name!r}")
        names.add(name)
        port = _optional_int(entry.get("port"), f"{path}.port")
        # The API lets a null port mean "all ports"; kube-proxy ignores such a port, and 0.
        if not port:
            continue
        _in_range(port, f"{path}.port", 1, 65535)
        ports.append((name, protocol, port))
    return _shared(_ENDPOINT_PORTS, tuple(ports), EndpointPort)


def _endpoints(obj: Mapping[str, object], family: IPFamily) -> tuple[Endpoint, ...]:
    endpoints: list[Endpoint] = []
    af, address_type = _SOCKET_FAMILIES[family]
    for index, raw in enumerate(_list(obj.get("endpoints"), "endpoints")):
        endpoint = _plain_endpoint(raw, af, address_type)
        if endpoint is None:
            endpoint = _endpoint(index, raw, family)
        if endpoint is not _NO_ADDRESS:
            endpoints.append(endpoint)
    return tuple(endpoints)


_NO_ADDRESS: Final = Endpoint(ipaddress.IPv4Address(0))  # kube-proxy ignores such an endpoint
_SOCKET_FAMILIES: Final[Mapping[IPFamily, tuple[int, Callable[[bytes], IPAddress]]]] = {
    IPFamily.V4: (socket.AF_INET, _ipv4_from_packed),
    IPFamily.V6: (socket.AF_INET6, _ipv6_from_packed),
}


def _plain_endpoint(
    raw: object,
    af: int = socket.AF_INET,
    address_type: Callable[[bytes], IPAddress] = _ipv4_from_packed,
) -> Endpoint | None:
    """The common endpoint, read quickly (decoding is most of a cold start): one address
    of the slice's family that the C parser reads, conditions true/false/absent, names or
    null, no hints. None for anything else, which _endpoint reads and validates; both agree
    on what this reads."""
    if type(raw) is not dict or raw.get("hints") is not None:
        return None
    addresses = raw.get("addresses")
    if type(addresses) is not list or len(addresses) != 1 or type(addresses[0]) is not str:
        return None
    try:
        address = address_type(socket.inet_pton(af, addresses[0]))
    except (OSError, ValueError):  # ValueError: a NUL in the text
        return None
    conditions = raw.get("conditions")
    if conditions is None:
        conditions = {}
    elif type(conditions) is not dict:
        return None
    ready, serving, terminating = (
        conditions.get("ready"),
        conditions.get("serving"),
        conditions.get("terminating"),
    )
    node_name, zone = raw.get("nodeName"), raw.get("zone")
    if not (
        type(ready) in _BOOL_OR_NONE
        and type(serving) in _BOOL_OR_NONE
        and type(terminating) in _BOOL_OR_NONE
        and type(node_name) in _STR_OR_NONE
        and type(zone) in _STR_OR_NONE
    ):
        return None
    ready = True if ready is None else ready
    return _new_endpoint(
        address,
        ready,
        ready if serving is None else serving,
        bool(terminating),
        # Thousands of endpoints share a handful of node and zone names: keep one copy.
        None if node_name is None else _intern(node_name),
        None if zone is None else _intern(zone),
    )


def _endpoint_builder() -> Callable[..., Endpoint]:
    """Endpoint(address, ready, serving, terminating, node_name, zone), built as the
    dataclass would, in a third of its time: its frozen __init__ sets each field through
    object.__setattr__, which is most of reading an endpoint. Checked against
    dataclasses.fields at import and by the tests."""
    names = ("address", "ready", "serving", "terminating", "node_name", "zone")
    hints = ("zone_hints", "node_hints")
    if tuple(f.name for f in dataclasses.fields(Endpoint)) != names + hints:
        raise RuntimeError("Endpoint's fields changed: update _endpoint_builder")
    setters = [getattr(Endpoint, name).__set__ for name in names + hints]
    s_address, s_ready, s_serving, s_terminating, s_node, s_zone, s_zh, s_nh = setters
    new = object.__new__

    def build(
        address: IPAddress,
        ready: bool,
        serving: bool,
        terminating: bool,
        node_name: str | None,
        zone: str | None,
    ) -> Endpoint:
        endpoint = new(Endpoint)
        s_address(endpoint, address)
        s_ready(endpoint, ready)
        s_serving(endpoint, serving)
        s_terminating(endpoint, terminating)
        s_node(endpoint, node_name)
        s_zone(endpoint, zone)
        s_zh(endpoint, ())
        s_nh(endpoint, ())
        return endpoint

    return build


_new_endpoint: Final = _endpoint_builder()
_intern: Final = sys.intern


def _interned(text: str | None) -> str | None:
    return None if text is None else sys.intern(text)


_BOOL_OR_NONE: Final = frozenset({bool, type(None)})
_STR_OR_NONE: Final = frozenset({str, type(None)})


def _endpoint(index: int, raw: object, family: IPFamily) -> Endpoint:
    """One endpoint, every field validated; _NO_ADDRESS when it has no address."""
    path = f"endpoints[{index}]"
    entry = _mapping(raw, path)
    raw_addresses = _list(entry.get("addresses"), f"{path}.addresses")
    addresses = [
        _ip_of_family(value, f"{path}.addresses[{i}]", family)
        for i, value in enumerate(raw_addresses)
    ]
    if not addresses:
        return _NO_ADDRESS
    conditions = _mapping(entry.get("conditions"), f"{path}.conditions")
    ready = _optional_bool(conditions.get("ready"), f"{path}.conditions.ready")
    serving = _optional_bool(conditions.get("serving"), f"{path}.conditions.serving")
    terminating = _optional_bool(conditions.get("terminating"), f"{path}.conditions.terminating")
    ready = True if ready is None else ready
    hints = _mapping(entry.get("hints"), f"{path}.hints")
    return Endpoint(
        address=addresses[0],
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=bool(terminating),
        node_name=_interned(_optional_str(entry.get("nodeName"), f"{path}.nodeName")),
        zone=_interned(_optional_str(entry.get("zone"), f"{path}.zone")),
        zone_hints=_hint_names(hints, "forZones", f"{path}.hints"),
        node_hints=_hint_names(hints, "forNodes", f"{path}.hints"),
    )


def _hint_names(hints: Mapping[str, object], field: str, path: str) -> tuple[str, ...]:
    """The names in hints.forZones or hints.forNodes ([{name: ...}, ...])."""
    names: list[str] = []
    for index, raw in enumerate(_list(hints.get(field), f"{path}.{field}")):
        item = _mapping(raw, f"{path}.{field}[{index}]")
        name = _str(item.get("name"), f"{path}.{field}[{index}].name", "")
        if name and name not in names:
            names.append(sys.intern(name))
    return tuple(names)


# --- Node ----------------------------------------------------------------------------------


def node_addresses_from_dict(obj: Mapping[str, object]) -> tuple[str, tuple[IPAddress, ...]]:
    """A v1 Node's name and its InternalIP and ExternalIP addresses, in status order.

    Raises InvalidObject for a missing name or an address that is not an IP.
    """
    node = node_from_dict(obj)
    return node.name, node.addresses


def node_from_dict(obj: Mapping[str, object]) -> Node:
    """A v1 Node as a model Node: addresses, zone label, and whether it is going away.

    Raises InvalidObject for a missing name or a field of the wrong type, naming it.
    """
    _, name = _metadata("Node", obj, namespaced=False)
    try:
        return _node(name, obj)
    except _BadField as exc:
        raise InvalidObject("Node", name, str(exc)) from None


def _node(name: str, obj: Mapping[str, object]) -> Node:
    metadata = _mapping(obj.get("metadata"), "metadata")
    labels = _mapping(metadata.get("labels"), "metadata.labels")
    zone = _optional_str(labels.get(ZONE_LABEL), f"metadata.labels[{ZONE_LABEL}]")
    deleting = _optional_str(metadata.get("deletionTimestamp"), "metadata.deletionTimestamp")
    spec = _mapping(obj.get("spec"), "spec")
    to_be_deleted = False
    for index, raw in enumerate(_list(spec.get("taints"), "spec.taints")):
        taint = _mapping(raw, f"spec.taints[{index}]")
        if _str(taint.get("key"), f"spec.taints[{index}].key", "") == TO_BE_DELETED_TAINT:
            to_be_deleted = True
    cidr_texts = _list(spec.get("podCIDRs"), "spec.podCIDRs")
    if not cidr_texts and spec.get("podCIDR"):
        cidr_texts = [spec.get("podCIDR")]
    pod_cidrs = tuple(_cidr(value, f"spec.podCIDRs[{i}]") for i, value in enumerate(cidr_texts))

    status = _mapping(obj.get("status"), "status")
    addresses: list[IPAddress] = []
    for index, raw in enumerate(_list(status.get("addresses"), "status.addresses")):
        path = f"status.addresses[{index}]"
        entry = _mapping(raw, path)
        if _str(entry.get("type"), f"{path}.type", "") in _NODE_ADDRESS_TYPES:
            addresses.append(_ip(entry.get("address"), f"{path}.address"))
    return Node(
        name=name,
        addresses=_unique(addresses),
        zone=zone or None,
        deleting=bool(deleting),
        to_be_deleted=to_be_deleted,
        pod_cidrs=pod_cidrs,
    )


def _cidr(value: object, path: str) -> IPNetwork:
    text = _str(value, path, "")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        _fail(path, f"invalid CIDR {text!r}")
