"""The agent's sync loop against the fake kernel, fed the way the reflectors feed it.

Every scenario ends by comparing the fake kernel with a fresh kernel given one full sync
of the same objects: partial syncs must leave exactly what a full sync would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest
from agentrig import NODE, Harness, dataplanes
from builders import endpoint_slice, service
from loguru import logger

from ipvsproxy.agent import sync_loop as agent_module
from ipvsproxy.agent.full_sync import full_sync
from ipvsproxy.core.desired import DesiredSettings, desired_state
from ipvsproxy.core.model import (
    IPFamily,
    Node,
    Service,
    ServicePort,
)
from ipvsproxy.core.operations import AddRealServer, AddVirtualServer
from ipvsproxy.core.rules import MasqueradeSettings
from ipvsproxy.dataplane.fake import FakeKernel

WEB = service("web", "10.96.0.10")
WEB_SLICE = endpoint_slice("web", "10.244.1.1", "10.244.2.1")
DNS = service("dns", "10.96.0.53", ports=(("dns", "UDP", 53),))
DNS_SLICE = endpoint_slice("dns", "10.244.1.9", ports=(("dns", "UDP", 53),))


def test_nothing_is_programmed_before_both_lists_finished() -> None:
    h = Harness()
    h.tracker.services.replace({WEB.key: WEB})
    h.tracker.services.listed()
    h.tracker.slices.replace({WEB_SLICE.key: WEB_SLICE})  # replaced, but listed() not yet called
    assert h.agent.sync()
    assert h.kernel.writes == 0 and h.agent.last is None
    h.tracker.slices.listed()
    assert h.step()
    assert h.agent.last is not None and h.agent.last.full and h.agent.last.ok
    h.services, h.slices = {WEB.key: WEB}, {WEB_SLICE.key: WEB_SLICE}
    h.assert_in_step()


def test_first_sync_adopts_what_the_kernel_holds() -> None:
    kernel = FakeKernel()
    desired = desired_state(
        [WEB, DNS], [WEB_SLICE, DNS_SLICE], node=NODE, settings=DesiredSettings()
    )
    full_sync(desired, dataplanes(kernel))
    writes = kernel.writes
    h = Harness(kernel=kernel)
    h.start([WEB, DNS], [WEB_SLICE, DNS_SLICE])
    assert h.step()
    assert h.agent.last is not None and h.agent.last.full and h.agent.last.operations == 0
    assert kernel.writes == writes  # nothing flushed, nothing rewritten


def test_first_sync_removes_what_a_previous_run_left() -> None:
    kernel = FakeKernel()
    old = desired_state([WEB, DNS], [WEB_SLICE, DNS_SLICE], node=NODE, settings=DesiredSettings())
    full_sync(old, dataplanes(kernel))
    h = Harness(kernel=kernel)
    h.start([WEB], [WEB_SLICE])  # dns was deleted while the proxy was down
    h.step()
    h.assert_in_step()


def test_service_before_its_endpoints() -> None:
    h = Harness()
    h.start()
    h.step()
    h.put(WEB)
    assert h.step()
    assert h.agent.last is not None and not h.agent.last.full
    h.assert_in_step()
    h.put(WEB_SLICE)
    h.step()
    h.assert_in_step()
    assert len(h.kernel.destinations[next(iter(h.kernel.services))]) == 2


def test_endpoints_before_their_service() -> None:
    h = Harness()
    h.start()
    h.step()
    h.put(WEB_SLICE)
    h.step()
    assert not h.kernel.services  # endpoints alone program nothing
    h.put(WEB)
    h.step()
    h.assert_in_step()


def test_scale_up_and_down_then_delete_until_empty() -> None:
    h = Harness()
    h.start([WEB, DNS], [WEB_SLICE, DNS_SLICE])
    h.step()
    for count in (5, 20, 3, 1, 0):
        ips = [f"10.244.3.{i}" for i in range(1, count + 1)]
        h.put(endpoint_slice("web", *ips))
        h.step()
        assert h.agent.last is not None and not h.agent.last.full
        h.assert_in_step()
    for obj in (WEB_SLICE, WEB, DNS, DNS_SLICE):
        h.remove(obj)
        h.step()
        h.assert_in_step()
    assert not h.kernel.services and not h.kernel.links["kube-ipvs0"]
    assert not any(h.kernel.sets.values())


def test_burst_of_changes_is_coalesced() -> None:
    h = Harness(min_sync_period=1.0)
    h.start([WEB], [WEB_SLICE])
    h.step()
    first = h.agent.syncs
    for i in range(1000):
        h.put(endpoint_slice("web", f"10.244.{i // 250}.{i % 250 + 1}"))
        h.clock.t += 0.002  # 1,000 changes in 2 seconds
        h.step()  # the worker wakes on every change; the runner decides
    h.clock.t += 1.0
    h.step()
    assert h.agent.syncs - first <= 4  # at most one per min_sync_period
    assert h.agent.last is not None and not h.agent.last.full
    h.assert_in_step()


def test_failed_sync_is_retried_and_makes_the_next_sync_full() -> None:
    h = Harness()
    h.start([WEB], [WEB_SLICE])
    h.step()
    h.kernel.refuse = {AddRealServer}
    h.put(endpoint_slice("web", "10.244.1.1", "10.244.2.1", "10.244.9.9"))
    assert h.step()
    assert h.agent.last is not None and not h.agent.last.ok
    assert "AddRealServer" in h.agent.last.reason
    assert h.agent.runner.next_run_at() == pytest.approx(h.clock.t + 5.0)  # retry interval
    h.kernel.refuse = set()
    assert not h.step()
    h.clock.t += 5.0
    assert h.step()  # the retry, with no new change
    assert h.agent.last.full and h.agent.last.ok
    h.assert_in_step()


def test_failure_is_logged_once_while_it_repeats() -> None:
    h = Harness()
    h.start([WEB], [WEB_SLICE])
    h.step()
    h.kernel.refuse = {AddVirtualServer}
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="ERROR")
    try:
        for i in range(5):
            h.put(service(f"new{i}", f"10.96.1.{i + 1}"))
            h.clock.t += 10
            h.step()
    finally:
        logger.remove(sink)
    assert not h.agent.last.ok  # type: ignore[union-attr]
    assert sum("sync failed" in line for line in lines) == 1


def test_periodic_full_sync_repairs_drift() -> None:
    h = Harness()
    h.start([WEB, DNS], [WEB_SLICE, DNS_SLICE])
    h.step()
    vs = next(iter(h.kernel.services))
    h.kernel.services.clear()  # ipvsadm -C
    h.kernel.destinations.clear()
    h.kernel.links["kube-ipvs0"].discard(vs.address)  # ip addr del
    h.kernel.sets["KUBE-CLUSTER-IP"].clear()  # ipset flush
    h.kernel.tables[IPFamily.V4]["nat"]["KUBE-SERVICES"] = []  # a flushed chain
    h.clock.t += 29
    assert not h.step()
    h.clock.t += 1
    assert h.step()  # sync_period after the last run
    assert h.agent.last is not None and h.agent.last.full
    h.assert_in_step()


def test_partial_sync_reads_nothing_from_the_kernel() -> None:
    h = Harness()
    h.start([WEB], [WEB_SLICE])
    h.step()
    reads: list[str] = []
    original = h.kernel.snapshot

    def counted() -> object:
        reads.append("snapshot")
        return original()

    h.kernel.snapshot = counted  # type: ignore[method-assign]
    h.put(endpoint_slice("web", "10.244.1.1"))
    h.step()
    assert reads == []


def test_bad_object_costs_only_its_own_service(monkeypatch: pytest.MonkeyPatch) -> None:
    real = agent_module.service_state

    def picky(svc: Service, *args: object, **kwargs: object) -> object:
        if svc.name == "bad":
            raise ValueError("cannot compute")
        return real(svc, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(agent_module, "service_state", picky)
    h = Harness()
    bad = service("bad", "10.96.0.99")
    h.start([WEB, bad, DNS], [WEB_SLICE, DNS_SLICE])
    h.step()
    assert h.agent.last is not None and h.agent.last.ok
    h.services.pop(bad.key)
    h.assert_in_step()
    h.put(endpoint_slice("web", "10.244.7.7"))
    h.put(dataclasses.replace(bad, ports=()))  # still bad: still left out
    h.step()
    assert h.agent.last is not None and h.agent.last.ok
    h.services.pop(bad.key)
    h.assert_in_step()


def test_node_change_makes_a_full_sync_and_sets_eligibility() -> None:
    h = Harness()
    h.start([WEB], [WEB_SLICE])
    h.step()
    h.tracker.node.replace({"n1": Node(name="n1", to_be_deleted=True)})
    h.tracker.node.listed()
    h.step()
    assert h.agent.last is not None and h.agent.last.full
    assert h.health.healthz()[0] == 503


def test_node_cidr_masquerade_rule_follows_the_node_object() -> None:
    import ipaddress

    def masquerade_rules() -> list[str]:
        rules = h.kernel.read_rules(IPFamily.V4).tables["nat"]["KUBE-SERVICES"]
        return [rule for rule in rules if "KUBE-CLUSTER-IP" in rule and "MARK-MASQ" in rule]

    h = Harness(desired=DesiredSettings(masquerade=MasqueradeSettings(node_cidrs=True)))
    h.start([WEB], [WEB_SLICE])
    h.step()
    # No Node yet: no detector, only VIP-sourced node traffic is masqueraded.
    assert [r.split(" -j")[0].endswith("src,dst") for r in masquerade_rules()] == [True]
    pods = (ipaddress.ip_network("10.244.3.0/24"), ipaddress.ip_network("fd00:3::/64"))
    h.tracker.node.replace({"n1": Node(name="n1", pod_cidrs=pods)})
    h.tracker.node.listed()
    h.step()
    assert h.agent.last is not None and h.agent.last.full and h.agent.last.ok
    (rule,) = masquerade_rules()
    assert rule.startswith("! -s 10.244.3.0/24 ") and "dst,dst -j KUBE-MARK-MASQ" in rule
    # A partial sync that empties and refills the cluster IP set keeps the Node's CIDR.
    h.remove(WEB)
    h.step()
    h.put(WEB)
    h.step()
    assert h.agent.last is not None and not h.agent.last.full
    assert masquerade_rules() == [rule]


@pytest.mark.parametrize(
    ("timeout", "connections", "weights", "reads"),
    [
        (900.0, 0, [1], 1),  # idle: deleted in the same partial sync, as kube-proxy does
        (900.0, 3, [1, 0], 1),  # busy: drains at weight 0
        (0.0, 3, [1], 0),  # graceful termination off: deleted without reading counters
    ],
)
def test_partial_sync_deletes_idle_and_drains_busy_real_servers(
    timeout: float, connections: int, weights: list[int], reads: int
) -> None:
    h = Harness(drain_timeout=timeout)
    h.start([WEB], [WEB_SLICE])
    h.step()
    ((virtual, servers),) = h.kernel.destinations.items()
    leaving = next(key for key in servers if str(key.address) != "10.244.1.1")
    h.kernel.set_connections(virtual, leaving, active=connections)
    h.kernel.real_server_reads = 0
    h.put(endpoint_slice("web", "10.244.1.1"))
    h.step()
    assert h.agent.last is not None and not h.agent.last.full and h.agent.last.ok
    assert [server.weight for server in h.kernel.destinations[virtual].values()] == weights
    # Counters are read for the one virtual server that lost a TCP real server only.
    assert h.kernel.real_server_reads == reads


V4 = {"ip_family": "IPv4"}  # kube-proxy labels its sync metrics by family


def test_metrics_and_health_follow_the_syncs() -> None:
    h = Harness()
    h.start([WEB], [WEB_SLICE])
    h.step()
    h.wall = 1010.0
    changed = dataclasses.replace(endpoint_slice("web", "10.244.1.1"), trigger_time=1010.0 - 0.25)
    h.put(changed)
    assert h.metrics.service_changes_pending._value.get() == 0
    assert h.metrics.endpoint_changes_pending._value.get() == 1
    h.step()
    assert h.metrics.endpoint_changes_pending._value.get() == 0
    registry = h.metrics.registry
    assert (
        registry.get_sample_value("kubeproxy_sync_partial_proxy_rules_duration_seconds_count", V4)
        == 1
    )
    assert (
        registry.get_sample_value("kubeproxy_sync_full_proxy_rules_duration_seconds_count", V4) == 1
    )
    assert (
        registry.get_sample_value("kubeproxy_network_programming_duration_seconds_count", V4) == 1
    )
    assert (
        registry.get_sample_value("kubeproxy_network_programming_duration_seconds_sum", V4) == 0.25
    )
    assert h.health.healthz()[0] == 200


def test_traffic_labels_follow_applied_services() -> None:
    h = Harness()
    h.start([WEB], [WEB_SLICE])
    h.step()
    (key,) = h.kernel.services
    assert h.agent.labels_for(key) == ("default", "web", "http", "TCP")
    moved = service("web", "10.96.0.10", ports=(("web", "TCP", 8080),))
    h.put(moved)
    h.step()
    assert h.agent.labels_for(key) is None
    (new_key,) = h.kernel.services
    assert h.agent.labels_for(new_key) == ("default", "web", "web", "TCP")
    h.remove(moved)
    h.step()
    assert h.agent.labels == {}


def test_one_endpoint_change_among_10000_services_touches_only_that_service() -> None:
    services = [
        service(f"s{i}", f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(10_000)
    ]
    slices = [endpoint_slice(f"s{i}", f"10.244.{i // 256 % 256}.{i % 256}") for i in range(10_000)]
    h = Harness()
    h.start(services, slices)
    h.step()
    assert len(h.kernel.services) == 10_000
    writes, restores = h.kernel.writes, h.kernel.tables[IPFamily.V4]
    restored: list[object] = []
    original_restore = h.kernel.restore

    def counted_restore(op: object) -> object:
        restored.append(op)
        return original_restore(op)  # type: ignore[arg-type]

    h.kernel.restore = counted_restore  # type: ignore[method-assign]
    h.put(endpoint_slice("s4242", "10.244.16.146", "10.250.0.1"))
    h.step()
    assert h.agent.last is not None and not h.agent.last.full
    assert h.agent.last.services == 1 and h.agent.last.operations == 1
    assert h.kernel.writes - writes == 1  # one AddRealServer message
    assert restored == [] and restores is h.kernel.tables[IPFamily.V4]


def test_node_ports_follow_the_host_addresses_read_at_full_syncs() -> None:
    import ipaddress

    kernel = FakeKernel()
    kernel.links["eth0"] = {ipaddress.ip_address("192.168.1.5")}
    h = Harness(kernel=kernel)
    node_port = dataclasses.replace(
        WEB, type="NodePort", ports=(ServicePort("http", WEB.ports[0].protocol, 80, 30080),)
    )
    h.start([node_port], [WEB_SLICE])
    h.step()
    served = {(k.address, k.port) for k in kernel.services}
    assert (ipaddress.ip_address("192.168.1.5"), 30080) in served
    h.assert_in_step()
    # A partial sync reuses the addresses the last full sync read.
    h.put(endpoint_slice("web", "10.244.1.1", "10.244.7.7"))
    h.step()
    assert h.agent.last is not None and not h.agent.last.full
    h.assert_in_step()
    kernel.links["eth0"].add(ipaddress.ip_address("192.168.1.6"))
    h.clock.t += 30
    h.step()
    assert h.agent.last.full
    h.assert_in_step()
    assert (ipaddress.ip_address("192.168.1.6"), 30080) in {
        (k.address, k.port) for k in kernel.services
    }


def test_health_check_ports_follow_their_services() -> None:
    served: list[dict[int, tuple[str, int]]] = []
    refuse = {32000}  # the first attempt to bind the port fails

    def serve(ports: Mapping[int, tuple[str, int]]) -> list[int]:
        served.append(dict(ports))
        failed = [port for port in ports if port in refuse]
        refuse.clear()
        return failed

    h = Harness()
    h.agent._serve_health_checks = serve
    lb = dataclasses.replace(
        service("lb", "10.96.0.20"),
        type="LoadBalancer",
        external_traffic_local=True,
        health_check_node_port=32000,
    )
    local_one = endpoint_slice("lb", ("10.244.1.1", True, "n1"), ("10.244.2.1", True, "n2"))
    h.start([WEB, lb], [WEB_SLICE, local_one])
    h.step()
    assert served == [{32000: ("default/lb", 1)}]
    h.put(dataclasses.replace(WEB_SLICE, endpoints=WEB_SLICE.endpoints[:1]))
    h.step()  # the port that failed is not tried again at once
    assert served == [{32000: ("default/lb", 1)}]
    h.clock.t += 5.0  # retry interval
    h.put(WEB_SLICE)
    h.step()  # a sync that changes nothing of lb then retries it
    assert served == [{32000: ("default/lb", 1)}] * 2
    h.put(endpoint_slice("lb", ("10.244.1.1", True, "n1"), ("10.244.1.2", True, "n1")))
    h.step()  # partial: only lb recomputed
    assert served[-1] == {32000: ("default/lb", 2)}
    h.put(dataclasses.replace(WEB_SLICE, endpoints=WEB_SLICE.endpoints[:1]))
    h.step()
    assert len(served) == 3  # served ports are not served again
    h.remove(lb)
    h.step()
    assert served[-1] == {}
