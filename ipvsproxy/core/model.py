"""Small frozen value types shared by every layer.

Two groups live here:
- what the proxy reads from Kubernetes (Service, EndpointSlice, ...), already validated;
- what it wants in, or reads back from, the kernel (VirtualServer, RealServer, ...).

Nothing in this module performs I/O.
"""

from __future__ import annotations

import enum
import ipaddress
import operator
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address_number() -> Callable[[IPAddress], int]:
    """int(address) without ipaddress's Python-level __int__ (a slot read in C): a cold
    start takes the number of every endpoint's address, and packs two per real server.
    Falls back to int should ipaddress keep the number otherwise."""
    number = operator.attrgetter("_ip")
    try:
        for address in (ipaddress.IPv4Address("192.0.2.1"), ipaddress.IPv6Address("2001:db8::1")):
            if number(address) != int(address):
                return int
    except AttributeError:
        return int
    return number


address_number: Callable[[IPAddress], int] = _address_number()


def address_sort_key(address: IPAddress) -> tuple[int, int]:
    """Orders addresses IPv4 first, then numerically (mixed families do not compare)."""
    return (address.version, int(address))


def host_port(address: IPAddress, port: int) -> str:
    """ "10.0.0.1:80" or "[fd00::1]:80", as ipvsadm and most tools print an endpoint."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


class RulesBackend(enum.StrEnum):
    """What holds the proxy's sets and its fixed rules: ipsets and iptables chains, or
    one nftables table per family (core/nft_rules.py). IPVS balances in both."""

    IPTABLES = "iptables"
    NFTABLES = "nftables"


class IPFamily(enum.IntEnum):
    """An address family, valued as its IP version."""

    V4 = 4
    V6 = 6

    @property
    def af(self) -> int:
        """The kernel's AF_* number (AF_INET=2, AF_INET6=10)."""
        return socket.AF_INET if self is IPFamily.V4 else socket.AF_INET6

    @staticmethod
    def of(address: IPAddress | IPNetwork) -> IPFamily:
        return IPFamily.V4 if address.version == 4 else IPFamily.V6


class Protocol(enum.Enum):
    """A transport protocol a Service port may use."""

    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"

    # Members are singletons compared by identity: hash them so too, in C. Enum's own
    # hash (of the name, in Python) showed up in every virtual server key built.
    __hash__ = object.__hash__

    @property
    def number(self) -> int:
        """IANA protocol number, as IPVS stores it."""
        return _PROTOCOL_NUMBERS[self]

    @property
    def lower(self) -> str:
        """Lower-case name, as ipset entries and iptables spell it."""
        return self.value.lower()

    @staticmethod
    def from_number(number: int) -> Protocol:
        for protocol, value in _PROTOCOL_NUMBERS.items():
            if value == number:
                return protocol
        raise ValueError(f"unsupported IP protocol number {number}")


_PROTOCOL_NUMBERS = {Protocol.TCP: 6, Protocol.UDP: 17, Protocol.SCTP: 132}


class ForwardMethod(enum.IntEnum):
    """IPVS forwarding method (IP_VS_CONN_F_FWD_MASK values)."""

    MASQ = 0
    LOCAL = 1
    TUNNEL = 2
    ROUTE = 3
    BYPASS = 4


