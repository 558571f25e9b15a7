"""Partial syncs: table-driven diffs of a few Services against what was last applied.

The central check: starting from a full sync of "before", applying the partial plan of
the Services that changed leaves the fake kernel exactly as a full sync of "after" does.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence

import pytest
from builders import endpoint_slice, service

from ipvsproxy.agent.apply import apply_plan
from ipvsproxy.agent.full_sync import observe
from ipvsproxy.core import ipsets
from ipvsproxy.core.desired import (
    DesiredSettings,
    NodeInfo,
    ServiceState,
    index_slices,
    merge_service_states,
    service_state,
)
from ipvsproxy.core.full_plan import plan_sync
from ipvsproxy.core.model import EndpointSlice, IPFamily, KernelState, RealServer, Service
from ipvsproxy.core.operations import (
    AddIPSetEntry,
    AddRealServer,
    AddVirtualServer,
    BindAddress,
    DeleteIPSetEntry,
    DeleteRealServer,
    DeleteVirtualServer,
    Operation,
    RestoreChains,
    UnbindAddress,
    UpdateRealServer,
    UpdateVirtualServer,
)
from ipvsproxy.core.partial_plan import AppliedCache, plan_partial
from ipvsproxy.dataplane.fake import FakeKernel, fake_dataplanes
from ipvsproxy.dataplane.interfaces import Dataplanes

NODE = NodeInfo(name="n1")
SETTINGS = DesiredSettings()


def states(services: Sequence[Service], slices: Sequence[EndpointSlice]) -> dict[str, ServiceState]:
    by_service = index_slices(slices)
    return {
        s.key: service_state(s, by_service.get(s.key, ()), node=NODE, settings=SETTINGS)
        for s in services
    }


def full_sync(
    kernel: FakeKernel, services: Sequence[Service], slices: Sequence[EndpointSlice]
) -> AppliedCache:
    dp = dataplanes(kernel)
    per_service = states(services, slices)
    desired = merge_service_states(per_service.items(), settings=SETTINGS)
    result = apply_plan(plan_sync(desired, observe(dp, tuple(desired.iptables))), dp)
    assert result.ok
    return AppliedCache.rebuild(per_service.items(), desired.iptables)


def dataplanes(kernel: FakeKernel) -> Dataplanes:
    return fake_dataplanes(kernel)


def kernel_state(kernel: FakeKernel) -> KernelState:
    """What the kernel holds, less real servers at weight 0: a partial sync only quiesces
    a leaving TCP server (graceful termination); a full sync deletes it once idle."""
    state = observe(dataplanes(kernel), tuple(IPFamily))
    return dataclasses.replace(
        state,
        real_servers={
            key: {k: rs for k, rs in servers.items() if rs.weight}
            for key, servers in state.real_servers.items()
        },
    )


def partial(
    before: tuple[list[Service], list[EndpointSlice]],
    after: tuple[list[Service], list[EndpointSlice]],
) -> tuple[list[Operation], FakeKernel, AppliedCache]:
    """Full sync of before, then a partial sync of the Services that differ; returns the
    partial plan's operations after checking the kernel equals a full sync of after."""
    kernel = FakeKernel()
    cache = full_sync(kernel, *before)
    old, new = states(*before), states(*after)
    keys = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    # Unchanged Services may be passed too: they must produce nothing.
    keys |= set(list(new)[:1])
    planned = plan_partial(cache, {k: new.get(k) for k in keys}, settings=SETTINGS)
    result = apply_plan(planned.plan, dataplanes(kernel))
    assert result.ok, result.failures
    cache.commit(planned.delta)

    reference = FakeKernel()
    rebuilt = full_sync(reference, *after)
    assert kernel_state(kernel) == kernel_state(reference)
    assert cache == rebuilt
    return list(planned.plan.operations), kernel, cache


WEB = service("web", "10.96.0.10")
WEB_SLICE = endpoint_slice("web", "10.244.1.1", "10.244.2.1")
DNS = service("dns", "10.96.0.53", ports=(("dns", "UDP", 53),))
DNS_SLICE = endpoint_slice("dns", "10.244.1.9", ports=(("dns", "UDP", 53),))


def test_one_endpoint_added_is_one_real_server() -> None:
    grown = endpoint_slice("web", "10.244.1.1", "10.244.2.1", "10.244.3.1")
    ops, _, _ = partial(([WEB, DNS], [WEB_SLICE, DNS_SLICE]), ([WEB, DNS], [grown, DNS_SLICE]))
    assert len(ops) == 1 and isinstance(ops[0], AddRealServer)


