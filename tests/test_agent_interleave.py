"""Changes arriving during a periodic full sync are applied by partial syncs between its
pieces, before it applies its own plan (ipvsproxy/agent/interleave.py): none waits for the
whole full sync, and the full sync undoes none of them."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
from agentrig import NODE, Harness, kernel_state
from builders import endpoint_slice, service

from ipvsproxy.agent import sync_loop as agent_module
from ipvsproxy.agent.interleave import Interleaved
from ipvsproxy.core import full_plan
from ipvsproxy.core.desired import DesiredSettings, desired_state
from ipvsproxy.core.full_plan import Plan, plan_sync
from ipvsproxy.core.model import EndpointSlice, IPFamily, KernelState, Node, RealServerKey, Service
from ipvsproxy.core.operations import (
    AddIPSetEntry,
    AddRealServer,
    BindAddress,
    DeleteIPSetEntry,
    DeleteRealServer,
    ReplaceNftTable,
    UnbindAddress,
)

WEB = service("web", "10.96.0.10")
WEB_SLICE = endpoint_slice("web", "10.244.1.1", "10.244.2.1")
DNS = service("dns", "10.96.0.53", ports=(("dns", "UDP", 53),))
DNS_SLICE = endpoint_slice("dns", "10.244.1.9", ports=(("dns", "UDP", 53),))
API = service("api", "10.96.0.20", ports=(("https", "TCP", 443),))
API_SLICE = endpoint_slice("api", "10.244.3.1", ports=(("https", "TCP", 443),))
EXTRA = service("extra", "10.96.0.30")
EXTRA_SLICE = endpoint_slice("extra", "10.244.4.4")


def started() -> Harness:
    h = Harness()
    h.start([WEB, DNS, API], [WEB_SLICE, DNS_SLICE, API_SLICE])
    assert h.step() and h.agent.last is not None and h.agent.last.full
    return h


def moved(h: Harness) -> None:
    h.put(endpoint_slice("web", "10.244.1.1", "10.244.9.9"))


def deleted(h: Harness) -> None:
    h.remove(API_SLICE)
    h.remove(API)


def added(h: Harness) -> None:
    h.put(EXTRA)
    h.put(EXTRA_SLICE)


def all_three(h: Harness) -> None:
    moved(h)
    deleted(h)
    added(h)


CHANGES = [moved, deleted, added, all_three]


def once(change: Callable[[], None]) -> Callable[[], None]:
    fired: list[bool] = []

    def first() -> None:
        if not fired:
            fired.append(True)
            change()

    return first


def during_merge(h: Harness, monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> None:
    """The change arrives once the full sync has its desired state, before it reads the
    kernel: the kernel it reads holds the partial sync's writes, its desired state not."""
    real, change = agent_module.merge_service_states, once(change)

    def merge(*args: Any, **kwargs: Any) -> Any:
        merged = real(*args, **kwargs)
        change()
        return merged

    monkeypatch.setattr(agent_module, "merge_service_states", merge)


