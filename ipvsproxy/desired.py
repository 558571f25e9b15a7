"""Desired kernel state: a pure function of Services, EndpointSlices, the node and config."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from loguru import logger

from ipvsproxy import ipsets
from ipvsproxy.gcpause import gc_paused
from ipvsproxy.model import (
    DEFAULT_SCHEDULER,
    IPVS_FLAG_PERSISTENT,
    IPVS_FLAG_SOURCE_HASH,
    EndpointSlice,
    IPAddress,
    IPFamily,
    IptablesRuleset,
    KernelState,
    RealServer,
    RealServerKey,
    Service,
    ServicePort,
    VirtualServer,
    VirtualServerKey,
)
from ipvsproxy.rules import MasqueradeSettings, build_ruleset


@dataclass(frozen=True, slots=True)
class DesiredSettings:
    """The part of the proxy configuration that shapes the desired state."""

    scheduler: str = DEFAULT_SCHEDULER
    masquerade: MasqueradeSettings = field(default_factory=MasqueradeSettings)
    families: tuple[IPFamily, ...] = (IPFamily.V4, IPFamily.V6)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """This node, as endpoint locality needs it."""

    name: str = ""
    addresses: tuple[IPAddress, ...] = ()


def index_slices(slices: Iterable[EndpointSlice]) -> dict[str, list[EndpointSlice]]:
    """EndpointSlices grouped by the "namespace/name" of their Service."""
    by_service: dict[str, list[EndpointSlice]] = defaultdict(list)
    for endpoint_slice in slices:
        by_service[endpoint_slice.service_key].append(endpoint_slice)
    return by_service


def real_servers_for(
    port: ServicePort,
    family: IPFamily,
    slices: Sequence[EndpointSlice],
    *,
    node_name: str,
    local_only: bool,
) -> tuple[dict[RealServerKey, RealServer], list[tuple[IPAddress, int]]]:
    """The ready endpoints of one Service port and family, deduplicated by ip:port.

    Endpoint ports match Service ports by name and protocol, across every slice of the
    Service. Also returns the local endpoints (any condition) for hairpin masquerading.
    """
    servers: dict[RealServerKey, RealServer] = {}
    local: list[tuple[IPAddress, int]] = []
    name, protocol = port.name, port.protocol
    for endpoint_slice in slices:
        if endpoint_slice.family is not family:
            continue
        target = 0
        for slice_port in endpoint_slice.ports:
            if slice_port.name == name and slice_port.protocol is protocol:
                target = slice_port.port
                break
        if not target:
            continue
        for endpoint in endpoint_slice.endpoints:
            is_local = bool(node_name) and endpoint.node_name == node_name
            if is_local:
                local.append((endpoint.address, target))
            if not endpoint.ready or (local_only and not is_local):
                continue
            key = RealServerKey(endpoint.address, target)
            if key not in servers:
                servers[key] = RealServer(endpoint.address, target)
    return servers, local


def _virtual_server(
    address: IPAddress, port: ServicePort, service: Service, scheduler: str
) -> VirtualServer:
    flags, timeout = 0, 0
    if service.affinity_timeout is not None:
        flags, timeout = IPVS_FLAG_PERSISTENT, service.affinity_timeout
    if scheduler == "mh":
        # kube-proxy hashes on the source port too with mh (FlagSourceHash).
        flags |= IPVS_FLAG_SOURCE_HASH
    return VirtualServer(
        address, port.protocol, port.port, scheduler=scheduler, flags=flags, timeout=timeout
    )


def desired_state(
    services: Iterable[Service],
    slices: Iterable[EndpointSlice],
    *,
    node: NodeInfo,
    settings: DesiredSettings,
) -> KernelState:
    """Everything the kernel should hold for these objects (ClusterIP services)."""
    with gc_paused():
        return _desired_state(services, slices, node=node, settings=settings)


def _desired_state(
    services: Iterable[Service],
    slices: Iterable[EndpointSlice],
    *,
    node: NodeInfo,
    settings: DesiredSettings,
) -> KernelState:
    by_service = index_slices(slices)
    virtual_servers: dict[VirtualServerKey, VirtualServer] = {}
    real_servers: dict[VirtualServerKey, dict[RealServerKey, RealServer]] = {}
    addresses: set[IPAddress] = set()
    entries: dict[str, set[str]] = {
        spec.name_for(family): set() for family in IPFamily for spec in ipsets.IPSETS
    }
    families = set(settings.families)
    owners: dict[VirtualServerKey, str] = {}  # which Service got each virtual server

    for service in services:
        service_slices = by_service.get(service.key, [])
        for cluster_ip in service.cluster_ips:
            family = IPFamily.of(cluster_ip)
            if family not in families:
                continue
            cluster_set = entries[ipsets.CLUSTER_IP.name_for(family)]
            loop_back = entries[ipsets.LOOP_BACK.name_for(family)]
            for port in service.ports:
                server = _virtual_server(cluster_ip, port, service, settings.scheduler)
                if server.key in owners:
                    # The API server prevents this; a hand-written file may not.
                    logger.warning(
                        "two Services claim one virtual server; the first keeps it",
                        virtual_server=f"{port.protocol.value} {cluster_ip}:{port.port}",
                        kept=owners[server.key],
                        skipped=service.key,
                    )
                    continue
                owners[server.key] = service.key
                servers, local = real_servers_for(
                    port,
                    family,
                    service_slices,
                    node_name=node.name,
                    local_only=service.internal_traffic_local,
                )
                virtual_servers[server.key] = server
                real_servers[server.key] = servers
                addresses.add(cluster_ip)
                cluster_set.add(ipsets.ip_port_entry(cluster_ip, port.protocol, port.port))
                for address, target in local:
                    loop_back.add(ipsets.ip_port_ip_entry(address, port.protocol, target, address))

    for address in addresses:
        entries[ipsets.IPVS_IPS.name_for(IPFamily.of(address))].add(str(address))

    nonempty = {name for name, members in entries.items() if members}
    iptables: dict[IPFamily, IptablesRuleset] = {
        family: build_ruleset(family, masquerade=settings.masquerade, nonempty_sets=nonempty)
        for family in settings.families
    }
    return KernelState(
        virtual_servers=virtual_servers,
        real_servers=real_servers,
        addresses=frozenset(addresses),
        ipsets={name: frozenset(members) for name, members in entries.items()},
        iptables=iptables,
    )
