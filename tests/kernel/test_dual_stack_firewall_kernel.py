"""loadBalancerSourceRanges on a dual-stack LoadBalancer: the IPv6 KUBE-IPVS-OUT-FILTER
rule that keeps the node's own traffic out reads back from ip6tables-save as written
(so a second sync restores nothing), and drops the node's packets while an allowed
outside host gets through, in both families.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from agentproc import cli
from ipvsproxy_testkit.sandbox.netns import ip
from ipvsproxy_testkit.sandbox.pods import PodNetwork

from ipvsproxy.errors import SandboxError

pytestmark = pytest.mark.kernel

NODE = "node-a"


def once(path: Path) -> str:
    return cli("once", "-f", str(path), "--hostname-override", NODE).stderr


def test_ipv6_out_filter_rule_reads_back_and_drops_the_nodes_traffic(
    tmp_path: Path, pod_network: PodNetwork
) -> None:
    allowed = pod_network.add_external_host("allowed", "192.168.50.0/24", "fd00:50::/64")
    backend = pod_network.add_pod("web1", "10.244.1.1", "fd00:244::1")
    pod_network.serve(8080, [backend])
    v4, v6 = allowed.ips
    slices = "".join(
        f"""\
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-{family}
    namespace: shop
    labels: {{kubernetes.io/service-name: web}}
  addressType: {family}
  ports: [{{name: tcp, port: 8080, protocol: TCP}}]
  endpoints: [{{addresses: ["{address}"], nodeName: {NODE}}}]
"""
        for family, address in (("IPv4", "10.244.1.1"), ("IPv6", "fd00:244::1"))
    )
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        f"""\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {{name: web, namespace: shop}}
  spec:
    type: LoadBalancer
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10, "fd00:96::10"]
    loadBalancerSourceRanges: [{v4}/32, "{v6}/128"]
    ports: [{{name: tcp, port: 80, protocol: TCP, nodePort: 30080}}]
  status:
    loadBalancer:
      ingress: [{{ip: 203.0.113.50}}, {{ip: "2001:db8::50"}}]
{slices}"""
    )
    once(cluster)
    planned = subprocess.run(
        [sys.executable, "-m", "ipvsproxy.cli", "plan", "-f", str(cluster),
         "--hostname-override", NODE, "--section", "iptables"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rule6 = (
        "-A KUBE-IPVS-OUT-FILTER -m addrtype --src-type LOCAL"
        " -m ipvs --vproto 6 --vaddr 2001:db8::50"
    )
    assert rule6 in planned
    saved6 = subprocess.run(
        ["ip6tables-legacy-save", "-t", "filter"], capture_output=True, text=True, check=True
    ).stdout
    assert f"{rule6} --vport 80 -j DROP" in saved6, saved6

    assert pod_network.tcp_requests("203.0.113.50", 80, 1, source=allowed) == ["web1"]
    assert pod_network.tcp_requests("2001:db8::50", 80, 1, source=allowed) == ["web1"]
    # The ingress IPs are steered, not bound (ipvsproxy/core/steering.py): the node reaches
    # them through its routes, as in iptables mode; these stand in for its default routes.
    ip("route", "add", "203.0.113.0/24", "via", v4)
    ip("-6", "route", "add", "2001:db8::/64", "via", v6)
    for address in ("203.0.113.50", "2001:db8::50"):  # the node is outside the ranges
        with pytest.raises(SandboxError, match="timed out"):
            pod_network.tcp_requests(address, 80, 1, timeout=1.0)

    # Both families' chains read back as written: nothing to restore.
    assert "operations=0" in once(cluster)
