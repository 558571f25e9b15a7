"""Sync scenarios against the fake kernel: end state, idempotence, ownership, failures."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress

import pytest
from builders import endpoint_slice, service

from ipvsproxy.agent.cleanup import cleanup
from ipvsproxy.agent.full_sync import full_sync, observe
from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
from ipvsproxy.core.model import (
    EndpointSlice,
    KernelState,
    Protocol,
    RealServer,
    Service,
    ServicePort,
    VirtualServer,
)
from ipvsproxy.core.operations import (
    AddRealServer,
    AddVirtualServer,
    BindAddress,
    DeleteRealServer,
    DeleteVirtualServer,
    EnsureDummyInterface,
    UnbindAddress,
)
from ipvsproxy.dataplane.fake import FakeKernel, fake_dataplanes
from ipvsproxy.dataplane.interfaces import Dataplanes
from ipvsproxy.errors import KernelError


def want(
    services: list[Service], slices: list[EndpointSlice], scheduler: str = "rr"
) -> KernelState:
    return desired_state(
        services, slices, node=NodeInfo(name="n1"), settings=DesiredSettings(scheduler=scheduler)
    )


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def dataplanes(kernel: FakeKernel) -> Dataplanes:
    return fake_dataplanes(kernel)


WEB = [service("web", "10.96.0.10"), service("dns", "fd00::a", ports=(("dns", "UDP", 53),))]
WEB_SLICES = [
    endpoint_slice("web", "10.244.1.1", "10.244.2.1"),
    endpoint_slice("dns", "fd00:10::1", ports=(("dns", "UDP", 53),)),
]


def test_first_sync_programs_everything(dataplanes: Dataplanes, kernel: FakeKernel) -> None:
    desired = want(WEB, WEB_SLICES)
    outcome = full_sync(desired, dataplanes)
    assert outcome.result.ok
    seen = observe(dataplanes, tuple(desired.iptables))
    assert seen.virtual_servers == desired.virtual_servers
    assert seen.real_servers == desired.real_servers
    assert seen.addresses == desired.addresses
    assert {k: v for k, v in seen.ipsets.items()} == desired.ipsets
    assert kernel.links == {"kube-ipvs0": set(desired.addresses)}


def test_second_sync_writes_nothing(dataplanes: Dataplanes, kernel: FakeKernel) -> None:
    desired = want(WEB, WEB_SLICES)
    full_sync(desired, dataplanes)
    writes = kernel.writes
    outcome = full_sync(desired, dataplanes)
    assert not outcome.plan
    assert kernel.writes == writes


def test_endpoint_change_is_minimal(dataplanes: Dataplanes) -> None:
    full_sync(want(WEB, WEB_SLICES), dataplanes)
    changed = [
        endpoint_slice("web", "10.244.1.1", "10.244.3.1"),
        WEB_SLICES[1],
    ]
    outcome = full_sync(want(WEB, changed), dataplanes)
    key = next(k for k in want(WEB, changed).virtual_servers if k.protocol is Protocol.TCP)
    assert outcome.plan.operations == (
        AddRealServer(key, RealServer(ipaddress.ip_address("10.244.3.1"), 8080)),
        DeleteRealServer(key, RealServer(ipaddress.ip_address("10.244.2.1"), 8080).key),
    )


def test_removed_service_is_fully_cleaned(dataplanes: Dataplanes, kernel: FakeKernel) -> None:
    full_sync(want(WEB, WEB_SLICES), dataplanes)
    outcome = full_sync(want(WEB[:1], WEB_SLICES[:1]), dataplanes)
    kinds = {type(op) for op in outcome.plan.operations}
    assert {DeleteVirtualServer, UnbindAddress} <= kinds
    assert [k.address.version for k in kernel.services] == [4]
    assert kernel.links["kube-ipvs0"] == {ipaddress.ip_address("10.96.0.10")}
    assert kernel.sets["KUBE-6-CLUSTER-IP"] == set()


def test_restart_removes_stale_and_keeps_foreign(
    dataplanes: Dataplanes, kernel: FakeKernel
) -> None:
    full_sync(want(WEB, WEB_SLICES), dataplanes)
    foreign = VirtualServer(ipaddress.ip_address("192.0.2.1"), Protocol.TCP, 80)
    kernel.services[foreign.key] = foreign
    kernel.destinations[foreign.key] = {}
    # A new process knows nothing but the kernel: ownership comes from kube-ipvs0.
    full_sync(want([], []), dataplanes)
    assert list(kernel.services) == [foreign.key]
    assert kernel.links["kube-ipvs0"] == set()


def test_exclude_cidrs_protect_virtual_servers(dataplanes: Dataplanes, kernel: FakeKernel) -> None:
    full_sync(want(WEB, WEB_SLICES), dataplanes)
    full_sync(want([], []), dataplanes, exclude_cidrs=[ipaddress.ip_network("10.96.0.0/24")])
    assert [str(k.address) for k in kernel.services] == ["10.96.0.10"]


def test_real_server_removed_behind_our_back_is_restored(
    dataplanes: Dataplanes, kernel: FakeKernel
) -> None:
    desired = want(WEB, WEB_SLICES)
    full_sync(desired, dataplanes)
    key = next(iter(kernel.destinations))
    kernel.destinations[key].clear()
    full_sync(desired, dataplanes)
    assert kernel.destinations[key] == desired.real_servers[key]


def test_changed_scheduler_updates_in_place(dataplanes: Dataplanes, kernel: FakeKernel) -> None:
    full_sync(want(WEB, WEB_SLICES), dataplanes)
    outcome = full_sync(want(WEB, WEB_SLICES, scheduler="wrr"), dataplanes)
    assert {type(op).__name__ for op in outcome.plan.operations} == {"UpdateVirtualServer"}
    assert {s.scheduler for s in kernel.services.values()} == {"wrr"}


def test_bad_scheduler_fails_loudly_but_others_proceed(
    dataplanes: Dataplanes, kernel: FakeKernel
) -> None:
    outcome = full_sync(want(WEB, WEB_SLICES, scheduler="nosuch"), dataplanes)
    assert not outcome.result.ok
    assert len(outcome.result.failures) >= 2
    # Addresses, ipsets and chains were still programmed.
    assert kernel.links["kube-ipvs0"]
    assert kernel.sets["KUBE-CLUSTER-IP"] == {"10.96.0.10,tcp:80"}


def test_iptables_failure_keeps_stale_objects(dataplanes: Dataplanes, kernel: FakeKernel) -> None:
    full_sync(want(WEB, WEB_SLICES), dataplanes)
    kernel.fail_restore = True
    kernel.tables[next(iter(kernel.tables))]["nat"]["KUBE-SERVICES"].clear()  # force a restore
    outcome = full_sync(want([], []), dataplanes)
    assert outcome.result.removals_skipped
    assert len(kernel.services) == 2  # nothing removed while the rules are not in place


def test_cleanup_leaves_no_trace(dataplanes: Dataplanes, kernel: FakeKernel) -> None:
    full_sync(want(WEB, WEB_SLICES), dataplanes)
    assert cleanup(dataplanes) == []
    assert kernel.services == {}
    assert kernel.links == {}
    assert kernel.sets == {}
    for tables in kernel.tables.values():
        assert all(not chain.startswith("KUBE-") for chains in tables.values() for chain in chains)
        assert all(rules == [] for chains in tables.values() for rules in chains.values())


def test_failed_virtual_server_delete_keeps_its_address(
    dataplanes: Dataplanes, kernel: FakeKernel
) -> None:
    full_sync(want(WEB, WEB_SLICES), dataplanes)
    kernel.refuse = {DeleteVirtualServer}
    outcome = full_sync(want([], []), dataplanes)
    assert not outcome.result.ok
    # The address stays bound, so the virtual servers on it are still known to be ours...
    assert kernel.links["kube-ipvs0"] == {k.address for k in kernel.services}
    kernel.refuse = set()
    # ...and the next sync that can delete them does.
    assert full_sync(want([], []), dataplanes).result.ok
    assert kernel.services == {}
    assert kernel.links["kube-ipvs0"] == set()


def test_no_virtual_server_on_an_address_that_could_not_be_bound(
    dataplanes: Dataplanes, kernel: FakeKernel
) -> None:
    kernel.refuse = {EnsureDummyInterface}
    outcome = full_sync(want(WEB, WEB_SLICES), dataplanes)
    assert not outcome.result.ok
    assert kernel.services == {}
    kernel.refuse = {BindAddress}
    kernel.ensure_interface("kube-ipvs0")
    outcome = full_sync(want(WEB, WEB_SLICES), dataplanes)
    assert {f.errno for f in outcome.result.failures} == {errno.EPERM, errno.EADDRNOTAVAIL}
    assert kernel.services == {}
    kernel.refuse = set()
    assert full_sync(want(WEB, WEB_SLICES), dataplanes).result.ok
    assert len(kernel.services) == 2


def test_lost_kernel_contact_becomes_failures_not_a_crash(
    dataplanes: Dataplanes, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_sync(want(WEB, WEB_SLICES), dataplanes)

    def timeout(ops: object) -> list[object]:
        raise KernelError("no reply from the kernel's IPVS within 10 s", errno=errno.ETIMEDOUT)

    monkeypatch.setattr(kernel, "execute", timeout)
    outcome = full_sync(want([], []), dataplanes)
    assert outcome.result.failures
    assert all(f.errno == errno.ETIMEDOUT for f in outcome.result.failures)
    assert outcome.result.removals_skipped
    assert kernel.links["kube-ipvs0"]  # nothing unbound after the failure


def test_cleanup_keeps_the_interface_while_virtual_servers_remain(
    dataplanes: Dataplanes, kernel: FakeKernel
) -> None:
    full_sync(want(WEB, WEB_SLICES), dataplanes)
    kernel.refuse = {DeleteVirtualServer}
    problems = cleanup(dataplanes)
    assert any("kube-ipvs0 and the ipsets kept" in p for p in problems)
    assert "kube-ipvs0" in kernel.links
    assert kernel.sets  # the record of what is ours stays too
    assert all(
        rules == [] for t in kernel.tables.values() for c in t.values() for rules in c.values()
    )
    kernel.refuse = set()
    assert cleanup(dataplanes) == []
    assert kernel.links == {} and kernel.services == {}


# --- NodePorts: virtual servers on host addresses, owned through the ipsets -------------

HOST = ipaddress.ip_address("192.168.1.10")
NODE_PORTS = [
    dataclasses.replace(
        service("np", "10.96.0.20", ports=(("http", "TCP", 80), ("dns", "UDP", 53))),
        type="NodePort",
        ports=(
            ServicePort("http", Protocol.TCP, 80, node_port=30080),
            ServicePort("dns", Protocol.UDP, 53, node_port=30053),
        ),
    ),
    dataclasses.replace(
        service("sctp", "10.96.0.21", ports=(("s", "SCTP", 9),)),
        type="NodePort",
        ports=(ServicePort("s", Protocol.SCTP, 9, node_port=30009),),
    ),
]
NODE_PORT_SLICES = [
    endpoint_slice("np", "10.244.1.1", ports=(("http", "TCP", 8080), ("dns", "UDP", 53))),
    endpoint_slice("sctp", "10.244.1.2", ports=(("s", "SCTP", 9),)),
]


def want_on_host(services: list[Service], slices: list[EndpointSlice]) -> KernelState:
    node = NodeInfo(name="n1", local_addresses=frozenset({HOST}))
    return desired_state(services, slices, node=node, settings=DesiredSettings())


def on_host(kernel: FakeKernel) -> set[tuple[str, int]]:
    return {(k.protocol.value, k.port) for k in kernel.services if k.address == HOST}


def add_foreign_on_host(kernel: FakeKernel) -> None:
    """Another tool's virtual server on the host address, on a port that is no NodePort."""
    server = VirtualServer(HOST, Protocol.TCP, 443, scheduler="wlc")
    assert kernel.execute([AddVirtualServer(server)]) == []


