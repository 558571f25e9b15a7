"""Reflectors: list and watch one kind of object and hand on only what changed.

One `Reflector` per resource (Services, EndpointSlices, this node's Node), each on its own
thread, does what client-go's reflector does for kube-proxy's informers:

1. list in pages (`limit`, `continue`); an expired continue token restarts the list;
2. watch from the list's resourceVersion with `allowWatchBookmarks` and a server-side
   `timeoutSeconds` drawn between 5 and 10 minutes, so watches of many nodes do not end
   together; when a watch ends, watch again from the last resourceVersion seen (events
   and bookmarks advance it);
3. on `410 Gone` (an HTTP status or an ERROR event) list again and replace the cache;
   a relist that would wipe what the reflector holds is held back until a second list
   confirms it (see "Suspicious relists" below);
4. on any other error wait a capped, jittered, exponential backoff and try again, from
   the last resourceVersion when there is one.

Objects are decoded from the raw JSON straight into the frozen values of
`ipvsproxy.core.model` by `ipvsproxy.k8s.objects`; the `kubernetes` client's model classes are
never built (see bench/bench_decode.py for what that saves). An object that fails
validation is logged once, with one warning naming it and the field at fault, and is
treated as absent: if an earlier version of it was handed on, it is deleted.

The handler protocol (what the rest of the program sees)
--------------------------------------------------------
Keys are "namespace/name" for Services and EndpointSlices, "name" for Nodes. Values are
`Service`, `EndpointSlice` or `Node` model values, never None: objects kube-proxy skips on
purpose (headless or ExternalName Services, FQDN slices) and invalid objects are absent.

- `replace(items)`: after every complete (re)list, everything that exists now. Keys the
  handler knew that are not in `items` were deleted while the watch was down: the handler
  computes those deletions itself. The first call comes before `listed()`.
- `upsert(key, value)`: an object was added or changed. Not called when a modification
  leaves the model value equal (a status or resourceVersion-only change).
- `delete(key)`: an object the handler was given is gone (deleted, or now skipped or
  invalid). Never called for a key the handler was not given.
- `listed()`: called once, after the first `replace`: the handler now holds a complete
  view. Nothing should be programmed before every reflector it depends on has listed.

Suspicious relists
------------------
An API server (or a proxy in front of it) that answers a list with no items by mistake
would make a proxy delete every Service of its node at once. kube-proxy's informers have
no guard against that: a relist is the truth. Here a relist is *suspicious* when the
reflector holds objects and the list would remove all of them, or more than
`WatchSettings.suspicious_fraction` of them when it holds at least
`WatchSettings.suspicious_min` objects. A suspicious list is not handed on: the handler
keeps its view (the node keeps serving what it had), one warning says so, and after
`WatchSettings.confirm_delay` seconds the reflector lists again. That second list is
believed, whatever it says: a server that says the same thing twice, seconds apart, is
taken at its word (a namespace really deleted, a cluster really emptied), so the guard
delays a true mass deletion by confirm_delay and never blocks it.

Calls come from the reflector's own thread, one at a time and in order; handlers of
different reflectors are called from different threads. A handler should only record the
change and return (no kernel work); an exception it raises is logged and the watch goes
on.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar

from loguru import logger

from ipvsproxy.core.model import EndpointSlice, Node, Service
from ipvsproxy.errors import ApiError, InvalidObject
from ipvsproxy.k8s.objects import endpoint_slice_from_dict, node_from_dict, service_from_dict
from ipvsproxy.k8s.ratelimit import Backoff

__all__ = [
    "ENDPOINT_SLICES",
    "SERVICES",
    "ChangeHandler",
    "RateLimiter",
    "Reflector",
    "Resource",
    "Response",
    "Transport",
    "WatchSettings",
    "node_resource",
]

V = TypeVar("V")
V_contra = TypeVar("V_contra", contravariant=True)

GONE: Final = 410


# --- what the reflector needs and gives --------------------------------------------------


class ChangeHandler(Protocol[V_contra]):
    """Receives the changes of one resource; see the module docstring."""

    def replace(self, items: Mapping[str, V_contra]) -> None: ...

    def upsert(self, key: str, value: V_contra) -> None: ...

    def delete(self, key: str) -> None: ...

    def listed(self) -> None: ...


class Response(Protocol):
    """An HTTP response whose body has not been read yet."""

    def read(self) -> bytes:
        """The whole body."""
        ...

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives; raises ApiError when the connection breaks."""
        ...

    def shutdown(self) -> None:
        """From another thread: make a blocked read return at once."""
        ...

    def close(self) -> None: ...


