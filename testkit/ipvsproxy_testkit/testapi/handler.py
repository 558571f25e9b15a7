"""The HTTP side of the test API server: routing, lists, watch streams, writes."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import yaml
from loguru import logger

from ipvsproxy_testkit.testapi import resources
from ipvsproxy_testkit.testapi.control import CONTROL_PREFIX, control
from ipvsproxy_testkit.testapi.interface import ServedAPI
from ipvsproxy_testkit.testapi.openapi import OPENAPI_V2_PROTOBUF, openapi_root, openapi_spec
from ipvsproxy_testkit.testapi.patch import apply_patch
from ipvsproxy_testkit.testapi.resources import ResourceType, by_path
from ipvsproxy_testkit.testapi.selectors import FieldSelector, LabelSelector, SelectorError
from ipvsproxy_testkit.testapi.status import ApiError, status_object
from ipvsproxy_testkit.testapi.store import Event, Stored, parse_resource_version
from ipvsproxy_testkit.testapi.tables import table, wants_table

__all__ = ["APIHTTPServer", "APIHTTPServer6", "Handler"]

_CHUNK: Final = 1 << 16  # bytes of watch events written at once
_LIVENESS_CHECK: Final = 1.0  # seconds between checks that an idle watcher's client is there


class APIHTTPServer(ThreadingHTTPServer):
    """Listens on address and answers every request with a Handler serving api."""

    daemon_threads = True
    request_queue_size = 128  # the default 5 drops connections when many clients start at once
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: ServedAPI) -> None:
        self.api = api
        super().__init__(address, Handler)


class APIHTTPServer6(APIHTTPServer):
    address_family = socket.AF_INET6


class _Cut(Exception):
    """The connection is to be dropped without a proper end (a fault, or the client left)."""


def _query(raw: str) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(raw, keep_blank_values=True).items()}


def _true(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true")


def _event_line(event_type: str, body: bytes) -> bytes:
    return b'{"type":"' + event_type.encode() + b'","object":' + body + b"}\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: APIHTTPServer
    server_version = "ipvsproxy-testapi"
    _is_control = False  # control requests are never subject to faults

    # --- plumbing -------------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.server.api.connection_opened(self.connection)

    def finish(self) -> None:
        self.server.api.connection_closed(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("test API server: {}", format % args)

    def do_GET(self) -> None:
        self.api.saw_user_agent(self.headers.get("User-Agent", ""))
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    @property
    def api(self) -> ServedAPI:
        return self.server.api

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = _query(url.query)
        self._is_control = url.path.startswith(CONTROL_PREFIX)
        try:
            body = self._read_body()
            if self._is_control:
                self._control(method, url.path, body)
                return
            faults = self.api.faults
            if faults.delay_seconds:
                time.sleep(faults.delay_seconds)
            code = faults.take_failure()
            if code is not None:
                raise ApiError(code, "injected failure")
            self._route(method, url.path.rstrip("/") or "/", query, body)
        except ApiError as exc:
            self._send_status(exc)
        except _Cut:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:
            logger.exception("test API server: {} {} failed", method, self.path)
            self._send_status(ApiError(500, f"internal error: {exc}"))

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _parse_body(self, body: bytes) -> Any:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type in ("application/vnd.kubernetes.protobuf", "application/cbor"):
            raise ApiError(
                415,
                f"the body of the request was in an unknown format - accepted media types "
                f"include: application/json, application/yaml (got {content_type})",
            )
        try:
            if "yaml" in content_type:
                return yaml.safe_load(body)
            return json.loads(body) if body else None
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(400, f"the request body is not valid JSON or YAML: {exc}") from None

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        truncate = code < 300 and not self._is_control and self.api.faults.take_truncate()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        if truncate:
            self.wfile.write(body[: len(body) // 2])
            raise _Cut()
        self.wfile.write(body)

    def _send_json(self, code: int, value: object) -> None:
        self._send(code, json.dumps(value, separators=(",", ":")).encode())

    def _send_status(self, error: ApiError) -> None:
        with contextlib.suppress(OSError):
            self._send_json(error.code, error.status())

    # --- routing --------------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        parts = path.strip("/").split("/") if path != "/" else []
        if method == "GET" and self._discovery(path, parts):
            return
        if len(parts) >= 3 and parts[0] == "api" and parts[1] == "v1":
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(
                404, "the server could not find the requested resource", reason="NotFound"
            )
        resource, namespace, name, subresource = _resource_path(group, version, rest)
        if method == "GET":
            if name and not _true(query.get("watch")):
                stored = self.api.store.get(resource, namespace or "", name)
                if self._table_wanted():
                    include = query.get("includeObject", "Metadata")
                    self._send(
                        200, table(resource, [stored], resource_version=stored.rv, include=include)
                    )
                else:
                    self._send(200, stored.full())
            elif _true(query.get("watch")):
                if name:
                    query["fieldSelector"] = f"metadata.name={name}"
                self._watch(resource, namespace, query)
            else:
                self._list(resource, namespace, query)
            return
        store = self.api.store
        if method == "POST" and not name:
            if resource.namespaced and namespace is None:
                raise ApiError(
                    405, "the server does not allow this method on the requested resource"
                )
            stored = store.create(resource, namespace or "", self._parse_body(body))
            self._send(201, stored.full())
        elif method == "PUT" and name:
            stored = store.replace(
                resource, namespace or "", name, self._parse_body(body), subresource=subresource
            )
            self._send(200, stored.full())
        elif method == "PATCH" and name:
            patch = self._parse_body(body)
            content_type = self.headers.get("Content-Type") or ""
            stored = store.patch(
                resource,
                namespace or "",
                name,
                lambda current: apply_patch(content_type, current, patch),
                subresource=subresource,
            )
            self._send(200, stored.full())
        elif method == "DELETE" and name:
            self._check_preconditions(resource, namespace or "", name, body)
            gone = store.delete(resource, namespace or "", name)
            if resource in (resources.SERVICES, resources.NAMESPACES):
                self._send(200, gone.full())
            else:
                details: dict[str, object] = {"name": name, "kind": resource.plural}
                if resource.group:
                    details["group"] = resource.group
                uid = gone.load()["metadata"].get("uid")
                if uid:
                    details["uid"] = uid
                self._send_json(200, status_object(200, "", "", details) | {"status": "Success"})
        else:
            raise ApiError(405, "the server does not allow this method on the requested resource")

    def _check_preconditions(
        self, resource: ResourceType, namespace: str, name: str, body: bytes
    ) -> None:
        options = self._parse_body(body) if body else None
        preconditions = options.get("preconditions") if isinstance(options, dict) else None
        if not isinstance(preconditions, dict):
            return
        current = self.api.store.get(resource, namespace, name)
        metadata = current.load()["metadata"]
        for field in ("uid", "resourceVersion"):
            wanted = preconditions.get(field)
            if wanted and wanted != metadata.get(field):
                raise ApiError(
                    409,
                    f"Precondition failed: {field} in precondition: {wanted}, "
                    f"{field} in object meta: {metadata.get(field)}",
                    reason="Conflict",
                    name=name,
                    kind=resource.plural,
                )

    def _discovery(self, path: str, parts: list[str]) -> bool:
        document: object = None
        if path == "/api":
            host = self.headers.get("Host") or f"127.0.0.1:{self.api.port}"
            document = resources.api_versions(host)
        elif path == "/apis":
            document = resources.api_group_list()
        elif path == "/api/v1":
            document = resources.api_resource_list("", "v1")
        elif len(parts) == 2 and parts[0] == "apis":
            document = resources.api_group(parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            document = resources.api_resource_list(parts[1], parts[2])
        elif path == "/version":
            document = resources.version_info()
        elif path == "/openapi/v2":
            # kubectl before 1.27 validates on its side against this document, fetched as
            # protobuf. An empty message is a valid, empty Document: it knows no type, so
            # such a kubectl checks nothing and sends the object on (Debian 12's is 1.20).
            self._send(200, b"", OPENAPI_V2_PROTOBUF)
            return True
        elif path == "/openapi/v3":
            document = openapi_root()
        elif path.startswith("/openapi/v3/"):
            document = openapi_spec(path[len("/openapi/v3/") :])
        elif path in ("/healthz", "/livez", "/readyz"):
            self._send(200, b"ok", "text/plain; charset=utf-8")
            return True
        else:
            return False
        if document is None:
            raise ApiError(
                404, "the server could not find the requested resource", reason="NotFound"
            )
        self._send_json(200, document)
        return True

    # --- list -----------------------------------------------------------------------------------

    def _list(self, resource: ResourceType, namespace: str | None, query: dict[str, str]) -> None:
        labels, fields = _selectors(query)
        rv_param = query.get("resourceVersion", "")
        token = query.get("continue", "")
        if token and rv_param:
            raise ApiError(400, "specifying resource version is not allowed when using continue")
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise ApiError(400, f"invalid limit {query.get('limit')!r}") from None
        at: int | None = None
        if rv_param == "0" and not token:
            limit = 0  # served from the watch cache, which ignores limit (as through 1.32)
        elif rv_param:
            # Without resourceVersionMatch: a page of a limited list is the state exactly at
            # rv (410 once compacted); an unlimited list is anything not older, so the latest.
            rv_wanted = parse_resource_version(rv_param)
            at = rv_wanted if limit > 0 else None
            if at is None and rv_wanted > self.api.store.resource_version:
                raise ApiError(504, f"Timeout: Too large resource version: {rv_wanted}")
        items, rv, next_token = self.api.store.list_page(
            resource,
            namespace=namespace,
            limit=max(0, limit),
            continue_token=token,
            at=at,
            match=_matcher(labels, fields),
        )
        if self.api.faults.take_empty_list():
            items, next_token = [], ""
        if self._table_wanted():
            include = query.get("includeObject", "Metadata")
            self._send(
                200,
                table(
                    resource, items, resource_version=rv, continue_token=next_token, include=include
                ),
            )
            return
        meta = b'{"resourceVersion":"%d"' % rv
        if next_token:
            meta += b',"continue":"' + next_token.encode() + b'"'
        body = b"".join(
            (
                b'{"kind":"',
                resource.list_kind.encode(),
                b'","apiVersion":"',
                resource.api_version.encode(),
                b'","metadata":',
                meta,
                b'},"items":[',
                b",".join(stored.body for stored in items),
                b"]}",
            )
        )
        self.api.count_sent("list", len(body))
        self._send(200, body)

    # --- watch ----------------------------------------------------------------------------------

    def _watch(self, resource: ResourceType, namespace: str | None, query: dict[str, str]) -> None:
        api = self.api
        labels, fields = _selectors(query)
        match = _matcher(labels, fields)
        bookmarks = _true(query.get("allowWatchBookmarks"))
        try:
            timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        except ValueError:
            raise ApiError(400, f"invalid timeoutSeconds {query['timeoutSeconds']!r}") from None
        deadline = time.monotonic() + (
            timeout if timeout is not None else api.default_watch_timeout
        )
        rv_param = query.get("resourceVersion", "")
        generation = api.store.cut_generation
        initial: list[Stored] = []
        try:
            if api.faults.take_watch_gone():
                raise ApiError(
                    410, f"too old resource version: {rv_param or 0} (injected)", reason="Expired"
                )
            if rv_param in ("", "0"):
                initial, since = api.store.snapshot(resource)
            else:
                since, _ = api.store.watch_position(rv_param)
        except ApiError as exc:
            if exc.code != 410:
                raise
            self._start_stream()
            self._write_chunk(_event_line("ERROR", json.dumps(exc.status()).encode()))
            self._end_stream()
            return
        self._start_stream()
        encode = self._event_encoder(resource, query)
        lines = [
            encode("ADDED", stored)
            for stored in initial
            if (namespace is None or stored.namespace == namespace) and match(stored)
        ]
        if _true(query.get("sendInitialEvents")) and bookmarks:
            lines.append(_bookmark(resource, since, initial_end=True))
        self._write_lines(lines)
        last_bookmark = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            wait = deadline - now
            if bookmarks:
                wait = min(wait, max(0.0, last_bookmark + api.bookmark_interval - now))
            batch = api.store.wait_events(since, min(wait, _LIVENESS_CHECK), generation)
            if batch.cut:
                raise _Cut()
            if batch.expired:
                error = ApiError(410, f"too old resource version: {since}", reason="Expired")
                self._write_chunk(_event_line("ERROR", json.dumps(error.status()).encode()))
                break
            since = batch.rv
            lines = [
                line
                for event in batch.events
                if (seen := _converted(event, resource, namespace, match))
                for line in [encode(*seen)]
            ]
            if lines:
                self._write_lines(lines)
            elif bookmarks and time.monotonic() - last_bookmark >= api.bookmark_interval:
                self._write_lines([_bookmark(resource, since)])
                last_bookmark = time.monotonic()
            elif not batch.events and self._client_gone():
                raise _Cut()
        self._end_stream()

    def _table_wanted(self) -> bool:
        return wants_table(self.headers.get("Accept") or "")

    def _event_encoder(
        self, resource: ResourceType, query: dict[str, str]
    ) -> Callable[[str, Stored], bytes]:
        """How this watch writes an event: the object, or a one-row Table for kubectl."""
        if not self._table_wanted():
            return lambda kind, stored: _event_line(kind, stored.full())
        include = query.get("includeObject", "Metadata")
        first = [True]

        def encode(kind: str, stored: Stored) -> bytes:
            # Column definitions come with the first event only, as the real API sends them.
            body = table(
                resource, [stored], resource_version=stored.rv, include=include, columns=first[0]
            )
            first[0] = False
            return _event_line(kind, body)

        return encode

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        if self.api.faults.take_truncate():
            half = data[: max(1, len(data) // 2)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(half), half))
            raise _Cut()
        self.api.count_sent("watch", len(data))
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _write_lines(self, lines: Iterable[bytes]) -> None:
        pending: list[bytes] = []
        size = 0
        for line in lines:
            pending.append(line)
            size += len(line)
            if size >= _CHUNK:
                self._write_chunk(b"".join(pending))
                pending, size = [], 0
        if pending:
            self._write_chunk(b"".join(pending))

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # --- control --------------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> None:
        action = path[len(CONTROL_PREFIX) :].strip("/")
        answer = control(self.api, method, action, self._parse_body(body))
        if answer.after is not None:
            self.close_connection = True
        self._send_json(200, answer.body)
        if answer.after is not None:
            answer.after(self.connection)


def _resource_path(
    group: str, version: str, rest: list[str]
) -> tuple[ResourceType, str | None, str | None, str]:
    """(resource, namespace, name, subresource) of the part after /api/v1 or /apis/G/V."""
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3 and by_path(group, version, rest[2]):
        namespace, rest = rest[1], rest[2:]
    resource = by_path(group, version, rest[0])
    if resource is None or len(rest) > 3 or (namespace is not None and not resource.namespaced):
        raise ApiError(404, "the server could not find the requested resource", reason="NotFound")
    if resource.namespaced and namespace is None and len(rest) > 1:
        raise ApiError(404, "the server could not find the requested resource", reason="NotFound")
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else ""
    if subresource and not (subresource == "status" and resource.has_status):
        raise ApiError(404, "the server could not find the requested resource", reason="NotFound")
    return resource, namespace, name, subresource


def _selectors(query: dict[str, str]) -> tuple[LabelSelector, FieldSelector]:
    try:
        return (
            LabelSelector.parse(query.get("labelSelector", "")),
            FieldSelector.parse(query.get("fieldSelector", "")),
        )
    except SelectorError as exc:
        raise ApiError(400, str(exc)) from None


def _matcher(labels: LabelSelector, fields: FieldSelector) -> Any:
    if labels.empty and fields.empty:
        return lambda stored: True
    if fields.only_metadata:
        return lambda stored: (
            labels.matches(stored.labels) and fields.matches_names(stored.namespace, stored.name)
        )
    return lambda stored: labels.matches(stored.labels) and fields.matches(stored.load())


def _bookmark(resource: ResourceType, rv: int, *, initial_end: bool = False) -> bytes:
    metadata: dict[str, object] = {"resourceVersion": str(rv)}
    if initial_end:
        metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
    obj = {"kind": resource.kind, "apiVersion": resource.api_version, "metadata": metadata}
    return _event_line("BOOKMARK", json.dumps(obj, separators=(",", ":")).encode())


def _converted(
    event: Event, resource: ResourceType, namespace: str | None, match: Any
) -> tuple[str, Stored] | None:
    """The event as this watcher sees it, through its namespace and selectors.

    An object that stops matching is sent as DELETED (its last matching state, at the
    event's resourceVersion) and one that starts matching as ADDED, as the real API does.
    """
    obj = event.obj
    if obj.resource is not resource or (namespace is not None and obj.namespace != namespace):
        return None
    if event.type in ("ADDED", "DELETED"):
        return (event.type, obj) if match(obj) else None
    now, before = match(obj), event.prev is not None and match(event.prev)
    if now and before:
        return "MODIFIED", obj
    if now:
        return "ADDED", obj
    if before:
        assert event.prev is not None
        return "DELETED", event.prev.restamped(event.rv)
    return None
