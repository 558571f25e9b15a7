"""The little defaulting and allocation the test API server does on writes.

What a real API server would fill in that the proxy reads: a Service's type, session
affinity, port protocol and targetPort, traffic policies, a cluster IP (IPv4 from
10.96.0.0/16, IPv6 from fd00:10:96::/112) and node ports (30000-32767); an EndpointSlice
port's protocol; a Namespace's phase. On update, allocated values missing from the new
object are kept from the old one, as the real API does (`patchAllocatedValues`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from typing import Any, Final

from ipvsproxy_testkit.testapi.status import ApiError

__all__ = ["Allocator", "default_endpoint_slice", "default_namespace", "default_service"]

JSONDict = dict[str, Any]

_V4_RANGE: Final = ipaddress.ip_network("10.96.0.0/16")
_V6_RANGE: Final = ipaddress.ip_network("fd00:10:96::/112")
_NODE_PORTS: Final = range(30000, 32768)


def _dict(value: object) -> JSONDict:
    return value if isinstance(value, dict) else {}


def default_service(obj: JSONDict) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        raise ApiError(422, "spec: must be an object", kind="Service")
    service_type = spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if service_type != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
    if service_type in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if service_type == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    for port in spec.get("ports") or ():
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "targetPort" not in port and "port" in port:
                port["targetPort"] = port["port"]


def default_endpoint_slice(obj: JSONDict) -> None:
    for port in obj.get("ports") or ():
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def default_namespace(obj: JSONDict) -> None:
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


def keep_allocated(new: JSONDict, old: Mapping[str, Any]) -> None:
    """Copy allocated values the new Service leaves out from the old one."""
    spec, old_spec = _dict(new.get("spec")), _dict(old.get("spec"))
    if spec.get("type") == "ExternalName" or old_spec.get("type") == "ExternalName":
        return
    for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
        if not spec.get(field) and old_spec.get(field):
            spec[field] = old_spec[field]
    if not spec.get("healthCheckNodePort") and old_spec.get("healthCheckNodePort"):
        spec["healthCheckNodePort"] = old_spec["healthCheckNodePort"]
    old_ports = {
        (p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
        for p in old_spec.get("ports") or ()
        if isinstance(p, dict)
    }
    for port in spec.get("ports") or ():
        if isinstance(port, dict) and not port.get("nodePort"):
            node_port = old_ports.get((port.get("port"), port.get("protocol", "TCP")))
            if node_port:
                port["nodePort"] = node_port


class Allocator:
    """Cluster IPs and node ports in use, and the next free ones."""

    def __init__(self) -> None:
        self._ips: dict[str, str] = {}  # address -> owning Service key
        self._ports: dict[int, str] = {}  # node port -> owning Service key
        self._next_v4 = 10  # 10.96.0.1 is the kubernetes Service in a real cluster
        self._next_v6 = 10
        self._next_port = 0

    def release(self, key: str, obj: Mapping[str, Any]) -> None:
        for ip in self._service_ips(obj):
            if self._ips.get(ip) == key:
                del self._ips[ip]
        for port in self._service_ports(obj):
            if self._ports.get(port) == key:
                del self._ports[port]

    def claim(self, key: str, obj: JSONDict) -> None:
        """Allocate what the Service lacks and claim what it names; 422 on a clash."""
        spec = _dict(obj.get("spec"))
        service_type = spec.get("type", "ClusterIP")
        name = str(_dict(obj.get("metadata")).get("name", ""))
        if service_type != "ExternalName":
            self._claim_ips(key, name, spec)
        if service_type in ("NodePort", "LoadBalancer"):
            allocate = service_type == "NodePort" or spec.get("allocateLoadBalancerNodePorts", True)
            for port in spec.get("ports") or ():
                if isinstance(port, dict) and not port.get("nodePort") and allocate:
                    port["nodePort"] = self._free_port(key)
            if (
                spec.get("externalTrafficPolicy") == "Local"
                and service_type == "LoadBalancer"
                and not spec.get("healthCheckNodePort")
            ):
                spec["healthCheckNodePort"] = self._free_port(key)
        for ip in self._service_ips(obj):
            owner = self._ips.get(ip)
            if owner is not None and owner != key:
                raise ApiError(
                    422,
                    f'Service "{name}" is invalid: spec.clusterIPs: Invalid value: ["{ip}"]: '
                    "failed to allocate IP: provided IP is already allocated",
                    name=name,
                    kind="Service",
                )
        for port in self._service_ports(obj):
            owner = self._ports.get(port)
            if owner is not None and owner != key:
                raise ApiError(
                    422,
                    f'Service "{name}" is invalid: spec.ports.nodePort: Invalid value: {port}: '
                    "provided port is already allocated",
                    name=name,
                    kind="Service",
                )
        for ip in self._service_ips(obj):
            self._ips[ip] = key
        for port in self._service_ports(obj):
            self._ports[port] = key

    def _claim_ips(self, key: str, name: str, spec: JSONDict) -> None:
        if spec.get("clusterIP") == "None" or (spec.get("clusterIPs") or [None])[0] == "None":
            spec["clusterIP"] = "None"
            spec["clusterIPs"] = ["None"]
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            return
        ips = list(spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []))
        for ip in ips:
            if _family(ip) is None:
                raise ApiError(
                    422,
                    f'Service "{name}" is invalid: spec.clusterIPs: Invalid value: "{ip}": '
                    "must be a valid IP address",
                    name=name,
                    kind="Service",
                )
        families = list(spec.get("ipFamilies") or [_family(ip) for ip in ips] or ["IPv4"])
        policy = spec.get("ipFamilyPolicy") or "SingleStack"
        if policy in ("PreferDualStack", "RequireDualStack") and len(families) == 1:
            families.append("IPv6" if families[0] == "IPv4" else "IPv4")
        for family in families[len(ips) :]:
            ips.append(self._free_ip(family))
        spec["clusterIP"] = ips[0]
        spec["clusterIPs"] = ips
        spec["ipFamilies"] = [_family(ip) or "IPv4" for ip in ips]
        spec["ipFamilyPolicy"] = policy

    def _free_ip(self, family: str) -> str:
        network = _V6_RANGE if family == "IPv6" else _V4_RANGE
        for _ in range(network.num_addresses):
            if family == "IPv6":
                self._next_v6 = self._next_v6 % (network.num_addresses - 2) + 1
                candidate = str(network[self._next_v6])
            else:
                self._next_v4 = self._next_v4 % (network.num_addresses - 2) + 1
                candidate = str(network[self._next_v4])
            if candidate not in self._ips:
                return candidate
        raise ApiError(500, f"no free cluster IP left in {network}")

    def _free_port(self, key: str) -> int:
        for _ in _NODE_PORTS:
            self._next_port = (self._next_port + 1) % len(_NODE_PORTS)
            candidate = _NODE_PORTS[self._next_port]
            if candidate not in self._ports:
                self._ports[candidate] = key
                return candidate
        raise ApiError(500, "no free node port left")

    @staticmethod
    def _service_ips(obj: Mapping[str, Any]) -> list[str]:
        spec = _dict(obj.get("spec"))
        ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
        return [str(ip) for ip in ips if ip and ip != "None"]

    @staticmethod
    def _service_ports(obj: Mapping[str, Any]) -> list[int]:
        spec = _dict(obj.get("spec"))
        ports = [p.get("nodePort") for p in spec.get("ports") or () if isinstance(p, dict)]
        ports.append(spec.get("healthCheckNodePort"))
        return [p for p in ports if isinstance(p, int) and p]


def _family(ip: object) -> str | None:
    """IPv4 or IPv6, or None for text that is no address (inet_pton: cheap at 30k Services)."""
    text = str(ip)
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        socket.inet_pton(family, text)
    except OSError:
        return None
    return "IPv6" if family == socket.AF_INET6 else "IPv4"