def test_node_port_virtual_servers_of_a_service_gone_while_no_agent_ran_are_removed(
    dataplanes: Dataplanes, kernel: FakeKernel
) -> None:
    kernel.links["eth0"] = {HOST}
    add_foreign_on_host(kernel)
    assert full_sync(want_on_host(NODE_PORTS, NODE_PORT_SLICES), dataplanes).result.ok
    assert on_host(kernel) == {("TCP", 30080), ("UDP", 30053), ("SCTP", 30009), ("TCP", 443)}
    # A new agent, knowing nothing of what the last one applied, sees no Service at all:
    # everything the proxy made goes, the other tool's server stays.
    outcome = full_sync(want_on_host([], []), dataplanes)
    assert outcome.result.ok
    assert on_host(kernel) == {("TCP", 443)}
    assert not kernel.sets["KUBE-NODE-PORT-TCP"] and not kernel.sets["KUBE-NODE-PORT-SCTP-HASH"]


def test_node_port_virtual_server_on_an_address_the_host_lost_is_removed(
    dataplanes: Dataplanes, kernel: FakeKernel
) -> None:
    kernel.links["eth0"] = {HOST}
    assert full_sync(want_on_host(NODE_PORTS[:1], NODE_PORT_SLICES[:1]), dataplanes).result.ok
    kernel.links["eth0"] = set()
    desired = desired_state(
        NODE_PORTS[:1], NODE_PORT_SLICES[:1], node=NodeInfo(name="n1"), settings=DesiredSettings()
    )
    assert full_sync(desired, dataplanes).result.ok
    assert on_host(kernel) == set()


