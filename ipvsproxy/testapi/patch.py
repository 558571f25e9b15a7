"""PATCH bodies: JSON merge patch (RFC 7386) and JSON patch (RFC 6902).

Strategic merge patches are applied as JSON merge patches with their `$` directives
dropped: lists are replaced whole rather than merged by key, which is what kubectl's
`apply`, `edit`, `label` and `annotate` need when they send whole lists or none.
"""

from __future__ import annotations

import copy
from typing import Any

from ipvsproxy.testapi.status import ApiError

__all__ = ["apply_patch"]

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def apply_patch(content_type: str, target: dict[str, Any], patch: object) -> dict[str, Any]:
    kind = content_type.split(";")[0].strip()
    if kind in (MERGE, STRATEGIC):
        if not isinstance(patch, dict):
            raise ApiError(400, "a merge patch must be a JSON object")
        result = _merge(target, _without_directives(patch) if kind == STRATEGIC else patch)
        assert isinstance(result, dict)
        return result
    if kind == JSON_PATCH:
        return _json_patch(target, patch)
    raise ApiError(
        415,
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{JSON_PATCH}, {MERGE}, {STRATEGIC} (got {kind or 'none'})",
    )


def _without_directives(patch: object) -> object:
    if isinstance(patch, dict):
        return {k: _without_directives(v) for k, v in patch.items() if not k.startswith("$")}
    if isinstance(patch, list):
        return [_without_directives(v) for v in patch]
    return patch


def _merge(target: object, patch: object) -> object:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list[Any], part: str, *, adding: bool) -> int:
    if adding and part == "-":
        return len(container)
    try:
        index = int(part)
    except ValueError:
        raise ApiError(422, f"invalid list index {part!r}") from None
    if not 0 <= index <= len(container) - (0 if adding else 1):
        raise ApiError(422, f"list index {index} out of range")
    return index


def _parent(doc: Any, parts: list[str]) -> Any:
    for part in parts[:-1]:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list):
            doc = doc[_index(doc, part, adding=False)]
        else:
            raise ApiError(422, f"path not found: /{'/'.join(parts)}")
    return doc


def _get(doc: Any, parts: list[str]) -> Any:
    if not parts:
        return doc
    parent = _parent(doc, parts)
    if isinstance(parent, dict):
        if parts[-1] not in parent:
            raise ApiError(422, f"path not found: /{'/'.join(parts)}")
        return parent[parts[-1]]
    if isinstance(parent, list):
        return parent[_index(parent, parts[-1], adding=False)]
    raise ApiError(422, f"path not found: /{'/'.join(parts)}")


def _remove(doc: Any, parts: list[str]) -> Any:
    parent = _parent(doc, parts)
    if isinstance(parent, dict) and parts[-1] in parent:
        return parent.pop(parts[-1])
    if isinstance(parent, list):
        return parent.pop(_index(parent, parts[-1], adding=False))
    raise ApiError(422, f"path not found: /{'/'.join(parts)}")


def _add(doc: Any, parts: list[str], value: Any, *, replace: bool) -> Any:
    if not parts:
        return value
    parent = _parent(doc, parts)
    if isinstance(parent, dict):
        if replace and parts[-1] not in parent:
            raise ApiError(422, f"path not found: /{'/'.join(parts)}")
        parent[parts[-1]] = value
    elif isinstance(parent, list):
        index = _index(parent, parts[-1], adding=not replace)
        if replace:
            parent[index] = value
        else:
            parent.insert(index, value)
    else:
        raise ApiError(422, f"path not found: /{'/'.join(parts)}")
    return doc


def _json_patch(target: dict[str, Any], patch: object) -> dict[str, Any]:
    if not isinstance(patch, list):
        raise ApiError(400, "a JSON patch must be a list of operations")
    doc: Any = copy.deepcopy(target)
    for operation in patch:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise ApiError(422, f"invalid JSON patch operation: {operation!r}")
        op, path = operation["op"], _pointer(str(operation["path"]))
        if op == "add":
            doc = _add(doc, path, copy.deepcopy(operation.get("value")), replace=False)
        elif op == "replace":
            doc = _add(doc, path, copy.deepcopy(operation.get("value")), replace=True)
        elif op == "remove":
            _remove(doc, path)
        elif op in ("move", "copy"):
            source = _pointer(str(operation.get("from", "")))
            value = _remove(doc, source) if op == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value, replace=False)
        elif op == "test":
            if _get(doc, path) != operation.get("value"):
                raise ApiError(422, f"test operation failed at {operation['path']}")
        else:
            raise ApiError(422, f"unknown JSON patch operation {op!r}")
    if not isinstance(doc, dict):
        raise ApiError(422, "the patch must leave an object")
    return doc
