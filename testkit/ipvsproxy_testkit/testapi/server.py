"""The test API server's life cycle: listening, stopping, going away and coming back."""

from __future__ import annotations

import contextlib
import socket
import threading

from loguru import logger

from ipvsproxy_testkit.testapi.faults import Faults
from ipvsproxy_testkit.testapi.handler import APIHTTPServer, APIHTTPServer6
from ipvsproxy_testkit.testapi.store import Store

__all__ = ["TestAPIServer"]


class TestAPIServer:
    """The store served over HTTP on a loopback port, with fault injection.

    bookmark_interval: seconds between BOOKMARK events on watches that ask for them.
    default_watch_timeout: seconds a watch without timeoutSeconds stays open.
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self,
        store: Store | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bookmark_interval: float = 60.0,
        default_watch_timeout: float = 1800.0,
    ) -> None:
        self.store = store if store is not None else Store()
        self.faults = Faults()
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._httpd: APIHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._away_timer: threading.Timer | None = None
        # Body bytes sent to clients by lists and by watch streams (scale benchmarks).
        self._sent = {"list": 0, "watch": 0}
        self._sent_lock = threading.Lock()
        # The User-Agent headers of the GET requests received, in first-seen order.
        self._user_agents: dict[str, None] = {}

    def saw_user_agent(self, agent: str) -> None:
        with self._sent_lock:
            self._user_agents[agent] = None

    def user_agents(self) -> list[str]:
        """The distinct User-Agent headers of the GET requests so far."""
        with self._sent_lock:
            return list(self._user_agents)

    def bytes_sent(self) -> dict[str, int]:
        """Body bytes sent so far by list answers and by watch streams."""
        with self._sent_lock:
            return dict(self._sent)

    def count_sent(self, kind: str, size: int) -> None:
        """Count size body bytes sent by a list ("list") or a watch stream ("watch")."""
        with self._sent_lock:
            self._sent[kind] += size

    # --- life cycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    def start(self) -> TestAPIServer:
        with self._lock:
            if self._httpd is None:
                self._listen()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._away_timer is not None:
                self._away_timer.cancel()
                self._away_timer = None
            self._close(keep=None)

    def __enter__(self) -> TestAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self) -> None:
        server_class = APIHTTPServer6 if ":" in self._host else APIHTTPServer
        httpd = server_class((self._host, self._port), self)
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _close(self, keep: socket.socket | None) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        self.store.cut_watches()
        with self._connections_lock:
            connections = [c for c in self._connections if c is not keep]
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    # --- faults that need the server ------------------------------------------------------------

    def go_away(self, seconds: float | None = None, *, keep: socket.socket | None = None) -> None:
        """Close the listening socket and every connection; come back after seconds.

        With no seconds, the server stays away until come_back(). The state is kept. keep is
        a connection left open: the one a control request's answer is still being sent on.
        """
        with self._lock:
            self._close(keep)
            if seconds is not None:
                self._away_timer = threading.Timer(seconds, self.come_back)
                self._away_timer.daemon = True
                self._away_timer.start()
        logger.info("test API server: away for {}", "ever" if seconds is None else f"{seconds}s")

    def come_back(self) -> None:
        """Listen again on the same port, after go_away()."""
        with self._lock:
            self._away_timer = None
            if self._httpd is None:
                self._listen()
        logger.info("test API server: back on {}", self.url)

    def cut_watches(self) -> None:
        """End every open watch without a proper end."""
        self.store.cut_watches()

    # --- connections ----------------------------------------------------------------------------

    def connection_opened(self, connection: socket.socket) -> None:
        """A client connected: going away must close this connection too."""
        with self._connections_lock:
            self._connections.add(connection)

    def connection_closed(self, connection: socket.socket) -> None:
        """A client's connection ended."""
        with self._connections_lock:
            self._connections.discard(connection)