def test_one_tcp_endpoint_removed_is_one_real_server_quiesced() -> None:
    shrunk = endpoint_slice("web", "10.244.1.1")
    ops, kernel, _ = partial(([WEB], [WEB_SLICE]), ([WEB], [shrunk]))
    assert [type(op) for op in ops] == [UpdateRealServer]
    weights = {
        str(k.address): rs.weight for k, rs in next(iter(kernel.destinations.values())).items()
    }
    assert weights == {"10.244.1.1": 1, "10.244.2.1": 0}
    # The next full sync reads the (zero) connection counters and deletes it.
    full_sync(kernel, [WEB], [shrunk])
    assert [str(k.address) for d in kernel.destinations.values() for k in d] == ["10.244.1.1"]


def test_tcp_endpoint_removed_without_graceful_termination_is_deleted_at_once() -> None:
    kernel = FakeKernel()
    cache = full_sync(kernel, [WEB], [WEB_SLICE])
    shrunk = states([WEB], [endpoint_slice("web", "10.244.1.1")])
    planned = plan_partial(cache, shrunk, settings=SETTINGS, drain_timeout=0.0)
    assert [type(op) for op in planned.plan.operations] == [DeleteRealServer]
    assert apply_plan(planned.plan, dataplanes(kernel)).ok
    assert [str(k.address) for d in kernel.destinations.values() for k in d] == ["10.244.1.1"]


def test_one_udp_endpoint_removed_is_one_real_server_delete() -> None:
    grown = endpoint_slice("dns", "10.244.1.9", "10.244.2.9", ports=(("dns", "UDP", 53),))
    ops, _, _ = partial(([DNS], [grown]), ([DNS], [DNS_SLICE]))
    assert [type(op) for op in ops] == [DeleteRealServer]


def test_new_service_binds_adds_entries_then_servers() -> None:
    ops, _, _ = partial(([DNS], [DNS_SLICE]), ([DNS, WEB], [DNS_SLICE, WEB_SLICE]))
    assert [type(op) for op in ops] == [
        BindAddress,
        AddIPSetEntry,
        AddIPSetEntry,
        AddVirtualServer,
        AddRealServer,
        AddRealServer,
    ]


def test_deleted_service_removes_its_server_then_address_then_entries() -> None:
    ops, _, _ = partial(([DNS, WEB], [DNS_SLICE, WEB_SLICE]), ([DNS], [DNS_SLICE]))
    assert [type(op) for op in ops] == [
        DeleteVirtualServer,
        UnbindAddress,
        DeleteIPSetEntry,
        DeleteIPSetEntry,
    ]


def test_first_cluster_ip_makes_set_nonempty_and_restores_chains() -> None:
    ops, kernel, _ = partial(([], []), ([WEB], [WEB_SLICE]))
    restores = [op for op in ops if isinstance(op, RestoreChains)]
    assert [r.ruleset.family for r in restores] == [IPFamily.V4]
    # Entries before the rules matching them; the rule now matches KUBE-CLUSTER-IP.
    assert ops.index(restores[0]) > max(
        i for i, op in enumerate(ops) if isinstance(op, AddIPSetEntry)
    )
    assert any(
        "KUBE-CLUSTER-IP" in rule for rule in kernel.tables[IPFamily.V4]["nat"]["KUBE-SERVICES"]
    )


def test_last_cluster_ip_gone_empties_set_and_restores_chains() -> None:
    ops, kernel, _ = partial(([WEB], [WEB_SLICE]), ([], []))
    assert sum(isinstance(op, RestoreChains) for op in ops) == 1
    assert not any(
        "KUBE-CLUSTER-IP" in rule for rule in kernel.tables[IPFamily.V4]["nat"]["KUBE-SERVICES"]
    )


def test_second_service_in_a_nonempty_set_restores_nothing() -> None:
    ops, _, _ = partial(([DNS], [DNS_SLICE]), ([DNS, WEB], [DNS_SLICE, WEB_SLICE]))
    assert not any(isinstance(op, RestoreChains) for op in ops)


# Two Services on one address (as two Services on one external IP are): the address and
# its KUBE-IPVS-IPS entry stay while either needs them.
SHARED_A = service("a", "10.96.0.7", ports=(("http", "TCP", 80),))
SHARED_B = service("b", "10.96.0.7", ports=(("https", "TCP", 443),))


def test_shared_address_stays_while_the_other_service_needs_it() -> None:
    ops, kernel, cache = partial(([SHARED_A, SHARED_B], []), ([SHARED_B], []))
    assert not any(isinstance(op, UnbindAddress) for op in ops)
    assert DeleteIPSetEntry(ipsets.IPVS_IPS.name, "10.96.0.7") not in ops
    assert kernel.links["kube-ipvs0"] == {SHARED_B.cluster_ips[0]}
    assert cache.address_refs == {SHARED_B.cluster_ips[0]: 1}
    # ... and goes with the last one.
    planned = plan_partial(cache, {"default/b": None}, settings=SETTINGS)
    assert UnbindAddress(SHARED_B.cluster_ips[0]) in planned.plan.operations
    assert DeleteIPSetEntry(ipsets.IPVS_IPS.name, "10.96.0.7") in planned.plan.operations


