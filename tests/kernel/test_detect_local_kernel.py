"""detectLocalMode with real traffic: pod traffic to a cluster IP keeps its source, other
traffic is masqueraded, in each of kube-proxy's four modes; and the rules each mode
writes read back from iptables-save (both families) as written, so a second sync
restores nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentproc import tool
from ipvsproxy_testkit.sandbox.pods import NODE_GATEWAY_V4, PodNetwork
from loguru import logger

from ipvsproxy.cli import EXIT_OK, main

pytestmark = pytest.mark.kernel

VIP = "10.96.7.1"
CLUSTER = f"""\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {{name: node-1}}
  spec: {{podCIDR: 10.244.0.0/16, podCIDRs: [10.244.0.0/16, "fd00:244::/56"]}}
- apiVersion: v1
  kind: Service
  metadata: {{name: web, namespace: shop}}
  spec:
    clusterIP: {VIP}
    clusterIPs: [{VIP}, "fd00:96::71"]
    ports: [{{name: p, port: 80, protocol: TCP, targetPort: 8080}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-1
    namespace: shop
    labels: {{kubernetes.io/service-name: web}}
  addressType: IPv4
  ports: [{{name: p, port: 8080, protocol: TCP}}]
  endpoints: [{{addresses: [10.244.1.1]}}]
"""


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def once(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """`ipvsproxy once` in this process (eight interpreter start-ups in the guest would
    cost more than the test); what it logged."""
    assert main(["once", *args]) == EXIT_OK
    return capsys.readouterr().err


def test_pod_traffic_keeps_its_source_in_every_detect_local_mode(
    tmp_path: Path, pod_network: PodNetwork, capsys: pytest.CaptureFixture[str]
) -> None:
    client = pod_network.add_pod("client", "10.244.0.2")
    web = pod_network.add_pod("web", "10.244.1.1")
    outside = pod_network.add_external_host("outside", "192.168.50.0/24")
    pod_network.serve(8080, [web], echo_client=True)
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(CLUSTER)
    modes = {
        "ClusterCIDR": ("clusterCIDR: 10.244.0.0/16,fd00:244::/56", "! -s 10.244.0.0/16 -m"),
        "NodeCIDR": ("", "! -s 10.244.0.0/16 -m"),  # the Node object's spec.podCIDRs
        # The client pod's link on the node is its "bridge"; every pod link starts "vp".
        "BridgeInterface": (
            f"detectLocal: {{bridgeInterface: {client.node_link}}}",
            f"! -i {client.node_link} -m",
        ),
        "InterfaceNamePrefix": ("detectLocal: {interfaceNamePrefix: vp}", "! -i vp+ -m"),
    }
    for mode, (field, rule) in modes.items():
        config = tmp_path / f"{mode}.yaml"
        config.write_text(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
            f"hostnameOverride: node-1\ndetectLocalMode: {mode}\n{field}\n"
        )
        once(capsys, "-f", str(cluster), "--config", str(config))
        saved = tool("iptables-legacy-save", "-t", "nat")
        assert f"-A KUBE-SERVICES {rule}" in saved, (mode, saved)
        rule6 = rule.replace("10.244.0.0/16", "fd00:244::/56")
        assert f"-A KUBE-SERVICES {rule6}" in tool("ip6tables-legacy-save", "-t", "nat"), mode
        assert pod_network.tcp_requests(VIP, 80, 1, source=client) == ["web 10.244.0.2"], mode
        assert pod_network.tcp_requests(VIP, 80, 1, source=outside) == [
            f"web {NODE_GATEWAY_V4}"  # masqueraded to the node's address towards the pod
        ], mode
        # What iptables-save prints (ip6tables' "! -s fd00:244::/56" too) is what was
        # written: the next sync changes nothing.
        assert "operations=0" in once(capsys, "-f", str(cluster), "--config", str(config))
