"""Change tracking: what the reflectors report, recorded until the next sync takes it.

The store holds the current Services, EndpointSlices (per slice) and this node's Node, fed
by the reflectors' handler calls (replace after a relist, upsert, delete, listed; see
`ipvsproxy.k8s.watch`). It remembers WHICH Services changed since the last sync, as
kube-proxy's service and endpoints change trackers do: a slice change marks its Service,
a relist's replace turns what vanished into deletions, and a burst of events on one key
is merged into one pending change, dropped when it ends where it started. Watch threads
only record and signal; the kernel is touched by the sync thread alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ipvsproxy.core.model import EndpointSlice, Node, Service

_UNSET: object = object()  # "no pending change recorded for this key"


@dataclass(frozen=True, slots=True)
class ServiceInput:
    """What one Service's desired state is computed from; service None: it is gone."""

    service: Service | None
    slices: tuple[EndpointSlice, ...]


@dataclass(frozen=True, slots=True)
class Changes:
    """What a sync takes: the inputs of the Services it must recompute.

    For a full sync `services` holds every Service; for a partial one only those that
    changed (with service None for a deleted one). `trigger_times` are the changed slices'
    endpoints.kubernetes.io/last-change-trigger-time values (seconds since the epoch);
    `received_times`, in the same order, when the tracker recorded each of those changes
    (its wall clock): what a change's latency spent before the proxy saw it.
    """

    services: Mapping[str, ServiceInput]
    trigger_times: tuple[float, ...]
    node_changed: bool
    full: bool
    received_times: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Pending:
    """Counts for the *_changes_pending gauges."""

    services: int
    endpoints: int