def test_shared_address_is_bound_once() -> None:
    ops, _, _ = partial(([SHARED_A], []), ([SHARED_A, SHARED_B], []))
    assert not any(isinstance(op, BindAddress) for op in ops)
    assert AddIPSetEntry(ipsets.IPVS_IPS.name, "10.96.0.7") not in ops


def test_two_services_swapping_an_address_in_one_batch_touch_no_address() -> None:
    c = service("c", "10.96.0.8")
    moved_a = service("a", "10.96.0.8", ports=(("http", "TCP", 81),))
    moved_c = service("c", "10.96.0.7", ports=(("http", "TCP", 82),))
    ops, _, _ = partial(([SHARED_A, c], []), ([moved_a, moved_c], []))
    assert not any(isinstance(op, BindAddress | UnbindAddress) for op in ops)


def test_virtual_server_key_moves_with_a_port_change() -> None:
    moved = service("web", "10.96.0.10", ports=(("http", "TCP", 8000),))
    ops, _, _ = partial(([WEB], [WEB_SLICE]), ([moved], [WEB_SLICE]))
    kinds = [type(op) for op in ops]
    assert kinds[:3] == [AddIPSetEntry, AddVirtualServer, AddRealServer]
    assert DeleteVirtualServer in kinds and DeleteIPSetEntry in kinds
    assert not any(isinstance(op, BindAddress | UnbindAddress) for op in ops)


def test_virtual_server_handed_between_services_in_one_batch_is_kept() -> None:
    # web is deleted and web2 created on the same address and port in one sync: the
    # virtual server must not be deleted after being "added".
    web2 = dataclasses.replace(WEB, name="web2")
    slice2 = endpoint_slice("web2", "10.244.1.1", "10.244.9.9")
    ops, kernel, _ = partial(([WEB], [WEB_SLICE]), ([web2], [slice2]))
    assert not any(isinstance(op, DeleteVirtualServer | AddVirtualServer) for op in ops)
    assert len(kernel.services) == 1


def test_settings_change_updates_the_virtual_server() -> None:
    sticky = dataclasses.replace(WEB, affinity_timeout=600)
    ops, _, _ = partial(([WEB], [WEB_SLICE]), ([sticky], [WEB_SLICE]))
    assert [type(op) for op in ops] == [UpdateVirtualServer]


def test_service_without_endpoints_then_with() -> None:
    ops, _, _ = partial(([WEB], []), ([WEB], [WEB_SLICE]))
    assert [type(op) for op in ops] == [AddRealServer, AddRealServer]


def test_hairpin_entries_follow_local_endpoints() -> None:
    local = endpoint_slice("web", ("10.244.1.1", True, "n1"))
    ops, _, _ = partial(([WEB], [WEB_SLICE]), ([WEB], [local]))
    assert AddIPSetEntry(ipsets.LOOP_BACK.name, "10.244.1.1,tcp:8080,10.244.1.1") in ops
    assert any(isinstance(op, RestoreChains) for op in ops)  # KUBE-LOOP-BACK became nonempty


def test_dual_stack_service_deleted() -> None:
    dual = service("dual", "10.96.0.20", "fd00::20")
    slices = [endpoint_slice("dual", "10.244.1.1"), endpoint_slice("dual", "fd00:10::1", name="d6")]
    ops, _, _ = partial(([dual, WEB], [*slices, WEB_SLICE]), ([WEB], [WEB_SLICE]))
    restores = [op for op in ops if isinstance(op, RestoreChains)]
    assert [r.ruleset.family for r in restores] == [IPFamily.V6]  # v4 sets stay nonempty


def test_unchanged_services_produce_nothing() -> None:
    kernel = FakeKernel()
    cache = full_sync(kernel, [WEB, DNS], [WEB_SLICE, DNS_SLICE])
    planned = plan_partial(cache, states([WEB, DNS], [WEB_SLICE, DNS_SLICE]), settings=SETTINGS)
    assert not planned.plan and planned.services == 0


def test_plan_partial_is_pure_until_commit() -> None:
    kernel = FakeKernel()
    cache = full_sync(kernel, [WEB], [WEB_SLICE])
    snapshot = dataclasses.replace(
        cache,
        states=dict(cache.states),
        owners=dict(cache.owners),
        address_refs=dict(cache.address_refs),
        entry_refs=dict(cache.entry_refs),
        set_sizes=dict(cache.set_sizes),
        iptables=dict(cache.iptables),
    )
    plan_partial(
        cache,
        {"default/web": None, "default/dns": states([DNS], [])["default/dns"]},
        settings=SETTINGS,
    )
    assert cache == snapshot


