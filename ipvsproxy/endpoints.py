"""Which endpoints serve a Service port on this node. Pure.

Follows kube-proxy's CategorizeEndpoints (pkg/proxy/topology.go) and its IPVS syncEndpoint:

- Usable endpoints are the ready ones; only when none is ready are serving and terminating
  ones used, decided separately for the Cluster and the Local view.
- Cluster view: topology applies. If every ready endpoint carries node hints and one names
  this node, only those hinted for this node are used (PreferSameNode); otherwise, if every
  ready endpoint carries zone hints and one names this node's zone, only those hinted for
  the zone (PreferSameZone, which trafficDistribution PreferClose asks the EndpointSlice
  controller to write). Else hints are ignored. Like kube-proxy, the Service's
  trafficDistribution field itself is not read: the hints are what it produces.
- Local view: endpoints on this node, topology ignored.

Which view a virtual server gets:

- ClusterIP (internalTrafficPolicy): Cluster, or Local when the policy is Local. kube-proxy
  falls back to the Cluster view when there is no local endpoint and the Service is also
  reachable from outside with externalTrafficPolicy Cluster, so a ClusterIP with
  internalTrafficPolicy Local then reaches remote pods. We never fall back: no local
  endpoint means no real server, which is what the policy promises.
- External addresses (externalTrafficPolicy): Cluster, or Local when the policy is Local,
  falling back to the Cluster view when there is no local endpoint so that pods of this
  node can still reach the Service through them (kubernetes#97081), unless
  internalTrafficPolicy is also Local: then kube-proxy has no Cluster view and neither do we.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ipvsproxy.model import (
    Endpoint,
    EndpointSlice,
    IPAddress,
    IPFamily,
    RealServer,
    RealServerKey,
    Service,
    ServicePort,
)

Servers = Mapping[RealServerKey, RealServer]
"""Real servers in endpoint order, as the desired state holds them."""


@dataclass(frozen=True, slots=True)
class PortEndpoints:
    """The endpoints of one Service port and family, sorted for each use.

    - cluster: the Cluster view (topology applied; ready, else serving and terminating);
    - local: the Local view (this node's; ready, else serving and terminating);
    - hairpin: every endpoint on this node whatever its conditions (kube-proxy puts them
      all in KUBE-LOOP-BACK), as (address, port);
    - serving: the addresses of every serving endpoint anywhere, which stale UDP conntrack
      entries are checked against (kube-proxy's CleanStaleEntries ignores policies too).
    """

    cluster: Servers
    local: Servers
    hairpin: tuple[tuple[IPAddress, int], ...]
    serving: frozenset[IPAddress]


NO_ENDPOINTS = PortEndpoints({}, {}, (), frozenset())


def internal_servers(endpoints: PortEndpoints, service: Service) -> Servers:
    """The real servers of the Service's ClusterIP virtual servers."""
    return endpoints.local if service.internal_traffic_local else endpoints.cluster


def external_servers(endpoints: PortEndpoints, service: Service) -> Servers:
    """The real servers of the Service's NodePort, external IP and load balancer ones."""
    if not service.external_traffic_local:
        return endpoints.cluster
    if endpoints.local or service.internal_traffic_local:
        return endpoints.local
    return endpoints.cluster


def _target_port(endpoint_slice: EndpointSlice, port: ServicePort) -> int:
    for slice_port in endpoint_slice.ports:
        if slice_port.name == port.name and slice_port.protocol is port.protocol:
            return slice_port.port
    return 0


_Entry = tuple[RealServerKey, tuple[Endpoint, RealServer]]


def _collect(
    port: ServicePort, family: IPFamily, slices: Sequence[EndpointSlice]
) -> dict[RealServerKey, tuple[Endpoint, RealServer]]:
    """Every endpoint of the port with its real server, deduplicated by ip:port. As
    kube-proxy's slice cache does, slices are taken in name order and a later duplicate
    replaces an earlier one."""
    found: dict[RealServerKey, tuple[Endpoint, RealServer]] = {}
    ordered = slices if len(slices) < 2 else sorted(slices, key=lambda s: s.name)
    for endpoint_slice in ordered:
        if endpoint_slice.family is not family:
            continue
        target = _target_port(endpoint_slice, port)
        if not target:
            continue
        keys, servers = endpoint_slice.real_servers(target)
        for endpoint, key, server in zip(endpoint_slice.endpoints, keys, servers, strict=True):
            found[key] = (endpoint, server)
    return found


def _topology_filter(ready: Sequence[Endpoint], name: str, zone: str) -> str | None:
    """Which hints narrow the Cluster view: "node", "zone" or None (topologyModeFromHints)."""
    if not ready:
        return None
    if name and all(e.node_hints for e in ready) and any(name in e.node_hints for e in ready):
        return "node"
    if zone and all(e.zone_hints for e in ready) and any(zone in e.zone_hints for e in ready):
        return "zone"
    return None


def select_endpoints(
    port: ServicePort,
    family: IPFamily,
    slices: Sequence[EndpointSlice],
    *,
    node_name: str,
    zone: str,
) -> PortEndpoints:
    """The endpoints of one Service port and family for node `node_name` in `zone` (its
    topology.kubernetes.io/zone label, "" without one); see the module docstring."""
    found = _collect(port, family, slices)
    if not found:
        return NO_ENDPOINTS
    entries = list(found.items())
    ready = [endpoint for endpoint, _ in found.values() if endpoint.ready]
    mode = _topology_filter(ready, node_name, zone)
    name = node_name

    def servers(keep: list[_Entry]) -> Servers:
        return {key: server for key, (_, server) in keep}

    def fallback(candidates: list[_Entry]) -> list[_Entry]:
        usable = [item for item in candidates if item[1][0].ready]
        if usable:
            return usable
        return [item for item in candidates if item[1][0].serving and item[1][0].terminating]

    # A topology mode implies a ready endpoint for this node or zone: no fallback needed.
    if mode == "node":
        cluster = servers(
            [item for item in entries if item[1][0].ready and name in item[1][0].node_hints]
        )
    elif mode == "zone":
        cluster = servers(
            [item for item in entries if item[1][0].ready and zone in item[1][0].zone_hints]
        )
    elif len(ready) == len(entries):  # the usual case: every endpoint ready
        cluster = {key: server for key, (_, server) in entries}
    else:
        cluster = servers(fallback(entries))
    on_node = [item for item in entries if name and item[1][0].node_name == name]
    return PortEndpoints(
        cluster=cluster,
        local=servers(fallback(on_node)),
        hairpin=tuple((server.address, server.port) for _, (_, server) in on_node),
        serving=frozenset(endpoint.address for endpoint, _ in found.values() if endpoint.serving),
    )