class ChangeTracker:
    """Thread-safe store of the objects the proxy watches, and of what changed.

    `on_change(kind)` is called (outside the lock) after every recorded change, kind
    "service", "slice" or "node", and with "listed" when both Services and EndpointSlices
    have finished their first list: it should ask the runner for a sync.
    """

    def __init__(
        self,
        on_change: Callable[[str], None] = lambda kind: None,
        *,
        started_at: float = 0.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._wall = wall_clock
        # Trigger times before this (seconds since the epoch) are not this proxy's to
        # measure: a restarted proxy would report hours of "programming latency" for every
        # slice of its first list (kube-proxy skips them the same way).
        self._started_at = started_at
        self._on_change = on_change
        self._services: dict[str, Service] = {}
        self._slices: dict[str, EndpointSlice] = {}
        self._by_service: dict[str, dict[str, EndpointSlice]] = {}
        self._node: Node | None = None
        # Value at the last sync of every key changed since, to merge bursts per key.
        self._service_before: dict[str, Service | None] = {}
        self._slice_before: dict[str, EndpointSlice | None] = {}
        # Service -> how many pending slice changes touch it.
        self._endpoint_services: dict[str, int] = {}
        # slice key -> its trigger time, and when the change carrying it was recorded
        self._trigger_times: dict[str, tuple[float, float]] = {}
        self._node_changed = False
        self._services_listed = False
        self._slices_listed = False
        self.service_events = 0  # every upsert/delete seen, for the *_changes_total counters
        self.endpoint_events = 0
        self.services = _Handler(self, "service")
        self.slices = _Handler(self, "slice")
        self.node = _Handler(self, "node")

    # -- state

    @property
    def ready(self) -> bool:
        """Whether Services and EndpointSlices have both finished their first list."""
        with self._lock:
            return self._services_listed and self._slices_listed

    def listed_services(self) -> list[Service] | None:
        """The Services known, once Services and EndpointSlices are both listed."""
        with self._lock:
            if not (self._services_listed and self._slices_listed):
                return None
            return list(self._services.values())

    def current_node(self) -> Node | None:
        with self._lock:
            return self._node

    def pending(self) -> Pending:
        with self._lock:
            return Pending(
                services=len(self._service_before),
                endpoints=len(self._endpoint_services),
            )

    def _slice_services(self, key: str, sign: int) -> None:
        """Count (sign 1) or uncount (-1) the Services a pending slice change touches:
        the one it belonged to at the last sync and the one it belongs to now. Kept up to
        date per event so that the pending count costs nothing however many are pending."""
        if key not in self._slice_before:
            return
        before, now = self._slice_before[key], self._slices.get(key)
        touched = {s.service_key for s in (before, now) if s is not None}
        for service_key in touched:
            count = self._endpoint_services.get(service_key, 0) + sign
            if count:
                self._endpoint_services[service_key] = count
            else:
                del self._endpoint_services[service_key]

    # -- what a sync takes

    def take(self, *, full: bool) -> Changes:
        """Everything pending, now marked synced; with full (or after a Node change), the
        inputs of every Service, in the order they were first seen."""
        with self._lock:
            return self._take(full=full)

    def take_partial(self) -> Changes | None:
        """What take(full=False) returns, or None, taking nothing, when a Node change is
        pending (that needs a full sync)."""
        with self._lock:
            return None if self._node_changed else self._take(full=False)

    def _take(self, *, full: bool) -> Changes:
        full = full or self._node_changed
        keys: Iterable[str] = self._service_before.keys() | self._endpoint_services.keys()
        if full:
            keys = list(self._services)
        services = {key: self._input(key) for key in keys}
        times = [
            self._trigger_times[key] for key in self._slice_before if key in self._trigger_times
        ]
        changes = Changes(
            services=services,
            trigger_times=tuple(trigger for trigger, _ in times),
            node_changed=self._node_changed,
            full=full,
            received_times=tuple(received for _, received in times),
        )
        self._service_before.clear()
        self._slice_before.clear()
        self._endpoint_services.clear()
        self._trigger_times.clear()
        self._node_changed = False
        return changes

    def _input(self, key: str) -> ServiceInput:
        slices = self._by_service.get(key)
        return ServiceInput(self._services.get(key), tuple(slices.values()) if slices else ())

    # -- recording (the reflectors' threads)

    def _record(self, kind: str, key: str, value: object | None) -> bool:
        """Store one object's new value (None: deleted); whether anything changed."""
        if kind == "service":
            return self._record_service(key, value if isinstance(value, Service) else None)
        if kind == "slice":
            return self._record_slice(key, value if isinstance(value, EndpointSlice) else None)
        node = value if isinstance(value, Node) else None
        if self._node == node:
            return False
        self._node = node
        self._node_changed = True
        return True

    def _record_service(self, key: str, value: Service | None) -> bool:
        old = self._services.get(key)
        if old == value:
            return False
        self.service_events += 1
        before = self._service_before.get(key, _UNSET)
        if before is _UNSET:
            self._service_before[key] = old
        elif before == value:
            del self._service_before[key]  # back where the last sync left it
        if value is None:
            del self._services[key]
        else:
            self._services[key] = value
        return True

    def _record_slice(self, key: str, value: EndpointSlice | None) -> bool:
        old = self._slices.get(key)
        if old == value:
            return False
        self.endpoint_events += 1
        self._slice_services(key, -1)
        before = self._slice_before.get(key, _UNSET)
        if before is _UNSET:
            self._slice_before[key] = old
        elif before == value:
            del self._slice_before[key]
            self._trigger_times.pop(key, None)
        if old is not None:
            siblings = self._by_service[old.service_key]
            del siblings[key]
            if not siblings:
                del self._by_service[old.service_key]
        if value is None:
            del self._slices[key]
        else:
            self._slices[key] = value
            self._by_service.setdefault(value.service_key, {})[key] = value
            trigger = value.trigger_time
            if trigger is not None and trigger > self._started_at and key in self._slice_before:
                self._trigger_times[key] = (trigger, self._wall())
        self._slice_services(key, 1)
        return True

    def _known(self, kind: str) -> Mapping[str, object]:
        if kind == "service":
            return self._services
        if kind == "slice":
            return self._slices
        return {} if self._node is None else {"": self._node}

    def _replace(self, kind: str, items: Mapping[str, object]) -> bool:
        changed = False
        if kind == "node":
            # One Node only; whatever its key, the newest list is the truth.
            value = next(iter(items.values()), None)
            return self._record(kind, "", value)
        for key in [key for key in self._known(kind) if key not in items]:
            changed |= self._record(kind, key, None)
        for key, value in items.items():
            changed |= self._record(kind, key, value)
        return changed

    def _listed(self, kind: str) -> bool:
        """Mark a kind listed; whether that made the store ready."""
        was_ready = self._services_listed and self._slices_listed
        if kind == "service":
            self._services_listed = True
        elif kind == "slice":
            self._slices_listed = True
        return not was_ready and self._services_listed and self._slices_listed


class _Handler:
    """One reflector's view of the tracker (`ipvsproxy.k8s.watch.ChangeHandler`)."""

    def __init__(self, tracker: ChangeTracker, kind: str) -> None:
        self._tracker = tracker
        self._kind = kind

    def replace(self, items: Mapping[str, object]) -> None:
        with self._tracker._lock:
            changed = self._tracker._replace(self._kind, items)
        if changed:
            self._tracker._on_change(self._kind)

    def upsert(self, key: str, value: object) -> None:
        self._signal(key, value)

    def delete(self, key: str) -> None:
        self._signal(key, None)

    def listed(self) -> None:
        with self._tracker._lock:
            now_ready = self._tracker._listed(self._kind)
        if now_ready:
            self._tracker._on_change("listed")

    def _signal(self, key: str, value: object | None) -> None:
        with self._tracker._lock:
            changed = self._tracker._record(self._kind, "" if self._kind == "node" else key, value)
        if changed:
            self._tracker._on_change(self._kind)
