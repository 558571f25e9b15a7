"""`ipvsproxy once / show / cleanup` against the real kernel, checked with the real tools.

Each test runs in a fresh network namespace of the sandbox kernel (see the pytest plugin),
so IPVS, ipsets, iptables and links start empty.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from agentproc import RULES_BACKENDS, assert_rules_in, cli, cluster_file, tool
from ipvsproxy_testkit.sandbox.pods import PodNetwork

from ipvsproxy.agent.full_sync import full_sync
from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
from ipvsproxy.core.model import KernelState, Protocol, RealServer, RealServerKey, VirtualServerKey
from ipvsproxy.core.operations import AddRealServer, DeleteRealServer
from ipvsproxy.core.rules import JUMP_RULES
from ipvsproxy.dataplane.interfaces import Dataplanes
from ipvsproxy.dataplane.ipset import IPSetTool
from ipvsproxy.dataplane.iptables import IptablesTool, parse_save
from ipvsproxy.dataplane.ipvs import IpvsSocket
from ipvsproxy.dataplane.links import LinkTool
from ipvsproxy.dataplane.xtables_rules import XtablesRules
from ipvsproxy.k8s.files import read_cluster

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
    clusterIPs: [10.96.0.10, "fd00:96::10"]
    ports:
    - {name: http, port: 80, protocol: TCP, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP, targetPort: 8080}
- apiVersion: v1
  kind: Service
  metadata: {name: sticky, namespace: shop}
  spec:
    clusterIP: 10.96.0.11
    sessionAffinity: ClientIP
    ports: [{name: sctp, port: 5000, protocol: SCTP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-v4
    namespace: shop
    labels: {kubernetes.io/service-name: web}
  addressType: IPv4
  ports:
  - {name: http, port: 8080, protocol: TCP}
  - {name: dns, port: 8080, protocol: UDP}
  endpoints:
  - addresses: [ENDPOINT_1]
  - addresses: [ENDPOINT_2]
  - addresses: [10.244.9.9]
    conditions: {ready: false}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-v6
    namespace: shop
    labels: {kubernetes.io/service-name: web}
  addressType: IPv6
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints:
  - addresses: ["fd00:244::1"]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: sticky-1
    namespace: shop
    labels: {kubernetes.io/service-name: sticky}
  addressType: IPv4
  ports: [{name: sctp, port: 5000, protocol: SCTP}]
  endpoints:
  - addresses: [10.244.3.3]
"""


def web_cluster(
    directory: Path,
    endpoint_1: str = "10.244.1.1",
    endpoint_2: str = "10.244.2.1",
    name: str = "cluster.yaml",
) -> str:
    text = CLUSTER.replace("ENDPOINT_1", endpoint_1).replace("ENDPOINT_2", endpoint_2)
    return cluster_file(directory, text, name)


def ipvs_entries(text: str) -> set[str]:
    """`ipvsadm -Ln` output as a set: each service line, and each destination line
    prefixed with its service line (the same destination may serve several services)."""
    entries: set[str] = set()
    service = ""
    for line in text.splitlines()[3:]:
        if line.startswith("  -> "):
            entries.add(f"{service} | {line}")
        else:
            service = line
            entries.add(service)
    return entries


def ipvsadm_lines() -> set[str]:
    return ipvs_entries(tool("ipvsadm", "-Ln"))


def desired_for(path: str) -> KernelState:
    cluster = read_cluster([path])
    return desired_state(
        cluster.services, cluster.slices, node=NodeInfo(), settings=DesiredSettings()
    )


@contextmanager
def real_dataplanes() -> Iterator[Dataplanes]:
    links = LinkTool()
    try:
        with IpvsSocket() as ipvs:
            yield Dataplanes(
                ipvs=ipvs, links=links, rules=XtablesRules(IPSetTool(), IptablesTool("legacy"))
            )
    finally:
        links.close()


def test_once_programs_exactly_what_plan_prints(tmp_path: Path) -> None:
    cluster = web_cluster(tmp_path)
    cli("once", "-f", cluster)

    planned_ipvs = ipvs_entries(cli("plan", "-f", cluster, "--section", "ipvs").stdout)
    assert ipvsadm_lines() == planned_ipvs
    assert "SCTP 10.96.0.11:5000 rr persistent 10800" in planned_ipvs
    # 5 virtual servers (web: 2 ports x 2 families, sticky); endpoints: 2+2 IPv4, 1 IPv6, 1 SCTP
    assert len(planned_ipvs) == 5 + 6

    planned_sets = cli("plan", "-f", cluster, "--section", "ipsets").stdout
    saved = tool("ipset", "save")
    assert {x for x in saved.splitlines() if x.startswith("add ")} == {
        x for x in planned_sets.splitlines() if x.startswith("add ")
    }
    # The kernel appends its own bucketsize/initval to what we asked for.
    created = [x for x in saved.splitlines() if x.startswith("create ")]
    for line in planned_sets.splitlines():
        if line.startswith("create "):
            assert any(c.startswith(line) for c in created), line

    planned_addresses = set(cli("plan", "-f", cluster, "--section", "addresses").stdout.split())
    link = tool("ip", "-o", "addr", "show", "dev", "kube-ipvs0")
    bound = {field.split("/")[0] for line in link.splitlines() for field in line.split()[3:4]}
    assert bound == planned_addresses == {"10.96.0.10", "10.96.0.11", "fd00:96::10"}
    assert "state DOWN" in tool("ip", "link", "show", "kube-ipvs0")

    planned_rules = cli("plan", "-f", cluster, "--section", "iptables").stdout
    v4_plan, v6_plan = planned_rules.split("# ip6tables-restore (IPv6)\n")
    for save, plan in (("iptables-legacy-save", v4_plan), ("ip6tables-legacy-save", v6_plan)):
        kernel_tables = parse_save(tool(save))
        for table, chains in parse_save(plan).items():
            for chain, rules in chains.items():
                if chain.startswith("KUBE-"):
                    assert kernel_tables[table][chain] == rules, (save, chain)
        for jump in JUMP_RULES:
            assert jump.rule in kernel_tables[jump.table][jump.chain], (save, jump)


def test_second_sync_writes_nothing(tmp_path: Path) -> None:
    cluster = web_cluster(tmp_path)
    cli("once", "-f", cluster)
    before = ipvsadm_lines()
    with real_dataplanes() as dataplanes:
        outcome = full_sync(desired_for(cluster), dataplanes)
        assert outcome.plan.operations == ()
        assert dataplanes.ipvs.writes == 0  # type: ignore[attr-defined]
        assert dataplanes.rules.iptables.restores == 0  # type: ignore[attr-defined]
        assert dataplanes.rules.ipsets.restores == 0  # type: ignore[attr-defined]
        assert dataplanes.links.writes == 0  # type: ignore[attr-defined]
    assert ipvsadm_lines() == before
    # And a second process (a restart) finds nothing to do either.
    assert "operations=0" in cli("once", "-f", cluster).stderr


def test_changed_endpoint_gives_the_minimal_change(tmp_path: Path) -> None:
    cluster = web_cluster(tmp_path)
    cli("once", "-f", cluster)
    changed = web_cluster(tmp_path, endpoint_2="10.244.7.7", name="changed.yaml")
    with real_dataplanes() as dataplanes:
        outcome = full_sync(desired_for(changed), dataplanes)
    assert outcome.result.ok
    vip = ipaddress.ip_address("10.96.0.10")
    old, new = ipaddress.ip_address("10.244.2.1"), ipaddress.ip_address("10.244.7.7")
    ops = set(outcome.plan.operations)
    expected: set[object] = set()
    for protocol, port in (Protocol.TCP, 80), (Protocol.UDP, 53):
        key = VirtualServerKey(vip, protocol, port)
        expected |= {
            AddRealServer(key, RealServer(new, 8080)),
            DeleteRealServer(key, RealServerKey(old, 8080)),
        }
    assert ops == expected
    lines = ipvsadm_lines()
    assert not any("10.244.2.1:8080" in line for line in lines)
    assert sum("10.244.7.7:8080" in line for line in lines) == 2


def test_real_server_deleted_behind_our_back_is_restored(tmp_path: Path) -> None:
    cluster = web_cluster(tmp_path)
    cli("once", "-f", cluster)
    expected = ipvsadm_lines()
    tool("ipvsadm", "-d", "-t", "10.96.0.10:80", "-r", "10.244.1.1:8080")
    assert ipvsadm_lines() != expected
    cli("once", "-f", cluster)
    assert ipvsadm_lines() == expected


def test_foreign_virtual_servers_survive_and_cleanup_leaves_no_trace(tmp_path: Path) -> None:
    tool("ipvsadm", "-A", "-t", "192.0.2.1:443", "-s", "wlc")
    cluster = web_cluster(tmp_path)
    cli("once", "-f", cluster)
    # The Services go away: ours are removed, the foreign one stays.
    empty = tmp_path / "empty.yaml"
    empty.write_text("apiVersion: v1\nkind: List\nitems: []\n")
    cli("once", "-f", str(empty))
    assert ipvsadm_lines() == {"TCP  192.0.2.1:443 wlc"}

    cli("once", "-f", cluster)
    cli("cleanup")
    assert ipvsadm_lines() == {"TCP  192.0.2.1:443 wlc"}
    assert subprocess.run(["ip", "link", "show", "kube-ipvs0"], capture_output=True).returncode != 0
    assert "KUBE-" not in tool("ipset", "list", "-n")
    assert "KUBE-" not in tool("iptables-legacy-save")
    assert "KUBE-" not in tool("ip6tables-legacy-save")


def test_show_reports_the_owned_state(tmp_path: Path) -> None:
    tool("ipvsadm", "-A", "-t", "192.0.2.1:443", "-s", "wlc")
    cluster = web_cluster(tmp_path)
    cli("once", "-f", cluster)
    shown = ipvs_entries(cli("show", "--section", "ipvs").stdout)
    planned = ipvs_entries(cli("plan", "-f", cluster, "--section", "ipvs").stdout)
    assert shown == planned
    assert (
        cli("show", "--section", "addresses").stdout
        == cli("plan", "-f", cluster, "--section", "addresses").stdout
    )

    def adds(text: str) -> set[str]:
        return {line for line in text.splitlines() if line.startswith("add ")}

    shown_sets = cli("show", "--section", "ipsets").stdout
    assert adds(shown_sets) == adds(cli("plan", "-f", cluster, "--section", "ipsets").stdout)
    # The iptables section is the same restore input that plan prints, read back.
    assert (
        cli("show", "--section", "iptables").stdout
        == cli("plan", "-f", cluster, "--section", "iptables").stdout
    )


@pytest.mark.parametrize("rules_backend", RULES_BACKENDS)
def test_tcp_and_udp_traffic_spread_round_robin(tmp_path: Path, rules_backend: str) -> None:
    with PodNetwork() as network:
        client = network.add_pod("client", "10.244.0.2")
        backends = [network.add_pod(f"web{i}", f"10.244.{i}.1") for i in range(1, 5)]
        network.serve(8080, backends)
        text = CLUSTER.replace("ENDPOINT_1", "10.244.1.1").replace("ENDPOINT_2", "10.244.2.1")
        text = text.replace(
            "  - addresses: [10.244.9.9]\n    conditions: {ready: false}\n",
            "  - addresses: [10.244.3.1]\n  - addresses: [10.244.4.1]\n",
        )
        cli("once", "-f", cluster_file(tmp_path, text), "--rules-backend", rules_backend)
        assert_rules_in(rules_backend)

        for replies in (
            network.tcp_requests("10.96.0.10", 80, 40, source=client),
            network.udp_requests("10.96.0.10", 53, 40, source=client),
        ):
            counts = {name: replies.count(name) for name in sorted(set(replies))}
            assert counts == {"web1": 10, "web2": 10, "web3": 10, "web4": 10}


