"""The resource types the test API server serves, and the discovery documents naming them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["RESOURCES", "ResourceType", "by_path"]


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One served resource, as API discovery describes it."""

    plural: str
    singular: str
    kind: str
    group: str  # "" for the core group
    version: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    has_status: bool = False  # has a /status subresource; writes to the main resource keep it
    allow_create_on_update: bool = False  # PUT of a missing object creates it (Services do)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def type_prefix(self) -> bytes:
        """The start of the object's JSON with kind and apiVersion, to splice before a body."""
        return f'{{"kind":"{self.kind}","apiVersion":"{self.api_version}",'.encode()


SERVICES: Final = ResourceType(
    plural="services",
    singular="service",
    kind="Service",
    group="",
    version="v1",
    namespaced=True,
    short_names=("svc",),
    categories=("all",),
    has_status=True,
    allow_create_on_update=True,
)
NODES: Final = ResourceType(
    plural="nodes",
    singular="node",
    kind="Node",
    group="",
    version="v1",
    namespaced=False,
    short_names=("no",),
    has_status=True,
)
NAMESPACES: Final = ResourceType(
    plural="namespaces",
    singular="namespace",
    kind="Namespace",
    group="",
    version="v1",
    namespaced=False,
    short_names=("ns",),
    has_status=True,
)
ENDPOINT_SLICES: Final = ResourceType(
    plural="endpointslices",
    singular="endpointslice",
    kind="EndpointSlice",
    group="discovery.k8s.io",
    version="v1",
    namespaced=True,
)

RESOURCES: Final = (SERVICES, NODES, NAMESPACES, ENDPOINT_SLICES)
_BY_PATH: Final = {(r.group, r.version, r.plural): r for r in RESOURCES}
_BY_KIND: Final = {(r.api_version, r.kind): r for r in RESOURCES}


def by_path(group: str, version: str, plural: str) -> ResourceType | None:
    return _BY_PATH.get((group, version, plural))


def by_kind(api_version: str, kind: str) -> ResourceType | None:
    return _BY_KIND.get((api_version, kind))


# --- discovery documents ---------------------------------------------------------------------

_VERBS: Final = ["create", "delete", "get", "list", "patch", "update", "watch"]


def api_versions(server_address: str) -> dict[str, object]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _group_names() -> list[str]:
    return sorted({r.group for r in RESOURCES if r.group})


def _group(name: str) -> dict[str, object]:
    version = {"groupVersion": f"{name}/v1", "version": "v1"}
    return {"name": name, "versions": [version], "preferredVersion": version}


def api_group_list() -> dict[str, object]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(n) for n in _group_names()],
    }


def api_group(name: str) -> dict[str, object] | None:
    if name not in _group_names():
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name)}


def api_resource_list(group: str, version: str) -> dict[str, object] | None:
    served = [r for r in RESOURCES if r.group == group and r.version == version]
    if not served:
        return None
    resources: list[dict[str, object]] = []
    for r in served:
        entry: dict[str, object] = {
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": _VERBS,
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        resources.append(entry)
        if r.has_status:
            resources.append(
                {
                    "name": f"{r.plural}/status",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def version_info() -> dict[str, str]:
    return {
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0+ipvsproxy_testkit.testapi",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23",
        "compiler": "gc",
        "platform": "linux/amd64",
    }
