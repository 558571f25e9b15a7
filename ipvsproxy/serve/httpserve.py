"""A small HTTP server on a background thread, for the health and metrics endpoints.

Routes map a path to a handler that turns a request into a response; nothing else is
served (404), and only GET and HEAD are answered (405 otherwise). Each request runs on its
own daemon thread (ThreadingHTTPServer), so a slow client never blocks a probe, and
close() returns within about ``poll_interval`` seconds: the serving loop checks for
shutdown that often.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

from loguru import logger

from ipvsproxy.config.settings import BindAddress
from ipvsproxy.errors import IpvsProxyError

__all__ = ["HttpServer", "Request", "Response", "Route"]


@dataclass(frozen=True, slots=True)
class Request:
    """What a handler sees of a request: its path, query string and headers."""

    path: str
    query: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


Route = Callable[[Request], Response]


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung client must not keep the process alive
    routes: Mapping[str, Route]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "ipvsproxy"

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, *, send_body: bool) -> None:
        url = urlsplit(self.path)
        route = self.server.routes.get(url.path)
        if route is None:
            response = Response(404, b"404 page not found\n")
        else:
            request = Request(
                path=url.path, query=url.query, headers={k: v for k, v in self.headers.items()}
            )
            try:
                response = route(request)
            except Exception as exc:  # a broken handler must not take the server down
                logger.opt(exception=exc).error("http handler failed", path=url.path)
                response = Response(500, b"internal error\n")
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(response.body)

    def _refuse(self) -> None:
        body = b"method not allowed\n"
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def log_message(self, format: str, *args: object) -> None:
        # Probes arrive every few seconds; the stdlib's access line per request is noise.
        pass


class HttpServer:
    """Serves ``routes`` on ``address`` from a daemon thread until close().

    ``address`` is a BindAddress or a (host, port) pair; port 0 picks a free port (see
    ``port``). Raises IpvsProxyError when the address cannot be bound.
    """

    def __init__(
        self,
        address: BindAddress | tuple[str, int],
        routes: Mapping[str, Route],
        *,
        name: str = "http",
        poll_interval: float = 0.1,
    ) -> None:
        host, port = (
            (str(address.host), address.port) if isinstance(address, BindAddress) else address
        )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_FamilyServer", (_Server,), {"address_family": family})
        try:
            self._server: _Server = server_class((host, port), _Handler)
        except OSError as exc:
            raise IpvsProxyError(f"cannot serve {name} on {host}:{port}: {exc.strerror}") from exc
        self._server.routes = dict(routes)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": poll_interval},
            name=f"{name}-server",
            daemon=True,
        )
        self._thread.start()
        self.name = name

    @property
    def port(self) -> int:
        """The port actually bound (useful after asking for port 0)."""
        port: int = self._server.server_address[1]
        return port

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    def close(self) -> None:
        """Stop serving and release the socket; idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> HttpServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
