"""Health-check node ports of Services with externalTrafficPolicy Local.

A cloud load balancer probes every node on the Service's healthCheckNodePort and sends
traffic only to nodes that answer 200, i.e. those with a local endpoint. One HTTP server
per port answers any path as kube-proxy's does (pkg/proxy/healthcheck/service_health.go):

    200 (or 503 with no local endpoint or an unhealthy proxy)
    Content-Type: application/json
    X-Content-Type-Options: nosniff
    X-Load-Balancing-Endpoint-Weight: <local endpoints>
    {"service": {"namespace": ..., "name": ...}, "localEndpoints": N, "serviceProxyHealthy": b}

`health_check_ports` computes what should be served (pure); `HealthCheckServers.serve` makes
the running servers match it, and is called after each sync by whoever keeps the proxy
running. A port that cannot be bound is logged and retried at the next sync.
"""

from __future__ import annotations

import errno
import json
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loguru import logger

from ipvsproxy.core.desired import index_slices
from ipvsproxy.core.model import EndpointSlice, Service

__all__ = [
    "HealthCheckPorts",
    "HealthCheckServer",
    "HealthCheckServers",
    "health_check_ports",
    "response",
]

HealthCheckPorts = Mapping[int, tuple[str, int]]
"""health-check port -> ("namespace/name" of its Service, local ready endpoints)."""


def health_check_ports(
    services: Iterable[Service], slices: Iterable[EndpointSlice], *, node_name: str
) -> dict[int, tuple[str, int]]:
    """What the health-check servers should answer, from the objects (pure).

    The count is of this node's ready endpoints, as kube-proxy's LocalReadyEndpoints; in a
    dual-stack Service a pod has an address per family, so the larger family count is used
    rather than the sum.
    """
    by_service = index_slices(slices)
    wanted: dict[int, tuple[str, int]] = {}
    for service in services:
        if not service.health_check_node_port:
            continue
        per_family: dict[int, set[object]] = {}
        for endpoint_slice in by_service.get(service.key, ()):
            for endpoint in endpoint_slice.endpoints:
                if endpoint.ready and node_name and endpoint.node_name == node_name:
                    per_family.setdefault(endpoint_slice.family, set()).add(endpoint.address)
        count = max((len(found) for found in per_family.values()), default=0)
        wanted.setdefault(service.health_check_node_port, (service.key, count))
    return wanted


def response(service_key: str, count: int, *, healthy: bool) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one answer (kube-proxy's hcHandler.ServeHTTP)."""
    namespace, _, name = service_key.partition("/")
    body = {
        "service": {"namespace": namespace, "name": name},
        "localEndpoints": count,
        "serviceProxyHealthy": healthy,
    }
    headers = {
        "Content-Type": "application/json",
        "X-Content-Type-Options": "nosniff",
        "X-Load-Balancing-Endpoint-Weight": str(count),
    }
    status = 200 if count and healthy else 503
    return status, headers, json.dumps(body, indent="\t").encode()


class _DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        # One socket for both families: IPv4 clients arrive as ::ffff:a.b.c.d.
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _IPv4Server(ThreadingHTTPServer):
    daemon_threads = True


class HealthCheckServer:
    """One health-check port: an HTTP server on its own thread. Raises OSError when the
    port cannot be bound."""

    def __init__(
        self, port: int, service_key: str, count: int, *, healthy: Callable[[], bool]
    ) -> None:
        self.service_key = service_key
        self.count = count
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, headers, body = response(owner.service_key, owner.count, healthy=healthy())
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # a probe every few seconds per load balancer: not worth a log line

        try:
            self._server: ThreadingHTTPServer = _DualStackServer(("::", port), Handler)
        except OSError as exc:
            if exc.errno != errno.EAFNOSUPPORT:  # a kernel without IPv6
                raise
            self._server = _IPv4Server(("0.0.0.0", port), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"healthcheck-{self.port}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class HealthCheckServers:
    """The running health-check servers, kept in step with `serve`.

    healthy: whether the proxy itself is healthy (its /healthz); a node whose proxy is not
    syncing answers 503 on every port, as kube-proxy's does.
    """

    def __init__(self, *, healthy: Callable[[], bool] = lambda: True) -> None:
        self._healthy = healthy
        self._servers: dict[int, HealthCheckServer] = {}
        # The sync thread calls serve(), shutdown calls close(), possibly while a sync is
        # still running: once closed, nothing is served again.
        self._lock = threading.Lock()
        self._closed = False

    @property
    def ports(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._servers)

    def serve(self, ports: HealthCheckPorts) -> list[int]:
        """Serve exactly these ports with their counts; the ports that could not be
        bound (logged; tried again at the next sync). After close(), serves nothing."""
        with self._lock:
            return self._serve({} if self._closed else ports)

    def _serve(self, ports: HealthCheckPorts) -> list[int]:
        for port in set(self._servers) - set(ports):
            self._servers.pop(port).close()
        failed: list[int] = []
        for port, (service_key, count) in ports.items():
            server = self._servers.get(port)
            if server is not None:
                server.service_key, server.count = service_key, count
                continue
            try:
                self._servers[port] = HealthCheckServer(
                    port, service_key, count, healthy=self._healthy
                )
            except OSError as exc:
                logger.error(
                    "cannot serve a health-check node port",
                    port=port,
                    service=service_key,
                    error=str(exc),
                )
                failed.append(port)
        return failed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._serve({})
