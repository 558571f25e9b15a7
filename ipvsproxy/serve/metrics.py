"""Prometheus metrics: kube-proxy's own names, the proxy's counters, and per-Service traffic.

kube-proxy's metrics (pkg/proxy/metrics/metrics.go) keep their names, types, help texts
and buckets, so existing dashboards and alerts work unchanged. What the sync loop must
call, and when:

- ``queued(now)``: a change arrived that needs a sync (kube-proxy sets
  ``..._last_queued_timestamp_seconds`` in ``Sync()``).
- ``changes_seen(services=, endpoints=)`` for every Service / EndpointSlice event, and
  ``changes_pending(services=, endpoints=)`` whenever the trackers' pending counts change
  (kube-proxy counts each update in ``_total`` and sets ``_pending`` to the tracker size).
- ``sync_finished(seconds=, full=, ok=, now=)`` after every sync, successful or not.
- ``network_programmed(trigger_times, programmed_at)`` after a successful sync, with the
  ``endpoints.kubernetes.io/last-change-trigger-time`` of each EndpointSlice change the
  sync applied (see ``parse_trigger_time``).
- ``sync_failed(kind)`` once per failure kind of a sync; ``netlink_sent(count,
  subsystem=)`` with the messages a sync wrote; ``iptables_restore_failed()``.

Every metric lives in the instance's own CollectorRegistry (never the global one), so
tests and several proxies in one process stay apart. ``serve_metrics`` answers
/metrics, /proxyMode (``ipvs``) and /healthz (``ok``) as kube-proxy's metrics server does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Final, NamedTuple

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ipvsproxy.config.settings import BindAddress
from ipvsproxy.core.model import IPFamily, IpvsStats, Service, VirtualServerKey
from ipvsproxy.errors import IpvsProxyError
from ipvsproxy.logs import RepeatedLog
from ipvsproxy.serve.httpserve import HttpServer, Request, Response

__all__ = [
    "NETWORK_PROGRAMMING_BUCKETS",
    "SYNC_BUCKETS",
    "TRIGGER_TIME_ANNOTATION",
    "IpvsTrafficCollector",
    "ProxyMetrics",
    "ServicePortLabels",
    "parse_trigger_time",
    "serve_metrics",
    "service_port_labels",
]

# Set by the EndpointSlice controller: when the change that produced this version happened.
TRIGGER_TIME_ANNOTATION: Final = "endpoints.kubernetes.io/last-change-trigger-time"

# prometheus.ExponentialBuckets(0.001, 2, 15): 1 ms to 16.384 s
SYNC_BUCKETS: Final = tuple(0.001 * 2**i for i in range(15))
# kube-proxy's merge(): a leading 0, then 0.25 s, 0.5 s, 1-59 s, 60-115 s by 5, 2-5 min by 30 s
NETWORK_PROGRAMMING_BUCKETS: Final = (
    0.0,
    0.25,
    0.5,
    *(float(s) for s in range(1, 60)),
    *(float(s) for s in range(60, 120, 5)),
    *(float(s) for s in range(120, 301, 30)),
)

_PROXY_MODE: Final = b"ipvs"


def parse_trigger_time(value: object) -> float | None:
    """Seconds since the epoch of a last-change-trigger-time annotation (RFC 3339), or
    None when it is missing or malformed (kube-proxy skips those too)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        return None
    return stamp.timestamp()