def during_read(h: Harness, monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> None:
    """The change arrives while the full sync reads the kernel: what it read and wants
    are both from before the partial sync."""
    real, change = h.kernel.snapshot, once(change)

    def snapshot() -> Any:
        found = real()
        change()
        return found

    monkeypatch.setattr(h.kernel, "snapshot", snapshot)


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("arrives", [during_merge, during_read], ids=lambda a: a.__name__)
def test_a_change_during_a_full_sync_is_applied_before_it_ends(
    change: Callable[[Harness], None],
    arrives: Callable[[Harness, pytest.MonkeyPatch, Callable[[], None]], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = started()
    # Drift from outside on a Service the change leaves alone: the same full sync repairs it.
    (dns_key,) = (k for k in h.kernel.services if k.port == 53)
    h.kernel.destinations[dns_key].clear()
    h.kernel.links["kube-ipvs0"].add(ipaddress.ip_address("10.96.7.7"))

    arrives(h, monkeypatch, lambda: change(h))
    # What the kernel holds when the full sync applies its own plan, and how many
    # changes had been measured as programmed by then.
    seen: list[tuple[KernelState, int]] = []
    real_apply = agent_module.Agent._apply

    def apply(agent: Any, plan: Plan) -> Any:
        if agent.syncs >= 1 and agent._interleaved is not None:
            seen.append((kernel_state(h.kernel), agent.syncs))
        return real_apply(agent, plan)

    monkeypatch.setattr(agent_module.Agent, "_apply", apply)
    syncs = h.agent.syncs
    h.clock.t += 30
    assert h.step()
    assert h.agent.last is not None and h.agent.last.full and h.agent.last.ok
    # The change was applied by a partial sync of its own, inside the full sync's step
    # and before the full sync's plan.
    assert h.agent.syncs == syncs + 2
    (before_full_plan, _), *_ = [s for s in seen if s[1] == syncs + 1]
    h.assert_in_step()
    wanted = kernel_state(h.kernel)
    assert before_full_plan.virtual_servers == wanted.virtual_servers
    # The full sync undid none of it and repaired the drift; what it recorded as
    # applied is right: the next full sync has nothing to do, a partial sync still works.
    h.clock.t += 30
    assert h.step() and h.agent.last.full and h.agent.last.operations == 0
    h.put(endpoint_slice("dns", "10.244.1.9", "10.244.5.5", ports=(("dns", "UDP", 53),)))
    assert h.step() and not h.agent.last.full and h.agent.last.ok
    h.assert_in_step()


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: c.__name__)
def test_a_change_after_the_full_plan_is_applied_is_not_lost(
    change: Callable[[Harness], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arriving while the full sync rebuilds its labels and what was applied: applied by
    a partial sync there, and kept in what the full sync records as applied."""
    h = started()
    fired: list[bool] = []
    real = agent_module.Agent._relabel_all

    def relabel(agent: Any, *args: Any) -> None:
        if not fired:
            fired.append(True)
            change(h)
        real(agent, *args)

    monkeypatch.setattr(agent_module.Agent, "_relabel_all", relabel)
    syncs = h.agent.syncs
    h.clock.t += 30
    assert h.step() and h.agent.last is not None and h.agent.last.full and h.agent.last.ok
    assert h.agent.syncs == syncs + 2
    h.assert_in_step()
    h.clock.t += 30
    assert h.step() and h.agent.last.full and h.agent.last.operations == 0


def test_changes_a_full_sync_took_are_applied_by_a_partial_sync_in_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full sync that starts with changes pending (here: after the one partial sync a
    due full sync lets run first) wants what was applied and hands them to a partial sync
    at its first checkpoint: partial syncs in between stay possible, and none of the
    changes is recomputed twice or undone."""
    h = started()
    h.clock.t += 30
    moved(h)
    assert h.step() and h.agent.last is not None and not h.agent.last.full  # first, as due
    added(h)  # taken by the full sync
    during_read(h, monkeypatch, lambda: deleted(h))
    syncs = h.agent.syncs
    assert h.step() and h.agent.last.full and h.agent.last.ok
    assert h.agent.syncs == syncs + 3  # the changes it took, then the deletion
    h.assert_in_step()
    h.clock.t += 30
    assert h.step() and h.agent.last.full and h.agent.last.operations == 0


def test_a_change_during_a_full_sync_is_measured_as_programmed_before_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = started()
    h.wall += 10  # trigger times before the agent started are not measured
    slice_ = dataclasses.replace(endpoint_slice("web", "10.244.1.1"), trigger_time=h.wall - 0.5)
    during_read(h, monkeypatch, lambda: h.put(slice_))

    def count() -> float:
        name = "kubeproxy_network_programming_duration_seconds_count"
        found = h.metrics.registry.get_sample_value(name, {"ip_family": "IPv4"})
        return found or 0.0

    before = count()
    applied: list[float] = []
    real_apply = agent_module.Agent._apply_full

    def apply_full(agent: Any, plan: Plan) -> Any:
        applied.append(count() - before)
        return real_apply(agent, plan)

    monkeypatch.setattr(agent_module.Agent, "_apply_full", apply_full)
    h.clock.t += 30
    assert h.step() and h.agent.last is not None and h.agent.last.full
    assert applied == [1]  # programmed and measured before the full sync's own plan


def test_a_node_change_during_a_full_sync_waits_for_the_next_full_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = started()

    def node_change() -> None:
        h.tracker.node.replace({"n1": Node(name="n1", zone="zone-a")})
        h.tracker.node.listed()

    during_read(h, monkeypatch, node_change)
    syncs = h.agent.syncs
    h.clock.t += 30
    assert h.step() and h.agent.last is not None and h.agent.last.full
    assert h.agent.syncs == syncs + 1  # no partial sync in between
    monkeypatch.undo()
    assert h.step() and h.agent.last.full  # the Node change's own
    h.assert_in_step()


def test_no_partial_sync_during_the_first_or_a_forced_full_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness()
    during_read(h, monkeypatch, lambda: moved(h))
    h.start([WEB, DNS, API], [WEB_SLICE, DNS_SLICE, API_SLICE])
    assert h.step() and h.agent.last is not None and h.agent.last.full
    assert h.agent.syncs == 1  # nothing applied yet to diff a partial sync against
    assert h.step() and not h.agent.last.full  # the change, right after
    h.assert_in_step()


EMPTY = KernelState(virtual_servers={}, real_servers={}, addresses=frozenset(), ipsets={})


def wanted(services: list[Service], slices: list[EndpointSlice]) -> KernelState:
    return desired_state(services, slices, node=NODE, settings=DesiredSettings())


def test_plan_sync_calls_its_checkpoint_between_pieces() -> None:
    services = [service(f"s{n}", f"10.96.{n // 250}.{n % 250 + 1}") for n in range(2500)]
    desired = wanted(services, [])
    calls: list[int] = []
    plain = plan_sync(desired, EMPTY)
    piecewise = plan_sync(desired, EMPTY, checkpoint=lambda: calls.append(1))
    assert piecewise == plain
    assert len(calls) == len(desired.virtual_servers) // full_plan.CHECKPOINT_EVERY >= 2


def test_the_full_plan_leaves_out_what_partial_syncs_wrote() -> None:
    desired = wanted([WEB], [WEB_SLICE])
    ((key, servers),) = desired.real_servers.items()
    server = next(iter(servers.values()))
    web, other = WEB.cluster_ips[0], ipaddress.ip_address("10.96.7.7")
    plan = Plan((BindAddress(web), AddRealServer(key, server), UnbindAddress(other)), {})
    box = Interleaved()
    box.wrote([BindAddress(web), DeleteRealServer(key, RealServerKey(server.address, 1))])
    assert box.filter(plan).operations == (UnbindAddress(other),)


def test_a_whole_nftables_table_holds_the_entries_partial_syncs_wrote() -> None:
    # A drifted table is rewritten whole from sets computed before the partial syncs ran:
    # their additions must stay and their deletions must not come back.
    ips, ports = "KUBE-CLUSTER-IP", "KUBE-NODE-PORT-TCP"
    before = frozenset({"10.96.0.10,tcp:80", "10.96.0.53,udp:53"})
    table = ReplaceNftTable(
        IPFamily.V4, ((ips, before), (ports, frozenset({"tcp:30080"}))), (("chain", ("rule",)),)
    )
    box = Interleaved()
    box.wrote(
        [
            AddIPSetEntry(ips, "10.96.0.20,tcp:443"),
            DeleteIPSetEntry(ips, "10.96.0.53,udp:53"),
            AddIPSetEntry(ips, "10.96.0.99,tcp:80"),
            DeleteIPSetEntry(ips, "10.96.0.99,tcp:80"),
        ]
    )
    (rewritten,) = box.filter(Plan((table,), {})).operations
    assert rewritten == ReplaceNftTable(
        IPFamily.V4,
        ((ips, frozenset({"10.96.0.10,tcp:80", "10.96.0.20,tcp:443"})), table.sets[1]),
        table.chains,
    )


def test_a_deletion_a_full_sync_took_is_applied_before_a_reuse_of_its_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deletion pending when the full sync starts: were the full sync to want the
    Service gone while partial syncs in between diff against what was applied, a new
    Service reusing its IP would write nothing (its address and virtual server counted as
    still wanted), and the full plan would then remove them from under it."""
    h = started()
    h.clock.t += 30
    moved(h)
    assert h.step() and h.agent.last is not None and not h.agent.last.full  # first, as due
    deleted(h)  # taken by the full sync
    reused = service("api2", "10.96.0.20", ports=(("https", "TCP", 443),))
    reused_slice = endpoint_slice("api2", "10.244.3.7", ports=(("https", "TCP", 443),))

    def add_reused() -> None:
        h.put(reused)
        h.put(reused_slice)

    during_read(h, monkeypatch, add_reused)
    syncs = h.agent.syncs
    assert h.step() and h.agent.last.full and h.agent.last.ok
    # The deletion, by a partial sync at the first checkpoint, then the new Service.
    assert h.agent.syncs == syncs + 3
    h.assert_in_step()
    h.clock.t += 30
    assert h.step() and h.agent.last.full and h.agent.last.operations == 0


def test_partial_syncs_during_a_full_sync_keep_the_min_sync_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """minSyncPeriod batches changes: a change arriving during a full sync that started
    less than it ago waits for the next sync, not for the full sync's next piece."""
    h = Harness(min_sync_period=1.0)
    h.start([WEB, DNS, API], [WEB_SLICE, DNS_SLICE, API_SLICE])
    assert h.step() and h.agent.last is not None and h.agent.last.full
    during_read(h, monkeypatch, lambda: moved(h))
    syncs = h.agent.syncs
    h.clock.t += 30
    assert h.step() and h.agent.last.full
    assert h.agent.syncs == syncs + 1  # the clock did not move: no partial sync in between
    h.clock.t += 1
    assert h.step() and not h.agent.last.full
    h.assert_in_step()


def test_partial_syncs_during_a_full_sync_run_once_the_min_sync_period_has_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(min_sync_period=1.0)
    h.start([WEB, DNS, API], [WEB_SLICE, DNS_SLICE, API_SLICE])
    assert h.step() and h.agent.last is not None and h.agent.last.full

    def later() -> None:
        h.clock.t += 1  # the read took a second
        moved(h)

    during_read(h, monkeypatch, later)
    syncs = h.agent.syncs
    h.clock.t += 30
    assert h.step() and h.agent.last.full and h.agent.last.ok
    assert h.agent.syncs == syncs + 2
    h.assert_in_step()


def test_changes_a_full_sync_took_are_measured_once(monkeypatch: pytest.MonkeyPatch) -> None:
    h = started()
    h.wall += 10  # trigger times before the agent started are not measured
    h.clock.t += 30
    moved(h)
    assert h.step() and h.agent.last is not None and not h.agent.last.full  # first, as due
    slice_ = dataclasses.replace(endpoint_slice("web", "10.244.1.1"), trigger_time=h.wall - 0.5)
    h.put(slice_)  # taken by the full sync
    name = "kubeproxy_network_programming_duration_seconds_count"
    before = h.metrics.registry.get_sample_value(name, {"ip_family": "IPv4"}) or 0.0
    syncs = h.agent.syncs
    assert h.step() and h.agent.last.full and h.agent.syncs == syncs + 2
    after = h.metrics.registry.get_sample_value(name, {"ip_family": "IPv4"})
    assert after == before + 1
    h.assert_in_step()
