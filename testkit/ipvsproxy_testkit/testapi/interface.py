"""What the request handler and the control requests need of the server, and no more.

The server (server.py) satisfies `ServedAPI`; the handler (handler.py) and the control
requests (control.py) see the server through it only. Imports go one way:
server -> handler -> control -> interface.
"""

from __future__ import annotations

import socket
from typing import Protocol

from ipvsproxy_testkit.testapi.faults import Faults
from ipvsproxy_testkit.testapi.store import Store

__all__ = ["ServedAPI"]


class ServedAPI(Protocol):
    """The served API as one request sees it: the state, the faults, and the server's hooks."""

    @property
    def store(self) -> Store:
        """The objects served."""
        ...

    @property
    def faults(self) -> Faults:
        """The faults requests are subject to."""
        ...

    @property
    def bookmark_interval(self) -> float:
        """Seconds between BOOKMARK events on watches that ask for them."""
        ...

    @property
    def default_watch_timeout(self) -> float:
        """Seconds a watch without timeoutSeconds stays open."""
        ...

    @property
    def port(self) -> int:
        """The port listened on (the discovery documents name it)."""
        ...

    def count_sent(self, kind: str, size: int) -> None:
        """Count size body bytes sent by a list ("list") or a watch stream ("watch")."""
        ...

    def bytes_sent(self) -> dict[str, int]:
        """Body bytes sent so far by list answers and by watch streams."""
        ...

    def saw_user_agent(self, agent: str) -> None:
        """Record a request's User-Agent header (tests check the client's identity)."""
        ...

    def cut_watches(self) -> None:
        """End every open watch without a proper end."""
        ...

    def connection_opened(self, connection: socket.socket) -> None:
        """A client connected: going away must close this connection too."""
        ...

    def connection_closed(self, connection: socket.socket) -> None:
        """A client's connection ended."""
        ...

    def go_away(self, seconds: float | None = None, *, keep: socket.socket | None = None) -> None:
        """Stop listening and close every connection but keep; come back after seconds."""
        ...
