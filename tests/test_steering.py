"""External and load-balancer IPs steered to IPVS by port (ipvsproxy/core/steering.py):
the plans, ownership and failures against the fake kernel, partial syncs, cleanup, drift,
and the rtnetlink encoding of the rule and route. Real packets: tests/kernel/
test_neighbour_external_ip_kernel.py."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import struct

import pytest
from agentrig import Harness
from builders import endpoint_slice, service

from ipvsproxy.agent.cleanup import cleanup
from ipvsproxy.agent.full_sync import full_sync, observe
from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state, service_state
from ipvsproxy.core.drift import find_drift
from ipvsproxy.core.model import IPFamily, KernelState, Protocol, Service, VirtualServer
from ipvsproxy.core.operations import (
    AddIPSetEntry,
    AddVirtualServer,
    BindAddress,
    DeleteVirtualServer,
    EnsureSteering,
)
from ipvsproxy.core.partial_plan import AppliedCache, plan_partial
from ipvsproxy.core.rules import MasqueradeSettings
from ipvsproxy.core.steering import STEER_PRIORITY, STEER_TABLE, steer_mark
from ipvsproxy.dataplane.fake import FakeKernel, fake_dataplanes
from ipvsproxy.dataplane.interfaces import Dataplanes
from ipvsproxy.dataplane.steering import (
    RTM_NEWROUTE,
    RTM_NEWRULE,
    encode_route,
    encode_rule,
    parse_local_default,
    parse_rule,
)

ip = ipaddress.ip_address
NEIGHBOUR = ip("192.168.1.20")
SETTINGS = DesiredSettings()


def web(*external: str) -> Service:
    base = service("web", "10.96.0.10", "fd00::10")
    return dataclasses.replace(base, external_ips=tuple(ip(a) for a in external))


SLICES = [endpoint_slice("web", "10.244.1.1"), endpoint_slice("web", "fd00:244::1", name="w6")]


def want(services: list[Service]) -> KernelState:
    return desired_state(services, SLICES, node=NodeInfo(name="n1"), settings=SETTINGS)


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def dataplanes(kernel: FakeKernel) -> Dataplanes:
    return fake_dataplanes(kernel)


def test_external_ip_is_steered_not_bound(dataplanes: Dataplanes, kernel: FakeKernel) -> None:
    outcome = full_sync(want([web(str(NEIGHBOUR), "2001:db8::20")]), dataplanes)
    assert outcome.result.ok
    assert kernel.links["kube-ipvs0"] == {ip("10.96.0.10"), ip("fd00::10")}
    assert kernel.sets["KUBE-IPVS-STEERED"] == {"192.168.1.20,tcp:80"}
    assert kernel.sets["KUBE-6-IPVS-STEERED"] == {"2001:db8::20,tcp:80"}
    assert kernel.steer_rules == {IPFamily.V4: 0x2000, IPFamily.V6: 0x2000}
    assert {str(k.address) for k in kernel.services} == {
        "10.96.0.10",
        "fd00::10",
        "192.168.1.20",
        "2001:db8::20",
    }
    mangle = kernel.tables[IPFamily.V4]["mangle"]
    assert mangle["KUBE-IPVS-STEER"][0].endswith(
        "--match-set KUBE-IPVS-STEERED dst,dst -j MARK --set-xmark 0x2000/0x2000"
    )
    assert mangle["KUBE-IPVS-UNMARK"] == [
        "-m mark --mark 0x2000/0x2000 -j MARK --set-xmark 0x0/0x2000"
    ]
    # Everything reads back as planned.
    assert full_sync(want([web(str(NEIGHBOUR), "2001:db8::20")]), dataplanes).plan.operations == ()


def test_no_steering_rule_while_nothing_is_steered(
    dataplanes: Dataplanes, kernel: FakeKernel
) -> None:
    assert full_sync(want([web()]), dataplanes).result.ok
    assert kernel.steer_rules == {}
    assert kernel.tables[IPFamily.V4]["mangle"]["KUBE-IPVS-STEER"] == []


def test_steered_virtual_servers_are_owned_across_restarts(
    dataplanes: Dataplanes, kernel: FakeKernel
) -> None:
    full_sync(want([web(str(NEIGHBOUR))]), dataplanes)
    # Another tool's virtual server on the same address, another port: not ours.
    foreign = VirtualServer(NEIGHBOUR, Protocol.TCP, 8443)
    kernel.services[foreign.key] = foreign
    kernel.destinations[foreign.key] = {}
    # A new process knows only the kernel: the set entry says 192.168.1.20:80 is ours.
    outcome = full_sync(want([web()]), dataplanes)
    assert DeleteVirtualServer(VirtualServer(NEIGHBOUR, Protocol.TCP, 80).key) in (
        outcome.plan.operations
    )
    assert {(str(k.address), k.port) for k in kernel.services if k.address == NEIGHBOUR} == {
        ("192.168.1.20", 8443)
    }
    assert kernel.sets["KUBE-IPVS-STEERED"] == set()


def test_no_virtual_server_on_a_port_that_could_not_be_steered(
    dataplanes: Dataplanes, kernel: FakeKernel
) -> None:
    kernel.refuse = {AddIPSetEntry}
    outcome = full_sync(want([web(str(NEIGHBOUR))]), dataplanes)
    assert errno.EADDRNOTAVAIL in {f.errno for f in outcome.result.failures}
    assert NEIGHBOUR not in {k.address for k in kernel.services}
    kernel.refuse = set()
    assert full_sync(want([web(str(NEIGHBOUR))]), dataplanes).result.ok
    assert NEIGHBOUR in {k.address for k in kernel.services}


def test_failed_delete_keeps_the_steered_entry(dataplanes: Dataplanes, kernel: FakeKernel) -> None:
    full_sync(want([web(str(NEIGHBOUR))]), dataplanes)
    kernel.refuse = {DeleteVirtualServer}
    outcome = full_sync(want([web()]), dataplanes)
    assert outcome.result.removals_skipped
    assert kernel.sets["KUBE-IPVS-STEERED"] == {"192.168.1.20,tcp:80"}
    kernel.refuse = set()
    assert full_sync(want([web()]), dataplanes).result.ok
    assert NEIGHBOUR not in {k.address for k in kernel.services}
    assert kernel.sets["KUBE-IPVS-STEERED"] == set()


def test_refused_steering_rule_is_a_failure_and_retried(
    dataplanes: Dataplanes, kernel: FakeKernel
) -> None:
    kernel.refuse = {EnsureSteering}
    outcome = full_sync(want([web(str(NEIGHBOUR))]), dataplanes)
    assert [type(f.operation) for f in outcome.result.failures] == [EnsureSteering]
    kernel.refuse = set()
    assert [
        type(op) for op in full_sync(want([web(str(NEIGHBOUR))]), dataplanes).plan.operations
    ] == [EnsureSteering]
    assert kernel.steer_rules == {IPFamily.V4: 0x2000}


def test_node_address_as_external_ip_is_neither_bound_nor_steered() -> None:
    node = NodeInfo(name="n1", local_addresses=frozenset({NEIGHBOUR}))
    state = desired_state([web(str(NEIGHBOUR))], SLICES, node=node, settings=SETTINGS)
    assert state.ipsets["KUBE-IPVS-STEERED"] == frozenset()
    assert NEIGHBOUR not in state.addresses
    assert state.steering == frozenset()


def test_partial_sync_ensures_steering_when_a_port_is_steered() -> None:
    node = NodeInfo(name="n1")
    before = service_state(web(), SLICES, node=node, settings=SETTINGS)
    cache = AppliedCache.rebuild([("default/web", before)], want([web()]).iptables)
    after = service_state(web(str(NEIGHBOUR)), SLICES, node=node, settings=SETTINGS)
    ops = plan_partial(cache, {"default/web": after}, settings=SETTINGS).plan.operations
    assert EnsureSteering(IPFamily.V4, 0x2000) in ops
    assert not any(isinstance(op, BindAddress) for op in ops)
    steer = ops.index(EnsureSteering(IPFamily.V4, 0x2000))
    add = ops.index(AddIPSetEntry("KUBE-IPVS-STEERED", "192.168.1.20,tcp:80"))
    vs = next(i for i, op in enumerate(ops) if isinstance(op, AddVirtualServer))
    assert steer < vs and add < vs  # routed and owned before the virtual server exists
    # Dropping the external IP needs no steering operation.
    cache.commit(plan_partial(cache, {"default/web": after}, settings=SETTINGS).delta)
    ops = plan_partial(cache, {"default/web": before}, settings=SETTINGS).plan.operations
    assert not any(isinstance(op, EnsureSteering) for op in ops)


def test_cleanup_removes_steering_and_steered_virtual_servers(
    dataplanes: Dataplanes, kernel: FakeKernel
) -> None:
    full_sync(want([web(str(NEIGHBOUR), "2001:db8::20")]), dataplanes)
    assert cleanup(dataplanes) == []
    assert kernel.services == {}
    assert kernel.steer_rules == {}
    assert kernel.sets == {}


def test_drift_names_a_missing_steering_rule(dataplanes: Dataplanes, kernel: FakeKernel) -> None:
    desired = want([web(str(NEIGHBOUR))])
    full_sync(desired, dataplanes)
    kernel.steer_rules.clear()
    drift = find_drift(desired, observe(dataplanes, tuple(desired.iptables)))
    assert [(d.kind, d.what) for d in drift] == [
        ("steering rule", f"IPv4 fwmark 0x2000 lookup {STEER_TABLE} (and its route)")
    ]


def test_steer_mark_never_the_masquerade_bit() -> None:
    assert steer_mark(0x4000) == 0x2000
    assert steer_mark(0x2000) == 0x1000
    settings = DesiredSettings(masquerade=MasqueradeSettings(mark=0x2000))
    state = desired_state(
        [web(str(NEIGHBOUR))], SLICES, node=NodeInfo(name="n1"), settings=settings
    )
    assert state.steering == {(IPFamily.V4, 0x1000)}


@pytest.mark.parametrize("family", list(IPFamily))
def test_rule_and_route_encodings_read_back(family: IPFamily) -> None:
    rule = encode_rule(RTM_NEWRULE, family=family, mark=0x2000, seq=7)
    length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", rule)
    assert (length, kind, seq) == (len(rule), RTM_NEWRULE, 7)
    assert parse_rule(rule[16:]) == 0x2000
    route = encode_route(RTM_NEWROUTE, family=family, loopback=1, seq=8)
    assert parse_local_default(route[16:], 1)
    assert not parse_local_default(route[16:], 2)  # another interface


def test_other_rules_are_not_taken_for_ours() -> None:
    rule = bytearray(encode_rule(RTM_NEWRULE, family=IPFamily.V4, mark=0x2000, seq=1)[16:])
    # FRA_PRIORITY's value sits right after the 12-byte header and its 4-byte attribute header.
    struct.pack_into("=I", rule, 16, STEER_PRIORITY + 1)
    assert parse_rule(bytes(rule)) is None


def test_agent_steers_an_external_ip_added_and_removed_by_partial_syncs() -> None:
    h = Harness()
    base = service("web", "10.96.0.10")
    web_slice = endpoint_slice("web", "10.244.1.1")
    h.start([base], [web_slice])
    assert h.step()
    assert h.kernel.steer_rules == {}
    h.put(dataclasses.replace(base, external_ips=(NEIGHBOUR,)))
    assert h.step()
    assert h.agent.last is not None and not h.agent.last.full and h.agent.last.ok
    assert h.kernel.steer_rules == {IPFamily.V4: 0x2000}
    assert h.kernel.sets["KUBE-IPVS-STEERED"] == {"192.168.1.20,tcp:80"}
    h.assert_in_step()
    h.put(base)
    assert h.step()
    assert h.agent.last is not None and not h.agent.last.full
    assert NEIGHBOUR not in {k.address for k in h.kernel.services}
    assert h.kernel.sets["KUBE-IPVS-STEERED"] == set()
    # The policy rule stays: it matches nothing without entries; only cleanup removes it.
    assert h.kernel.steer_rules == {IPFamily.V4: 0x2000}
