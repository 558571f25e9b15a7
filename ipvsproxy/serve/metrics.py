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

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Final, NamedTuple

from loguru import logger
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ipvsproxy.config.settings import BindAddress
from ipvsproxy.core.model import IPFamily, IpvsStats, Service, VirtualServerKey
from ipvsproxy.errors import IpvsProxyError
from ipvsproxy.logs import RepeatedLog
from ipvsproxy.serve.httpserve import HttpServer, Request, Response
from ipvsproxy.version import build_info

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

# client-go's rest_client_request_duration_seconds buckets
REST_CLIENT_BUCKETS: Final = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)

_PROXY_MODE: Final = b"ipvs"


def family_label(family: IPFamily) -> str:
    """kube-proxy's ip_family label values: IPv4, IPv6."""
    return f"IPv{family.value}"


def register_runtime_collectors(registry: CollectorRegistry) -> None:
    """process_* (the process collector), python_info and python_gc_* (Python's
    counterparts of Go's go_* series), and kubernetes_build_info."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    info = build_info()
    Gauge(
        "kubernetes_build_info",
        "A metric with a constant '1' value labeled by major, minor, git version, git "
        "commit, git tree state, build date, Go version, and compiler from which "
        "Kubernetes was built, and platform on which it is running.",
        (
            "major",
            "minor",
            "git_version",
            "git_commit",
            "git_tree_state",
            "build_date",
            "go_version",
            "compiler",
            "platform",
        ),
        registry=registry,
    ).labels(
        major=info.major,
        minor=info.minor,
        git_version=info.git_version,
        git_commit=info.git_commit,
        git_tree_state=info.git_tree_state,
        build_date="",
        go_version=f"python{info.python_version}",
        compiler="cpython",
        platform=info.platform,
    ).set(1)


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
    """The sync loop's metrics in a registry of their own (``registry``).

    ``families``: the IP families the proxy programs; kube-proxy runs one proxier per
    family and labels its sync metrics ``ip_family`` (IPv4, IPv6), so a sync of both
    families here observes each family's series. ``runtime``: add the process_*,
    python_* and kubernetes_build_info collectors (tests leave them out for speed).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        families: Iterable[IPFamily] = (IPFamily.V4,),
        runtime: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.families = tuple(dict.fromkeys(families))
        self._family_labels = tuple(family_label(family) for family in self.families)
        r = self.registry

        def histogram(
            name: str, doc: str, *labels: str, buckets: tuple[float, ...] = SYNC_BUCKETS
        ) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(name, doc, labels, registry=r)

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=r)

        # kube-proxy's names, help texts and labels (v1.33 and later: ip_family).
        rules = "kubeproxy_sync_proxy_rules"
        family = "ip_family"
        self.sync_duration = histogram(
            f"{rules}_duration_seconds", "SyncProxyRules latency in seconds", family
        )
        self.full_sync_duration = histogram(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            family,
        )
        self.partial_sync_duration = histogram(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            family,
        )
        self.last_sync = gauge(
            f"{rules}_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            family,
        )
        self.last_queued = gauge(
            f"{rules}_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            family,
        )
        self.network_programming = histogram(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            family,
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
        self.no_local_endpoints_gauge = gauge(
            f"{rules}_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            "traffic_policy",
            family,
        )
        self.iptables_restore_failures = counter(
            f"{rules}_iptables_restore_failures",
            "Cumulative proxy iptables restore failures",
            family,
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
            family,
        )
        self.conntrack_deleted = counter(
            "kubeproxy_conntrack_reconciler_deleted_entries",
            "Cumulative conntrack flows deleted by conntrack reconciler",
            family,
        )
        # client-go's, for the agent's own requests to the API server.
        self.rest_requests = counter(
            "rest_client_requests",
            "Number of HTTP requests, partitioned by status code, method, and host.",
            "code",
            "method",
            "host",
        )
        self.rest_duration = histogram(
            "rest_client_request_duration_seconds",
            "Request latency in seconds. Broken down by verb, and host.",
            "verb",
            "host",
            buckets=REST_CLIENT_BUCKETS,
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
        # Every family's series from the start, as kube-proxy's per-family proxiers
        # register theirs: a dashboard sees 0, not "no data", before the first sync.
        for label in self._family_labels:
            for policy in ("internal", "external"):
                self.no_local_endpoints_gauge.labels(traffic_policy=policy, ip_family=label)
            self.iptables_restore_failures.labels(ip_family=label)
        if runtime:
            register_runtime_collectors(r)

    # --- what the sync loop calls -----------------------------------------------------------

    def queued(self, now: float | None = None) -> None:
        """A sync was requested (``now``: seconds since the epoch; default the wall clock)."""
        for label in self._family_labels:
            self.last_queued.labels(ip_family=label).set(time.time() if now is None else now)

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
        by_mode = self.full_sync_duration if full else self.partial_sync_duration
        for label in self._family_labels:
            self.sync_duration.labels(ip_family=label).observe(seconds)
            by_mode.labels(ip_family=label).observe(seconds)
            if ok:
                self.last_sync.labels(ip_family=label).set(time.time() if now is None else now)
        mode = "full" if full else "partial"
        self.syncs.labels(mode=mode, result="success" if ok else "failure").inc()

    def network_programmed(self, trigger_times: Iterable[float], programmed_at: float) -> int:
        """Observe, per applied EndpointSlice change, the time from its trigger time to
        ``programmed_at`` (both seconds since the epoch); returns how many were observed.

        A trigger time later than ``programmed_at`` (the controller's clock ahead of this
        node's) counts as 0 rather than being dropped, so the count stays one per change.
        """
        count = 0
        for trigger in trigger_times:
            for label in self._family_labels:
                self.network_programming.labels(ip_family=label).observe(
                    max(0.0, programmed_at - trigger)
                )
            count += 1
        return count

    def sync_failed(self, kind: str) -> None:
        self.sync_failures.labels(kind=kind).inc()

    def conntrack_reconciled(
        self, family: IPFamily, *, seconds: float, deleted: int, failed: bool
    ) -> None:
        """One family's stale UDP flow clean-up (udpflows.CleanupReport)."""
        label = family_label(family)
        self.conntrack_cleanup_duration.labels(ip_family=label).observe(seconds)
        if deleted:
            self.conntrack_deleted.labels(ip_family=label).inc(deleted)
        if failed:
            self.conntrack_cleanup_failures.labels(ip_family=label).inc()

    def netlink_sent(self, count: int, *, subsystem: str) -> None:
        """``count`` netlink requests written (subsystem: ``ipvs`` or ``addresses``)."""
        if count:
            self.netlink_messages.labels(subsystem=subsystem).inc(count)

    def iptables_restore_failed(self, family: IPFamily | None = None) -> None:
        """iptables-restore failed for ``family`` (None: every family)."""
        families = self._family_labels if family is None else (family_label(family),)
        for label in families:
            self.iptables_restore_failures.labels(ip_family=label).inc()

    def no_local_endpoints(self, counts: Mapping[tuple[str, IPFamily], int]) -> None:
        """Service ports with a Local policy and no local endpoint, by (policy, family);
        a missing key is 0."""
        for label, family in zip(self._family_labels, self.families, strict=True):
            for policy in ("internal", "external"):
                self.no_local_endpoints_gauge.labels(traffic_policy=policy, ip_family=label).set(
                    counts.get((policy, family), 0)
                )

    def api_request(self, *, method: str, host: str, code: str, seconds: float) -> None:
        """One request to the API server (``code``: the HTTP status, or "<error>")."""
        self.rest_requests.labels(code=code, method=method, host=host).inc()
        self.rest_duration.labels(verb=method, host=host).observe(seconds)

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
    registry: CollectorRegistry,
    address: BindAddress | tuple[str, int],
    *,
    configz: Mapping[str, object] | None = None,
) -> HttpServer:
    """Serve /metrics (text or OpenMetrics, as the scraper asks), /proxyMode and /healthz
    on ``address`` (kube-proxy's --metrics-bind-address), and with ``configz`` (the
    effective configuration, see config.kubeproxy_file.configz_document) /configz as
    kube-proxy's: compact JSON. Close the server to stop."""

    def metrics(request: Request) -> Response:
        accept = next((v for k, v in request.headers.items() if k.lower() == "accept"), "")
        encoder, content_type = choose_encoder(accept)
        return Response(200, encoder(registry), content_type)

    def proxy_mode(_request: Request) -> Response:
        return Response(200, _PROXY_MODE)

    def ping(_request: Request) -> Response:
        return Response(200, b"ok")

    routes = {"/metrics": metrics, "/proxyMode": proxy_mode, "/healthz": ping}
    if configz is not None:
        body = json.dumps(configz, separators=(",", ":")).encode()

        def show_config(_request: Request) -> Response:
            return Response(
                200, body, "application/json", headers={"X-Content-Type-Options": "nosniff"}
            )

        routes["/configz"] = show_config
    logger.debug("serving metrics", address=str(address))
    return HttpServer(address, routes, name="metrics")
