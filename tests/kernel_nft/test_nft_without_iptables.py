"""A node with neither iptables nor ipset (a PATH holding `nft` alone): `ipvsproxy once`
with the default rules backend (auto) takes nftables and serves ClusterIP, NodePort and
LoadBalancer traffic (source ranges enforced), and no iptables or ipset kernel module
gets loaded.

The qemu guest preloads those modules for the other tests; this test unloads them first
(it runs first in its guest, before any rule can hold them) and loads them again after.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ipvsproxy_testkit.sandbox.pods import NODE_GATEWAY_V4, PodNetwork

from ipvsproxy.errors import SandboxError

pytestmark = [pytest.mark.kernel_qemu, pytest.mark.first_in_guest]

NODE = "node-a"
# What iptables and ipset would load; the nftables backend needs none of them.
XTABLES = ("ip_tables", "ip6_tables", "ip_set")


def slice_yaml(name: str) -> str:
    return f"""\
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: {name}-1
    namespace: shop
    labels: {{kubernetes.io/service-name: {name}}}
  addressType: IPv4
  ports: [{{name: tcp, port: 8080, protocol: TCP}}]
  endpoints: [{{addresses: [10.244.1.1], nodeName: {NODE}}}, {{addresses: [10.244.2.1]}}]
"""


def cluster_yaml(allowed: str) -> str:
    """A NodePort Service, and a LoadBalancer one admitting `allowed` only."""
    return f"""\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {{name: web, namespace: shop}}
  spec:
    type: NodePort
    clusterIP: 10.96.0.10
    ports: [{{name: tcp, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}}]
- apiVersion: v1
  kind: Service
  metadata: {{name: lb, namespace: shop}}
  spec:
    type: LoadBalancer
    clusterIP: 10.96.0.11
    loadBalancerSourceRanges: [{allowed}/32]
    ports: [{{name: tcp, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30081}}]
  status:
    loadBalancer: {{ingress: [{{ip: 203.0.113.50}}]}}
{slice_yaml("web")}{slice_yaml("lb")}"""


def loaded() -> set[str]:
    """Which of XTABLES the kernel has loaded."""
    modules = {line.split()[0] for line in Path("/proc/modules").read_text().splitlines()}
    return modules & set(XTABLES)


def holders(module: str) -> list[str]:
    """The loaded modules that use `module`, users of users first."""
    folder = Path("/sys/module") / module / "holders"
    found: list[str] = []
    for holder in sorted(p.name for p in folder.iterdir()) if folder.is_dir() else ():
        found += [*holders(holder), holder]
    return found


@pytest.fixture
def without_xtables_modules() -> Iterator[None]:
    """The guest with none of XTABLES loaded; what was unloaded comes back afterwards."""
    removed: list[str] = []
    for module in sorted(loaded()):
        for name in [*holders(module), module]:
            if name in removed:
                continue
            result = subprocess.run(["rmmod", name], capture_output=True, text=True)
            assert result.returncode == 0, f"cannot unload {name}: {result.stderr.strip()}"
            removed.append(name)
    try:
        yield
    finally:
        helper = Path("/proc/sys/kernel/modprobe").read_text().strip()
        subprocess.run([helper, "-a", *reversed(removed)], capture_output=True, check=False)


def path_with_nft_only(folder: Path) -> str:
    """A PATH holding `nft` alone: no iptables in any of its names, no ipset. (Linking
    every other command of the PATH would cost minutes over the guest's 9p root.)"""
    folder.mkdir()
    nft = shutil.which("nft")
    assert nft is not None
    (folder / "nft").symlink_to(nft)
    return str(folder)


def test_a_node_without_iptables_and_ipset_serves_services_through_nftables(
    tmp_path: Path, pod_network: PodNetwork, without_xtables_modules: None
) -> None:
    assert loaded() == set(), "loaded before the test: the check below would mean nothing"
    allowed = pod_network.add_external_host("allowed", "192.168.50.0/24")
    refused = pod_network.add_external_host("refused", "192.168.60.0/24")
    client = pod_network.add_pod("client", "10.244.0.2")
    backends = [pod_network.add_pod(f"web{i}", f"10.244.{i}.1") for i in (1, 2)]
    pod_network.serve(8080, backends, echo_client=True)
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(cluster_yaml(allowed.ip))
    env = dict(os.environ, PATH=path_with_nft_only(tmp_path / "bin"))
    for name in ("iptables", "iptables-legacy", "iptables-nft", "ipset"):
        assert shutil.which(name, path=env["PATH"]) is None, name
    once = [sys.executable, "-m", "ipvsproxy.cli", "once", "-f", str(cluster)]
    once += ["--hostname-override", NODE, "--node-ip", allowed.node_ips[0]]
    result = subprocess.run(once, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "rules backend chosen" in result.stderr and "nftables" in result.stderr

    # ClusterIP from a pod, NodePort from outside (masqueraded: externalTrafficPolicy
    # Cluster), the load balancer from the allowed range only.
    replies = pod_network.tcp_requests("10.96.0.10", 80, 4, source=client)
    assert sorted(r.split()[0] for r in replies) == ["web1", "web1", "web2", "web2"]
    replies = pod_network.tcp_requests(allowed.node_ips[0], 30080, 4, source=allowed)
    assert sorted(replies) == [f"web1 {NODE_GATEWAY_V4}"] * 2 + [f"web2 {NODE_GATEWAY_V4}"] * 2
    replies = pod_network.tcp_requests("203.0.113.50", 80, 2, source=allowed)
    assert {r.split()[0] for r in replies} <= {"web1", "web2"} and len(replies) == 2
    with pytest.raises(SandboxError, match="timed out"):
        pod_network.tcp_requests("203.0.113.50", 80, 1, source=refused, timeout=1.0)
    assert loaded() == set(), "the nftables backend loaded an iptables or ipset module"
