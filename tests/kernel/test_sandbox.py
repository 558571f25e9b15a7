"""The sandbox kernel itself: the subsystems the proxy drives exist, are isolated per test,
and carry real traffic through IPVS.

These run inside the user-mode-linux guest (see the test kit's sandbox/pytest_plugin.py), each
in its own network namespace.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from agentproc import tool
from ipvsproxy_testkit.sandbox.pods import PodNetwork

pytestmark = pytest.mark.kernel

CLUSTER_IP = "10.96.0.10"
CLUSTER_IP6 = "fd00:96::10"
BACKENDS = {f"backend{i}": f"10.244.1.{i}" for i in range(1, 5)}
BACKENDS6 = {f"backend{i}": f"fd00:10:244:1::{i}" for i in range(1, 3)}
BACKEND_PORT = 8080


def sysctl(name: str, value: str) -> None:
    with open(f"/proc/sys/{name.replace('.', '/')}", "w") as f:
        f.write(value)


def test_ipvs_is_available() -> None:
    assert os.path.exists("/proc/net/ip_vs")
    out = tool("ipvsadm", "-Ln")
    assert "IP Virtual Server" in out


def test_dummy_link_can_be_created() -> None:
    tool("ip", "link", "add", "kube-ipvs0", "type", "dummy")
    tool("ip", "addr", "add", f"{CLUSTER_IP}/32", "dev", "kube-ipvs0")
    assert "kube-ipvs0" in tool("ip", "-o", "link", "show", "type", "dummy")


@pytest.mark.parametrize("round_", [1, 2])
def test_ipset_is_isolated_per_test(round_: int) -> None:
    # Both rounds create the same set: the second would fail with "set already exists"
    # if the namespace of the first had leaked into it.
    assert tool("ipset", "list", "-n") == ""
    tool("ipset", "create", "KUBE-CLUSTER-IP", "hash:ip,port")
    tool("ipset", "add", "KUBE-CLUSTER-IP", f"{CLUSTER_IP},tcp:80")
    assert tool("ipset", "list", "-n").split() == ["KUBE-CLUSTER-IP"]


@pytest.mark.parametrize("round_", [1, 2])
def test_ipvs_and_links_are_isolated_per_test(round_: int) -> None:
    assert tool("ipvsadm", "-Sn") == ""
    assert tool("ip", "-o", "link", "show").count("\n") == 1  # lo only
    tool("ip", "link", "add", "kube-ipvs0", "type", "dummy")
    tool("ipvsadm", "-A", "-t", f"{CLUSTER_IP}:80", "-s", "rr")


def test_iptables_legacy_nat_chain() -> None:
    tool("iptables-legacy", "-t", "nat", "-N", "KUBE-X")
    tool(
        "iptables-legacy",
        "-t",
        "nat",
        "-A",
        "KUBE-X",
        "-m",
        "comment",
        "--comment",
        "x",
        "-j",
        "RETURN",
    )
    assert "-N KUBE-X" in tool("iptables-legacy", "-t", "nat", "-S")
    tool("ip6tables-legacy", "-t", "nat", "-N", "KUBE-X")


def test_iptables_matches_an_ipset() -> None:
    tool("ipset", "create", "KUBE-CLUSTER-IP", "hash:ip,port")
    tool(
        "iptables-legacy",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-m",
        "set",
        "--match-set",
        "KUBE-CLUSTER-IP",
        "dst,dst",
        "-j",
        "ACCEPT",
    )


def _cluster_ip_service(vip: str, backends: dict[str, str]) -> None:
    """What kube-proxy does for a ClusterIP service, by hand: address on a DOWN dummy
    interface, one IPVS virtual server per protocol, masquerading real servers."""
    if "kube-ipvs0" not in tool("ip", "-o", "link", "show"):
        tool("ip", "link", "add", "kube-ipvs0", "type", "dummy")
    if ":" in vip:
        tool("ip", "addr", "add", f"{vip}/128", "dev", "kube-ipvs0", "nodad")
        virtual = f"[{vip}]:80"
    else:
        tool("ip", "addr", "add", f"{vip}/32", "dev", "kube-ipvs0")
        virtual = f"{vip}:80"
    for proto in ("-t", "-u"):
        tool("ipvsadm", "-A", proto, virtual, "-s", "rr")
        for ip in backends.values():
            real = f"[{ip}]:{BACKEND_PORT}" if ":" in ip else f"{ip}:{BACKEND_PORT}"
            tool("ipvsadm", "-a", proto, virtual, "-r", real, "-m")


def test_round_robin_through_a_cluster_ip(pod_network: PodNetwork) -> None:
    for name, ip in BACKENDS.items():
        pod_network.add_pod(name, ip)
    pod_network.add_pod("client", "10.244.2.1")
    pod_network.serve(BACKEND_PORT, list(BACKENDS))
    sysctl("net.ipv4.vs.conntrack", "1")
    _cluster_ip_service(CLUSTER_IP, BACKENDS)
    assert "state DOWN" in tool("ip", "link", "show", "kube-ipvs0")

    tcp = pod_network.tcp_requests(CLUSTER_IP, 80, 40, source="client")
    udp = pod_network.udp_requests(CLUSTER_IP, 80, 40, source="client")

    expected = {name: 10 for name in BACKENDS}
    assert Counter(tcp) == expected
    assert Counter(udp) == expected


def test_round_robin_through_an_ipv6_cluster_ip(pod_network: PodNetwork) -> None:
    for name, ip in BACKENDS6.items():
        pod_network.add_pod(name, ip)
    pod_network.add_pod("client", "fd00:10:244:2::1")
    pod_network.serve(BACKEND_PORT)
    _cluster_ip_service(CLUSTER_IP6, BACKENDS6)

    tcp = pod_network.tcp_requests(CLUSTER_IP6, 80, 10, source="client")
    udp = pod_network.udp_requests(CLUSTER_IP6, 80, 10, source="client")

    expected = {name: 5 for name in BACKENDS6}
    assert Counter(tcp) == expected
    assert Counter(udp) == expected


def test_node_reaches_a_cluster_ip(pod_network: PodNetwork) -> None:
    pod_network.add_pod("backend1", BACKENDS["backend1"])
    pod_network.serve(BACKEND_PORT)
    _cluster_ip_service(CLUSTER_IP, {"backend1": BACKENDS["backend1"]})
    assert pod_network.tcp_requests(CLUSTER_IP, 80, 2) == ["backend1"] * 2
    assert pod_network.udp_requests(CLUSTER_IP, 80, 2) == ["backend1"] * 2


def test_pods_reach_each_other_directly(pod_network: PodNetwork) -> None:
    pod_network.add_pod("a", "10.244.1.1", "fd00:10:244:1::1")
    pod_network.add_pod("b", "10.244.1.2", "fd00:10:244:1::2")
    pod_network.serve(BACKEND_PORT, ["b"])
    assert pod_network.tcp_requests("10.244.1.2", BACKEND_PORT, 1, source="a") == ["b"]
    assert pod_network.udp_requests("fd00:10:244:1::2", BACKEND_PORT, 1, source="a") == ["b"]


@pytest.mark.kernel(netns=False)
def test_guest_root_namespace_on_request(kernel_netns: str | None) -> None:
    assert kernel_netns is None
    assert os.readlink("/proc/thread-self/ns/net") == os.readlink("/proc/1/ns/net")
