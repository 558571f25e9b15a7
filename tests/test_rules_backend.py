"""The rules backends behind one interface, on the fake kernel: the nftables backend
programs, repairs and switches as the iptables backend does, and never touches ipset
or iptables; choosing a backend at start."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
from pathlib import Path

import pytest
from agentrig import Harness
from builders import endpoint_slice, service

from ipvsproxy.agent.cleanup import cleanup
from ipvsproxy.agent.full_sync import full_sync, observe
from ipvsproxy.cli import main
from ipvsproxy.core import nft_rules
from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
from ipvsproxy.core.drift import find_drift, render_drift
from ipvsproxy.core.model import IPFamily, KernelState, RulesBackend, Service
from ipvsproxy.core.operations import (
    AddIPSetEntry,
    CreateIPSet,
    DeleteIPSetEntry,
    ReplaceNftTable,
    RestoreChains,
)
from ipvsproxy.core.render import render
from ipvsproxy.core.rules import CHAINS
from ipvsproxy.dataplane.fake import FakeIptables, FakeKernel, fake_dataplanes
from ipvsproxy.dataplane.nftables import nf_tables_present
from ipvsproxy.dataplane.rules_backend import choose_rules_backend
from ipvsproxy.dataplane.xtables_rules import XtablesRules, remove_leftovers, xtables_traces
from ipvsproxy.errors import ConfigError

NFT, IPT = RulesBackend.NFTABLES, RulesBackend.IPTABLES
WEB = service("web", "10.96.0.10")
DNS = service("dns", "fd00::a", ports=(("dns", "UDP", 53),))
SLICES = [
    endpoint_slice("web", "10.244.1.1", "10.244.2.1"),
    endpoint_slice("dns", "fd00:10::1", ports=(("dns", "UDP", 53),)),
]
NODE_PORT = dataclasses.replace(
    service("shop", "10.96.0.20"),
    type="NodePort",
    ports=tuple(dataclasses.replace(p, node_port=30080) for p in service("x", "1.1.1.1").ports),
)
SHOP_SLICE = endpoint_slice("shop", "10.244.3.1")
CLUSTER_YAML = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec:
    clusterIP: 10.96.0.10
    ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
"""
HOST = ipaddress.ip_address("192.168.1.10")  # NodePorts are served here


def host_kernel() -> FakeKernel:
    kernel = FakeKernel()
    kernel.links["eth0"] = {HOST}
    return kernel


def want(services: list[Service], backend: RulesBackend = NFT) -> KernelState:
    return desired_state(
        services,
        [*SLICES, SHOP_SLICE],
        node=NodeInfo(name="n1", local_addresses=frozenset({HOST})),
        settings=DesiredSettings(rules_backend=backend),
    )


def our_xtables(kernel: FakeKernel) -> int:
    """The proxy's ipsets and iptables chains in the fake kernel."""
    chains = sum(
        chain in kernel.tables[family][table]
        for family in IPFamily
        for table, names in CHAINS.items()
        for chain in names
    )
    return chains + len(kernel.sets)


def test_desired_state_has_the_fixed_nft_chains_and_no_iptables() -> None:
    state = want([WEB, DNS])
    assert state.iptables == {}
    assert set(state.nftables) == {IPFamily.V4, IPFamily.V6}
    assert state.nftables[IPFamily.V4] == nft_rules.desired_chains(
        IPFamily.V4, DesiredSettings().masquerade
    )
    # The rule count is fixed: the same chains with no Service at all.
    assert want([]).nftables == state.nftables
    assert want([WEB, DNS], IPT).nftables == {}