class Transport(Protocol):
    """GET requests to the API server (`ipvsproxy.k8s.client.KubernetesTransport`)."""

    def get(
        self, path: str, query: Sequence[tuple[str, str]], *, timeout: tuple[float, float]
    ) -> Response:
        """Send GET path?query; timeout is (connect, read) seconds.

        Raises ApiError with the HTTP status for a non-2xx answer, status 0 when the
        server could not be reached.
        """
        ...


class RateLimiter(Protocol):
    def reserve(self) -> float:
        """Take a token; the seconds to wait before sending the request."""
        ...


@dataclass(frozen=True, slots=True)
class Resource(Generic[V]):
    """A collection to reflect: where it is, what to ask for, how to convert items."""

    kind: str
    path: str
    convert: Callable[[Mapping[str, object]], V | None]
    namespaced: bool = True
    label_selector: str = ""
    field_selector: str = ""


# kube-proxy (cmd/kube-proxy/app/server.go, ProxyServer.Run) filters on the server side:
# Services without service.kubernetes.io/service-proxy-name (those belong to another
# proxy) and not headless (spec.clusterIP!=None); EndpointSlices without the
# service.kubernetes.io/headless label. The converters skip headless Services anyway,
# so a server that rejects the field selector is asked again without it.
SERVICES: Final[Resource[Service]] = Resource(
    kind="Service",
    path="/api/v1/services",
    convert=service_from_dict,
    label_selector="!service.kubernetes.io/service-proxy-name",
    field_selector="spec.clusterIP!=None",
)
ENDPOINT_SLICES: Final[Resource[EndpointSlice]] = Resource(
    kind="EndpointSlice",
    path="/apis/discovery.k8s.io/v1/endpointslices",
    convert=endpoint_slice_from_dict,
    label_selector="!service.kubernetes.io/headless",
)


