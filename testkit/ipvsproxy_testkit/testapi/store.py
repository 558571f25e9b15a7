"""The versioned object store behind the test API server, and its event log.

One global resourceVersion counts every write, as etcd's revision does; each write appends
one event to a bounded log that watches read from (a watch from a resourceVersion older than
the log's horizon is told 410 Expired) and that paginated lists use to show the state as it
was when their first page was read. Objects are kept as their serialised JSON (without kind
and apiVersion, which the real API omits from list items), so a list of 30,000 Services is
one join of byte strings.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import heapq
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ipvsproxy_testkit.testapi.defaults import (
    Allocator,
    default_endpoint_slice,
    default_namespace,
    default_service,
    keep_allocated,
)
from ipvsproxy_testkit.testapi.resources import (
    ENDPOINT_SLICES,
    NAMESPACES,
    RESOURCES,
    SERVICES,
    ResourceType,
    by_kind,
)
from ipvsproxy_testkit.testapi.status import ApiError

__all__ = ["Event", "Store", "Stored", "WatchBatch"]

JSONDict = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]

DEFAULT_HISTORY: Final = 100_000
"""Events kept for watches and paginated lists: enough to load a 30k-Service cluster."""


@dataclass(frozen=True, slots=True)
class Stored:
    """One version of an object: its identity, labels and JSON body."""

    resource: ResourceType
    namespace: str  # "" for cluster-scoped objects
    name: str
    rv: int
    labels: Mapping[str, str]
    body: bytes  # the object's JSON without kind and apiVersion

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.resource.namespaced else self.name

    def full(self) -> bytes:
        """The JSON with kind and apiVersion, as GET and watch events carry it."""
        return self.resource.type_prefix + self.body[1:]

    def load(self) -> JSONDict:
        value: JSONDict = json.loads(self.full())
        return value

    def restamped(self, rv: int) -> Stored:
        """This object as it would read at another resourceVersion."""
        obj = json.loads(self.body)
        obj["metadata"]["resourceVersion"] = str(rv)
        return Stored(self.resource, self.namespace, self.name, rv, self.labels, _dumps(obj))


@dataclass(frozen=True, slots=True)
class Event:
    rv: int
    type: EventType
    obj: Stored  # for DELETED: the last state, stamped with the deletion's resourceVersion
    prev: Stored | None  # the state before the event; None for ADDED


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """What a watcher gets when it wakes: new events, or why it must stop."""

    events: list[Event]
    rv: int  # the store's resourceVersion the events reach up to
    cut: bool = False  # watches were cut by fault injection
    expired: bool = False  # the watcher's position fell behind the log's horizon


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def encode_continue(rv: int, start: str) -> str:
    token = {"v": "meta.k8s.io/v1", "rv": rv, "start": start}
    return base64.urlsafe_b64encode(_dumps(token)).decode().rstrip("=")


def parse_resource_version(text: str) -> int:
    """A resourceVersion query parameter; 400 when it is not one."""
    return _parse_rv(text)


def decode_continue(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)
        rv, start = value["rv"], value["start"]
        if (
            value.get("v") != "meta.k8s.io/v1"
            or not isinstance(rv, int)
            or not isinstance(start, str)
        ):
            raise ValueError(token)
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise ApiError(
            400, "continue key is not valid: incorrect encoded start resourceVersion"
        ) from None
    return rv, start


def _expired_continue() -> ApiError:
    return ApiError(
        410,
        "The provided continue parameter is too old to display a consistent list result. "
        "You can start a new list without the continue parameter.",
        reason="Expired",
    )


@dataclass
class _Table:
    """The objects of one resource, by key, with the sorted key list cached."""

    objects: dict[str, Stored] = field(default_factory=dict)
    sorted_keys: list[str] | None = None

    def ordered(self) -> list[str]:
        if self.sorted_keys is None:
            self.sorted_keys = sorted(self.objects)
        return self.sorted_keys


class Store:
    """Objects, the global resourceVersion and the event log; safe to share between threads.

    Writes raise ApiError with the code and message the real API would answer.
    """

    def __init__(
        self, *, history: int = DEFAULT_HISTORY, clock: Callable[[], float] = time.time
    ) -> None:
        self._cond = threading.Condition(threading.RLock())
        self._clock = clock
        self._history = max(1, history)
        self._rv = 1
        self._tables: dict[ResourceType, _Table] = {r: _Table() for r in RESOURCES}
        self._log: list[Event] = []
        self._horizon = self._rv  # a watch from rv >= horizon can be served from the log
        self._cut_generation = 0
        self._allocator = Allocator()
        with self._cond:
            self._put(NAMESPACES, {"metadata": {"name": "default"}}, previous=None)

    # --- reading ------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    @property
    def horizon(self) -> int:
        """The oldest resourceVersion a watch may start from without 410 Expired."""
        with self._cond:
            return self._horizon

    @property
    def cut_generation(self) -> int:
        with self._cond:
            return self._cut_generation

    def get(self, resource: ResourceType, namespace: str, name: str) -> Stored:
        with self._cond:
            stored = self._tables[resource].objects.get(self._key(resource, namespace, name))
        if stored is None:
            raise _not_found(resource, name)
        return stored

    def count(self, resource: ResourceType) -> int:
        with self._cond:
            return len(self._tables[resource].objects)

    def list_page(
        self,
        resource: ResourceType,
        *,
        namespace: str | None = None,
        limit: int = 0,
        continue_token: str = "",
        at: int | None = None,
        match: Callable[[Stored], bool] | None = None,
    ) -> tuple[list[Stored], int, str]:
        """A page of objects in key order: (items, list resourceVersion, continue token).

        A continued list shows the objects as they were at the first page's
        resourceVersion, and a list `at` a resourceVersion the objects as they were then,
        both rebuilt from the event log; when the log no longer reaches back that far the
        API's answer is 410 Expired.
        """
        with self._cond:
            prefix = f"{namespace}/" if namespace and resource.namespaced else ""
            if continue_token:
                rv, start = decode_continue(continue_token)
                if rv < self._horizon:
                    raise _expired_continue()
                if rv > self._rv:
                    raise ApiError(400, "continue key is not valid: resourceVersion in the future")
                keys = self._keys_at(resource, rv, start, prefix)
            else:
                rv, start = (self._rv if at is None else at), ""
                if rv < self._horizon:
                    raise ApiError(
                        410, f"too old resource version: {rv} ({self._horizon})", reason="Expired"
                    )
                if rv > self._rv:
                    raise _too_large(rv, self._rv)
                keys = self._keys_at(resource, rv, "", prefix)
            items: list[Stored] = []
            last = ""
            token = ""
            for key, stored in keys:
                if limit and len(items) >= limit:
                    token = encode_continue(rv, last)
                    break
                last = key
                if match is None or match(stored):
                    items.append(stored)
            return items, rv, token

    def _keys_at(
        self, resource: ResourceType, rv: int, start: str, prefix: str
    ) -> Iterator[tuple[str, Stored]]:
        """(key, object) in key order after start, as the store held them at rv."""
        table = self._tables[resource]
        keys = table.ordered()
        lower = max(start, prefix)
        index = (
            bisect.bisect_right(keys, lower) if start >= prefix else bisect.bisect_left(keys, lower)
        )
        then: dict[str, Stored | None] = {}
        if rv < self._rv:
            for event in self._log[rv + 1 - self._first_logged() :]:
                if event.obj.resource is resource and event.obj.key not in then:
                    then[event.obj.key] = event.prev
        current = ((key, table.objects[key]) for key in self._slice(keys, index, then))
        if not then:
            merged: Iterable[tuple[str, Stored]] = current
        else:
            older = sorted(
                (key, stored) for key, stored in then.items() if stored is not None and key > start
            )
            merged = heapq.merge(current, older, key=lambda pair: pair[0])
        for key, stored in merged:
            if not key.startswith(prefix):
                if key > prefix:
                    return
                continue
            yield key, stored

    @staticmethod
    def _slice(keys: list[str], index: int, skip: Mapping[str, object]) -> Iterator[str]:
        for position in range(index, len(keys)):
            key = keys[position]
            if key not in skip:
                yield key

    def _first_logged(self) -> int:
        return self._log[0].rv if self._log else self._rv + 1

    # --- watching -------------------------------------------------------------------------------

    def watch_position(self, resource_version: str) -> tuple[int, list[Stored] | None]:
        """Where a watch starts: (resourceVersion, synthetic ADDED objects or None).

        Absent or "0": the current objects, then changes after them. Otherwise changes after
        that resourceVersion, or 410 Expired when the log no longer holds them.
        """
        with self._cond:
            if resource_version in ("", "0"):
                return self._rv, None
            rv = _parse_rv(resource_version)
            if rv < self._horizon:
                raise ApiError(
                    410,
                    f"too old resource version: {rv} ({self._horizon})",
                    reason="Expired",
                )
            if rv > self._rv:
                raise _too_large(rv, self._rv)
            return rv, None

    def snapshot(self, resource: ResourceType) -> tuple[list[Stored], int]:
        """All objects of a resource in key order, with the resourceVersion they are at."""
        with self._cond:
            table = self._tables[resource]
            return [table.objects[key] for key in table.ordered()], self._rv

    def wait_events(self, after: int, timeout: float, generation: int) -> WatchBatch:
        """Events after resourceVersion `after`, waiting up to timeout seconds for some."""
        with self._cond:
            deadline = time.monotonic() + timeout
            while self._rv == after and self._cut_generation == generation:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._cut_generation != generation:
                return WatchBatch([], after, cut=True)
            if after < self._horizon:
                return WatchBatch([], after, expired=True)
            events = self._log[after + 1 - self._first_logged() :]
            return WatchBatch(events, self._rv)

    def cut_watches(self) -> None:
        """End every open watch now (fault injection)."""
        with self._cond:
            self._cut_generation += 1
            self._cond.notify_all()

    def compact(self, rv: int | None = None) -> int:
        """Forget events up to rv (default: all); watches and continues from before get 410."""
        with self._cond:
            target = self._rv if rv is None else min(max(rv, self._horizon), self._rv)
            del self._log[: max(0, target + 1 - self._first_logged())]
            self._horizon = target
            self._cond.notify_all()
            return target

    # --- writing --------------------------------------------------------------------------------

    def create(self, resource: ResourceType, namespace: str, obj: JSONDict) -> Stored:
        """POST: a new object; 409 AlreadyExists if the name is taken."""
        obj = _checked(resource, namespace, obj)
        metadata = obj["metadata"]
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
        name = metadata.get("name")
        if not name:
            raise ApiError(
                422,
                f"{resource.kind} is invalid: metadata.name: Required value: "
                "name or generateName is required",
                kind=resource.kind,
            )
        for owned in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp"):
            metadata.pop(owned, None)
        if resource is SERVICES:
            obj.pop("status", None)  # a created Service's status is the controllers' to write
        with self._cond:
            if self._key(resource, namespace, name) in self._tables[resource].objects:
                raise ApiError(
                    409,
                    f'{_plural_group(resource)} "{name}" already exists',
                    reason="AlreadyExists",
                    name=name,
                    group=resource.group,
                    kind=resource.plural,
                )
            return self._put(resource, obj, previous=None)

    def replace(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        obj: JSONDict,
        *,
        subresource: str = "",
    ) -> Stored:
        """PUT: the whole object, or its status; 409 Conflict on a stale resourceVersion."""
        obj = _checked(resource, namespace, obj)
        metadata = obj["metadata"]
        if metadata.setdefault("name", name) != name:
            raise ApiError(
                400,
                f"the name of the object ({metadata['name']}) does not match "
                f"the name on the URL ({name})",
            )
        with self._cond:
            key = self._key(resource, namespace, name)
            current = self._tables[resource].objects.get(key)
            if current is None:
                if resource.allow_create_on_update and not subresource:
                    return self.create(resource, namespace, obj)
                raise _not_found(resource, name)
            old = current.load()
            requested = metadata.get("resourceVersion")
            if requested and _parse_rv(str(requested)) != current.rv:
                raise _conflict(resource, name)
            new = _merge_update(resource, old, obj, subresource)
            return self._put(resource, new, previous=current)

    def patch(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        apply: Callable[[JSONDict], JSONDict],
        *,
        subresource: str = "",
    ) -> Stored:
        """PATCH: apply(current object) is the new object, checked as a PUT would be."""
        with self._cond:
            current = self.get(resource, namespace, name)
            patched = apply(current.load())
            if not isinstance(patched, dict):
                raise ApiError(422, "the patch must leave an object")
            metadata = patched.setdefault("metadata", {})
            if not isinstance(metadata, dict):
                raise ApiError(422, "metadata: must be an object")
            # A patch may name a resourceVersion as a precondition; otherwise none applies.
            if metadata.get("resourceVersion") == str(current.rv):
                metadata.pop("resourceVersion")
            return self.replace(resource, namespace, name, patched, subresource=subresource)

    def delete(self, resource: ResourceType, namespace: str, name: str) -> Stored:
        """DELETE: the object as it was, stamped with the deletion's resourceVersion."""
        with self._cond:
            current = self.get(resource, namespace, name)
            if resource is NAMESPACES:
                for other in RESOURCES:
                    if other.namespaced:
                        for stored in list(self._tables[other].objects.values()):
                            if stored.namespace == name:
                                self._remove(stored)
            return self._remove(current)

    def load(self, objects: Iterable[Mapping[str, object]], *, owned: bool = False) -> list[str]:
        """Create or replace objects read from a file, status included; returns warnings.

        Objects of kinds this server does not serve are skipped with a warning. owned: the
        objects are the store's to change and keep (a file just parsed), which spares
        copying them: a third of the time at 30,000 Services.
        """
        warnings: list[str] = []
        with self._cond:
            for raw in objects:
                resource = by_kind(str(raw.get("apiVersion", "")), str(raw.get("kind", "")))
                metadata = raw.get("metadata")
                name = metadata.get("name") if isinstance(metadata, Mapping) else None
                if resource is None or not isinstance(name, str) or not name:
                    warnings.append(
                        f"skipped {raw.get('apiVersion')}/{raw.get('kind')} {name or '(no name)'}: "
                        "not a Service, EndpointSlice, Node or Namespace with a name"
                    )
                    continue
                assert isinstance(metadata, Mapping)
                namespace = (
                    str(metadata.get("namespace") or "default") if resource.namespaced else ""
                )
                current = self._tables[resource].objects.get(self._key(resource, namespace, name))
                try:
                    obj = _checked(resource, namespace, raw, copy=not owned)
                    obj["metadata"].pop("resourceVersion", None)
                    self._put(resource, obj, previous=current)
                except ApiError as exc:
                    warnings.append(f"skipped {resource.kind} {namespace}/{name}: {exc.message}")
        return warnings

    # --- internals (all called with the lock held) ---------------------------------------------

    @staticmethod
    def _key(resource: ResourceType, namespace: str, name: str) -> str:
        return f"{namespace}/{name}" if resource.namespaced else name

    def _put(self, resource: ResourceType, obj: JSONDict, *, previous: Stored | None) -> Stored:
        metadata = obj["metadata"]
        namespace = str(metadata.get("namespace", "")) if resource.namespaced else ""
        name = str(metadata["name"])
        key = self._key(resource, namespace, name)
        if resource.namespaced and namespace not in self._tables[NAMESPACES].objects:
            # No admission here: a namespace springs into being with its first object.
            self._put(NAMESPACES, {"metadata": {"name": namespace}}, previous=None)
        if resource is SERVICES:
            default_service(obj)
            old = previous.load() if previous is not None else None
            if old is not None:
                keep_allocated(obj, old)
                self._allocator.release(key, old)
            try:
                self._allocator.claim(key, obj)
            except ApiError:
                self._allocator.release(key, obj)
                if old is not None:
                    self._allocator.claim(key, old)
                raise
        elif resource is ENDPOINT_SLICES:
            default_endpoint_slice(obj)
        elif resource is NAMESPACES:
            default_namespace(obj)
        if previous is None:
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault("creationTimestamp", _timestamp(self._clock()))
        else:
            old_meta = json.loads(previous.body)["metadata"]
            metadata["uid"] = old_meta.get("uid")
            metadata["creationTimestamp"] = old_meta.get("creationTimestamp")
            # An update that changes nothing keeps the resourceVersion and sends no event.
            metadata["resourceVersion"] = str(previous.rv)
            if _body(obj) == previous.body:
                return previous
        rv = self._rv + 1
        metadata["resourceVersion"] = str(rv)
        labels = metadata.get("labels")
        stored = Stored(
            resource=resource,
            namespace=namespace,
            name=name,
            rv=rv,
            labels=dict(labels) if isinstance(labels, dict) else {},
            body=_body(obj),
        )
        table = self._tables[resource]
        if previous is None:
            table.sorted_keys = None
        table.objects[key] = stored
        self._record(Event(rv, "ADDED" if previous is None else "MODIFIED", stored, previous))
        return stored

    def _remove(self, current: Stored) -> Stored:
        rv = self._rv + 1
        gone = current.restamped(rv)
        table = self._tables[current.resource]
        del table.objects[current.key]
        table.sorted_keys = None
        if current.resource is SERVICES:
            self._allocator.release(current.key, json.loads(current.body))
        self._record(Event(rv, "DELETED", gone, current))
        return gone

    def _record(self, event: Event) -> None:
        self._rv = event.rv
        self._log.append(event)
        if len(self._log) > self._history + self._history // 8:
            # Trim in steps so appends stay cheap; watches behind the horizon get 410.
            drop = len(self._log) - self._history
            self._horizon = self._log[drop - 1].rv
            del self._log[:drop]
        self._cond.notify_all()