def test_first_sync_writes_each_table_in_one_transaction_and_no_ipset_or_iptables() -> None:
    kernel = host_kernel()
    dataplanes = fake_dataplanes(kernel, NFT)
    state = want([WEB, DNS, NODE_PORT])
    outcome = full_sync(state, dataplanes)
    assert outcome.result.ok, outcome.result.failures
    replaced = [op for op in outcome.plan.operations if isinstance(op, ReplaceNftTable)]
    assert [op.family for op in replaced] == [IPFamily.V4, IPFamily.V6]
    assert not any(
        isinstance(op, CreateIPSet | RestoreChains | AddIPSetEntry)
        for op in outcome.plan.operations
    ), "the sets came with their tables"
    assert kernel.nft_transactions == 1  # both tables in one transaction
    assert kernel.xtables_calls == 0 and not kernel.sets
    observed = observe(dataplanes, tuple(IPFamily))
    assert observed.nftables == state.nftables
    assert {name: entries for name, entries in observed.ipsets.items() if entries} == {
        name: entries for name, entries in state.ipsets.items() if entries
    }
    assert "10.96.0.10,tcp:80" in observed.ipsets["KUBE-CLUSTER-IP"]
    assert "30080" in observed.ipsets["KUBE-NODE-PORT-TCP"]


def test_an_unchanged_kernel_gets_no_write() -> None:
    kernel = FakeKernel()
    dataplanes = fake_dataplanes(kernel, NFT)
    assert full_sync(want([WEB, DNS]), dataplanes).result.ok
    transactions, writes = kernel.nft_transactions, kernel.writes
    again = full_sync(want([WEB, DNS]), dataplanes)
    assert again.result.ok and not again.plan
    assert (kernel.nft_transactions, kernel.writes) == (transactions, writes)


def test_drift_in_a_chain_rewrites_the_table_and_a_stray_element_is_deleted_alone() -> None:
    kernel = FakeKernel()
    dataplanes = fake_dataplanes(kernel, NFT)
    state = want([WEB, DNS])
    assert full_sync(state, dataplanes).result.ok
    chains = kernel.nft[IPFamily.V4][1]
    chains["forward"] = ()  # a chain flushed by hand
    kernel.nft[IPFamily.V6][0]["KUBE-6-CLUSTER-IP"].add("fd00::9,tcp:1")  # a stray element

    drifts = render_drift(find_drift(state, observe(dataplanes, state.rule_families)))
    assert "IPv4 ipvsproxy forward" in drifts and "fd00::9,tcp:1" in drifts

    outcome = full_sync(state, dataplanes)
    assert outcome.result.ok
    kinds = [type(op) for op in outcome.plan.operations]
    assert kinds == [ReplaceNftTable, DeleteIPSetEntry]
    assert outcome.plan.operations[0].family is IPFamily.V4  # type: ignore[union-attr]
    assert not full_sync(state, dataplanes).plan, "repaired"
    assert find_drift(state, observe(dataplanes, state.rule_families)) == []


def test_a_stale_element_of_a_rewritten_table_outlives_its_virtual_server() -> None:
    """A NodePort virtual server is owned through its set entry: the rewritten table keeps
    the entry, deleted only after the virtual server, as with ipsets."""
    kernel = host_kernel()
    dataplanes = fake_dataplanes(kernel, NFT)
    assert full_sync(want([WEB, NODE_PORT]), dataplanes).result.ok
    assert any(key.port == 30080 for key in kernel.services)
    kernel.nft[IPFamily.V4][1]["forward"] = ()
    outcome = full_sync(want([WEB]), dataplanes)
    assert outcome.result.ok
    ops = outcome.plan.operations
    replace = next(op for op in ops if isinstance(op, ReplaceNftTable))
    assert "30080" in dict(replace.sets)["KUBE-NODE-PORT-TCP"]
    assert DeleteIPSetEntry("KUBE-NODE-PORT-TCP", "30080") in ops
    assert ops.index(replace) < ops.index(DeleteIPSetEntry("KUBE-NODE-PORT-TCP", "30080"))
    assert "30080" not in kernel.nft[IPFamily.V4][0]["KUBE-NODE-PORT-TCP"]
    assert not any(key.port == 30080 for key in kernel.services)


