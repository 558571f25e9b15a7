"""Service fields the frontends need, converted like kube-proxy reads them
(pkg/proxy/serviceport.go newBaseServiceInfo; the informers' label selectors)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from ipvsproxy.errors import InvalidObject
from ipvsproxy.k8s.objects import endpoint_slice_from_dict, service_from_dict


def svc(spec: dict[str, Any], labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    base = {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "nodePort": 30080}]}
    return {
        "metadata": {"name": "web", "namespace": "shop", "labels": labels or {}},
        "spec": {**base, **spec},
        **extra,
    }


@pytest.mark.parametrize(
    "labels",
    [
        {"service.kubernetes.io/service-proxy-name": "other-proxy"},
        {"service.kubernetes.io/service-proxy-name": ""},
        {"service.kubernetes.io/headless": ""},
    ],
)
def test_labelled_services_and_slices_are_ignored(labels: dict[str, str]) -> None:
    assert service_from_dict(svc({"type": "NodePort"}, labels)) is None
    endpoint_slice = {
        "metadata": {
            "name": "web-1",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web", **labels},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.1"]}],
    }
    assert endpoint_slice_from_dict(endpoint_slice) is None


def test_source_ranges_trimmed_and_masked() -> None:
    ranges = [" 10.0.0.1/8 ", "2001:db8::/32", "10.0.0.0/8"]
    service = service_from_dict(svc({"type": "LoadBalancer", "loadBalancerSourceRanges": ranges}))
    assert service is not None
    assert service.load_balancer_source_ranges == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
    )


def test_invalid_source_range_invalidates_the_service() -> None:
    with pytest.raises(InvalidObject, match=r"loadBalancerSourceRanges\[1\]: invalid CIDR"):
        service_from_dict(svc({"loadBalancerSourceRanges": ["10.0.0.0/8", "nonsense"]}))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"type": "LoadBalancer", "externalTrafficPolicy": "Local"}, 31862),
        ({"type": "LoadBalancer", "externalTrafficPolicy": "Cluster"}, 0),
        ({"type": "NodePort", "externalTrafficPolicy": "Local"}, 0),
    ],
)
def test_health_check_node_port_only_when_kube_proxy_serves_one(
    spec: dict[str, Any], expected: int
) -> None:
    """apiservice.NeedsHealthCheck: type LoadBalancer with externalTrafficPolicy Local."""
    service = service_from_dict(svc({**spec, "healthCheckNodePort": 31862}))
    assert service is not None
    assert service.health_check_node_port == expected


def test_no_allocated_node_ports() -> None:
    """allocateLoadBalancerNodePorts false: the API leaves nodePort unset; no NodePort."""
    spec = {
        "type": "LoadBalancer",
        "allocateLoadBalancerNodePorts": False,
        "ports": [{"port": 80}],
    }
    service = service_from_dict(svc(spec))
    assert service is not None
    assert [port.node_port for port in service.ports] == [0]
