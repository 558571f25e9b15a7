"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch.

The strategic merge patch knows the merge keys of the lists these four kinds have
(Service spec.ports by port, Node status.addresses and conditions by type, ownerReferences
by uid, finalizers as a set) and the directives kubectl sends: `$patch` (delete, replace,
merge), `$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>` and `$retainKeys`.
Every other list is replaced whole, as the real API does for atomic lists.
"""

from __future__ import annotations

import copy
from typing import Any

from ipvsproxy_testkit.testapi.status import ApiError

__all__ = ["apply_patch"]

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def apply_patch(content_type: str, target: dict[str, Any], patch: object) -> dict[str, Any]:
    kind = content_type.split(";")[0].strip()
    if kind in (MERGE, STRATEGIC):
        if not isinstance(patch, dict):
            raise ApiError(400, "a merge patch must be a JSON object")
        if kind == STRATEGIC:
            return _strategic(target, patch, ())
        result = _merge(target, patch)
        assert isinstance(result, dict)
        return result
    if kind == JSON_PATCH:
        return _json_patch(target, patch)
    raise ApiError(
        415,
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{JSON_PATCH}, {MERGE}, {STRATEGIC} (got {kind or 'none'})",
    )


# Lists merged by key (path of field names from the object's root -> merge key), and lists
# of strings merged as sets; from the patchMergeKey / patchStrategy tags of the Go types.
_MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("spec", "ports"): "port",
    ("status", "addresses"): "type",
    ("status", "conditions"): "type",
    ("metadata", "ownerReferences"): "uid",
}
_SET_LISTS: frozenset[tuple[str, ...]] = frozenset({("metadata", "finalizers")})


def _strategic(
    target: dict[str, Any], patch: dict[str, Any], path: tuple[str, ...]
) -> dict[str, Any]:
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    if patch.get("$patch") == "delete":
        return {}
    result = dict(target)
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [item for item in result[field] if item not in value]
        if key.startswith("$"):
            continue
        here = (*path, key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            current = result.get(key)
            result[key] = _strategic(current if isinstance(current, dict) else {}, value, here)
        elif isinstance(value, list) and here in _MERGE_KEYS:
            current = result.get(key)
            result[key] = _merge_list(
                current if isinstance(current, list) else [], value, _MERGE_KEYS[here], here
            )
        elif isinstance(value, list) and here in _SET_LISTS:
            existing = result.get(key)
            current = list(existing) if isinstance(existing, list) else []
            result[key] = current + [item for item in value if item not in current]
        else:
            result[key] = copy.deepcopy(value)
    for key, order in patch.items():
        if key.startswith("$setElementOrder/") and isinstance(order, list):
            field = key.split("/", 1)[1]
            merge_key = _MERGE_KEYS.get((*path, field))
            if merge_key and isinstance(result.get(field), list):
                result[field] = _ordered(result[field], order, merge_key)
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(
    current: list[Any], patch: list[Any], merge_key: str, path: tuple[str, ...]
) -> list[Any]:
    result = [copy.deepcopy(item) for item in current]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise ApiError(422, f"{'.'.join(path)}: an element lacks the merge key {merge_key!r}")
        position = next(
            (
                i
                for i, old in enumerate(result)
                if isinstance(old, dict) and old.get(merge_key) == item[merge_key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if position is not None:
                del result[position]
        elif position is None:
            result.append(_strategic({}, item, path))
        else:
            result[position] = _strategic(result[position], item, path)
    return result


def _ordered(items: list[Any], order: list[Any], merge_key: str) -> list[Any]:
    rank = {
        entry.get(merge_key): index for index, entry in enumerate(order) if isinstance(entry, dict)
    }
    return sorted(
        items,
        key=lambda item: rank.get(
            item.get(merge_key) if isinstance(item, dict) else None, len(rank)
        ),
    )


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
