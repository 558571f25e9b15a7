"""Desired kernel state: a pure function of Services, EndpointSlices, the node and config."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from loguru import logger

from ipvsproxy.core import ipsets, nft_rules
from ipvsproxy.core.endpoints import (
    PortEndpoints,
    external_servers,
    internal_servers,
    select_endpoints,
)
from ipvsproxy.core.frontends import NodePortSettings, node_port_addresses, service_frontends
from ipvsproxy.core.gcpause import gc_paused
from ipvsproxy.core.model import (
    DEFAULT_SCHEDULER,
    FLAGGED_SCHEDULERS,
    IPVS_FLAG_PERSISTENT,
    IPVS_FLAG_SOURCE_HASH,
    EndpointSlice,
    IPAddress,
    IPFamily,
    IPNetwork,
    IptablesRuleset,
    KernelState,
    Node,
    Protocol,
    RealServer,
    RealServerKey,
    RulesBackend,
    Service,
    ServicePort,
    VirtualServer,
    VirtualServerKey,
    host_port,
)
from ipvsproxy.core.rules import MasqueradeSettings, build_ruleset
from ipvsproxy.core.steering import steer_mark


@dataclass(frozen=True, slots=True)
class DesiredSettings:
    """The part of the proxy configuration that shapes the desired state."""

    scheduler: str = DEFAULT_SCHEDULER
    masquerade: MasqueradeSettings = field(default_factory=MasqueradeSettings)
    families: tuple[IPFamily, ...] = (IPFamily.V4, IPFamily.V6)
    node_ports: NodePortSettings = field(default_factory=NodePortSettings)
    rules_backend: RulesBackend = RulesBackend.IPTABLES  # as resolved at start, never "auto"


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """This node, as endpoint locality, topology, local traffic detection and frontends
    need it.

    addresses: the node's primary IPs (`--node-ip`, else the Node object's), for
    nodePortAddresses "primary" and for source ranges that admit the node itself.
    local_addresses: every address on the host's interfaces except kube-ipvs0's, read from
    the kernel at each full sync; NodePorts are served on them, and an external IP among
    them is not steered to IPVS (core/steering.py).
    """

    name: str = ""
    addresses: tuple[IPAddress, ...] = ()
    zone: str = ""  # label topology.kubernetes.io/zone of its Node object
    pod_cidrs: tuple[IPNetwork, ...] = ()  # spec.podCIDRs of its Node object
    local_addresses: frozenset[IPAddress] = frozenset()


def with_node_object(node: NodeInfo, obj: Node | None) -> NodeInfo:
    """node completed from its Node object: topology zone, pod CIDRs, and its addresses
    unless they were given (--node-ip)."""
    if obj is None or obj.name != node.name:
        return node
    return replace(
        node,
        addresses=node.addresses or obj.addresses,
        zone=obj.zone or "",
        pod_cidrs=obj.pod_cidrs,
    )


def settings_for_node(settings: DesiredSettings, node: NodeInfo) -> DesiredSettings:
    """settings with detectLocalMode NodeCIDR resolved: the local traffic detector takes
    the Node's spec.podCIDRs, the first of each family as kube-proxy does. A Node without
    them leaves no detector (only VIP-sourced node traffic masqueraded) until it gets them;
    kube-proxy instead waits for them at start and exits when they change."""
    masquerade = settings.masquerade
    if not masquerade.node_cidrs:
        return settings
    first: dict[int, IPNetwork] = {}
    for cidr in node.pod_cidrs:
        first.setdefault(cidr.version, cidr)
    cidrs = tuple(first[version] for version in sorted(first))
    if cidrs == masquerade.cluster_cidrs:
        return settings
    return replace(settings, masquerade=replace(masquerade, cluster_cidrs=cidrs))


def index_slices(slices: Iterable[EndpointSlice]) -> dict[str, list[EndpointSlice]]:
    """EndpointSlices grouped by the "namespace/name" of their Service."""
    by_service: dict[str, list[EndpointSlice]] = defaultdict(list)
    for endpoint_slice in slices:
        by_service[endpoint_slice.service_key].append(endpoint_slice)
    return by_service


def _virtual_server(
    address: IPAddress, protocol: Protocol, port: int, service: Service, default_scheduler: str
) -> VirtualServer:
    flags, timeout = 0, 0
    if service.affinity_timeout is not None:
        flags, timeout = IPVS_FLAG_PERSISTENT, service.affinity_timeout
    scheduler = service.scheduler or default_scheduler
    if scheduler in FLAGGED_SCHEDULERS and service.scheduler_flags is not None:
        flags |= service.scheduler_flags  # the Service's annotation says exactly which
    elif scheduler == "mh":
        # kube-proxy hashes on the source port too with mh (FlagSourceHash).
        flags |= IPVS_FLAG_SOURCE_HASH
    return VirtualServer(address, protocol, port, scheduler=scheduler, flags=flags, timeout=timeout)


@dataclass(frozen=True, slots=True)
class ServiceState:
    """What one Service asks of the kernel.

    The unit of partial syncs: a change to a Service or one of its EndpointSlices recomputes
    only this, and the difference to the previous one is what gets applied. Addresses and
    set entries may be shared with other Services (two Services on one external IP), so
    whoever removes them must count their users first.
    """

    virtual_servers: Mapping[VirtualServerKey, VirtualServer]
    real_servers: Mapping[VirtualServerKey, Mapping[RealServerKey, RealServer]]
    addresses: frozenset[IPAddress]
    set_entries: tuple[tuple[str, str], ...]  # (set name, entry in ipset's syntax)


EMPTY_SERVICE_STATE = ServiceState({}, {}, frozenset(), ())


def service_state(
    service: Service,
    slices: Sequence[EndpointSlice],
    *,
    node: NodeInfo,
    settings: DesiredSettings,
) -> ServiceState:
    """What the kernel should hold for one Service and its EndpointSlices.

    Every frontend (frontends.py) is a virtual server with the Service's affinity; cluster
    IPs take the internal view of the endpoints, node ports and external and load-balancer
    IPs the external one (endpoints.py).
    """
    virtual_servers: dict[VirtualServerKey, VirtualServer] = {}
    real_servers: dict[VirtualServerKey, Mapping[RealServerKey, RealServer]] = {}
    addresses: set[IPAddress] = set()
    set_entries: dict[tuple[str, str], None] = {}  # ordered and deduplicated
    has_node_ports = any(port.node_port for port in service.ports)
    for cluster_ip in service.cluster_ips:
        family = IPFamily.of(cluster_ip)
        if family not in settings.families:
            continue
        node_ports = (
            node_port_addresses(
                node.local_addresses,
                family=family,
                settings=settings.node_ports,
                primary_ips=node.addresses,
            )
            if has_node_ports
            else ()
        )
        fronts = service_frontends(
            service,
            family,
            cluster_ip=cluster_ip,
            node_ports=node_ports,
            node_addresses=node.local_addresses,
            primary_ips=node.addresses,
        )
        addresses.update(fronts.bind)
        set_entries.update(dict.fromkeys(fronts.set_entries))
        loop_back = ipsets.LOOP_BACK.name_for(family)
        selected: dict[ServicePort, PortEndpoints] = {}
        for frontend in fronts.frontends:
            port = frontend.service_port
            endpoints = selected.get(port)
            if endpoints is None:
                endpoints = select_endpoints(
                    port, family, slices, node_name=node.name, zone=node.zone
                )
                selected[port] = endpoints
                for entry in endpoints.loop_back:
                    set_entries[(loop_back, entry)] = None
            server = _virtual_server(
                frontend.address, port.protocol, frontend.port, service, settings.scheduler
            )
            key = server.key
            virtual_servers[key] = server
            view = external_servers if frontend.external else internal_servers
            real_servers[key] = view(endpoints, service)
    return ServiceState(virtual_servers, real_servers, frozenset(addresses), tuple(set_entries))


def desired_state(
    services: Iterable[Service],
    slices: Iterable[EndpointSlice],
    *,
    node: NodeInfo,
    settings: DesiredSettings,
) -> KernelState:
    """Everything the kernel should hold for these objects."""
    with gc_paused():
        by_service = index_slices(slices)
        states = (
            (
                service.key,
                service_state(
                    service, by_service.get(service.key, ()), node=node, settings=settings
                ),
            )
            for service in services
        )
        return merge_service_states(states, settings=settings)


def merge_service_states(
    states: Iterable[tuple[str, ServiceState]], *, settings: DesiredSettings
) -> KernelState:
    """The whole kernel state from every Service's part, plus the fixed iptables chains.

    When two Services claim one virtual server (the API server prevents it; a hand-written
    file may not), the first keeps it and the other is warned about.
    """
    virtual_servers: dict[VirtualServerKey, VirtualServer] = {}
    real_servers: dict[VirtualServerKey, Mapping[RealServerKey, RealServer]] = {}
    addresses: set[IPAddress] = set()
    entries: dict[str, set[str]] = {
        spec.name_for(family): set() for family in IPFamily for spec in ipsets.IPSETS
    }
    owners: dict[VirtualServerKey, str] = {}
    for service_key, state in states:
        for key, server in state.virtual_servers.items():
            if key in owners:
                logger.warning(
                    "two Services claim one virtual server; the first keeps it",
                    virtual_server=f"{key.protocol.value} {host_port(key.address, key.port)}",
                    kept=owners[key],
                    skipped=service_key,
                )
                continue
            owners[key] = service_key
            virtual_servers[key] = server
            real_servers[key] = state.real_servers[key]
        addresses.update(state.addresses)
        for set_name, entry in state.set_entries:
            entries[set_name].add(entry)
    return KernelState(
        virtual_servers=virtual_servers,
        real_servers=real_servers,
        addresses=frozenset(addresses),
        ipsets={name: frozenset(members) for name, members in entries.items()},
        iptables=desired_iptables(entries, settings=settings),
        nftables=desired_nftables(settings),
        steering=desired_steering(entries, settings=settings),
    )


def desired_steering(
    entries: Mapping[str, Collection[str]], *, settings: DesiredSettings
) -> frozenset[tuple[IPFamily, int]]:
    """The policy routing of the families whose KUBE-IPVS-STEERED set has entries."""
    mark = steer_mark(settings.masquerade.mark)
    return frozenset(
        (family, mark)
        for family in settings.families
        if entries.get(ipsets.STEERED.name_for(family))
    )


def desired_iptables(
    entries: Mapping[str, Collection[str]], *, settings: DesiredSettings
) -> dict[IPFamily, IptablesRuleset]:
    """The fixed chains per family; some rules exist only while their set has entries.
    None with the nftables backend."""
    if settings.rules_backend is not RulesBackend.IPTABLES:
        return {}
    nonempty = {name for name, members in entries.items() if members}
    return {
        family: build_ruleset(
            family,
            masquerade=settings.masquerade,
            nonempty_sets=nonempty,
            no_node_access=_no_node_access(entries, family),
        )
        for family in settings.families
    }


def desired_nftables(settings: DesiredSettings) -> dict[IPFamily, dict[str, tuple[str, ...]]]:
    """The nftables backend's chains per family: fixed, whatever the sets hold. None with
    the iptables backend."""
    if settings.rules_backend is not RulesBackend.NFTABLES:
        return {}
    return {
        family: nft_rules.desired_chains(family, settings.masquerade)
        for family in settings.families
    }


def _no_node_access(entries: Mapping[str, Collection[str]], family: IPFamily) -> list[str]:
    """Firewalled load-balancer ports whose source ranges do not admit the node (those
    have no KUBE-LOAD-BALANCER-SOURCE-IP entry), sorted so the rules compare stably."""
    firewalled = entries.get(ipsets.LOAD_BALANCER_FW.name_for(family), ())
    if not firewalled:
        return []
    admitted = {
        entry.rsplit(",", 1)[0]
        for entry in entries.get(ipsets.LOAD_BALANCER_SOURCE_IP.name_for(family), ())
    }
    return sorted(entry for entry in firewalled if entry not in admitted)
