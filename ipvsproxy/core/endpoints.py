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

How it is computed: the work on each EndpointSlice (its real servers, their conditions,
this node's share) is done once per slice object and kept with it, so a change to one
slice of a Service with thousands of endpoints redoes that slice's work alone; the views
of the whole Service are then unions of per-slice parts, taken with dict.update. Slices
that share an ip:port (an endpoint moving between slices) take the plain per-endpoint
path instead, which gives later slices precedence as kube-proxy's cache does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain

from ipvsproxy.core import ipsets
from ipvsproxy.core.model import (
    Endpoint,
    EndpointSlice,
    IPAddress,
    IPFamily,
    Protocol,
    RealServer,
    RealServerKey,
    Service,
    ServicePort,
    real_servers_at,
)

Servers = Mapping[RealServerKey, RealServer]
"""Real servers in endpoint order, as the desired state holds them. Never modified once
built: the same mapping may be held by a slice and by several desired states."""

_EMPTY: Servers = {}


class MergedServers(dict[RealServerKey, RealServer]):
    """Real servers united from the parts several slices contributed, which share no key.

    It keeps the parts: two of these built from slices that did not change share those
    slices' parts (the very objects), so a diff need only read the parts that differ.
    """

    __slots__ = ("parts",)

    def __init__(self, parts: tuple[Servers, ...]) -> None:
        super().__init__()
        for part in parts:
            self.update(part)
        self.parts = parts


def _union(parts: Sequence[Servers]) -> Servers:
    """The parts (sharing no key) as one mapping, in order; a lone part is itself."""
    present = [part for part in parts if part]
    if not present:
        return _EMPTY
    if len(present) == 1:
        return present[0]
    return MergedServers(tuple(present))


class _SliceServers:
    """One slice's real servers at one of its ports, deduplicated by ip:port (a later
    endpoint replaces an earlier one in its place), with the endpoint behind each, the
    subsets every Cluster view starts from, and the last node view asked for (a node
    asks for its own only). Built once per slice object."""

    __slots__ = (
        "endpoints",
        "fallback",
        "ready",
        "ready_count",
        "servers",
        "view",
        "view_name",
        "view_zone",
    )

    def __init__(self, endpoint_slice: EndpointSlice, target: int) -> None:
        endpoints = endpoint_slice.endpoints
        servers = real_servers_at([endpoint.address for endpoint in endpoints], target)
        if len(servers) != len(endpoints):  # an ip:port twice in the slice (rare)
            latest = {RealServerKey(e.address, target): e for e in endpoints}
            endpoints = tuple(latest.values())
        self.servers: Servers = servers
        self.endpoints: tuple[Endpoint, ...] = endpoints  # aligned with servers
        self.ready_count = len([endpoint for endpoint in endpoints if endpoint.ready])
        if self.ready_count == len(servers):
            self.ready: Servers = servers
            self.fallback: Servers = _EMPTY
        else:
            pairs = list(zip(servers.items(), endpoints, strict=True))
            self.ready = {k: s for (k, s), e in pairs if e.ready} or _EMPTY
            self.fallback = {k: s for (k, s), e in pairs if e.serving and e.terminating} or _EMPTY
        self.view: _NodeView | None = None
        self.view_name = self.view_zone = ""  # whom view is for


class _NodeView:
    """What one slice gives this node (by name and zone) at one target port and protocol:

    - node / zone: its ready endpoints hinted for this node / zone, or None when one of
      its ready endpoints has no such hints (then the hints are ignored Service-wide);
    - local_ready / local_fallback: its endpoints on this node, ready / serving and
      terminating; hairpin and loop_back: all of those, and their KUBE-LOOP-BACK entries.
    """

    __slots__ = ("hairpin", "local_fallback", "local_ready", "loop_back", "node", "zone")

    def __init__(
        self,
        node: Servers | None = None,
        zone: Servers | None = None,
        local_ready: Servers = _EMPTY,
        local_fallback: Servers = _EMPTY,
        hairpin: tuple[tuple[IPAddress, int], ...] = (),
        loop_back: tuple[str, ...] = (),
    ) -> None:
        self.node = node
        self.zone = zone
        self.local_ready = local_ready
        self.local_fallback = local_fallback
        self.hairpin = hairpin
        self.loop_back = loop_back


_NO_VIEW = _NodeView()  # no hints that apply and no endpoint on this node: most slices


def _node_view(base: _SliceServers, name: str, zone: str, protocol: Protocol) -> _NodeView:
    endpoints = base.endpoints
    node_part = zone_part = None
    if name and all(e.node_hints for e in endpoints if e.ready):
        node_part = {
            k: s
            for (k, s), e in zip(base.servers.items(), endpoints, strict=True)
            if e.ready and name in e.node_hints
        }
    if zone and all(e.zone_hints for e in endpoints if e.ready):
        zone_part = {
            k: s
            for (k, s), e in zip(base.servers.items(), endpoints, strict=True)
            if e.ready and zone in e.zone_hints
        }
    on_node = [i for i, e in enumerate(endpoints) if e.node_name == name] if name else []
    if node_part is None and zone_part is None and not on_node:
        return _NO_VIEW
    items = list(base.servers.items())
    local = [(items[i], endpoints[i]) for i in on_node]
    hairpin = tuple((s.address, s.port) for (_, s), _ in local)
    return _NodeView(
        node=node_part or (None if node_part is None else _EMPTY),
        zone=zone_part or (None if zone_part is None else _EMPTY),
        local_ready={k: s for (k, s), e in local if e.ready} or _EMPTY,
        local_fallback={k: s for (k, s), e in local if e.serving and e.terminating} or _EMPTY,
        hairpin=hairpin,
        loop_back=tuple(ipsets.ip_port_ip_entry(a, protocol, p, a) for a, p in hairpin),
    )


def _port_index(endpoint_slice: EndpointSlice, port: ServicePort) -> int:
    """Where the slice lists the Service port (by name and protocol); -1: not, or port 0."""
    for index, slice_port in enumerate(endpoint_slice.ports):
        if slice_port.name == port.name and slice_port.protocol is port.protocol:
            return index if slice_port.port else -1
    return -1


def _slice_part(
    endpoint_slice: EndpointSlice, port: ServicePort, name: str, zone: str
) -> tuple[_SliceServers, _NodeView] | None:
    """The slice's part of a Service port's endpoints (None: the slice lacks the port,
    matched by name and protocol), from the slice's memo when this slice object was
    seen before."""
    index = _port_index(endpoint_slice, port)
    if index < 0:
        return None
    slice_port = endpoint_slice.ports[index]
    memo = endpoint_slice.memo()
    base: _SliceServers | None = memo.get(index)
    if base is None:
        base = memo[index] = _SliceServers(endpoint_slice, slice_port.port)
    if not name and not zone:
        return base, _NO_VIEW
    view = base.view
    if view is None or base.view_name != name or base.view_zone != zone:
        view = base.view = _node_view(base, name, zone, port.protocol)
        base.view_name, base.view_zone = name, zone
    return base, view


@dataclass(frozen=True, slots=True)
class PortEndpoints:
    """The endpoints of one Service port and family, sorted for each use.

    - cluster: the Cluster view (topology applied; ready, else serving and terminating);
    - local: the Local view (this node's; ready, else serving and terminating);
    - hairpin: every endpoint on this node whatever its conditions (kube-proxy puts them
      all in KUBE-LOOP-BACK), as (address, port); loop_back: their entries of that set;
    - serving: the addresses of every serving endpoint anywhere, which stale UDP conntrack
      entries are checked against (kube-proxy's CleanStaleEntries ignores policies too);
      worked out when asked for, as only UDP ports need it.
    """

    cluster: Servers
    local: Servers
    hairpin: tuple[tuple[IPAddress, int], ...]
    loop_back: tuple[str, ...] = ()
    sources: tuple[_SliceServers, ...] = field(default=(), repr=False, compare=False)

    @property
    def serving(self) -> frozenset[IPAddress]:
        found: dict[RealServerKey, Endpoint] = {}
        for source in self.sources:  # in slice order: a later slice's endpoint wins
            found.update(zip(source.servers, source.endpoints, strict=True))
        return frozenset(endpoint.address for endpoint in found.values() if endpoint.serving)


NO_ENDPOINTS = PortEndpoints(_EMPTY, _EMPTY, ())


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


def _by_name(endpoint_slice: EndpointSlice) -> str:
    return endpoint_slice.name


def select_endpoints(
    port: ServicePort,
    family: IPFamily,
    slices: Sequence[EndpointSlice],
    *,
    node_name: str,
    zone: str,
) -> PortEndpoints:
    """The endpoints of one Service port and family for node `node_name` in `zone` (its
    topology.kubernetes.io/zone label, "" without one); see the module docstring.

    As kube-proxy's slice cache does, slices are taken in name order."""
    bases: list[_SliceServers] = []
    views: list[_NodeView] = []
    for endpoint_slice in slices if len(slices) < 2 else sorted(slices, key=_by_name):
        if endpoint_slice.family is not family:
            continue
        part = _slice_part(endpoint_slice, port, node_name, zone)
        if part is not None:
            bases.append(part[0])
            views.append(part[1])
    if not bases:
        return NO_ENDPOINTS
    if len(bases) == 1:
        return _select_one(bases[0], views[0])
    everything = _union([base.servers for base in bases])
    if len(everything) != sum(len(base.servers) for base in bases):
        return _select_overlapping(bases, port.protocol, node_name, zone)
    ready = sum(base.ready_count for base in bases)
    # A topology mode implies a ready endpoint for this node or zone: no fallback needed.
    hinted = _hinted([v.node for v in views]) or _hinted([v.zone for v in views]) if ready else None
    if hinted:
        cluster = _union(hinted)
    elif ready == len(everything):  # the usual case: every endpoint ready
        cluster = everything
    elif ready:
        cluster = _union([base.ready for base in bases])
    else:
        cluster = _union([base.fallback for base in bases])
    if any(v.local_ready for v in views):
        local = _union([v.local_ready for v in views])
    else:
        local = _union([v.local_fallback for v in views])
    if len(views) == 1:
        hairpin, loop_back = views[0].hairpin, views[0].loop_back
    else:
        hairpin = tuple(chain.from_iterable(v.hairpin for v in views))
        loop_back = tuple(chain.from_iterable(v.loop_back for v in views))
    return PortEndpoints(cluster, local, hairpin, loop_back, tuple(bases))


def _select_one(base: _SliceServers, view: _NodeView) -> PortEndpoints:
    """select_endpoints for a Service port that one slice serves (most of them)."""
    if base.ready_count and view.node:
        cluster = view.node
    elif base.ready_count and view.zone:
        cluster = view.zone
    elif base.ready_count:
        cluster = base.ready  # the slice's servers themselves when all are ready
    else:
        cluster = base.fallback
    local = view.local_ready or view.local_fallback
    return PortEndpoints(cluster, local, view.hairpin, view.loop_back, (base,))


def _hinted(parts: Sequence[Servers | None]) -> Sequence[Servers] | None:
    """The slices' hinted parts when hints of this kind apply (topologyModeFromHints):
    every ready endpoint has some and one names this node (zone); else None."""
    if any(part is None for part in parts) or not any(parts):
        return None
    return [part for part in parts if part]


_Entry = tuple[RealServerKey, tuple[Endpoint, RealServer]]


def _topology_filter(ready: Sequence[Endpoint], name: str, zone: str) -> str | None:
    """Which hints narrow the Cluster view: "node", "zone" or None (topologyModeFromHints)."""
    if not ready:
        return None
    if name and all(e.node_hints for e in ready) and any(name in e.node_hints for e in ready):
        return "node"
    if zone and all(e.zone_hints for e in ready) and any(zone in e.zone_hints for e in ready):
        return "zone"
    return None


def _select_overlapping(
    bases: Sequence[_SliceServers], protocol: Protocol, name: str, zone: str
) -> PortEndpoints:
    """select_endpoints endpoint by endpoint, for slices that share an ip:port: a later
    slice's endpoint replaces an earlier one, in the earlier one's place."""
    found: dict[RealServerKey, tuple[Endpoint, RealServer]] = {}
    for base in bases:
        for (key, server), endpoint in zip(base.servers.items(), base.endpoints, strict=True):
            found[key] = (endpoint, server)
    entries = list(found.items())
    ready = [endpoint for endpoint, _ in found.values() if endpoint.ready]
    mode = _topology_filter(ready, name, zone)

    def servers(keep: list[_Entry]) -> Servers:
        return {key: server for key, (_, server) in keep}

    def fallback(candidates: list[_Entry]) -> list[_Entry]:
        usable = [item for item in candidates if item[1][0].ready]
        if usable:
            return usable
        return [item for item in candidates if item[1][0].serving and item[1][0].terminating]

    if mode == "node":
        cluster = servers(
            [item for item in entries if item[1][0].ready and name in item[1][0].node_hints]
        )
    elif mode == "zone":
        cluster = servers(
            [item for item in entries if item[1][0].ready and zone in item[1][0].zone_hints]
        )
    elif len(ready) == len(entries):
        cluster = servers(entries)
    else:
        cluster = servers(fallback(entries))
    on_node = [item for item in entries if name and item[1][0].node_name == name]
    hairpin = tuple((server.address, server.port) for _, (_, server) in on_node)
    return PortEndpoints(
        cluster=cluster,
        local=servers(fallback(on_node)),
        hairpin=hairpin,
        loop_back=tuple(ipsets.ip_port_ip_entry(a, protocol, p, a) for a, p in hairpin),
        sources=tuple(bases),
    )