@pytest.mark.parametrize("excluded", [True, False])
def test_exclude_cidrs_keep_a_stale_virtual_server(excluded: bool) -> None:
    import ipaddress

    kernel = FakeKernel()
    cache = full_sync(kernel, [WEB], [WEB_SLICE])
    cidrs = [ipaddress.ip_network("10.96.0.0/24")] if excluded else []
    planned = plan_partial(cache, {"default/web": None}, settings=SETTINGS, exclude_cidrs=cidrs)
    deleted = any(isinstance(op, DeleteVirtualServer) for op in planned.plan.operations)
    assert deleted is not excluded


def test_random_change_sequences_match_full_syncs() -> None:
    """Many random steps (services and endpoints appear, move, share addresses, vanish):
    after every partial sync the kernel and the cache equal a fresh full sync's."""
    import random

    rng = random.Random(7)
    kernel = FakeKernel()
    cache = full_sync(kernel, [], [])
    current: dict[str, tuple[Service, EndpointSlice | None]] = {}
    for _ in range(150):
        touched: set[str] = set()
        for _ in range(rng.randint(1, 4)):
            n = rng.randint(0, 7)
            name = f"s{n}"
            touched.add(f"default/{name}")
            if name in current and rng.random() < 0.3:
                del current[name]
                continue
            ip = f"10.96.0.{rng.randint(1, 5)}"  # few addresses: often shared
            # Ports of their own (no two Services claim one virtual server), which move.
            ports = (("p", rng.choice(["TCP", "UDP"]), 1000 + 10 * n + rng.randint(0, 3)),)
            svc = service(name, ip, ports=ports, affinity=rng.choice([None, 60]))
            eps = [
                (f"10.244.0.{rng.randint(1, 6)}", rng.random() < 0.8, rng.choice(["n1", "n2"]))
                for _ in range(rng.randint(0, 3))
            ]
            ep_ports = ((ports[0][0], ports[0][1], 8080),)
            current[name] = (svc, endpoint_slice(name, *eps, ports=ep_ports) if eps else None)
        services = [svc for svc, _ in current.values()]
        slices = [sl for _, sl in current.values() if sl is not None]
        new = states(services, slices)
        planned = plan_partial(cache, {k: new.get(k) for k in touched}, settings=SETTINGS)
        result = apply_plan(planned.plan, dataplanes(kernel))
        assert result.ok, result.failures
        cache.commit(planned.delta)
        reference = FakeKernel()
        rebuilt = full_sync(reference, services, slices)
        assert kernel_state(kernel) == kernel_state(reference)
        assert cache.address_refs == rebuilt.address_refs
        assert cache.entry_refs == rebuilt.entry_refs
        assert cache.iptables == rebuilt.iptables


def test_real_servers_under_one_key_differ_only_in_weight_or_forwarding() -> None:
    # partial._settings_differ compares just these, so RealServer's equality must not
    # grow another field without it.
    compared = {f.name for f in dataclasses.fields(RealServer) if f.compare}
    assert compared == {"address", "port", "weight", "forward"}


def _firewalled(name: str, lb_ip: str, *ranges: str) -> Service:
    return dataclasses.replace(
        service(name, "10.96.0.40" if name == "lb1" else "10.96.0.41"),
        type="LoadBalancer",
        load_balancer_ips=(ipaddress.ip_address(lb_ip),),
        load_balancer_source_ranges=tuple(ipaddress.ip_network(r) for r in ranges),
    )


def test_load_balancer_firewall_rules_follow_partial_syncs() -> None:
    """KUBE-IPVS-OUT-FILTER names the firewalled ports the node may not reach, so the
    chains are restored when those entries change, not only when a set turns non-empty."""
    lb1 = _firewalled("lb1", "192.0.2.10", "203.0.113.0/24")
    lb2 = _firewalled("lb2", "192.0.2.11", "198.51.100.0/24")
    ops, _, _ = partial(([WEB], [WEB_SLICE]), ([WEB, lb1], [WEB_SLICE]))  # the first: non-empty
    assert any(isinstance(op, RestoreChains) for op in ops)
    ops, _, _ = partial(([WEB, lb1], [WEB_SLICE]), ([WEB, lb1, lb2], [WEB_SLICE]))  # a second
    assert any(isinstance(op, RestoreChains) for op in ops)
    widened = _firewalled("lb1", "192.0.2.10", "0.0.0.0/0")  # now admits the node too
    partial(([WEB, lb1, lb2], [WEB_SLICE]), ([WEB, widened, lb2], [WEB_SLICE]))
    partial(([WEB, lb1, lb2], [WEB_SLICE]), ([WEB, lb2], [WEB_SLICE]))
