"""`run`'s wiring in one process: the test API server, the real reflectors and client, the
agent on the fake kernel, and healthz / metrics over real HTTP (see daemonrig.py)."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator, Sequence
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from daemonrig import eps, free_port, http_json, running_daemon, svc, vs_key, wait_for
from ipvsproxy_testkit.testapi import TestAPIServer
from ipvsproxy_testkit.testapi.resources import ENDPOINT_SLICES, SERVICES

from ipvsproxy.agent.daemon import agent_settings
from ipvsproxy.config.settings import ProxyConfig
from ipvsproxy.core.desired import NodeInfo
from ipvsproxy.core.operations import IpvsOperation, OperationFailure
from ipvsproxy.dataplane.fake import FakeConntrack, FakeKernel


@pytest.fixture
def api() -> Iterator[TestAPIServer]:
    with TestAPIServer(bookmark_interval=0.2) as server:
        yield server


def test_run_follows_the_api_server_and_serves_health_and_metrics(
    api: TestAPIServer, tmp_path: Path
) -> None:
    api.store.create(SERVICES, "default", svc("web", "10.96.0.10"))
    with running_daemon(api, tmp_path) as daemon:
        kernel = daemon.kernel
        wait_for(lambda: len(kernel.services) == 1)
        api.store.create(
            ENDPOINT_SLICES, "default", eps("web-1", "web", "10.244.1.1", "10.244.2.2")
        )
        wait_for(lambda: sum(len(d) for d in kernel.destinations.values()) == 2)
        api.store.delete(SERVICES, "default", "web")
        wait_for(lambda: not kernel.services and not kernel.links["kube-ipvs0"])

        status, body = http_json(daemon.healthz_port, "/healthz")
        assert status == 200 and body["nodeEligible"] is True
        assert "kubeproxy_sync_partial_proxy_rules_duration_seconds_count" in daemon.metrics()
        url = f"http://127.0.0.1:{daemon.metrics_port}/proxyMode"
        with urllib.request.urlopen(url) as answer:
            assert answer.read() == b"ipvs"
        daemon.stop.set()
        daemon.thread.join(5)
        assert not daemon.thread.is_alive()  # it stopped by itself, with no sync left hanging


def test_run_serves_health_check_node_ports(api: TestAPIServer, tmp_path: Path) -> None:
    health_port = free_port()
    lb = svc("lb", "10.96.0.20")
    lb["spec"] |= {
        "type": "LoadBalancer",
        "externalTrafficPolicy": "Local",
        "healthCheckNodePort": health_port,
    }
    lb["spec"]["ports"][0]["nodePort"] = 30080
    api.store.create(SERVICES, "default", lb)
    local = eps("lb-1", "lb", "10.244.1.1")
    local["endpoints"][0]["nodeName"] = "n1"
    api.store.create(ENDPOINT_SLICES, "default", local)

    def answer() -> tuple[int, dict[str, Any]] | None:
        try:
            return http_json(health_port, "/")
        except OSError:
            return None

    with running_daemon(api, tmp_path):
        wait_for(lambda: answer() is not None)
        assert answer() == (
            200,
            {
                "service": {"namespace": "default", "name": "lb"},
                "localEndpoints": 1,
                "serviceProxyHealthy": True,
            },
        )
        local["endpoints"][0]["nodeName"] = "n2"  # the only endpoint moves off this node
        api.store.replace(ENDPOINT_SLICES, "default", "lb-1", local)
        wait_for(lambda: (answer() or (0, {}))[0] == 503)
        api.store.delete(SERVICES, "default", "lb")
        wait_for(lambda: answer() is None)


class HeldKernel(FakeKernel):
    """A fake kernel whose IPVS writes wait for `release` once `hold` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold, self.held, self.release = threading.Event(), threading.Event(), threading.Event()

    def execute(self, ops: Sequence[IpvsOperation]) -> list[OperationFailure]:
        if self.hold.is_set():
            self.held.set()
            self.release.wait(10)
        return super().execute(ops)


def test_shutdown_lets_the_sync_in_progress_finish(api: TestAPIServer, tmp_path: Path) -> None:
    kernel = HeldKernel()
    with running_daemon(api, tmp_path, kernel=kernel) as daemon:
        wait_for(lambda: "kube-ipvs0" in kernel.links, what="the first sync")
        kernel.hold.set()
        api.store.create(SERVICES, "default", svc("web", "10.96.0.10"))
        wait_for(kernel.held.is_set, what="a sync writing IPVS")
        daemon.stop.set()
        daemon.thread.join(2)
        assert daemon.thread.is_alive()  # still waiting for the sync, not cutting it
        kernel.release.set()
        daemon.thread.join(5)
        assert not daemon.thread.is_alive()
        assert vs_key("10.96.0.10") in kernel.services  # the sync finished


def test_run_reports_stale_udp_clean_ups_in_metrics(api: TestAPIServer, tmp_path: Path) -> None:
    dns = svc("dns", "10.96.0.53")
    dns["spec"]["ports"][0] |= {"name": "dns", "port": 53, "protocol": "UDP"}
    api.store.create(SERVICES, "default", dns)
    slice_ = eps("dns-1", "dns", "10.244.1.1")
    slice_["ports"] = [{"name": "dns", "port": 53, "protocol": "UDP"}]
    api.store.create(ENDPOINT_SLICES, "default", slice_)
    name = "kubeproxy_conntrack_reconciler_sync_duration_seconds_count"
    with running_daemon(api, tmp_path, conntrack=FakeConntrack()) as daemon:

        def scraped() -> str:
            try:
                return daemon.metrics()
            except OSError:  # not serving yet
                return ""

        wait_for(lambda: f'{name}{{ip_family="IPv4"}} 1.0' in scraped(), what=name)


def test_the_agent_takes_every_shared_setting_from_the_config() -> None:
    # One source: a field run reads from the config file reaches the sync loop unchanged.
    config = ProxyConfig(
        scheduler="lc",
        exclude_cidrs=(ip_network("10.200.0.0/16"),),
        sync_period=7.0,
        min_sync_period=2.0,
        graceful_termination_timeout=45.0,
        masquerade_all=True,
        masquerade_bit=3,
        cluster_cidrs=(ip_network("10.244.0.0/16"),),
        node_port_addresses=(ip_network("172.18.0.0/16"),),
    )
    node = NodeInfo(name="n7")
    settings = agent_settings(config, node=node)
    assert settings.node == node
    assert settings.exclude_cidrs == (ip_network("10.200.0.0/16"),)
    assert (settings.sync_period, settings.min_sync_period, settings.drain_timeout) == (
        7.0,
        2.0,
        45.0,
    )
    desired = settings.desired
    assert desired.scheduler == "lc"
    assert (desired.masquerade.mark, desired.masquerade.masquerade_all) == (8, True)
    assert desired.masquerade.cluster_cidrs == (ip_network("10.244.0.0/16"),)
    assert desired.node_ports.networks == (ip_network("172.18.0.0/16"),)


def test_cluster_cidrs_only_detect_local_traffic_in_cluster_cidr_mode() -> None:
    config = ProxyConfig(cluster_cidrs=(ip_network("10.244.0.0/16"),), detect_local_mode="NodeCIDR")
    masquerade = config.desired_settings().masquerade
    assert (masquerade.cluster_cidrs, masquerade.node_cidrs) == ((), True)