def test_an_endpoint_change_is_a_partial_sync_of_elements_only() -> None:
    h = Harness(backend=NFT)
    h.start([WEB, DNS], SLICES)
    assert h.step()
    h.assert_in_step()
    writes = h.kernel.nft_transactions
    h.put(endpoint_slice("web", "10.244.1.1"))  # an endpoint leaves: IPVS only
    assert h.step()
    assert h.agent.last is not None and not h.agent.last.full
    assert h.kernel.nft_transactions == writes
    h.put(service("api", "10.96.0.30"))  # a new Service: its set elements, no table
    h.put(endpoint_slice("api", "10.244.4.1"))
    assert h.step()
    assert h.kernel.nft_transactions == writes + 1
    assert "10.96.0.30,tcp:80" in h.kernel.nft[IPFamily.V4][0]["KUBE-CLUSTER-IP"]
    h.remove(service("api", "10.96.0.30"))
    assert h.step()
    assert "10.96.0.30,tcp:80" not in h.kernel.nft[IPFamily.V4][0]["KUBE-CLUSTER-IP"]
    h.assert_in_step()
    assert h.kernel.xtables_calls == 0


@pytest.mark.parametrize(("before", "after"), [(IPT, NFT), (NFT, IPT)])
def test_switching_backends_removes_the_others_objects_after_the_first_sync(
    before: RulesBackend, after: RulesBackend
) -> None:
    kernel = FakeKernel()
    assert full_sync(want([WEB, DNS], before), fake_dataplanes(kernel, before)).result.ok
    assert (our_xtables(kernel) > 0) is (before is IPT) and bool(kernel.nft) is (before is NFT)
    h = Harness(kernel=kernel, backend=after)
    h.start([WEB, DNS], SLICES)
    assert h.step()
    assert h.agent.last is not None and h.agent.last.ok
    if after is NFT:
        assert our_xtables(kernel) == 0 and set(kernel.nft) == {IPFamily.V4, IPFamily.V6}
    else:
        assert kernel.nft == {} and our_xtables(kernel) > 0
    h.assert_in_step()


def test_nftables_leaves_a_node_without_ipsets_alone() -> None:
    """No trace of the iptables backend: its leftovers are not even looked for."""
    h = Harness(backend=NFT)
    h.start([WEB], SLICES[:1])
    assert h.step()
    assert h.kernel.xtables_calls == 0


@pytest.mark.parametrize("backend", [IPT, NFT])
def test_cleanup_removes_both_backends_objects(backend: RulesBackend) -> None:
    kernel = host_kernel()
    other = NFT if backend is IPT else IPT
    assert full_sync(want([WEB, NODE_PORT], other), fake_dataplanes(kernel, other)).result.ok
    assert full_sync(want([WEB, NODE_PORT], backend), fake_dataplanes(kernel, backend)).result.ok
    assert cleanup(fake_dataplanes(kernel, backend)) == []
    assert kernel.nft == {} and our_xtables(kernel) == 0
    assert kernel.services == {} and "kube-ipvs0" not in kernel.links


def test_plan_prints_what_nft_f_takes_and_show_what_nft_list_prints() -> None:
    state = want([WEB, DNS])
    payload = render(state, "nftables")
    assert payload.startswith("table ip ipvsproxy\ndelete table ip ipvsproxy\ntable ip ipvsproxy {")
    assert "elements = { 10.96.0.10 . tcp . 80 }" in payload
    listing = render(state, "nftables", listing=True)
    assert listing.startswith("table ip ipvsproxy {")
    v4 = listing.split("table ip6 ")[0]
    assert nft_rules.parse_listing(IPFamily.V4, v4).chains == state.nftables[IPFamily.V4]
    everything = render(state, None)
    assert "# nftables\n" in everything and "# iptables\n" not in everything
    assert "# ipsets\n" not in everything
    assert "# nftables\n" not in render(want([WEB, DNS], IPT), None)


@pytest.mark.parametrize(
    ("wanted", "xtables", "nft", "chosen"),
    [
        ("auto", True, True, IPT),  # adopts kube-proxy's state on a migrated node
        ("auto", True, False, IPT),
        ("auto", False, True, NFT),  # a node without iptables or ipset
        ("iptables", True, True, IPT),
        ("nftables", True, True, NFT),
    ],
)
def test_choosing_the_backend(wanted: str, xtables: bool, nft: bool, chosen: RulesBackend) -> None:
    choice = choose_rules_backend(wanted, xtables=lambda: xtables, nft=lambda: nft)
    assert choice.backend is chosen


