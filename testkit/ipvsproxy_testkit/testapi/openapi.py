"""The least OpenAPI v3 that lets kubectl validate on the server's side.

kubectl (1.27+) validates objects before `create`, `replace` and `apply`: if the OpenAPI v3
document of the object's group/version shows a PATCH operation for its kind that takes
the `fieldValidation` query parameter, kubectl leaves validation to the server; otherwise
it downloads the full schema and validates itself. These documents say the former, and
carry no schemas. The server accepts `fieldValidation` and does not check unknown fields.
"""

from __future__ import annotations

from ipvsproxy_testkit.testapi.resources import RESOURCES

__all__ = ["OPENAPI_V2_PROTOBUF", "openapi_root", "openapi_spec"]

# As kube-apiserver labels /openapi/v2 in protobuf ("@" would not parse as a media type).
OPENAPI_V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"

_HASH = "ipvsproxy-testapi-1"


def _path_key(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_root() -> dict[str, object]:
    keys = sorted({_path_key(r.group, r.version) for r in RESOURCES})
    return {
        "paths": {key: {"serverRelativeURL": f"/openapi/v3/{key}?hash={_HASH}"} for key in keys}
    }


def openapi_spec(key: str) -> dict[str, object] | None:
    served = [r for r in RESOURCES if _path_key(r.group, r.version) == key]
    if not served:
        return None
    paths: dict[str, object] = {}
    for resource in served:
        gvk = {"group": resource.group, "version": resource.version, "kind": resource.kind}
        scope = "namespaces/{namespace}/" if resource.namespaced else ""
        path = f"/{key}/{scope}{resource.plural}/{{name}}"
        paths[path] = {
            "patch": {
                "operationId": f"patch{resource.kind}",
                "x-kubernetes-group-version-kind": gvk,
                "x-kubernetes-action": "patch",
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "OK"}},
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }
