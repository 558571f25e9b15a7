"""Proxy health with kube-proxy's meaning, and the /healthz and /livez server.

Semantics (kube-proxy pkg/proxy/healthcheck/proxy_health.go):

- ``queued_update()`` when a Service, EndpointSlice or Node change needs the rules
  updated; only the oldest pending one counts. ``updated()`` when a sync succeeded: that
  clears the pending change and records the time.
- The proxy is healthy while nothing is pending (including at start-up, before the first
  sync) or while the oldest pending change is younger than ``health_timeout``;
  kube-proxy uses twice ``syncPeriod``. A sync that keeps failing therefore turns the
  proxy unhealthy ``health_timeout`` after the first change it could not apply.
- /healthz answers 503 until the first successful sync, where kube-proxy answers 200
  ("healthy while it's starting up"): /healthz is the DaemonSet's readiness probe and
  what load balancers ask (externalTrafficPolicy), and a node whose proxy has never
  programmed its kernel (a rebooted node, an API server it cannot reach) must not look
  ready, nor let a rolling update move on to the next node. /livez keeps kube-proxy's
  meaning, so kubelet does not restart a proxy that is only waiting.
- /healthz also requires the node to be eligible (``model.Node.eligible``: not being
  deleted and not tainted ``ToBeDeletedByClusterAutoscaler``), so load balancers stop
  sending traffic to a node about to go. /livez ignores the node (a node being drained
  must not get the proxy restarted).
- Body: JSON ``lastUpdated``, ``currentTime`` (RFC 3339, UTC), ``healthy`` and on
  /healthz ``nodeEligible``. When healthy, ``lastUpdated`` is the current time, as
  kube-proxy reports it for compatibility with older probes; otherwise it is the time of
  the last successful sync (``0001-01-01T00:00:00Z`` if there was none).

Times are seconds since the epoch from an injectable clock (``time.time`` by default),
so tests never wait. Thread-safe: the agent updates it, HTTP threads read it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from ipvsproxy.config.settings import BindAddress
from ipvsproxy.serve.httpserve import HttpServer, Request, Response

__all__ = [
    "HealthStatus",
    "ProxyHealth",
    "format_time",
    "serve_health",
]

_ZERO_TIME: Final = "0001-01-01T00:00:00Z"  # Go's zero time.Time, as kube-proxy prints it
_JSON: Final = "application/json"
_NO_SNIFF: Final = {"X-Content-Type-Options": "nosniff"}


def format_time(seconds: float | None) -> str:
    """RFC 3339 in UTC with up to nanosecond digits, as Go's time.Time marshals to JSON."""
    if seconds is None:
        return _ZERO_TIME
    whole = int(seconds // 1)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    stamp = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return f"{stamp}{fraction}Z"


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """The proxy's health at ``current_time`` (seconds since the epoch)."""

    healthy: bool  # the rules are not stale (node eligibility not included)
    node_eligible: bool
    synced: bool  # a sync has succeeded since start
    last_updated: float | None  # the last successful sync; None before the first
    current_time: float

    def body(self, *, with_node: bool) -> dict[str, object]:
        """kube-proxy's JSON body; ``with_node`` adds nodeEligible (/healthz only)."""
        fresh = self.healthy and (self.synced or not with_node)
        healthy = fresh and (self.node_eligible or not with_node)
        body: dict[str, object] = {
            "lastUpdated": format_time(self.current_time if healthy else self.last_updated),
            "currentTime": format_time(self.current_time),
        }
        if with_node:
            body["nodeEligible"] = self.node_eligible
        body["healthy"] = fresh
        return body


class ProxyHealth:
    """What /healthz and /livez answer, updated by the sync loop and the Node watch.

    ``health_timeout``: seconds a queued change may wait for a successful sync before the
    proxy counts as unhealthy (kube-proxy: 2 x syncPeriod). ``clock``: seconds since the
    epoch, used whenever a method is not given ``now``.
    """

    def __init__(self, *, health_timeout: float, clock: Callable[[], float] = time.time) -> None:
        if health_timeout <= 0:
            raise ValueError(f"health_timeout must be positive, not {health_timeout}")
        self.health_timeout = health_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._last_updated: float | None = None
        self._oldest_queued: float | None = None
        self._node_eligible = True

    def queued_update(self, now: float | None = None) -> None:
        """A change arrived that the next sync must apply (only the oldest one counts)."""
        now = self._clock() if now is None else now
        with self._lock:
            if self._oldest_queued is None:
                self._oldest_queued = now

    def updated(self, now: float | None = None) -> None:
        """A sync succeeded: everything queued so far is applied."""
        now = self._clock() if now is None else now
        with self._lock:
            self._oldest_queued = None
            self._last_updated = now

    def set_node_eligible(self, eligible: bool) -> None:
        """Whether this node may receive load-balanced traffic (`model.Node.eligible`;
        an unknown node counts as eligible)."""
        with self._lock:
            self._node_eligible = eligible

    def status(self, now: float | None = None) -> HealthStatus:
        now = self._clock() if now is None else now
        with self._lock:
            oldest, last, eligible = self._oldest_queued, self._last_updated, self._node_eligible
        healthy = oldest is None or now - oldest < self.health_timeout
        return HealthStatus(
            healthy=healthy,
            node_eligible=eligible,
            synced=last is not None,
            last_updated=last,
            current_time=now,
        )

    def is_healthy(self, now: float | None = None) -> bool:
        """The rules are fresh (the node's eligibility is not considered, as /livez)."""
        return self.status(now).healthy

    def healthz(self, now: float | None = None) -> tuple[int, dict[str, object]]:
        """Status code and JSON body of /healthz: 503 before the first successful sync,
        when stale, or when the node is going away."""
        status = self.status(now)
        code = 200 if status.healthy and status.synced and status.node_eligible else 503
        return code, status.body(with_node=True)

    def livez(self, now: float | None = None) -> tuple[int, dict[str, object]]:
        """Status code and JSON body of /livez: 503 only when stale."""
        status = self.status(now)
        return (200 if status.healthy else 503), status.body(with_node=False)


def serve_health(
    health: ProxyHealth,
    address: BindAddress | tuple[str, int],
    *,
    on_probe: Callable[[str, int], None] | None = None,
) -> HttpServer:
    """Serve /healthz and /livez on ``address`` (kube-proxy's --healthz-bind-address).

    ``on_probe(path, status_code)`` is called for every answer (kube-proxy counts them in
    kubeproxy_proxy_healthz_total / _livez_total). Close the returned server to stop.
    """

    def route(
        probe: Callable[[], tuple[int, dict[str, object]]], path: str
    ) -> Callable[[Request], Response]:
        def handle(_request: Request) -> Response:
            code, body = probe()
            if on_probe is not None:
                on_probe(path, code)
            return Response(code, json.dumps(body).encode(), _JSON, _NO_SNIFF)

        return handle

    return HttpServer(
        address,
        {"/healthz": route(health.healthz, "/healthz"), "/livez": route(health.livez, "/livez")},
        name="healthz",
    )