@pytest.mark.parametrize(
    ("wanted", "xtables", "nft", "message"),
    [
        ("nftables", True, False, "rules backend nftables: no nft command found"),
        ("iptables", False, True, "rules backend iptables: no iptables and ipset commands found"),
        ("auto", False, False, "neither iptables and ipset nor nft"),
    ],
)
def test_a_backend_that_cannot_run_fails_with_one_line(
    wanted: str, xtables: bool, nft: bool, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        choose_rules_backend(wanted, xtables=lambda: xtables, nft=lambda: nft)


def test_plan_command_prints_the_nft_transaction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("nft") is None:
        pytest.skip("an explicit nftables choice needs nft on the PATH")
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(CLUSTER_YAML)
    args = ["plan", "-f", str(cluster), "--local-address", "192.168.1.10"]
    assert main([*args, "--rules-backend", "nftables", "--section", "nftables"]) == 0
    payload = capsys.readouterr().out
    assert payload.count("delete table") == 2
    assert "elements = { 10.96.0.10 . tcp . 80 }" in payload
    assert main([*args, "--rules-backend", "nftables", "--section", "iptables"]) == 0
    assert capsys.readouterr().out == ""
    # The configuration file's setting, when no flag is given.
    config = tmp_path / "config.yaml"
    config.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
        "ipvs: {rulesBackend: nftables}\n"
    )
    assert main([*args, "--config", str(config), "--section", "nftables"]) == 0
    assert capsys.readouterr().out == payload
    config.write_text(config.read_text().replace("nftables", "ipchains"))
    assert main([*args, "--config", str(config)]) == 2


def test_the_traces_that_let_a_backend_look_for_the_others_leftovers(tmp_path: Path) -> None:
    """Looking for the other backend's objects must not load its modules: the nftables
    backend runs iptables/ipset only where their modules are in the kernel already, the
    iptables backend runs nft only where that loads nothing."""
    assert xtables_traces(tmp_path) == []
    (tmp_path / "proc/net").mkdir(parents=True)
    (tmp_path / "proc/net/ip6_tables_names").write_text("")
    (tmp_path / "sys/module/ip_set").mkdir(parents=True)
    assert xtables_traces(tmp_path) == ["ip_set", "ip6_tables"]

    tree = tmp_path / "lib/modules" / os.uname().release
    assert nf_tables_present(tmp_path), "no module tree: nothing can be loaded"
    tree.mkdir(parents=True)
    assert not nf_tables_present(tmp_path)
    (tree / "modules.builtin").write_text("kernel/net/netfilter/nf_tables.ko\n")
    assert nf_tables_present(tmp_path)
    (tree / "modules.builtin").write_text("")
    (tmp_path / "sys/module/nf_tables").mkdir()
    assert nf_tables_present(tmp_path)


@pytest.mark.parametrize(
    ("traces", "chains_left", "sets_left"),
    [
        ([], True, True),  # nothing of iptables in the kernel: not even looked at
        (["ip_tables", "ip6_tables"], False, True),  # no ip_set: `ipset` would load it
        (["ip_set", "ip_tables"], False, False),
    ],
)
def test_iptables_leftovers_are_removed_as_far_as_their_modules_are_there(
    traces: list[str], chains_left: bool, sets_left: bool
) -> None:
    kernel = host_kernel()
    assert full_sync(want([WEB], IPT), fake_dataplanes(kernel, IPT)).result.ok
    calls = kernel.xtables_calls
    problems = remove_leftovers(
        lambda: XtablesRules(kernel, FakeIptables(kernel)),
        traces=lambda: traces,
        tools=lambda: True,
    )
    assert problems == []
    assert bool(kernel.sets) is sets_left
    assert (our_xtables(kernel) - len(kernel.sets) > 0) is chains_left
    assert (kernel.xtables_calls == calls) is (not traces)
