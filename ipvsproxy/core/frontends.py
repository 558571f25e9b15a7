"""A Service's frontends: every address and port where it takes traffic, and their set entries.

Pure. kube-proxy's IPVS proxier (`syncProxyRules`) gives each Service port, per family:
- its cluster IP, bound to kube-ipvs0, in KUBE-CLUSTER-IP;
- each external IP in KUBE-EXTERNAL-IP, or KUBE-EXTERNAL-IP-LOCAL with
  externalTrafficPolicy Local (no masquerade);
- each load-balancer ingress IP (ipMode VIP) in KUBE-LOAD-BALANCER
  (plus -LOCAL with policy Local); with loadBalancerSourceRanges also in
  KUBE-LOAD-BALANCER-FW, one KUBE-LOAD-BALANCER-SOURCE-CIDR entry per range, and a
  KUBE-LOAD-BALANCER-SOURCE-IP entry when a range holds this node's IP;
- its nodePort on every node-port address (never bound), in KUBE-NODE-PORT-TCP/-UDP
  (a port bitmap) or KUBE-NODE-PORT-SCTP-HASH (one entry per node address), plus the
  -LOCAL twin with policy Local;
- its healthCheckNodePort in KUBE-HEALTH-CHECK-NODE-PORT.
Every bound address is also in KUBE-IPVS-IPS.

Unlike kube-proxy, external and load-balancer IPs are not bound to kube-ipvs0: each of
their ports is in KUBE-IPVS-STEERED, whose packets policy routing delivers to IPVS, so a
node still reaches the other ports of a host that owns such an address (steering.py).
One that is a node address is neither bound nor steered: it is local already.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ipvsproxy.core import ipsets
from ipvsproxy.core.model import IPAddress, IPFamily, IPNetwork, Protocol, Service, ServicePort

__all__ = [
    "Frontend",
    "FrontendKind",
    "NodePortSettings",
    "ServiceFrontends",
    "node_port_addresses",
    "service_frontends",
]


class FrontendKind(enum.Enum):
    CLUSTER_IP = "ClusterIP"
    EXTERNAL_IP = "ExternalIP"
    LOAD_BALANCER = "LoadBalancer"
    NODE_PORT = "NodePort"


@dataclass(frozen=True, slots=True)
class Frontend:
    """One virtual server's address and port, and the Service port behind it."""

    address: IPAddress
    port: int
    service_port: ServicePort
    kind: FrontendKind

    @property
    def external(self) -> bool:
        """Whether traffic from outside the cluster arrives here (externalTrafficPolicy)."""
        return self.kind is not FrontendKind.CLUSTER_IP


@dataclass(frozen=True, slots=True)
class NodePortSettings:
    """kube-proxy's `nodePortAddresses`, already validated by config.py.

    networks empty and primary False: every node address. primary: this node's primary
    IPs (NodeInfo.addresses) as well as the addresses inside networks.
    """

    networks: tuple[IPNetwork, ...] = ()
    primary: bool = False


@dataclass(frozen=True, slots=True)
class ServiceFrontends:
    """One family's frontends of a Service, the addresses to bind and the set entries."""

    frontends: tuple[Frontend, ...]
    bind: tuple[IPAddress, ...]
    set_entries: tuple[tuple[str, str], ...]  # (set name, entry in ipset's syntax)


_LINK_LOCAL_V6 = ipaddress.IPv6Network("fe80::/10")


def _usable_for_node_port(address: IPAddress) -> bool:
    # kube-proxy's isValidForSet: no loopback (IPVS mode never served 127.0.0.1:nodePort
    # since route_localnet went, CVE-2020-8558) and no IPv6 link-local (needs a zone).
    if address.is_loopback:
        return False
    return not (address.version == 6 and address in _LINK_LOCAL_V6)


def node_port_addresses(
    local_addresses: Iterable[IPAddress],
    *,
    family: IPFamily,
    settings: NodePortSettings,
    primary_ips: Sequence[IPAddress] = (),
) -> tuple[IPAddress, ...]:
    """The node addresses of one family that serve NodePorts, sorted.

    local_addresses are the host's interface addresses except kube-ipvs0's. With networks,
    only addresses inside one of them serve; a zero-length network (0.0.0.0/0, ::/0)
    means all, as in kube-proxy.
    """
    own = [a for a in local_addresses if a.version == family and _usable_for_node_port(a)]
    networks = [n for n in settings.networks if n.version == family]
    match_all = not settings.primary and (
        not settings.networks or any(n.prefixlen == 0 for n in networks)
    )
    if not match_all:
        primary = {a for a in primary_ips if a.version == family} if settings.primary else set()
        own = [a for a in own if a in primary or any(a in n for n in networks)]
    return tuple(sorted(set(own), key=int))


