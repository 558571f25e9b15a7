"""Table answers (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`) for `kubectl get`.

Columns and cell texts follow the API server's printers for these kinds (kubernetes
pkg/printers/internalversion): Services show type, cluster IP, external IP and ports;
EndpointSlices their address type, ports and first endpoints; Nodes status, roles and
version; Namespaces their phase. Rows carry the object's metadata (includeObject=Metadata,
kubectl's default), the whole object (Object), or nothing (None).
"""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from ipvsproxy_testkit.testapi.resources import (
    ENDPOINT_SLICES,
    NAMESPACES,
    NODES,
    SERVICES,
    ResourceType,
)
from ipvsproxy_testkit.testapi.store import Stored

__all__ = ["human_duration", "table", "wants_table"]

JSONDict = dict[str, Any]
_Column = tuple[str, str, int]  # name, type, priority (1: only with -o wide)


def wants_table(accept: str) -> bool:
    """Whether the client asks for a Table first (kubectl get without -o json/yaml)."""
    for offer in accept.split(","):
        params = {p.strip() for p in offer.split(";")[1:]}
        if "as=Table" in params and "g=meta.k8s.io" in params:
            return True
        if offer.split(";")[0].strip() in ("application/json", "*/*"):
            return False
    return False


def human_duration(seconds: float) -> str:
    """The age text kubectl shows (apimachinery's duration.HumanDuration)."""
    s = int(seconds)
    if s < 0:
        return "<invalid>"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    years = hours // (24 * 365)
    if years < 8:
        days = (hours // 24) % 365
        return f"{years}y{days}d" if days else f"{years}y"
    return f"{years}y"


def _age(obj: JSONDict, now: float) -> str:
    stamp = obj.get("metadata", {}).get("creationTimestamp")
    if not isinstance(stamp, str):
        return "<unknown>"
    try:
        created = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return "<unknown>"
    return human_duration(now - created)


def _service_cells(obj: JSONDict, age: str) -> list[object]:
    spec, status = obj.get("spec", {}), obj.get("status", {})
    service_type = spec.get("type", "ClusterIP")
    external: list[str] = []
    if service_type == "ExternalName":
        external = [spec.get("externalName", "")]
    else:
        external = list(spec.get("externalIPs") or [])
        if service_type == "LoadBalancer":
            ingress = status.get("loadBalancer", {}).get("ingress") or []
            external = [i.get("ip") or i.get("hostname", "") for i in ingress] + external
            external = external or ["<pending>"]
    ports = [
        f"{p.get('port')}:{p['nodePort']}/{p.get('protocol', 'TCP')}"
        if p.get("nodePort")
        else f"{p.get('port')}/{p.get('protocol', 'TCP')}"
        for p in spec.get("ports") or []
    ]
    selector = spec.get("selector") or {}
    return [
        service_type,
        spec.get("clusterIP") or "<none>",
        ",".join(external) or "<none>",
        ",".join(ports) or "<none>",
        age,
        ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "<none>",
    ]


def _slice_cells(obj: JSONDict, age: str) -> list[object]:
    ports = [str(p.get("port")) for p in obj.get("ports") or [] if p.get("port") is not None]
    addresses = [a for e in obj.get("endpoints") or [] for a in e.get("addresses") or []]
    shown = ",".join(addresses[:3]) or "<unset>"
    if len(addresses) > 3:
        shown += f" + {len(addresses) - 3} more..."
    return [obj.get("addressType", ""), ",".join(ports) or "<unset>", shown, age]


def _node_cells(obj: JSONDict, age: str) -> list[object]:
    status = obj.get("status", {})
    ready = next(
        (c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None
    )
    text = {"True": "Ready", "False": "NotReady"}.get(str(ready), "Unknown")
    if obj.get("spec", {}).get("unschedulable"):
        text += ",SchedulingDisabled"
    labels = obj.get("metadata", {}).get("labels") or {}
    roles = sorted(
        key.split("/", 1)[1] for key in labels if key.startswith("node-role.kubernetes.io/")
    )
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    info = status.get("nodeInfo") or {}
    return [
        text,
        ",".join(roles) or "<none>",
        age,
        info.get("kubeletVersion", ""),
        addresses.get("InternalIP") or "<none>",
        addresses.get("ExternalIP") or "<none>",
    ]


def _namespace_cells(obj: JSONDict, age: str) -> list[object]:
    return [obj.get("status", {}).get("phase", ""), age]


# The columns after Name, in kubectl's order; priority 1 shows only with -o wide.
_LAYOUT: Final[
    dict[ResourceType, tuple[list[_Column], Callable[[JSONDict, str], list[object]]]]
] = {
    SERVICES: (
        [
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        _service_cells,
    ),
    ENDPOINT_SLICES: (
        [
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        _slice_cells,
    ),
    NODES: (
        [
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
        ],
        _node_cells,
    ),
    NAMESPACES: ([("Status", "string", 0), ("Age", "string", 0)], _namespace_cells),
}


def _columns(resource: ResourceType) -> list[JSONDict]:
    specific, _ = _LAYOUT[resource]
    return [
        {
            "name": name,
            "type": kind,
            "format": "name" if name == "Name" else "",
            "description": "",
            "priority": priority,
        }
        for name, kind, priority in [("Name", "string", 0), *specific]
    ]


def _row(resource: ResourceType, stored: Stored, include: str, now: float) -> JSONDict:
    obj = stored.load()
    _, cells_of = _LAYOUT[resource]
    row: JSONDict = {"cells": [stored.name, *cells_of(obj, _age(obj, now))]}
    if include == "Object":
        row["object"] = obj
    elif include != "None":
        row["object"] = {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata", {}),
        }
    return row


def table(
    resource: ResourceType,
    items: Sequence[Stored],
    *,
    resource_version: int | None,
    continue_token: str = "",
    include: str = "Metadata",
    columns: bool = True,
    now: float | None = None,
) -> bytes:
    """A Table of items; columns=False leaves the definitions out (later watch events)."""
    moment = time.time() if now is None else now
    metadata: JSONDict = {}
    if resource_version is not None:
        metadata["resourceVersion"] = str(resource_version)
    if continue_token:
        metadata["continue"] = continue_token
    value = {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": _columns(resource) if columns else None,
        "rows": [_row(resource, stored, include, moment) for stored in items],
    }
    return json.dumps(value, separators=(",", ":")).encode()
