"""iptables' nft backend in a kernel that has it: Debian's generic kernel under qemu.

Few and focused, since this guest is several times slower than user-mode-linux: the proxy
is run in-process (``cli.main``) rather than as a new Python process per command, and the
kubernetes client is never imported. Each test runs in a fresh network namespace, where
both backends start empty.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from agentproc import cluster_file, tool
from ipvsproxy_testkit.sandbox.pods import NODE_GATEWAY_V4, PodNetwork

from ipvsproxy.cli import main
from ipvsproxy.core.rules import CHAINS, JUMP_RULES
from ipvsproxy.dataplane.iptables import IptablesTool, detect_backend, parse_save

pytestmark = pytest.mark.kernel_qemu

NODE = "node-a"
SAVES = {
    "legacy": ("iptables-legacy-save", "ip6tables-legacy-save"),
    "nft": ("iptables-nft-save", "ip6tables-nft-save"),
}

CLUSTER = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec:
    type: NodePort
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10, "fd00:96::10"]
    ipFamilies: [IPv4, IPv6]
    ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-v4
    namespace: shop
    labels: {kubernetes.io/service-name: web}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: [10.244.1.1], nodeName: node-a}
  - {addresses: [10.244.2.1], nodeName: node-b}
"""


def saved(backend: str) -> list[dict[str, dict[str, tuple[str, ...]]]]:
    """Both families' tables as the backend's own iptables-save prints them."""
    return [parse_save(tool(save)) for save in SAVES[backend]]


def our_chains(tables: dict[str, dict[str, tuple[str, ...]]]) -> set[str]:
    return {
        f"{table}/{chain}"
        for table, chains in tables.items()
        for chain in chains
        if chain in CHAINS.get(table, ())
    }


def our_jumps(tables: dict[str, dict[str, tuple[str, ...]]]) -> int:
    return sum(tables.get(j.table, {}).get(j.chain, ()).count(j.rule) for j in JUMP_RULES)


@pytest.fixture
def cluster(tmp_path: Path) -> str:
    return cluster_file(tmp_path, CLUSTER)


