"""Which UDP conntrack entries are stale. Pure.

UDP has no connection to close: a client that keeps its socket keeps sending along its
conntrack entry, to an endpoint that may be gone (kubernetes#19029, #125467). Like
kube-proxy's CleanStaleEntries, every sync compares the UDP entries with the Services:
an entry whose original destination is a Service frontend (cluster IP, external IP or
load balancer IP, with the Service port; or any address with a NodePort) and whose reply
comes from an address that is no serving endpoint of that Service port is deleted. That
covers both removed endpoints and Services whose first endpoint appears (entries made
while there was none reply from the frontend itself). A Service with no serving endpoint
keeps its entries: there is nowhere better to send them. Policies and topology are
ignored on purpose, as in kube-proxy: they decide new flows, not existing ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ipvsproxy.core.endpoints import select_endpoints
from ipvsproxy.core.model import EndpointSlice, IPAddress, IPFamily, Protocol, Service

_K = TypeVar("_K")


@dataclass(frozen=True, slots=True)
class ConntrackEntry:
    """A conntrack entry: its original and reply tuples."""

    protocol: Protocol
    source: IPAddress
    destination: IPAddress
    source_port: int
    destination_port: int
    reply_source: IPAddress
    reply_destination: IPAddress
    reply_source_port: int
    reply_destination_port: int

    @property
    def family(self) -> IPFamily:
        return IPFamily.of(self.source)


@dataclass(frozen=True, slots=True)
class UdpFrontends:
    """Serving endpoint addresses per UDP frontend (address, port) and per NodePort."""

    addresses: Mapping[tuple[IPAddress, int], frozenset[IPAddress]]
    node_ports: Mapping[int, frozenset[IPAddress]]


def udp_frontends(
    services: Iterable[Service], slices_by_service: Mapping[str, Sequence[EndpointSlice]]
) -> UdpFrontends:
    """The UDP frontends of these Services that have at least one serving endpoint."""
    addresses: dict[tuple[IPAddress, int], frozenset[IPAddress]] = {}
    node_ports: dict[int, frozenset[IPAddress]] = {}
    for service in services:
        slices = slices_by_service.get(service.key, ())
        for port in service.ports:
            if port.protocol is not Protocol.UDP:
                continue
            for family in IPFamily:
                serving = select_endpoints(port, family, slices, node_name="", zone="").serving
                if not serving:
                    continue
                for address in (
                    *service.cluster_ips,
                    *service.external_ips,
                    *service.load_balancer_ips,
                ):
                    if IPFamily.of(address) is family:
                        addresses[(address, port.port)] = serving
                if port.node_port:
                    node_ports[port.node_port] = (
                        node_ports.get(port.node_port, frozenset()) | serving
                    )
    return UdpFrontends(addresses, node_ports)


def merge_frontends(parts: Iterable[UdpFrontends]) -> UdpFrontends:
    """The frontends of several Services as one (NodePort endpoints united)."""
    addresses: dict[tuple[IPAddress, int], frozenset[IPAddress]] = {}
    node_ports: dict[int, frozenset[IPAddress]] = {}
    for part in parts:
        addresses.update(part.addresses)
        for port, serving in part.node_ports.items():
            node_ports[port] = node_ports.get(port, frozenset()) | serving
    return UdpFrontends(addresses, node_ports)


def cleanup_needed(before: UdpFrontends | None, after: UdpFrontends) -> bool:
    """Whether a Service's UDP flows may have gone stale between two of its frontend
    sets (kube-proxy's ConntrackCleanupRequired): a frontend lost a serving endpoint, or
    got its first one (flows made meanwhile answer from the frontend itself). before None:
    nothing is known (a new Service, a restart)."""
    if before is None:
        return bool(after.addresses or after.node_ports)
    return _changed(before.addresses, after.addresses) or _changed(
        before.node_ports, after.node_ports
    )


def _changed(
    before: Mapping[_K, frozenset[IPAddress]], after: Mapping[_K, frozenset[IPAddress]]
) -> bool:
    return any(
        (old := before.get(key)) is None or not old <= serving for key, serving in after.items()
    )


def stale_entries(
    entries: Iterable[ConntrackEntry], frontends: UdpFrontends
) -> list[ConntrackEntry]:
    """The UDP entries to delete (see the module docstring)."""
    stale: list[ConntrackEntry] = []
    for entry in entries:
        if entry.protocol is not Protocol.UDP:
            continue
        serving = frontends.addresses.get((entry.destination, entry.destination_port))
        if serving is None:
            serving = frontends.node_ports.get(entry.destination_port)
        if serving is not None and entry.reply_source not in serving:
            stale.append(entry)
    return stale
