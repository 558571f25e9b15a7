"""The periodic full sync: it reuses the states of Services whose inputs did not change,
yet plans exactly what a full sync from scratch would; it repairs drift, recomputes
everything after a Node change, keeps a Service's last good state, and does not make
pending changes wait for it."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from collections.abc import Iterator
from typing import Any

import pytest
from agentrig import NODE, Harness, kernel_state
from builders import endpoint_slice, service

from ipvsproxy.agent import full_sync as full_sync_module
from ipvsproxy.agent import sync_loop as agent_module
from ipvsproxy.core.desired import DesiredSettings, desired_state
from ipvsproxy.core.full_plan import Plan, plan_sync
from ipvsproxy.core.model import KernelState, Node, RealServerKey, Service
from ipvsproxy.core.operations import AddRealServer, UnbindAddress

WEB = service("web", "10.96.0.10")
WEB_SLICE = endpoint_slice("web", "10.244.1.1", "10.244.2.1")
DNS = service("dns", "10.96.0.53", ports=(("dns", "UDP", 53),))
DNS_SLICE = endpoint_slice("dns", "10.244.1.9", ports=(("dns", "UDP", 53),))
API = service("api", "10.96.0.20", ports=(("https", "TCP", 443),))
API_SLICE = endpoint_slice("api", "10.244.3.1", ports=(("https", "TCP", 443),))


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the Services whose state the agent computes, in order."""
    names: list[str] = []
    real = agent_module.service_state

    def counted(svc: Service, *args: Any, **kwargs: Any) -> Any:
        names.append(svc.name)
        return real(svc, *args, **kwargs)

    monkeypatch.setattr(agent_module, "service_state", counted)
    yield names


def from_scratch(h: Harness) -> KernelState:
    """The desired state of the harness' objects computed anew, as a cold start would."""
    node = dataclasses.replace(NODE, local_addresses=h.kernel.node_addresses("kube-ipvs0"))
    return desired_state(
        list(h.services.values()),
        list(h.slices.values()),
        node=node,
        settings=DesiredSettings(),
    )


def started() -> Harness:
    h = Harness()
    h.start([WEB, DNS, API], [WEB_SLICE, DNS_SLICE, API_SLICE])
    assert h.step() and h.agent.last is not None and h.agent.last.full
    return h


def periodic_full_sync(h: Harness) -> None:
    h.clock.t += 30
    assert h.step()
    assert h.agent.last is not None and h.agent.last.full and h.agent.last.ok