def test_failed_node_port_delete_keeps_the_set_entry_that_records_it(
    dataplanes: Dataplanes, kernel: FakeKernel
) -> None:
    kernel.links["eth0"] = {HOST}
    assert full_sync(want_on_host(NODE_PORTS, NODE_PORT_SLICES), dataplanes).result.ok
    kernel.refuse = {DeleteVirtualServer}
    outcome = full_sync(want_on_host([], []), dataplanes)
    assert not outcome.result.ok and outcome.result.removals_skipped
    assert "30080" in kernel.sets["KUBE-NODE-PORT-TCP"]
    assert f"{HOST},sctp:30009" in kernel.sets["KUBE-NODE-PORT-SCTP-HASH"]
    kernel.refuse = set()
    assert full_sync(want_on_host([], []), dataplanes).result.ok
    assert on_host(kernel) == set()
    assert not kernel.sets["KUBE-NODE-PORT-TCP"]


def test_cleanup_removes_node_port_virtual_servers_and_keeps_others(
    dataplanes: Dataplanes, kernel: FakeKernel
) -> None:
    kernel.links["eth0"] = {HOST}
    add_foreign_on_host(kernel)
    assert full_sync(want_on_host(NODE_PORTS, NODE_PORT_SLICES), dataplanes).result.ok
    assert cleanup(dataplanes) == []
    assert set(kernel.services) == {VirtualServer(HOST, Protocol.TCP, 443).key}