DUAL_STACK = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: dual, namespace: shop}
  spec:
    clusterIP: 10.96.1.1
    clusterIPs: [10.96.1.1, "fd00:96::1:1"]
    ipFamilies: [IPv4, IPv6]
    ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: dual-v4
    namespace: shop
    labels: {kubernetes.io/service-name: dual}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints: [{addresses: [10.244.1.1]}, {addresses: [10.244.2.1]}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: dual-v6
    namespace: shop
    labels: {kubernetes.io/service-name: dual}
  addressType: IPv6
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints: [{addresses: ["fd00:244:1::1"]}, {addresses: ["fd00:244:2::1"]}]
"""


def test_dual_stack_service_serves_both_families(tmp_path: Path) -> None:
    with PodNetwork() as network:
        client = network.add_pod("client", "10.244.0.2", "fd00:244::2")
        backends = [network.add_pod(f"web{i}", f"10.244.{i}.1", f"fd00:244:{i}::1") for i in (1, 2)]
        network.serve(8080, backends)
        cli("once", "-f", cluster_file(tmp_path, DUAL_STACK))
        for vip in ("10.96.1.1", "fd00:96::1:1"):
            replies = network.tcp_requests(vip, 80, 20, source=client)
            assert sorted(replies) == ["web1"] * 10 + ["web2"] * 10, vip


def test_kernel_refusal_is_reported_and_the_rest_still_programmed(tmp_path: Path) -> None:
    # `once` refuses a scheduler the kernel lacks before touching anything (see
    # test_backends_kernel.py), so the refusal is provoked through sync itself here.
    cluster = web_cluster(tmp_path)
    objects = read_cluster([cluster])
    unknown = desired_state(
        objects.services,
        objects.slices,
        node=NodeInfo(),
        settings=DesiredSettings(scheduler="nosuch"),
    )
    with real_dataplanes() as dataplanes:
        result = full_sync(unknown, dataplanes).result
    refused = {type(f.operation).__name__ for f in result.failures}
    assert refused == {"AddVirtualServer", "AddRealServer"}
    assert any("10.96.0.10" in str(f.operation) for f in result.failures)
    # Everything the kernel accepted is in place: addresses, ipsets and chains.
    link = tool("ip", "-o", "addr", "show", "dev", "kube-ipvs0")
    assert "10.96.0.10/32" in link
    assert "add KUBE-CLUSTER-IP 10.96.0.10,tcp:80" in tool("ipset", "save")
    assert "-A KUBE-SERVICES" in tool("iptables-legacy-save", "-t", "nat")
    # With a scheduler the kernel knows, the next sync completes the job.
    cli("once", "-f", cluster)
    assert ipvsadm_lines() == ipvs_entries(cli("plan", "-f", cluster, "--section", "ipvs").stdout)


def test_ipvs_timeouts_from_the_configuration(tmp_path: Path) -> None:
    cluster = web_cluster(tmp_path)
    config = tmp_path / "kpc.yaml"
    config.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
        "mode: ipvs\nipvs: {tcpTimeout: 10m, tcpFinTimeout: 30s}\n"
    )
    cli("once", "-f", cluster, "--config", str(config))
    # udpTimeout unset (0) keeps the kernel's 300 s, as `ipvsadm --set` does.
    assert "Timeout (tcp tcpfin udp): 600 30 300" in tool("ipvsadm", "-L", "--timeout")
    with IpvsSocket() as ipvs:
        assert ipvs.timeouts() == (600, 30, 300)
        assert ipvs.set_timeouts((600, 30, 0)) is False  # already so: nothing written
        assert ipvs.writes == 0