def _body(obj: JSONDict) -> bytes:
    return _dumps({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})


def _parse_rv(text: str) -> int:
    try:
        rv = int(text)
    except ValueError:
        raise ApiError(400, f"invalid resource version: {text!r}") from None
    if rv < 0:
        raise ApiError(400, f"invalid resource version: {text!r}")
    return rv


def _too_large(rv: int, current: int) -> ApiError:
    return ApiError(
        504, f"Timeout: Too large resource version: {rv}, current: {current}", reason="Timeout"
    )


def _plural_group(resource: ResourceType) -> str:
    return f"{resource.plural}.{resource.group}" if resource.group else resource.plural


def _not_found(resource: ResourceType, name: str) -> ApiError:
    return ApiError(
        404,
        f'{_plural_group(resource)} "{name}" not found',
        name=name,
        group=resource.group,
        kind=resource.plural,
    )


def _conflict(resource: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {_plural_group(resource)} "{name}": the object has '
        "been modified; please apply your changes to the latest version and try again",
        reason="Conflict",
        name=name,
        group=resource.group,
        kind=resource.plural,
    )


def _checked(resource: ResourceType, namespace: str, obj: object, *, copy: bool = True) -> JSONDict:
    """A request body that is an object of this resource, in this namespace (a copy)."""
    if not isinstance(obj, Mapping):
        raise ApiError(400, "the request body must be a JSON object")
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if (kind and kind != resource.kind) or (api_version and api_version != resource.api_version):
        raise ApiError(
            400,
            f"the API version in the data ({api_version}) does not match the expected API version "
            f"({resource.api_version})"
            if api_version != resource.api_version
            else f"the kind in the data ({kind}) does not match "
            f"the expected kind ({resource.kind})",
        )
    checked: JSONDict = json.loads(_dumps(obj)) if copy or not isinstance(obj, dict) else obj
    metadata = checked.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise ApiError(400, "metadata: must be an object")
    if resource.namespaced:
        if metadata.get("namespace") and metadata["namespace"] != namespace:
            raise ApiError(
                400,
                "the namespace of the provided object does not match "
                "the namespace sent on the request",
            )
        metadata["namespace"] = namespace
    else:
        metadata.pop("namespace", None)
    labels = metadata.get("labels")
    if labels is not None and not (
        isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
    ):
        raise ApiError(
            422, f"{resource.kind} is invalid: metadata.labels: must map strings to strings"
        )
    return checked


def _merge_update(
    resource: ResourceType, old: JSONDict, new: JSONDict, subresource: str
) -> JSONDict:
    """The object an update leaves: status comes from the status subresource only."""
    if subresource == "status":
        merged = dict(old)
        merged["status"] = new.get("status", {})
        merged["metadata"] = old["metadata"]
        return merged
    if subresource:
        raise ApiError(404, f"the server could not find the requested resource ({subresource})")
    if resource.has_status and "status" in old:
        new["status"] = old["status"]
    elif resource.has_status:
        new.pop("status", None)
    return new
