"""Metrics scraped as text through the real HTTP server and parsed with prometheus_client."""

from __future__ import annotations

import ipaddress
import urllib.request
from collections.abc import Mapping

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ipvsproxy.core.model import IPFamily, IpvsStats, Protocol, VirtualServerKey
from ipvsproxy.errors import KernelError
from ipvsproxy.serve.metrics import (
    NETWORK_PROGRAMMING_BUCKETS,
    IpvsTrafficCollector,
    ProxyMetrics,
    ServicePortLabels,
    parse_trigger_time,
    serve_metrics,
)


def scrape(registry: CollectorRegistry) -> dict[str, list[Sample]]:
    """Every sample by sample name, as a scraper sees them over HTTP."""
    with (
        serve_metrics(registry, ("127.0.0.1", 0)) as server,
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics") as response,
    ):
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: Mapping[str, list[Sample]], name: str, **labels: str) -> float:
    matching = [
        s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matching) == 1, (name, labels, samples.get(name))
    return matching[0]


def test_kube_proxy_names_and_values() -> None:
    metrics = ProxyMetrics()
    metrics.queued(now=1_700_000_000.0)
    metrics.changes_seen(services=2, endpoints=5)
    metrics.changes_pending(services=1, endpoints=3)
    metrics.sync_finished(seconds=0.003, full=True, ok=True, now=1_700_000_001.5)
    metrics.sync_finished(seconds=0.0005, full=False, ok=True, now=1_700_000_002.0)
    metrics.sync_finished(seconds=20.0, full=False, ok=False, now=1_700_000_030.0)
    metrics.iptables_restore_failed()
    metrics.sync_failed("ipvs")
    metrics.sync_failed("ipvs")
    metrics.netlink_sent(120, subsystem="ipvs")
    metrics.netlink_sent(0, subsystem="addresses")
    metrics.probe_answered("/healthz", 503)
    metrics.probe_answered("/livez", 200)

    s = scrape(metrics.registry)
    assert value(s, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds") == 1_700_000_000.0
    # the failed sync does not move the last-synced timestamp
    assert value(s, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") == 1_700_000_002.0
    assert value(s, "kubeproxy_sync_proxy_rules_service_changes_total") == 2
    assert value(s, "kubeproxy_sync_proxy_rules_endpoint_changes_total") == 5
    assert value(s, "kubeproxy_sync_proxy_rules_service_changes_pending") == 1
    assert value(s, "kubeproxy_sync_proxy_rules_endpoint_changes_pending") == 3
    assert value(s, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total") == 1
    assert value(s, "kubeproxy_proxy_healthz_total", code="503") == 1
    assert value(s, "kubeproxy_proxy_livez_total", code="200") == 1

    every = "kubeproxy_sync_proxy_rules_duration_seconds"
    assert value(s, every + "_count") == 3
    assert value(s, every + "_sum") == pytest.approx(20.0035)
    # kube-proxy's ExponentialBuckets(0.001, 2, 15): 0.001 ... 16.384, then +Inf
    bounds = [b.labels["le"] for b in s[every + "_bucket"]]
    assert bounds[0] == "0.001" and bounds[-2] == "16.384" and bounds[-1] == "+Inf"
    assert len(bounds) == 16
    assert value(s, every + "_bucket", le="0.001") == 1
    assert value(s, every + "_bucket", le="0.004") == 2
    assert value(s, every + "_bucket", le="16.384") == 2
    assert value(s, "kubeproxy_sync_full_proxy_rules_duration_seconds_count") == 1
    assert value(s, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count") == 2

    assert value(s, "ipvsproxy_syncs_total", mode="full", result="success") == 1
    assert value(s, "ipvsproxy_syncs_total", mode="partial", result="success") == 1
    assert value(s, "ipvsproxy_syncs_total", mode="partial", result="failure") == 1
    assert value(s, "ipvsproxy_sync_failures_total", kind="ipvs") == 2
    assert value(s, "ipvsproxy_netlink_messages_sent_total", subsystem="ipvs") == 120
    assert [x.labels for x in s["ipvsproxy_netlink_messages_sent_total"]] == [{"subsystem": "ipvs"}]


def test_network_programming_latency_from_trigger_times() -> None:
    metrics = ProxyMetrics()
    programmed = 1_700_000_100.0
    triggers = [
        parse_trigger_time("2023-11-14T22:13:20Z"),  # 1_700_000_000: 100 s before
        parse_trigger_time("2023-11-14T22:14:59.7Z"),  # 0.3 s before
        parse_trigger_time("2023-11-14T22:15:05.000000001Z"),  # ahead of this node: 0
    ]
    assert None not in triggers
    assert metrics.network_programmed([t for t in triggers if t is not None], programmed) == 3
    s = scrape(metrics.registry)
    name = "kubeproxy_network_programming_duration_seconds"
    assert value(s, name + "_count") == 3
    assert value(s, name + "_bucket", le="0.0") == 1
    assert value(s, name + "_bucket", le="0.25") == 1
    assert value(s, name + "_bucket", le="0.5") == 2
    assert value(s, name + "_bucket", le="95.0") == 2
    assert value(s, name + "_bucket", le="100.0") == 3
    assert len(s[name + "_bucket"]) == len(NETWORK_PROGRAMMING_BUCKETS) + 1
    assert [float(b.labels["le"]) for b in s[name + "_bucket"]][-2:] == [300.0, float("inf")]


@pytest.mark.parametrize("text", [None, "", "yesterday", "2023-11-14T22:13:20", 7])
def test_bad_trigger_times_are_skipped(text: object) -> None:
    assert parse_trigger_time(text) is None


def test_each_instance_has_its_own_registry() -> None:
    first, second = ProxyMetrics(), ProxyMetrics()
    first.sync_failed("read")
    assert "ipvsproxy_sync_failures_total" not in scrape(second.registry)


def test_proxy_mode_and_ping() -> None:
    with serve_metrics(CollectorRegistry(), ("127.0.0.1", 0)) as server:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + "/proxyMode") as response:
            assert response.read() == b"ipvs"
        with urllib.request.urlopen(base + "/healthz") as response:
            assert response.read() == b"ok"


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def key(address: str, port: int, protocol: Protocol = Protocol.TCP) -> VirtualServerKey:
    return VirtualServerKey(ipaddress.ip_address(address), protocol, port)


WEB_V4, WEB_V6, WEB_EXTERNAL = key("10.96.0.10", 80), key("fd00::10", 80), key("192.0.2.1", 80)
DNS = key("10.96.0.53", 53, Protocol.UDP)
FOREIGN = key("192.0.2.99", 443)  # another tool's virtual server


def owner(k: VirtualServerKey) -> ServicePortLabels | None:
    if k in (WEB_V4, WEB_V6, WEB_EXTERNAL):
        return ServicePortLabels("shop", "web", "http", "TCP")
    if k == DNS:
        return ServicePortLabels("kube-system", "dns", "", "UDP")
    return None


def test_traffic_is_summed_per_service_port_and_cached() -> None:
    counters = {
        WEB_V4: IpvsStats(10, 100, 90, 6000, 50000),
        WEB_V6: IpvsStats(1, 6, 5, 400, 900),
        WEB_EXTERNAL: IpvsStats(2, 20, 10, 1000, 2000),
        DNS: IpvsStats(7, 7, 7, 420, 840),
        FOREIGN: IpvsStats(99, 99, 99, 99, 99),
    }
    clock = Clock()
    collector = IpvsTrafficCollector(lambda: dict(counters), owner, max_age=5, clock=clock)
    registry = CollectorRegistry()
    registry.register(collector)
    assert collector.reads == 0  # registering does not read the kernel

    s = scrape(registry)
    web = {"namespace": "shop", "service": "web", "port": "http", "protocol": "TCP"}
    assert value(s, "ipvsproxy_service_connections_total", **web) == 13
    assert value(s, "ipvsproxy_service_packets_in_total", **web) == 126
    assert value(s, "ipvsproxy_service_packets_out_total", **web) == 105
    assert value(s, "ipvsproxy_service_bytes_in_total", **web) == 7400
    assert value(s, "ipvsproxy_service_bytes_out_total", **web) == 52900
    assert value(s, "ipvsproxy_service_connections_total", service="dns", port="") == 7
    assert len(s["ipvsproxy_service_connections_total"]) == 2  # the foreign one is left out

    counters[DNS] = IpvsStats(8, 8, 8, 480, 960)
    clock.now += 4.9
    s = scrape(registry)
    assert value(s, "ipvsproxy_service_connections_total", service="dns") == 7  # cached
    clock.now += 0.1
    s = scrape(registry)
    assert value(s, "ipvsproxy_service_connections_total", service="dns") == 8
    assert collector.reads == 2


def test_a_failed_read_is_counted_and_shows_no_stale_series() -> None:
    calls = []

    def read() -> dict[VirtualServerKey, IpvsStats]:
        calls.append(1)
        if len(calls) == 2:
            raise KernelError("IPVS dump refused: Operation not permitted")
        return {DNS: IpvsStats(1, 1, 1, 1, 1)}

    clock = Clock()
    collector = IpvsTrafficCollector(read, owner, max_age=1, clock=clock)
    assert collector.by_service() == {
        ServicePortLabels("kube-system", "dns", "", "UDP"): IpvsStats(1, 1, 1, 1, 1)
    }
    clock.now += 1
    assert collector.by_service() == {}
    registry = CollectorRegistry()
    registry.register(collector)
    clock.now += 0.5  # a failure is cached as long as a success
    s = scrape(registry)
    assert value(s, "ipvsproxy_service_stats_read_failures_total") == 1
    assert "ipvsproxy_service_connections_total" not in s
    assert len(calls) == 2
    clock.now += 0.5
    s = scrape(registry)
    assert value(s, "ipvsproxy_service_stats_read_failures_total") == 1
    assert value(s, "ipvsproxy_service_connections_total", service="dns") == 1


def test_conntrack_clean_up_metrics() -> None:
    metrics = ProxyMetrics()
    metrics.conntrack_reconciled(IPFamily.V4, seconds=0.003, deleted=4, failed=False)
    metrics.conntrack_reconciled(IPFamily.V6, seconds=0.5, deleted=0, failed=True)
    samples = scrape(metrics.registry)
    duration = "kubeproxy_conntrack_reconciler_sync_duration_seconds"
    assert value(samples, f"{duration}_count", ip_family="IPv4") == 1
    assert value(samples, f"{duration}_bucket", ip_family="IPv4", le="0.004") == 1
    assert value(samples, f"{duration}_sum", ip_family="IPv6") == 0.5
    deleted = "kubeproxy_conntrack_reconciler_deleted_entries_total"
    assert value(samples, deleted, ip_family="IPv4") == 4
    assert not [s for s in samples.get(deleted, []) if s.labels["ip_family"] == "IPv6"]
    failures = "ipvsproxy_conntrack_reconciler_failures_total"
    assert value(samples, failures, ip_family="IPv6") == 1
    assert not [s for s in samples[failures] if s.labels["ip_family"] == "IPv4"]