# IPVS service flags (include/uapi/linux/ip_vs.h).
IPVS_FLAG_PERSISTENT = 0x0001
IPVS_FLAG_HASHED = 0x0002  # kernel-internal; set on every dumped service, ignored when comparing
IPVS_FLAG_SCHED1 = 0x0008  # sh and mh: fallback to another server when the hashed one is out
IPVS_FLAG_SOURCE_HASH = 0x0010  # IP_VS_SVC_F_SCHED2; sh and mh: hash on the source port too
IPVS_FLAG_SCHED3 = 0x0020  # no meaning for the kernel's schedulers yet
IPVS_SCHED_FLAGS = IPVS_FLAG_SCHED1 | IPVS_FLAG_SOURCE_HASH | IPVS_FLAG_SCHED3
# The schedulers Linux ships (net/netfilter/ipvs/ip_vs_<name>.c); only sh and mh read the
# scheduler flags.
KERNEL_SCHEDULERS = frozenset(
    {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos"}
)
FLAGGED_SCHEDULERS = frozenset({"sh", "mh"})

# The dummy interface that holds every Service address, as kube-proxy names it.
DUMMY_INTERFACE = "kube-ipvs0"
DEFAULT_SCHEDULER = "rr"
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds; Kubernetes' default for ClientIP affinity


# --- Kubernetes side ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One entry of a Service's spec.ports."""

    name: str
    protocol: Protocol
    port: int
    node_port: int = 0  # 0 when the Service has no NodePort


@dataclass(frozen=True, slots=True)
class Service:
    """A Service that the proxy may program (headless and ExternalName are never built)."""

    namespace: str
    name: str
    type: str  # ClusterIP, NodePort, LoadBalancer
    cluster_ips: tuple[IPAddress, ...]
    ports: tuple[ServicePort, ...]
    # Seconds of ClientIP session affinity, or None without affinity.
    affinity_timeout: int | None = None
    external_ips: tuple[IPAddress, ...] = ()
    load_balancer_ips: tuple[IPAddress, ...] = ()
    external_traffic_local: bool = False
    internal_traffic_local: bool = False
    # spec.loadBalancerSourceRanges (or its older annotation): who may use the LB IPs.
    load_balancer_source_ranges: tuple[IPNetwork, ...] = ()
    # spec.healthCheckNodePort; 0 unless type LoadBalancer with externalTrafficPolicy Local.
    health_check_node_port: int = 0
    # The IPVS scheduler its annotation asks for; None: the node's (ipvs.scheduler).
    scheduler: str | None = None
    # Scheduler flags (IPVS_SCHED_FLAGS bits) its annotation asks for, used with sh and
    # mh; None: the default (mh hashes on the source port, as kube-proxy sets it).
    scheduler_flags: int | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class EndpointPort:
    """One entry of an EndpointSlice's ports; matched to a ServicePort by name."""

    name: str
    protocol: Protocol
    port: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of a slice. Like kube-proxy, only the first address is used."""

    address: IPAddress
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    # Topology hints (EndpointSlice hints.forZones / hints.forNodes): where this endpoint
    # should be used from; empty without hints.
    zone_hints: tuple[str, ...] = ()
    node_hints: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    """An EndpointSlice of address type IPv4 or IPv6 (FQDN slices are never built)."""

    namespace: str
    name: str
    service_name: str  # label kubernetes.io/service-name
    family: IPFamily
    ports: tuple[EndpointPort, ...]
    endpoints: tuple[Endpoint, ...]
    # Annotation endpoints.kubernetes.io/last-change-trigger-time, in seconds since the
    # epoch: when the change this slice reflects was triggered (a Pod or Service update).
    # None when absent or unreadable. Feeds kubeproxy_network_programming_duration_seconds.
    trigger_time: float | None = None
    # What endpoints.py works out from this slice (by target port and node), kept with it:
    # built once per slice object, not once per sync; gone with the slice.
    _memo: dict[Any, Any] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.service_name}"

    def memo(self) -> dict[Any, Any]:
        """A dict for work derived from this slice alone (endpoints.py's), made on first
        use. A changed slice is a new object, with a memo of its own."""
        memo = self._memo
        if memo is None:
            memo = {}
            object.__setattr__(self, "_memo", memo)
        return memo


@dataclass(frozen=True, slots=True)
class Node:
    """This node's Node object, reduced to what the proxy uses."""

    name: str
    # InternalIP and ExternalIP addresses, in status order.
    addresses: tuple[IPAddress, ...] = ()
    # Label topology.kubernetes.io/zone, for topology-aware routing.
    zone: str | None = None
    # metadata.deletionTimestamp is set: the node is going away.
    deleting: bool = False
    # Tainted ToBeDeletedByClusterAutoscaler: the autoscaler is draining it.
    to_be_deleted: bool = False
    # spec.podCIDRs (spec.podCIDR on old objects), for detectLocalMode NodeCIDR.
    pod_cidrs: tuple[IPNetwork, ...] = ()

    @property
    def key(self) -> str:
        return self.name

    @property
    def eligible(self) -> bool:
        """Whether load balancers should send traffic here (kube-proxy's /healthz)."""
        return not (self.deleting or self.to_be_deleted)


# --- Kernel side --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class VirtualServerKey:
    """What identifies an IPVS virtual server: address, protocol and port."""

    address: IPAddress
    protocol: Protocol
    port: int
    # ipaddress hashes through hex(); keys are hashed often in diffs, so hash once.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        hashed = hash((int(self.address), self.address.version, self.protocol, self.port))
        object.__setattr__(self, "_hash", hashed)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, VirtualServerKey)
            and self._hash == other._hash
            and self.port == other.port
            and self.protocol is other.protocol
            and self.address == other.address
        )

    @property
    def family(self) -> IPFamily:
        return IPFamily.of(self.address)

    def sort_key(self) -> tuple[int, int, str, int]:
        return (self.address.version, int(self.address), self.protocol.value, self.port)