def _net_entry(address: IPAddress, protocol: Protocol, port: int, network: IPNetwork) -> str:
    # ipset prints a full-length network as a bare address; spell it the same way so that
    # the entries read back compare equal.
    host = network.prefixlen == network.max_prefixlen
    net = str(network.network_address) if host else str(network)
    return f"{address},{protocol.lower}:{port},{net}"


def service_frontends(
    service: Service,
    family: IPFamily,
    *,
    cluster_ip: IPAddress,
    node_ports: Sequence[IPAddress],
    node_addresses: frozenset[IPAddress],
    primary_ips: Sequence[IPAddress],
) -> ServiceFrontends:
    """The frontends of one Service in one family, given its cluster IP of that family.

    node_ports: the addresses serving NodePorts (node_port_addresses()); node_addresses:
    every host address except kube-ipvs0's (an external IP already there is not steered);
    primary_ips: this node's IPs, for source ranges that allow the node itself.
    """
    frontends: list[Frontend] = []
    bind: dict[IPAddress, None] = {cluster_ip: None}
    entries: dict[tuple[str, str], None] = {}
    local = service.external_traffic_local

    def add(spec: ipsets.IPSetSpec, entry: str) -> None:
        entries[(spec.name_for(family), entry)] = None

    externals = [a for a in service.external_ips if a.version == family]
    balancers = [a for a in service.load_balancer_ips if a.version == family]
    ranges = [n for n in service.load_balancer_source_ranges if n.version == family]
    if any(n.prefixlen == 0 for n in ranges):
        ranges = []  # a zero-length range allows everyone, like no ranges (kube-proxy)
    allow_node = any(ip in n for ip in primary_ips if ip.version == family for n in ranges)

    for port in service.ports:
        protocol, number = port.protocol, port.port
        frontends.append(Frontend(cluster_ip, number, port, FrontendKind.CLUSTER_IP))
        add(ipsets.CLUSTER_IP, ipsets.ip_port_entry(cluster_ip, protocol, number))

        for address in externals:
            frontends.append(Frontend(address, number, port, FrontendKind.EXTERNAL_IP))
            spec = ipsets.EXTERNAL_IP_LOCAL if local else ipsets.EXTERNAL_IP
            add(spec, ipsets.ip_port_entry(address, protocol, number))
            if address not in node_addresses:
                add(ipsets.STEERED, ipsets.ip_port_entry(address, protocol, number))

        for address in balancers:
            frontends.append(Frontend(address, number, port, FrontendKind.LOAD_BALANCER))
            entry = ipsets.ip_port_entry(address, protocol, number)
            add(ipsets.LOAD_BALANCER, entry)
            if local:
                add(ipsets.LOAD_BALANCER_LOCAL, entry)
            if ranges:
                add(ipsets.LOAD_BALANCER_FW, entry)
                for network in ranges:
                    add(
                        ipsets.LOAD_BALANCER_SOURCE_CIDR,
                        _net_entry(address, protocol, number, network),
                    )
                if allow_node:
                    # Marks the port as open to the node (desired._no_node_access); packets
                    # from the node never cross the firewall in INPUT (rules.py).
                    add(
                        ipsets.LOAD_BALANCER_SOURCE_IP,
                        ipsets.ip_port_ip_entry(address, protocol, number, address),
                    )
            if address not in node_addresses:
                add(ipsets.STEERED, entry)

        if port.node_port and node_ports:
            for address in node_ports:
                frontends.append(Frontend(address, port.node_port, port, FrontendKind.NODE_PORT))
            for spec in _node_port_sets(protocol, local):
                if protocol is Protocol.SCTP:
                    for address in node_ports:
                        add(spec, ipsets.ip_port_entry(address, protocol, port.node_port))
                else:
                    add(spec, str(port.node_port))

    if service.health_check_node_port:
        add(ipsets.HEALTH_CHECK_NODE_PORT, str(service.health_check_node_port))
    for address in bind:
        add(ipsets.IPVS_IPS, str(address))
    return ServiceFrontends(tuple(frontends), tuple(bind), tuple(entries))


_NODE_PORT_SETS = {
    Protocol.TCP: (ipsets.NODE_PORT_TCP, ipsets.NODE_PORT_LOCAL_TCP),
    Protocol.UDP: (ipsets.NODE_PORT_UDP, ipsets.NODE_PORT_LOCAL_UDP),
    Protocol.SCTP: (ipsets.NODE_PORT_SCTP, ipsets.NODE_PORT_LOCAL_SCTP),
}


def _node_port_sets(protocol: Protocol, local: bool) -> tuple[ipsets.IPSetSpec, ...]:
    cluster, local_spec = _NODE_PORT_SETS[protocol]
    return (cluster, local_spec) if local else (cluster,)
