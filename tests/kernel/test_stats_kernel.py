"""IPVS traffic counters read by the adapter match what real traffic made, and ipvsadm.

A ClusterIP is programmed with `ipvsproxy once`; real TCP connections go from a client pod
through it to two backends; the adapter's counters are compared with the traffic sent
and with `ipvsadm -Ln --stats --exact`, read before and after ours.

The kernel counts per CPU and folds the counts into what it reports from its rate
estimator, every 2 seconds in Linux 6.1 (ip_vs_est.c, estimation_timer), so the tests
wait for the reported counts to settle before comparing.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest
from agentproc import cli, cluster_file, tool
from ipvsproxy_testkit.sandbox.pods import PodNetwork

from ipvsproxy.core.model import IpvsStats, Protocol, VirtualServerKey
from ipvsproxy.dataplane.ipvs import IpvsSocket
from ipvsproxy.serve.metrics import IpvsTrafficCollector, ServicePortLabels

pytestmark = pytest.mark.kernel

CLUSTER = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec:
    clusterIP: 10.96.0.10
    ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-1
    namespace: shop
    labels: {kubernetes.io/service-name: web}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints: [{addresses: [10.244.1.1]}, {addresses: [10.244.2.1]}]
"""
WEB = VirtualServerKey(ipaddress.ip_address("10.96.0.10"), Protocol.TCP, 80)
CONNECTIONS = 24


def ipvsadm_stats() -> dict[str, IpvsStats]:
    """`ipvsadm -Ln --stats --exact`: service line "TCP  10.96.0.10:80" -> counters."""
    text = tool("ipvsadm", "-Ln", "--stats", "--exact")
    services: dict[str, IpvsStats] = {}
    for line in text.splitlines()[3:]:
        if line.startswith("  -> "):
            continue
        protocol, address, *numbers = line.split()
        services[f"{protocol} {address}"] = IpvsStats(*(int(n) for n in numbers))
    return services


def settled(connections: int) -> IpvsStats:
    """ipvsadm's counters of the service once they show ``connections`` and stop moving."""
    deadline = time.monotonic() + 15
    previous = None
    while time.monotonic() < deadline:
        current = ipvsadm_stats()["TCP 10.96.0.10:80"]
        if current.connections >= connections and current == previous:
            return current
        previous = current
        time.sleep(0.5)  # the kernel's estimator runs every 2 s
    raise AssertionError(f"IPVS counters did not settle at {connections} connections: {previous}")


def test_adapter_counters_show_the_traffic_and_match_ipvsadm(
    tmp_path: Path, pod_network: PodNetwork
) -> None:
    client = pod_network.add_pod("client", "10.244.0.2")
    backends = [pod_network.add_pod(f"web{i}", f"10.244.{i}.1") for i in (1, 2)]
    pod_network.serve(8080, backends)
    cli("once", "-f", cluster_file(tmp_path, CLUSTER))
    with IpvsSocket() as ipvs:
        assert ipvs.stats() == {WEB: IpvsStats()}

        replies = pod_network.tcp_requests("10.96.0.10", 80, CONNECTIONS, source=client)
        assert sorted(set(replies)) == ["web1", "web2"]

        before = settled(CONNECTIONS)
        ours = ipvs.stats()[WEB]
        after = ipvsadm_stats()["TCP 10.96.0.10:80"]

    # Should a late packet still arrive, ours lies between two ipvsadm readings around it.
    for field in IpvsStats.__dataclass_fields__:
        assert getattr(before, field) <= getattr(ours, field) <= getattr(after, field), field
    assert ours.connections == CONNECTIONS
    # Each connection: at least SYN, ACK and FIN in; SYN-ACK, the reply and FIN out.
    assert ours.packets_in >= 3 * CONNECTIONS
    assert ours.packets_out >= 3 * CONNECTIONS
    # IPv4 + TCP headers are at least 40 bytes a packet; the replies carry "webN".
    assert ours.bytes_in >= 40 * ours.packets_in
    assert ours.bytes_out >= 40 * ours.packets_out + 4 * CONNECTIONS


def test_collector_reads_the_kernel_in_one_dump(tmp_path: Path, pod_network: PodNetwork) -> None:
    client = pod_network.add_pod("client", "10.244.0.2")
    backends = [pod_network.add_pod(f"web{i}", f"10.244.{i}.1") for i in (1, 2)]
    pod_network.serve(8080, backends)
    cli("once", "-f", cluster_file(tmp_path, CLUSTER))
    pod_network.tcp_requests("10.96.0.10", 80, 6, source=client)
    settled(6)
    labels = ServicePortLabels("shop", "web", "http", "TCP")
    with IpvsSocket() as ipvs:
        collector = IpvsTrafficCollector(
            ipvs.stats, lambda key: labels if key == WEB else None, clock=lambda: 0.0
        )
        summed = collector.by_service()
    assert list(summed) == [labels]
    assert summed[labels].connections == 6
    assert collector.reads == 1