def node_resource(node_name: str) -> Resource[Node]:
    """This node's Node only (kube-proxy's NodeManager informer does the same)."""
    return Resource(
        kind="Node",
        path="/api/v1/nodes",
        convert=node_from_dict,
        namespaced=False,
        field_selector=f"metadata.name={node_name}",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchSettings:
    """Timing of list and watch requests; the defaults are client-go's."""

    page_size: int = 500
    """Objects per list page (client-go's pager default)."""

    min_watch_timeout: float = 300.0
    """Watches ask the server to end them after this many seconds times 1 to 2."""

    connect_timeout: float = 10.0
    """Seconds to connect to the API server."""

    list_read_timeout: float = 60.0
    """Seconds a list page may go without receiving data."""

    watch_read_slack: float = 30.0
    """A watch silent for its server timeout plus this many seconds is presumed dead."""

    backoff_initial: float = 0.8
    backoff_max: float = 30.0
    """Retry delays after errors grow from backoff_initial by 2x up to backoff_max."""

    backoff_reset: float = 120.0
    """Seconds without an error after which the delay starts over from backoff_initial."""

    confirm_delay: float = 10.0
    """A suspicious relist (see the module doc) is confirmed by a list this much later."""

    suspicious_fraction: float = 0.5
    suspicious_min: int = 20
    """A relist removing all objects held, or more than suspicious_fraction of them when
    at least suspicious_min are held, is suspicious."""


class _Expired(Exception):
    """410 Gone: the resourceVersion asked for is too old; relist."""


class _Stopped(Exception):
    """stop() was called."""


class _ErrorEvent(ApiError):
    """A watch ERROR event other than 410: back off, then watch again."""


class _BadStream(Exception):
    """A watch line that cannot be decoded: end this watch."""


def _metadata(obj: Mapping[str, object]) -> Mapping[str, object]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _resource_version(obj: Mapping[str, object]) -> str:
    version = _metadata(obj).get("resourceVersion")
    return version if isinstance(version, str) else ""


# --- the reflector -----------------------------------------------------------------------


class Reflector(Generic[V]):
    """Keeps a handler in step with one resource of the API server; see the module doc.

    run() does the work on the calling thread until stop(); start() runs it on a daemon
    thread. clock (monotonic seconds), sleep and rng are injectable so tests never wait
    on timers; the default sleep returns early when stop() is called.
    """

    def __init__(
        self,
        resource: Resource[V],
        transport: Transport,
        handler: ChangeHandler[V],
        *,
        settings: WatchSettings | None = None,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._resource = resource
        self._transport = transport
        self._handler = handler
        self._settings = settings or WatchSettings()
        self._limiter = limiter
        self._clock = clock
        self._stopping = threading.Event()
        self._sleep = sleep if sleep is not None else self._stopping.wait
        self._rng = rng or random.Random()
        self._backoff = Backoff(
            initial=self._settings.backoff_initial,
            cap=self._settings.backoff_max,
            reset_after=self._settings.backoff_reset,
            clock=clock,
            rng=self._rng,
        )
        self._field_selector = resource.field_selector
        self._cache: dict[str, V] = {}
        self._warned: dict[str, str] = {}  # key -> reason already logged
        self._resource_version = ""
        self._listed = threading.Event()
        self._lock = threading.Lock()
        self._response: Response | None = None
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._events = 0  # events read by the current watch
        self._gone_in_a_row = 0  # 410s with no event read in between

    # -- public

    @property
    def kind(self) -> str:
        return self._resource.kind

    @property
    def resource_version(self) -> str:
        """The last resourceVersion seen (from a list, an event or a bookmark)."""
        return self._resource_version

    @property
    def has_listed(self) -> bool:
        return self._listed.is_set()

    def wait_listed(self, timeout: float | None = None) -> bool:
        return self._listed.wait(timeout)

    def start(self) -> None:
        """Run on a daemon thread (a blocked request never holds up the process exit)."""
        thread = threading.Thread(target=self.run, name=f"watch-{self.kind}", daemon=True)
        self._thread = thread
        thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop at once: a blocked watch is woken by shutting its socket down."""
        self._stopping.set()
        with self._lock:
            response = self._response
        if response is not None:
            # Already closed or released: nothing is blocked on it then.
            with contextlib.suppress(Exception):
                response.shutdown()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        with contextlib.suppress(_Stopped):
            self._loop()
        logger.debug("{kind} watch stopped", kind=self.kind)

    def _loop(self) -> None:
        need_list = True
        while not self._stopping.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                    if not self._gone_in_a_row:
                        self._recovered()
                self._watch()
            except _Expired:
                need_list = True
                if self._events:  # this watch did work: a 410 after it is routine
                    self._gone_in_a_row = 0
                    self._recovered()
                self._gone_in_a_row += 1
                if self._gone_in_a_row == 1:
                    logger.info(
                        "{kind} watch: resourceVersion {version} expired (410 Gone), listing again",
                        kind=self.kind,
                        version=self._resource_version,
                    )
                else:
                    # 410 again, straight after a list: a server in that state would be
                    # asked for full lists in a tight loop (client-go backs off too).
                    self._failed(ApiError("410 Gone again after a fresh list"), listing=True)
            except ApiError as exc:
                self._failed(exc, listing=need_list)
            except _Stopped:
                raise
            except Exception as exc:  # a bug must not end the watch for good
                logger.opt(exception=exc).error("{kind} watch: unexpected error", kind=self.kind)
                self._failed(ApiError(repr(exc)), listing=need_list)

    # -- errors and waiting

    def _failed(self, exc: ApiError, *, listing: bool) -> None:
        delay = self._backoff.delay()
        self._failures += 1
        log = logger.warning if self._failures == 1 else logger.debug
        log(
            "{kind} {action} failed: {error}; retrying in {delay:.2f}s",
            kind=self.kind,
            action="list" if listing else "watch",
            error=exc,
            delay=delay,
            failures=self._failures,
        )
        self._wait(delay)

    def _recovered(self) -> None:
        if self._failures:
            logger.info(
                "{kind}: API server answering again after {failures} failed attempts",
                kind=self.kind,
                failures=self._failures,
            )
        self._failures = 0
        self._backoff.reset()

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._sleep(seconds)
        if self._stopping.is_set():
            raise _Stopped

    def _get(self, query: list[tuple[str, str]], timeout: tuple[float, float]) -> Response:
        if self._limiter is not None:
            self._wait(self._limiter.reserve())
        if self._stopping.is_set():
            raise _Stopped
        response = self._transport.get(self._resource.path, query, timeout=timeout)
        with self._lock:
            self._response = response
        if self._stopping.is_set():  # stop() ran before the response was registered
            response.close()
            raise _Stopped
        return response

    def _release(self, response: Response) -> None:
        with self._lock:
            self._response = None
        response.close()

    def _selectors(self) -> list[tuple[str, str]]:
        query = []
        if self._resource.label_selector:
            query.append(("labelSelector", self._resource.label_selector))
        if self._field_selector:
            query.append(("fieldSelector", self._field_selector))
        return query

    # -- list

    def _list(self) -> None:
        """List every page, then replace the handler's view in one call; a suspicious
        list (see the module doc) only after a second list confirms it."""
        items, seen, version = self._list_pages()
        if self._suspicious(items):
            logger.warning(
                "{kind} list would remove {removed} of {held} objects; keeping them and"
                " listing again in {delay:g}s to confirm",
                kind=self.kind,
                removed=sum(key not in items for key in self._cache),
                held=len(self._cache),
                delay=self._settings.confirm_delay,
            )
            self._wait(self._settings.confirm_delay)
            items, seen, version = self._list_pages()
            if self._suspicious(items):
                logger.warning(
                    "{kind} list confirmed: {removed} objects removed",
                    kind=self.kind,
                    removed=sum(key not in items for key in self._cache),
                )
        self._forget_warnings(seen)
        self._resource_version = version
        self._cache = dict(items)
        self._call(self._handler.replace, items)
        if not self._listed.is_set():
            self._listed.set()
            self._call(self._handler.listed)

    def _suspicious(self, items: Mapping[str, V]) -> bool:
        held = len(self._cache)
        if not held:
            return False
        removed = sum(key not in items for key in self._cache)
        settings = self._settings
        return removed == held or (
            held >= settings.suspicious_min and removed > settings.suspicious_fraction * held
        )

    def _list_pages(self) -> tuple[dict[str, V], set[str], str]:
        """Every page of one list: the objects, the keys seen (valid or not), the version."""
        items: dict[str, V] = {}
        seen: set[str] = set()
        token = ""
        version = ""
        settings = self._settings
        while True:
            query = [("limit", str(settings.page_size)), *self._selectors()]
            if token:
                query.append(("continue", token))
            try:
                response = self._get(query, (settings.connect_timeout, settings.list_read_timeout))
                try:
                    body = response.read()
                finally:
                    self._release(response)
            except ApiError as exc:
                if exc.status == GONE and token:
                    # The continue token outlived the server's snapshot (about 5 minutes);
                    # a consistent view needs a list from the start.
                    logger.info(
                        "{kind} list: continue token expired, listing again", kind=self.kind
                    )
                    items.clear()
                    seen.clear()
                    token = ""
                    continue
                if exc.status == 400 and self._field_selector and not token:
                    self._drop_field_selector(exc)
                    continue
                raise
            token, version = self._read_page(body, items, seen)
            if not token:
                return items, seen, version

    def _read_page(self, body: bytes, items: dict[str, V], seen: set[str]) -> tuple[str, str]:
        try:
            page = json.loads(body)
        except ValueError as exc:
            raise ApiError(f"list answer is not JSON: {exc}") from exc
        if not isinstance(page, dict) or not isinstance(page.get("items", []), list | None):
            raise ApiError("list answer is not a list of objects")
        metadata = _metadata(page)
        for obj in page.get("items") or ():
            if not isinstance(obj, dict):
                continue
            key = self._key(obj)
            if key is None:
                continue
            seen.add(key)
            value = self._convert(key, obj)
            if value is not None:
                items[key] = value
        token = metadata.get("continue")
        version = metadata.get("resourceVersion")
        return (
            token if isinstance(token, str) else "",
            version if isinstance(version, str) else "",
        )

    def _drop_field_selector(self, exc: ApiError) -> None:
        logger.warning(
            "{kind} list: the API server refused fieldSelector {selector} ({error});"
            " listing without it",
            kind=self.kind,
            selector=self._field_selector,
            error=exc,
        )
        self._field_selector = ""

    # -- watch

    def _watch(self) -> None:
        """One watch request, until the server ends it or the connection breaks."""
        settings = self._settings
        seconds = int(settings.min_watch_timeout * (1.0 + self._rng.random()))
        query = [
            ("watch", "true"),
            ("resourceVersion", self._resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(seconds)),
            *self._selectors(),
        ]
        started = self._clock()
        self._events = 0
        try:
            response = self._get(
                query, (settings.connect_timeout, seconds + settings.watch_read_slack)
            )
        except ApiError as exc:
            if exc.status == GONE:
                raise _Expired from exc
            raise
        try:
            self._read_events(response)
        except _ErrorEvent:
            raise
        except ApiError as exc:
            # A connection cut mid-stream: watch again from the last resourceVersion,
            # as client-go does when its stream decoder hits an unexpected EOF.
            logger.debug("{kind} watch stream broken: {error}", kind=self.kind, error=exc)
        except _BadStream as exc:
            logger.warning("{kind} watch: {error}; watching again", kind=self.kind, error=exc)
        finally:
            self._release(response)
        if self._stopping.is_set():
            raise _Stopped
        if self._events:
            self._gone_in_a_row = 0
            self._recovered()
        elif self._clock() - started < 1.0:
            # A server that ends watches at once would otherwise be asked in a tight loop.
            raise ApiError("watch ended at once without events")

    def _read_events(self, response: Response) -> None:
        pending = b""
        for chunk in response.chunks():
            if self._stopping.is_set():
                raise _Stopped
            pending += chunk
            if b"\n" not in chunk:
                continue
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    self._event(line)
                    self._events += 1
        if pending.strip():
            self._event(pending)
            self._events += 1

    def _event(self, line: bytes) -> None:
        try:
            event = json.loads(line)
            kind = event["type"]
            obj = event["object"]
        except (ValueError, KeyError, TypeError) as exc:
            raise _BadStream(f"undecodable event {line[:200]!r}") from exc
        if not isinstance(obj, dict):
            raise _BadStream(f"event without an object: {line[:200]!r}")
        if kind == "ERROR":
            code = obj.get("code")
            if code == GONE:
                raise _Expired
            status = code if isinstance(code, int) else 0
            raise _ErrorEvent(f"watch ERROR event: {obj.get('message')}", status=status)
        version = _resource_version(obj)
        if kind == "BOOKMARK":
            if version:
                self._resource_version = version
            return
        key = self._key(obj)
        if key is not None:
            if kind in ("ADDED", "MODIFIED"):
                self._apply(key, self._convert(key, obj))
            elif kind == "DELETED":
                self._warned.pop(key, None)
                self._apply(key, None)
            else:
                logger.warning(
                    "{kind} watch: unknown event type {type!r}", kind=self.kind, type=kind
                )
        if version:
            self._resource_version = version

    def _apply(self, key: str, value: V | None) -> None:
        if value is None:
            if self._cache.pop(key, None) is not None:
                self._call(self._handler.delete, key)
        elif self._cache.get(key) != value:
            self._cache[key] = value
            self._call(self._handler.upsert, key, value)

    # -- objects

    def _key(self, obj: Mapping[str, object]) -> str | None:
        metadata = _metadata(obj)
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            self._warn_once("<no name>", f"{self.kind} without metadata.name skipped")
            return None
        if not self._resource.namespaced:
            return name
        namespace = metadata.get("namespace")
        return f"{namespace if isinstance(namespace, str) and namespace else 'default'}/{name}"

    def _convert(self, key: str, obj: Mapping[str, object]) -> V | None:
        try:
            value = self._resource.convert(obj)
        except InvalidObject as exc:
            if self._warned.get(key) != exc.reason:
                self._warned[key] = exc.reason
                logger.warning(
                    "skipping invalid {kind} {key}: {reason}",
                    kind=exc.kind,
                    key=exc.key,
                    reason=exc.reason,
                )
            return None
        self._warned.pop(key, None)
        return value

    def _warn_once(self, key: str, message: str) -> None:
        if self._warned.get(key) != message:
            self._warned[key] = message
            logger.warning(message)

    def _forget_warnings(self, present: set[str]) -> None:
        for key in [key for key in self._warned if key not in present]:
            del self._warned[key]

    def _call(self, method: Callable[..., object], *args: object) -> None:
        try:
            method(*args)
        except Exception as exc:
            logger.opt(exception=exc).error(
                "{kind} handler {method} failed", kind=self.kind, method=method.__name__
            )
