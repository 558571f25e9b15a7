"""Frontends with real traffic from outside the cluster: NodePorts, external and
load-balancer IPs, source ranges, externalTrafficPolicy Local and affinity.

Each test builds pods and external hosts around the test's namespace (the node), programs
it with `ipvsproxy once` (which reads the node's addresses from the kernel) and sends TCP
and UDP from an external host's namespace.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from agentproc import RULES_BACKENDS, assert_rules_in, cli, cluster_file
from ipvsproxy_testkit.sandbox.netns import ip
from ipvsproxy_testkit.sandbox.pods import NODE_GATEWAY_V4, PodNetwork

from ipvsproxy.errors import SandboxError

pytestmark = pytest.mark.kernel

NODE = "node-a"


def slice_yaml(service: str, port: int, *endpoints: tuple[str, str]) -> str:
    items = "".join(f"  - {{addresses: [{a}], nodeName: {n}}}\n" for a, n in endpoints)
    return f"""\
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: {service}-1
    namespace: shop
    labels: {{kubernetes.io/service-name: {service}}}
  addressType: IPv4
  ports: [{{name: tcp, port: {port}, protocol: TCP}}, {{name: udp, port: {port}, protocol: UDP}}]
  endpoints:
{items}"""


def program(tmp_path: Path, items: str, *extra: str, rules_backend: str | None = None) -> None:
    """`ipvsproxy once` of the items; with rules_backend, that backend, checked."""
    cluster = cluster_file(tmp_path, "apiVersion: v1\nkind: List\nitems:\n" + items)
    chosen = ("--rules-backend", rules_backend) if rules_backend else ()
    cli("once", "-f", cluster, "--hostname-override", NODE, *extra, *chosen)
    if rules_backend:
        assert_rules_in(rules_backend)


@pytest.mark.parametrize("rules_backend", RULES_BACKENDS)
def test_node_port_from_outside_tcp_udp_and_affinity(
    tmp_path: Path, pod_network: PodNetwork, rules_backend: str
) -> None:
    outside = pod_network.add_external_host("outside", "192.168.50.0/24")
    backends = [pod_network.add_pod(f"web{i}", f"10.244.{i}.1") for i in (1, 2)]
    pod_network.serve(8080, backends, echo_client=True)
    program(
        tmp_path,
        """\
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec:
    type: NodePort
    clusterIP: 10.96.0.10
    ports:
    - {name: tcp, port: 80, protocol: TCP, nodePort: 30080}
    - {name: udp, port: 53, protocol: UDP, nodePort: 30053}
- apiVersion: v1
  kind: Service
  metadata: {name: sticky, namespace: shop}
  spec:
    type: NodePort
    clusterIP: 10.96.0.11
    sessionAffinity: ClientIP
    sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
    ports: [{name: tcp, port: 80, protocol: TCP, nodePort: 30081}]
"""
        + slice_yaml("web", 8080, ("10.244.1.1", NODE), ("10.244.2.1", "node-b"))
        + slice_yaml("sticky", 8080, ("10.244.1.1", NODE), ("10.244.2.1", "node-b")),
        rules_backend=rules_backend,
    )
    (node_ip,) = outside.node_ips
    ipvs = subprocess.run(["ipvsadm", "-Ln"], capture_output=True, text=True).stdout
    assert f"TCP  {node_ip}:30081 rr persistent 600" in ipvs

    for replies in (
        pod_network.tcp_requests(node_ip, 30080, 10, source=outside),
        pod_network.udp_requests(node_ip, 30053, 10, source=outside),
    ):
        names = sorted(reply.split()[0] for reply in replies)
        assert names == ["web1"] * 5 + ["web2"] * 5
        # externalTrafficPolicy Cluster: masqueraded, the backend sees the node.
        assert {reply.split()[1] for reply in replies} == {NODE_GATEWAY_V4}

    sticky = pod_network.tcp_requests(node_ip, 30081, 8, source=outside)
    assert len({reply.split()[0] for reply in sticky}) == 1, sticky


def test_local_policy_keeps_the_client_address(tmp_path: Path, pod_network: PodNetwork) -> None:
    outside = pod_network.add_external_host("outside", "192.168.50.0/24")
    backends = [pod_network.add_pod(f"web{i}", f"10.244.{i}.1") for i in (1, 2)]
    pod_network.serve(8080, backends, echo_client=True)
    program(
        tmp_path,
        """\
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec:
    type: NodePort
    clusterIP: 10.96.0.10
    externalTrafficPolicy: Local
    externalIPs: [203.0.113.7]
    ports:
    - {name: tcp, port: 80, protocol: TCP, nodePort: 30080}
    - {name: udp, port: 53, protocol: UDP, nodePort: 30053}
"""
        + slice_yaml("web", 8080, ("10.244.1.1", NODE), ("10.244.2.1", "node-b")),
    )
    (node_ip,) = outside.node_ips
    for replies in (
        pod_network.tcp_requests(node_ip, 30080, 4, source=outside),
        pod_network.udp_requests(node_ip, 30053, 4, source=outside),
        pod_network.tcp_requests("203.0.113.7", 80, 4, source=outside),
    ):
        # Only the local endpoint, and it sees the outside client itself.
        assert replies == [f"web1 {outside.ip}"] * 4


@pytest.mark.parametrize("rules_backend", RULES_BACKENDS)
def test_external_ip_and_load_balancer_source_ranges(
    tmp_path: Path, pod_network: PodNetwork, rules_backend: str
) -> None:
    allowed = pod_network.add_external_host("allowed", "192.168.50.0/24")
    refused = pod_network.add_external_host("refused", "192.168.60.0/24")
    backend = pod_network.add_pod("web1", "10.244.1.1")
    pod_network.serve(8080, [backend])
    program(
        tmp_path,
        f"""\