@dataclass(frozen=True, slots=True)
class VirtualServer:
    """An IPVS virtual server with the settings the proxy manages."""

    address: IPAddress
    protocol: Protocol
    port: int
    scheduler: str = DEFAULT_SCHEDULER
    flags: int = 0  # without IPVS_FLAG_HASHED
    timeout: int = 0  # persistence timeout in seconds, 0 without persistence
    netmask: int = 0  # kernel default: 0xffffffff for IPv4, 128 for IPv6; 0 means that

    @property
    def key(self) -> VirtualServerKey:
        return VirtualServerKey(self.address, self.protocol, self.port)

    @property
    def family(self) -> IPFamily:
        return IPFamily.of(self.address)

    def same_settings(self, other: VirtualServer) -> bool:
        """Whether two servers with the same key need no update (kube-proxy's Equal)."""
        return (
            self.scheduler == other.scheduler
            and (self.flags & ~IPVS_FLAG_HASHED) == (other.flags & ~IPVS_FLAG_HASHED)
            and self.timeout == other.timeout
        )


@dataclass(frozen=True, slots=True, eq=False)
class RealServerKey:
    """What identifies a real server within its virtual server."""

    address: IPAddress
    port: int
    _hash: int = field(init=False, repr=False, compare=False)  # see VirtualServerKey
    # The address as a number (the very int object the address holds, so nearly free):
    # a partial sync compares thousands of keys, and ipaddress compares in Python.
    _number: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        number = int(self.address)
        object.__setattr__(self, "_number", number)
        # Without the family, whose property costs more than the rare clash of an IPv4
        # address with an IPv6 one of the same number (equality tells them apart).
        object.__setattr__(self, "_hash", hash((number, self.port)))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is RealServerKey
            and self._hash == other._hash
            and self._number == other._number
            and self.port == other.port
            and type(self.address) is type(other.address)
        )

    def sort_key(self) -> tuple[int, int, int]:
        return (self.address.version, int(self.address), self.port)


@dataclass(frozen=True, slots=True)
class RealServer:
    """An IPVS real server (destination) of one virtual server."""

    address: IPAddress
    port: int
    weight: int = 1
    forward: ForwardMethod = ForwardMethod.MASQ
    # Counters read back from the kernel; never part of the desired state.
    active_connections: int = field(default=0, compare=False)
    inactive_connections: int = field(default=0, compare=False)

    @property
    def key(self) -> RealServerKey:
        return RealServerKey(self.address, self.port)


def _slot_setters(cls: type, *names: str) -> tuple[Callable[[object, object], None], ...]:
    return tuple(cls.__dict__[name].__set__ for name in names)


_KEY_SLOTS = _slot_setters(RealServerKey, "address", "port", "_hash", "_number")
_SERVER_SLOTS = _slot_setters(
    RealServer,
    "address",
    "port",
    "weight",
    "forward",
    "active_connections",
    "inactive_connections",
)