def test_full_sync_after_changes_plans_what_a_sync_from_scratch_would(
    computed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    h = started()
    # Changes applied by partial syncs: an endpoint moved, a port renamed, one Service
    # deleted and another added.
    h.put(endpoint_slice("web", "10.244.1.1", "10.244.9.9"))
    h.put(dataclasses.replace(DNS, ports=(dataclasses.replace(DNS.ports[0], name="domain"),)))
    h.remove(API_SLICE)
    h.remove(API)
    extra = service("extra", "10.96.0.30")
    h.put(extra)
    h.put(endpoint_slice("extra", "10.244.4.4"))
    h.step()
    assert h.agent.last is not None and not h.agent.last.full
    # Drift from outside, which the full sync must see and repair.
    (web_key,) = (k for k in h.kernel.services if k.port == 80 and str(k.address) == "10.96.0.10")
    del h.kernel.destinations[web_key][RealServerKey(ipaddress.ip_address("10.244.9.9"), 8080)]
    h.kernel.links["kube-ipvs0"].add(ipaddress.ip_address("10.96.7.7"))

    planned: list[tuple[KernelState, KernelState, Plan]] = []
    real = full_sync_module.plan_sync

    def recorded(desired: KernelState, observed: KernelState, **kwargs: Any) -> Plan:
        plan = real(desired, observed, **kwargs)
        planned.append((desired, plan_sync(from_scratch(h), observed, **kwargs), plan))
        return plan

    monkeypatch.setattr(full_sync_module, "plan_sync", recorded)
    computed.clear()
    # More changes, still pending when a full sync starts (as after a failed sync).
    h.put(endpoint_slice("dns", "10.244.1.9", "10.244.8.8", ports=(("dns", "UDP", 53),)))
    h.put(dataclasses.replace(extra, cluster_ips=(ipaddress.ip_address("10.96.0.31"),)))
    h.agent.resync()
    assert h.step()
    assert h.agent.last is not None and h.agent.last.full and h.agent.last.ok
    assert sorted(computed) == ["dns", "extra"]  # the others' states reused
    ((desired, scratch_plan, plan),) = planned
    assert desired == from_scratch(h)
    assert plan == scratch_plan
    # The drift is repaired (as well as the pending changes applied).
    ops = set(plan.operations)
    assert UnbindAddress(ipaddress.ip_address("10.96.7.7")) in ops
    assert any(
        isinstance(op, AddRealServer) and str(op.server.address) == "10.244.9.9" for op in ops
    )
    h.assert_in_step()


def test_periodic_full_sync_reuses_states_and_repairs_drift(computed: list[str]) -> None:
    h = started()
    assert sorted(computed) == ["api", "dns", "web"]
    h.kernel.services.clear()  # ipvsadm -C
    h.kernel.destinations.clear()
    h.kernel.sets["KUBE-CLUSTER-IP"].clear()  # ipset flush
    computed.clear()
    periodic_full_sync(h)
    assert computed == []
    assert h.agent.last is not None and h.agent.last.operations > 0
    h.assert_in_step()
    # A change between full syncs recomputes that Service alone, then is reused.
    h.put(endpoint_slice("dns", "10.244.1.9", "10.244.5.5", ports=(("dns", "UDP", 53),)))
    h.step()
    periodic_full_sync(h)
    assert computed == ["dns"]
    h.assert_in_step()


def test_node_change_recomputes_every_service(computed: list[str]) -> None:
    h = started()
    computed.clear()
    h.tracker.node.replace({"n1": Node(name="n1", zone="zone-a")})
    h.tracker.node.listed()
    assert h.step()
    assert h.agent.last is not None and h.agent.last.full
    assert sorted(computed) == ["api", "dns", "web"]


def test_new_host_addresses_recompute_every_service(computed: list[str]) -> None:
    h = started()
    computed.clear()
    h.kernel.links["eth0"] = {ipaddress.ip_address("192.168.1.5")}
    periodic_full_sync(h)
    assert sorted(computed) == ["api", "dns", "web"]
    computed.clear()
    periodic_full_sync(h)  # the same addresses again: all reused
    assert computed == []


def test_service_that_fails_to_compute_keeps_its_last_good_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = agent_module.service_state

    def picky(svc: Service, *args: Any, **kwargs: Any) -> Any:
        if svc.ports and svc.ports[0].port == 666:
            raise ValueError("cannot compute")
        return real(svc, *args, **kwargs)

    monkeypatch.setattr(agent_module, "service_state", picky)
    h = started()
    good = kernel_state(h.kernel)
    bad_web = dataclasses.replace(WEB, ports=(dataclasses.replace(WEB.ports[0], port=666),))
    h.tracker.services.upsert(bad_web.key, bad_web)  # h.services keeps the good one
    h.step()
    assert h.agent.last is not None and not h.agent.last.full and h.agent.last.ok
    assert kernel_state(h.kernel) == good
    # Full syncs try it again, fail again, and keep the last good state in the kernel,
    # also after a failed sync dropped what was applied.
    periodic_full_sync(h)
    assert kernel_state(h.kernel) == good
    h.agent.resync()
    h.tracker.slices.upsert(DNS_SLICE.key, DNS_SLICE)  # no change: only wakes the runner
    h.agent.runner.run()
    assert h.step() and h.agent.last is not None and h.agent.last.full
    assert kernel_state(h.kernel) == good
    # Once it computes again, its new state replaces the old one.
    fixed = dataclasses.replace(WEB, ports=(dataclasses.replace(WEB.ports[0], port=8000),))
    h.put(fixed)
    h.step()
    periodic_full_sync(h)
    h.assert_in_step()


def test_pending_changes_are_applied_before_a_due_full_sync() -> None:
    h = started()
    h.clock.t += 30  # the full sync is due, and a change waits
    h.put(endpoint_slice("web", "10.244.1.1", "10.244.6.6"))
    assert h.step()
    assert h.agent.last is not None and not h.agent.last.full
    h.assert_in_step()
    assert h.step()  # the full sync follows at once
    assert h.agent.last.full and h.agent.last.ok
    # Put off once only: with a change pending at every sync the full sync still runs.
    h.clock.t += 30
    h.put(endpoint_slice("web", "10.244.1.1", "10.244.6.7"))
    assert h.step() and not h.agent.last.full
    h.put(endpoint_slice("web", "10.244.1.1", "10.244.6.8"))
    assert h.step() and h.agent.last.full
    h.assert_in_step()


def test_sync_period_runs_from_the_end_of_a_full_sync() -> None:
    h = Harness()
    original = h.kernel.snapshot

    def slow_snapshot() -> Any:
        h.clock.t += 45  # a cold sync longer than the period, on a busy machine
        return original()

    h.kernel.snapshot = slow_snapshot  # type: ignore[method-assign]
    h.start([WEB], [WEB_SLICE])
    assert h.step() and h.agent.last is not None and h.agent.last.full
    h.kernel.snapshot = original  # type: ignore[method-assign]
    h.put(endpoint_slice("web", "10.244.1.1"))
    assert h.step()
    assert not h.agent.last.full
    assert not h.step()  # and no second full sync right after it
    h.clock.t += 30
    assert h.step() and h.agent.last.full


def test_a_port_another_process_holds_is_retried_at_full_syncs_not_every_change() -> None:
    calls: list[dict[int, tuple[str, int]]] = []

    def serve(ports: Any) -> list[int]:
        calls.append(dict(ports))
        return [port for port in ports if port == 32000]  # held by someone else

    h = Harness()
    h.agent._serve_health_checks = serve
    lb = dataclasses.replace(
        service("lb", "10.96.0.40"),
        type="LoadBalancer",
        external_traffic_local=True,
        health_check_node_port=32000,
    )
    h.start([WEB, lb], [WEB_SLICE, endpoint_slice("lb", ("10.244.1.1", True, "n1"))])
    h.step()
    assert calls == [{32000: ("default/lb", 1)}]
    for i in range(10):  # changes within the retry interval: no bind attempts
        h.put(endpoint_slice("web", "10.244.1.1", f"10.244.8.{i + 1}"))
        h.clock.t += 0.1
        h.step()
    assert len(calls) == 1
    periodic_full_sync(h)
    assert calls[1:] == [{32000: ("default/lb", 1)}]


class _Draws(random.Random):
    """random() answers these values in turn."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_each_period_is_shortened_by_a_fresh_random_share_of_the_jitter() -> None:
    # Draws: the period before the cold sync (unused), then one per full sync.
    h = Harness(sync_period_jitter=0.1, rng=_Draws(0.0, 0.5, 1.0, 0.0, 0.0))
    h.start([WEB], [WEB_SLICE])
    assert h.step() and h.agent.last is not None and h.agent.last.full
    # 30 s less 5 % (a draw of 0.5 of the 10 %), less the whole 10 %, the full period
    for n, period in enumerate((28.5, 27.0, 30.0)):
        h.clock.t += period - 0.1
        h.put(endpoint_slice("web", "10.244.1.1", f"10.244.7.{n + 1}"))
        assert h.step() and not h.agent.last.full  # a change before it: partial
        assert not h.step()  # nothing else due until the period is over
        h.clock.t += 0.1
        assert h.step() and h.agent.last.full  # due then, with no change asking for it
        h.assert_in_step()