class ProxyMetrics:
    """The sync loop's metrics in a registry of their own (``registry``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry

        def histogram(
            name: str, doc: str, *labels: str, buckets: tuple[float, ...] = SYNC_BUCKETS
        ) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, registry=r)

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=r)

        # kube-proxy's names and help texts.
        rules = "kubeproxy_sync_proxy_rules"
        self.sync_duration = histogram(
            f"{rules}_duration_seconds", "SyncProxyRules latency in seconds"
        )
        self.full_sync_duration = histogram(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
        )
        self.partial_sync_duration = histogram(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
        )
        self.last_sync = gauge(
            f"{rules}_last_timestamp_seconds", "The last time proxy rules were successfully synced"
        )
        self.last_queued = gauge(
            f"{rules}_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
        )
        self.network_programming = histogram(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            buckets=NETWORK_PROGRAMMING_BUCKETS,
        )
        self.endpoint_changes_pending = gauge(
            f"{rules}_endpoint_changes_pending", "Pending proxy rules Endpoint changes"
        )
        self.endpoint_changes = counter(
            f"{rules}_endpoint_changes", "Cumulative proxy rules Endpoint changes"
        )
        self.service_changes_pending = gauge(
            f"{rules}_service_changes_pending", "Pending proxy rules Service changes"
        )
        self.service_changes = counter(
            f"{rules}_service_changes", "Cumulative proxy rules Service changes"
        )
        self.iptables_restore_failures = counter(
            f"{rules}_iptables_restore_failures", "Cumulative proxy iptables restore failures"
        )
        self.healthz_answers = counter(
            "kubeproxy_proxy_healthz", "Cumulative proxy healthz HTTP status", "code"
        )
        self.livez_answers = counter(
            "kubeproxy_proxy_livez", "Cumulative proxy livez HTTP status", "code"
        )
        self.conntrack_cleanup_duration = histogram(
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            "ReconcileConntrackFlowsLatency latency in seconds",
            "ip_family",
        )
        self.conntrack_deleted = counter(
            "kubeproxy_conntrack_reconciler_deleted_entries",
            "Cumulative conntrack flows deleted by conntrack reconciler",
            "ip_family",
        )
        # The proxy's own.
        self.syncs = counter(
            "ipvsproxy_syncs",
            "Syncs by mode (full: every Service, re-reading the kernel; partial: the changed "
            "Services only) and result",
            "mode",
            "result",
        )
        self.sync_failures = counter(
            "ipvsproxy_sync_failures",
            "Failed syncs by what failed (ipvs, addresses, ipsets, iptables, read, ...)",
            "kind",
        )
        self.conntrack_cleanup_failures = counter(
            "ipvsproxy_conntrack_reconciler_failures",
            "Stale UDP conntrack clean-ups the kernel refused (the sync still counts as "
            "successful; the Services are checked again at their next sync)",
            "ip_family",
        )
        self.netlink_messages = counter(
            "ipvsproxy_netlink_messages_sent",
            "Netlink request messages written to the kernel, by subsystem",
            "subsystem",
        )

    # --- what the sync loop calls -----------------------------------------------------------

    def queued(self, now: float | None = None) -> None:
        """A sync was requested (``now``: seconds since the epoch; default the wall clock)."""
        self.last_queued.set(time.time() if now is None else now)

    def changes_seen(self, *, services: int = 0, endpoints: int = 0) -> None:
        """Service and EndpointSlice events received (every add, update and delete)."""
        if services:
            self.service_changes.inc(services)
        if endpoints:
            self.endpoint_changes.inc(endpoints)

    def changes_pending(self, *, services: int, endpoints: int) -> None:
        """How many Services and EndpointSlices have changes not yet synced."""
        self.service_changes_pending.set(services)
        self.endpoint_changes_pending.set(endpoints)

    def sync_finished(
        self, *, seconds: float, full: bool, ok: bool, now: float | None = None
    ) -> None:
        """One sync took ``seconds``; ``ok`` sets the last-synced timestamp to ``now``."""
        self.sync_duration.observe(seconds)
        (self.full_sync_duration if full else self.partial_sync_duration).observe(seconds)
        mode = "full" if full else "partial"
        self.syncs.labels(mode=mode, result="success" if ok else "failure").inc()
        if ok:
            self.last_sync.set(time.time() if now is None else now)

    def network_programmed(self, trigger_times: Iterable[float], programmed_at: float) -> int:
        """Observe, per applied EndpointSlice change, the time from its trigger time to
        ``programmed_at`` (both seconds since the epoch); returns how many were observed.

        A trigger time later than ``programmed_at`` (the controller's clock ahead of this
        node's) counts as 0 rather than being dropped, so the count stays one per change.
        """
        count = 0
        for trigger in trigger_times:
            self.network_programming.observe(max(0.0, programmed_at - trigger))
            count += 1
        return count

    def sync_failed(self, kind: str) -> None:
        self.sync_failures.labels(kind=kind).inc()

    def conntrack_reconciled(
        self, family: IPFamily, *, seconds: float, deleted: int, failed: bool
    ) -> None:
        """One family's stale UDP flow clean-up (udpflows.CleanupReport)."""
        label = f"IPv{family.value}"  # kube-proxy's ip_family values
        self.conntrack_cleanup_duration.labels(ip_family=label).observe(seconds)
        if deleted:
            self.conntrack_deleted.labels(ip_family=label).inc(deleted)
        if failed:
            self.conntrack_cleanup_failures.labels(ip_family=label).inc()

    def netlink_sent(self, count: int, *, subsystem: str) -> None:
        """``count`` netlink requests written (subsystem: ``ipvs`` or ``addresses``)."""
        if count:
            self.netlink_messages.labels(subsystem=subsystem).inc(count)

    def iptables_restore_failed(self) -> None:
        self.iptables_restore_failures.inc()

    def probe_answered(self, path: str, code: int) -> None:
        """For serve_health's ``on_probe``: counts /healthz and /livez answers by code."""
        family = self.healthz_answers if path == "/healthz" else self.livez_answers
        family.labels(code=str(code)).inc()


# --- per-Service traffic from the kernel's IPVS counters -----------------------------------


class ServicePortLabels(NamedTuple):
    """Who a virtual server belongs to: the labels of its traffic series."""

    namespace: str
    service: str
    port: str  # the Service port's name ("" when unnamed)
    protocol: str  # TCP, UDP or SCTP


def service_port_labels(
    service: Service, keys: Iterable[VirtualServerKey]
) -> dict[VirtualServerKey, ServicePortLabels]:
    """Label a Service's virtual servers (its ServiceState's keys) with their Service port,
    matched by protocol and port, or node port; a key matching no port is left out.

    The sync loop can keep one dict of these up to date per Service it syncs and give the
    collector its ``get``: a dict lookup is safe from the scrape thread while the loop
    replaces entries.
    """
    by_port: dict[tuple[str, int], ServicePortLabels] = {}
    for port in service.ports:
        labels = ServicePortLabels(service.namespace, service.name, port.name, port.protocol.value)
        by_port.setdefault((port.protocol.value, port.port), labels)
        if port.node_port:
            by_port.setdefault((port.protocol.value, port.node_port), labels)
    result: dict[VirtualServerKey, ServicePortLabels] = {}
    for key in keys:
        found = by_port.get((key.protocol.value, key.port))
        if found is not None:
            result[key] = found
    return result


_TRAFFIC_LABELS: Final = list(ServicePortLabels._fields)
_TRAFFIC_SERIES: Final = (
    ("connections", "Connections scheduled to the Service port's real servers"),
    ("packets_in", "Packets from clients to the Service port"),
    ("packets_out", "Packets from the Service port's real servers to clients"),
    ("bytes_in", "Bytes from clients to the Service port"),
    ("bytes_out", "Bytes from the Service port's real servers to clients"),
)


class IpvsTrafficCollector(Collector):
    """Per-Service traffic series from the kernel's IPVS counters, as kube-router exports.

    ``read()`` returns the counters of every virtual server in ONE IPVS dump (an
    IpvsDataplane's ``stats``; give the collector a socket of its own, it is called from
    HTTP threads). Reads are cached for ``max_age`` seconds of ``clock`` so that scrapes,
    however frequent, cannot hammer the kernel; concurrent scrapes share one read.
    ``labels(key)`` names the Service port of a virtual server, or None for one the proxy
    does not own (it is left out). A Service port reached through several virtual servers
    (ClusterIP, external IPs, both families) is summed into one series. The series are
    counters: the kernel's counts restart when a virtual server is re-created, which
    Prometheus' rate() treats as the counter reset it is. The kernel folds its per-CPU
    counts into what it reports every 2 seconds (its rate estimator), so a scrape may lag
    the traffic by that much.
    """

    def __init__(
        self,
        read: Callable[[], Mapping[VirtualServerKey, IpvsStats]],
        labels: Callable[[VirtualServerKey], ServicePortLabels | tuple[str, str, str, str] | None],
        *,
        max_age: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        prefix: str = "ipvsproxy_service",
    ) -> None:
        self._read = read
        self._labels = labels
        self._max_age = max_age
        self._clock = clock
        self._prefix = prefix
        self._lock = threading.Lock()
        self._cached: Mapping[VirtualServerKey, IpvsStats] | None = None
        self._read_at: float | None = None
        self.reads = 0  # kernel dumps made, for tests and debugging
        self.failures = 0
        self._log = RepeatedLog()

    def _stats(self) -> Mapping[VirtualServerKey, IpvsStats] | None:
        """The cached counters, read again when older than max_age; None if the last
        read failed (a failure is cached too: a broken kernel is not asked every scrape)."""
        with self._lock:
            now = self._clock()
            if self._read_at is not None and now - self._read_at < self._max_age:
                return self._cached
            self.reads += 1
            self._read_at = now
            try:
                self._cached = self._read()
            except IpvsProxyError as exc:
                self.failures += 1
                self._cached = None
                self._log.warning("cannot read IPVS traffic counters", error=str(exc))
            return self._cached

    def by_service(self) -> dict[ServicePortLabels, IpvsStats]:
        """The current counters summed per Service port (cached; see the class)."""
        stats = self._stats()
        summed: dict[ServicePortLabels, IpvsStats] = {}
        if not stats:
            return summed
        for key, counters in stats.items():
            named = self._labels(key)
            if named is None:
                continue
            labels = ServicePortLabels(*named)
            held = summed.get(labels)
            summed[labels] = counters if held is None else held + counters
        return summed

    def collect(self) -> Iterator[Metric]:
        summed = self.by_service()
        families = [
            CounterMetricFamily(f"{self._prefix}_{name}", text, labels=_TRAFFIC_LABELS)
            for name, text in _TRAFFIC_SERIES
        ]
        for labels, stats in sorted(summed.items()):
            values = (
                stats.connections,
                stats.packets_in,
                stats.packets_out,
                stats.bytes_in,
                stats.bytes_out,
            )
            for family, value in zip(families, values, strict=True):
                family.add_metric(list(labels), value)
        failures = CounterMetricFamily(
            f"{self._prefix}_stats_read_failures",
            "IPVS counter reads that failed (the traffic series are absent after one)",
            value=self.failures,
        )
        yield from families
        yield failures

    def describe(self) -> Iterator[Metric]:
        # Registering must not dump the kernel: describe without reading.
        for name, text in _TRAFFIC_SERIES:
            yield CounterMetricFamily(f"{self._prefix}_{name}", text, labels=_TRAFFIC_LABELS)
        yield CounterMetricFamily(f"{self._prefix}_stats_read_failures", "", value=0)


def serve_metrics(
    registry: CollectorRegistry, address: BindAddress | tuple[str, int]
) -> HttpServer:
    """Serve /metrics (text or OpenMetrics, as the scraper asks), /proxyMode and /healthz
    on ``address`` (kube-proxy's --metrics-bind-address). Close the server to stop."""

    def metrics(request: Request) -> Response:
        accept = next((v for k, v in request.headers.items() if k.lower() == "accept"), "")
        encoder, content_type = choose_encoder(accept)
        return Response(200, encoder(registry), content_type)

    def proxy_mode(_request: Request) -> Response:
        return Response(200, _PROXY_MODE)

    def ping(_request: Request) -> Response:
        return Response(200, b"ok")

    logger.debug("serving metrics", address=str(address))
    return HttpServer(
        address,
        {"/metrics": metrics, "/proxyMode": proxy_mode, "/healthz": ping},
        name="metrics",
    )