def real_servers_at(addresses: Iterable[IPAddress], port: int) -> dict[RealServerKey, RealServer]:
    """{RealServerKey(a, port): RealServer(a, port)} for each address in order (a repeated
    address keeps its first place), equal to what the constructors build, in about half
    their time: a frozen dataclass sets each field through object.__setattr__, and
    endpoints.py makes a pair per endpoint of every slice it sees."""
    new = object.__new__
    set_key_address, set_key_port, set_hash, set_number = _KEY_SLOTS
    set_address, set_port, set_weight, set_forward, set_active, set_inactive = _SERVER_SLOTS
    masquerade = ForwardMethod.MASQ
    number_of = address_number
    servers: dict[RealServerKey, RealServer] = {}
    for address in addresses:
        key = new(RealServerKey)
        number = number_of(address)
        set_key_address(key, address)
        set_key_port(key, port)
        set_number(key, number)
        set_hash(key, hash((number, port)))  # as RealServerKey.__post_init__
        server = new(RealServer)
        set_address(server, address)
        set_port(server, port)
        set_weight(server, 1)
        set_forward(server, masquerade)
        set_active(server, 0)
        set_inactive(server, 0)
        servers[key] = server
    return servers


@dataclass(frozen=True, slots=True)
class IpvsStats:
    """The kernel's traffic counters of one virtual server since it was created.

    As ``ipvsadm -Ln --stats`` prints them: connections scheduled, packets and bytes in
    (client to real server) and out (replies, seen with masquerading).
    """

    connections: int = 0
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def __add__(self, other: IpvsStats) -> IpvsStats:
        return IpvsStats(
            self.connections + other.connections,
            self.packets_in + other.packets_in,
            self.packets_out + other.packets_out,
            self.bytes_in + other.bytes_in,
            self.bytes_out + other.bytes_out,
        )


@dataclass(frozen=True, slots=True)
class IptablesRuleset:
    """The proxy's iptables chains for one address family.

    tables maps a table name ("nat", "filter") to its chains in order, each chain to its
    rules in order. A rule is the text iptables-save prints after "-A <chain> ".
    """

    family: IPFamily
    tables: Mapping[str, Mapping[str, tuple[str, ...]]]


@dataclass(frozen=True, slots=True)
class KernelState:
    """Everything the proxy programs, as desired or as read back from the kernel.

    - virtual_servers: every virtual server with its real servers, keyed by address/port;
    - addresses: the service addresses bound to kube-ipvs0;
    - ipsets: set name -> entries, in ipset's own entry syntax ("10.0.0.1,tcp:80");
    - iptables: per family, the chains by table; read back, built-in chains are included
      so that the jump rules in them can be checked;
    - nftables: per family, the chains of the nftables backend's table (as
      core/nft_rules.desired_chains gives them); empty with the iptables backend, as
      iptables is with the nftables one. The sets of either backend are `ipsets`, named
      after the ipsets they stand for;
    - dummy_interface: whether kube-ipvs0 exists;
    - steering: (family, fwmark) of each policy rule, with its local route, that delivers
      marked packets to IPVS (core/steering.py); desired only for the families that steer
      addresses, and never removed but by cleanup.
    """

    virtual_servers: Mapping[VirtualServerKey, VirtualServer]
    real_servers: Mapping[VirtualServerKey, Mapping[RealServerKey, RealServer]]
    addresses: frozenset[IPAddress]
    ipsets: Mapping[str, frozenset[str]]
    iptables: Mapping[IPFamily, IptablesRuleset] = field(default_factory=dict)
    nftables: Mapping[IPFamily, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    dummy_interface: bool = True
    steering: frozenset[tuple[IPFamily, int]] = frozenset()

    @property
    def rule_families(self) -> tuple[IPFamily, ...]:
        """The families whose fixed rules are wanted, whichever backend holds them."""
        return tuple(self.iptables) or tuple(self.nftables)
