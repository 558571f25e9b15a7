"""Service ports with a Local traffic policy and no endpoint on this node.

kube-proxy reports them as kubeproxy_sync_proxy_rules_no_local_endpoints_total
{traffic_policy="internal"|"external", ip_family}: traffic to such a port is dropped on
this node rather than sent elsewhere, which is what the gauge lets an operator alert on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from ipvsproxy.core.model import EndpointSlice, IPFamily, Service

__all__ = ["EXTERNAL", "INTERNAL", "NoLocalCounts", "no_local_endpoints"]

INTERNAL: Final = "internal"
EXTERNAL: Final = "external"

# (traffic policy, family) -> how many service ports lack a local endpoint
NoLocalCounts = dict[tuple[str, IPFamily], int]


def _externally_reachable(service: Service) -> bool:
    # kube-proxy's ExternalPolicyLocal holds only for a Service reachable from outside.
    return (
        service.type in ("NodePort", "LoadBalancer")
        or bool(service.external_ips)
        or bool(service.load_balancer_ips)
    )


def no_local_endpoints(
    service: Service, slices: Iterable[EndpointSlice], node_name: str
) -> NoLocalCounts:
    """Per traffic policy and family, the ports of `service` whose policy is Local and
    that have no usable endpoint (ready, or serving and terminating) on `node_name`."""
    policies = []
    if service.internal_traffic_local:
        policies.append(INTERNAL)
    if service.external_traffic_local and _externally_reachable(service):
        policies.append(EXTERNAL)
    if not policies:
        return {}
    local_ports: set[tuple[IPFamily, str]] = set()
    for endpoint_slice in slices:
        usable = any(
            endpoint.node_name == node_name
            and (endpoint.ready or (endpoint.serving and endpoint.terminating))
            for endpoint in endpoint_slice.endpoints
        )
        if usable:
            local_ports.update((endpoint_slice.family, port.name) for port in endpoint_slice.ports)
    counts: NoLocalCounts = {}
    for family in dict.fromkeys(IPFamily.of(ip) for ip in service.cluster_ips):
        missing = sum((family, port.name) not in local_ports for port in service.ports)
        if missing:
            for policy in policies:
                counts[(policy, family)] = missing
    return counts