- apiVersion: v1
  kind: Service
  metadata: {{name: web, namespace: shop}}
  spec:
    type: LoadBalancer
    clusterIP: 10.96.0.10
    externalIPs: [203.0.113.7]
    loadBalancerSourceRanges: [{allowed.ip}/32]
    ports:
    - {{name: tcp, port: 80, protocol: TCP, nodePort: 30080}}
    - {{name: udp, port: 53, protocol: UDP, nodePort: 30053}}
  status:
    loadBalancer:
      ingress: [{{ip: 203.0.113.50}}, {{ip: 203.0.113.51, ipMode: Proxy}}]
"""
        + slice_yaml("web", 8080, ("10.244.1.1", NODE)),
        "--node-ip",
        allowed.node_ips[0],
        rules_backend=rules_backend,
    )
    # The external IP answers everyone; the load balancer only the allowed range.
    for host in (allowed, refused):
        assert pod_network.tcp_requests("203.0.113.7", 80, 2, source=host) == ["web1"] * 2
    assert pod_network.tcp_requests("203.0.113.50", 80, 2, source=allowed) == ["web1"] * 2
    assert pod_network.udp_requests("203.0.113.50", 53, 2, source=allowed) == ["web1"] * 2
    with pytest.raises(SandboxError, match="timed out"):
        pod_network.tcp_requests("203.0.113.50", 80, 1, source=refused, timeout=1.0)
    with pytest.raises(SandboxError, match="timed out"):
        pod_network.udp_requests("203.0.113.50", 53, 1, source=refused, timeout=0.5)
    # The node's IP is outside the ranges, so the node itself is refused too. The address
    # is steered, not bound (ipvsproxy/core/steering.py): the node reaches it through its
    # routes, as in iptables mode; this one stands in for a node's default route.
    ip("route", "add", "203.0.113.0/24", "via", refused.ip)
    with pytest.raises(SandboxError, match="timed out"):
        pod_network.tcp_requests("203.0.113.50", 80, 1, timeout=1.0)
    # ipMode Proxy ingress is not programmed.
    assert (
        "203.0.113.51"
        not in subprocess.run(["ipvsadm", "-Ln"], capture_output=True, text=True).stdout
    )
    # What the kernel holds reads back as planned: a second sync changes nothing.
    path = str(tmp_path / "cluster.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "ipvsproxy.cli", "once", "-f", path, "--hostname-override",
         NODE, "--node-ip", allowed.node_ips[0], "--rules-backend", rules_backend],
        capture_output=True, text=True,
    )  # fmt: skip
    assert "operations=0" in result.stderr, result.stderr


def test_health_check_node_port_from_outside(tmp_path: Path, pod_network: PodNetwork) -> None:
    """With INPUT dropping everything, the probe still gets through: KUBE-NODE-PORT (filter)
    accepts the ports in KUBE-HEALTH-CHECK-NODE-PORT."""
    import http.client
    import json

    from ipvsproxy_testkit.sandbox.netns import switch_netns

    from ipvsproxy.k8s.files import read_cluster
    from ipvsproxy.serve.service_health import HealthCheckServers, health_check_ports

    outside = pod_network.add_external_host("outside", "192.168.50.0/24")
    program(
        tmp_path,
        """\
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec:
    type: LoadBalancer
    clusterIP: 10.96.0.10
    externalTrafficPolicy: Local
    healthCheckNodePort: 31862
    ports: [{name: tcp, port: 80, protocol: TCP, nodePort: 30080}]
"""
        + slice_yaml("web", 8080, ("10.244.1.1", NODE), ("10.244.2.1", "node-b")),
    )
    assert (
        "add KUBE-HEALTH-CHECK-NODE-PORT 31862"
        in subprocess.run(["ipset", "save"], capture_output=True, text=True).stdout
    )
    subprocess.run(["iptables-legacy", "-P", "INPUT", "DROP"], check=True)
    cluster = read_cluster([str(tmp_path / "cluster.yaml")])
    wanted = health_check_ports(cluster.services, cluster.slices, node_name=NODE)
    assert wanted == {31862: ("shop/web", 1)}

    def probe() -> tuple[int, object]:
        with switch_netns(outside.netns):
            conn = http.client.HTTPConnection(outside.node_ips[0], 31862, timeout=5)
            try:
                conn.request("GET", "/")
                reply = conn.getresponse()
                return reply.status, json.loads(reply.read())
            finally:
                conn.close()

    servers = HealthCheckServers()
    try:
        servers.serve(wanted)
        status, body = probe()
        assert status == 200
        assert body["localEndpoints"] == 1  # type: ignore[index]
        servers.serve({31862: ("shop/web", 0)})
        assert probe()[0] == 503
    finally:
        servers.close()
