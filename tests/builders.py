"""Compact builders of model values for table-driven tests."""

from __future__ import annotations

import ipaddress

from ipvsproxy.core.model import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    IPFamily,
    Protocol,
    Service,
    ServicePort,
)


def service(
    name: str,
    *cluster_ips: str,
    ports: tuple[tuple[str, str, int], ...] = (("http", "TCP", 80),),
    namespace: str = "default",
    affinity: int | None = None,
    internal_local: bool = False,
) -> Service:
    """A ClusterIP Service; ports as (name, protocol, port)."""
    return Service(
        namespace=namespace,
        name=name,
        type="ClusterIP",
        cluster_ips=tuple(ipaddress.ip_address(ip) for ip in cluster_ips),
        ports=tuple(ServicePort(n, Protocol(p), port) for n, p, port in ports),
        affinity_timeout=affinity,
        internal_traffic_local=internal_local,
    )


def endpoint_slice(
    service_name: str,
    *endpoints: str | tuple[str, bool] | tuple[str, bool, str],
    ports: tuple[tuple[str, str, int], ...] = (("http", "TCP", 8080),),
    name: str | None = None,
    namespace: str = "default",
) -> EndpointSlice:
    """A slice; an endpoint is "ip", (ip, ready) or (ip, ready, node name)."""
    built = []
    for item in endpoints:
        ip, ready, node = (item, True, None) if isinstance(item, str) else (*item, None)[:3]
        built.append(Endpoint(ipaddress.ip_address(ip), ready=ready, node_name=node))
    family = IPFamily.of(built[0].address) if built else IPFamily.V4
    return EndpointSlice(
        namespace=namespace,
        name=name or f"{service_name}-abc",
        service_name=service_name,
        family=family,
        ports=tuple(EndpointPort(n, Protocol(p), port) for n, p, port in ports),
        endpoints=tuple(built),
    )