@pytest.fixture
def restores(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every iptables-restore payload the adapters send, whichever backend."""
    sent: list[str] = []
    real: Callable[..., subprocess.CompletedProcess[str]] = IptablesTool._restore

    def counting(
        self: IptablesTool, family: object, payload: str
    ) -> subprocess.CompletedProcess[str]:
        sent.append(f"{self.backend}\n{payload}")
        return real(self, family, payload)

    monkeypatch.setattr(IptablesTool, "_restore", counting)
    return sent


def test_once_programs_exactly_the_planned_nft_rules_and_then_restores_nothing(
    cluster: str, restores: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["once", "-f", cluster, "--hostname-override", NODE]) == 0
    assert restores and all(r.startswith("nft\n") for r in restores)
    assert "iptables backend chosen" in capsys.readouterr().err

    assert main(["plan", "-f", cluster, "--hostname-override", NODE, "--section", "iptables"]) == 0
    v4_plan, v6_plan = capsys.readouterr().out.split("# ip6tables-restore (IPv6)\n")
    for kernel, plan in zip(saved("nft"), (parse_save(v4_plan), parse_save(v6_plan)), strict=True):
        assert our_chains(kernel) == our_chains(plan)
        for table, chains in plan.items():
            for chain, rules in chains.items():
                if chain.startswith("KUBE-"):
                    assert kernel[table][chain] == rules, (table, chain)
        for jump in JUMP_RULES:
            assert kernel[jump.table][jump.chain].count(jump.rule) == 1, jump
    assert all(our_chains(t) == set() for t in saved("legacy"))

    restores.clear()
    assert main(["once", "-f", cluster, "--hostname-override", NODE]) == 0
    assert restores == []
    assert "operations=0" in capsys.readouterr().err


def test_cluster_ip_and_node_port_traffic_masqueraded_by_nft_rules(
    cluster: str, pod_network: PodNetwork
) -> None:
    outside = pod_network.add_external_host("outside", "192.168.50.0/24")
    client = pod_network.add_pod("client", "10.244.0.2")
    backends = [pod_network.add_pod(f"web{i}", f"10.244.{i}.1") for i in (1, 2)]
    pod_network.serve(8080, backends, echo_client=True)
    assert main(["once", "-f", cluster, "--hostname-override", NODE]) == 0

    replies = pod_network.tcp_requests("10.96.0.10", 80, 6, source=client)
    assert sorted(r.split()[0] for r in replies) == ["web1"] * 3 + ["web2"] * 3
    (node_ip,) = outside.node_ips
    replies = pod_network.tcp_requests(node_ip, 30080, 6, source=outside)
    assert sorted(r.split()[0] for r in replies) == ["web1"] * 3 + ["web2"] * 3
    # externalTrafficPolicy Cluster: masqueraded, so the backends saw the node, not outside.
    assert {r.split()[1] for r in replies} == {NODE_GATEWAY_V4}
    # ...by the nft rule: its packet counter moved, and legacy holds no nat rule at all.
    listing = tool("iptables-nft", "-t", "nat", "-L", "KUBE-POSTROUTING", "-n", "-v", "-x")
    (masquerade,) = [line for line in listing.splitlines() if "requiring SNAT" in line]
    assert int(masquerade.split()[0]) > 0, listing
    assert not any(line.startswith("-A") for line in tool("iptables-legacy-save").splitlines())


def rules(backend: str, count: int) -> None:
    for i in range(count):
        tool(f"iptables-{backend}", "-A", "INPUT", "-s", f"192.0.2.{i + 1}", "-j", "ACCEPT")


def kubelet_chain(backend: str, name: str = "KUBE-IPTABLES-HINT", family: str = "iptables") -> None:
    tool(f"{family}-{backend}", "-t", "mangle", "-N", name)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param(lambda: None, "nft", id="nothing-anywhere"),
        pytest.param(lambda: rules("legacy", 2), "legacy", id="legacy-only"),
        pytest.param(lambda: rules("nft", 2), "nft", id="nft-only"),
        pytest.param(lambda: (rules("legacy", 3), rules("nft", 2)), "legacy", id="more-legacy"),
        pytest.param(lambda: (rules("legacy", 2), rules("nft", 3)), "nft", id="more-nft"),
        pytest.param(lambda: (rules("legacy", 2), rules("nft", 2)), "nft", id="tie"),
        pytest.param(
            lambda: (rules("nft", 5), kubelet_chain("legacy")), "legacy", id="hint-in-legacy"
        ),
        pytest.param(
            lambda: (rules("legacy", 5), kubelet_chain("nft", "KUBE-KUBELET-CANARY", "ip6tables")),
            "nft",
            id="canary-in-nft-ipv6",
        ),
        pytest.param(
            lambda: (kubelet_chain("legacy"), kubelet_chain("nft")), "nft", id="hints-in-both"
        ),
    ],
)
def test_backend_detection_follows_iptables_wrapper(
    setup: Callable[[], object], expected: str
) -> None:
    setup()
    assert detect_backend().backend == expected


def test_a_switch_leaves_the_old_backend_alone_and_cleanup_clears_both(cluster: str) -> None:
    assert main(["once", "-f", cluster, "--iptables-backend", "legacy"]) == 0
    legacy_chains = [our_chains(t) for t in saved("legacy")]
    assert all(legacy_chains)
    # Kubelet now uses nft (the node was upgraded): the next start follows it...
    kubelet_chain("nft")
    assert main(["once", "-f", cluster]) == 0
    assert [our_chains(t) for t in saved("nft")] == legacy_chains
    # ...and, like kube-proxy, leaves the old backend's chains where they were.
    assert [our_chains(t) for t in saved("legacy")] == legacy_chains
    assert all(our_jumps(t) == len(JUMP_RULES) for t in saved("legacy"))

    assert main(["cleanup"]) == 0
    for backend in SAVES:
        for tables in saved(backend):
            assert our_chains(tables) == set(), backend
            assert our_jumps(tables) == 0, backend
    # Kubelet's chain is kubelet's: cleanup keeps it.
    assert ":KUBE-IPTABLES-HINT" in tool("iptables-nft-save", "-t", "mangle")


def test_a_foreign_nft_base_chain_in_the_nat_table_does_not_blind_the_proxy(
    cluster: str, restores: list[str]
) -> None:
    assert main(["once", "-f", cluster]) == 0
    # A chain only nft can show, in the table iptables-nft shares (a firewall written in nft).
    tool("nft", "add", "chain", "ip", "nat", "site", "{ type nat hook postrouting priority 50; }")
    tool("nft", "add", "rule", "ip", "nat", "site", "meta", "l4proto", "tcp", "counter")
    text = tool("iptables-nft-save", "-t", "nat")
    assert "# Table `nat' contains incompatible base-chains" in text
    restores.clear()
    assert main(["once", "-f", cluster]) == 0
    assert restores == []  # our chains are still seen, so nothing is restored again
