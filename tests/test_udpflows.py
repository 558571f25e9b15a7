"""Stale UDP conntrack entries in the agent: which syncs dump the table, what they delete."""

from __future__ import annotations

import dataclasses
import ipaddress

from agentrig import Harness
from builders import endpoint_slice, service

from ipvsproxy.agent.changes import ServiceInput
from ipvsproxy.agent.stale_udp_flows import StaleUdpFlows
from ipvsproxy.core.model import IPFamily, Protocol, ServicePort
from ipvsproxy.core.stale_udp import ConntrackEntry
from ipvsproxy.dataplane.fake import FakeConntrack
from ipvsproxy.logs import RepeatedLog

DNS = service("dns", "10.96.0.53", ports=(("dns", "UDP", 53),))
PORTS = (("dns", "UDP", 5353),)
WEB = service("web", "10.96.0.10")


def flow(client: str, vip: str, port: int, backend: str, target: int) -> ConntrackEntry:
    """A UDP flow from client to vip:port that IPVS sent to backend:target."""
    ip = ipaddress.ip_address
    return ConntrackEntry(
        Protocol.UDP, ip(client), ip(vip), 40000, port, ip(backend), ip(client), target, 40000
    )


TO_OLD = flow("10.244.0.2", "10.96.0.53", 53, "10.244.1.9", 5353)
TO_NEW = flow("10.244.0.3", "10.96.0.53", 53, "10.244.2.9", 5353)
ELSEWHERE = flow("10.244.0.4", "10.96.0.99", 53, "10.244.1.9", 5353)  # not a Service


def test_removed_endpoint_flows_are_deleted_after_the_partial_sync() -> None:
    conntrack = FakeConntrack([TO_OLD, ELSEWHERE])
    h = Harness(conntrack=conntrack)
    h.start([DNS, WEB], [endpoint_slice("dns", "10.244.1.9", ports=PORTS)])
    h.step()  # first sync: every UDP frontend is new to the agent, one dump
    assert conntrack.dumps == [IPFamily.V4] and conntrack.table == [TO_OLD, ELSEWHERE]

    h.put(endpoint_slice("dns", "10.244.1.9", "10.244.2.9", ports=PORTS))  # one more
    h.put(endpoint_slice("web", "10.244.5.5"))  # a TCP Service
    h.step()
    assert h.agent.last is not None and not h.agent.last.full
    assert conntrack.dumps == [IPFamily.V4]  # nothing can be stale: no dump

    conntrack.table.append(TO_NEW)
    h.put(endpoint_slice("dns", "10.244.2.9", ports=PORTS))  # the first one goes
    h.step()
    assert h.agent.last is not None and not h.agent.last.full and h.agent.last.ok
    assert conntrack.dumps == [IPFamily.V4, IPFamily.V4]
    assert conntrack.deleted == [TO_OLD]
    assert conntrack.table == [ELSEWHERE, TO_NEW]


def test_first_endpoint_clears_flows_made_while_there_was_none() -> None:
    # While a Service has no endpoint, IPVS answers itself: the reply comes from the VIP.
    waiting = flow("10.244.0.2", "10.96.0.53", 53, "10.96.0.53", 53)
    conntrack = FakeConntrack([waiting])
    h = Harness(conntrack=conntrack)
    h.start([DNS], [])
    h.step()
    assert conntrack.dumps == []  # no serving endpoint: nowhere better to send them
    h.put(endpoint_slice("dns", "10.244.1.9", ports=PORTS))
    h.step()
    assert conntrack.deleted == [waiting]


def test_node_port_flows_are_matched_on_any_address() -> None:
    conntrack = FakeConntrack()
    flows = StaleUdpFlows(conntrack, log=RepeatedLog())
    node_port = dataclasses.replace(DNS, ports=(ServicePort("dns", Protocol.UDP, 53, 30053),))
    old = endpoint_slice("dns", "10.244.1.9", ports=PORTS)
    flows.clear_after({node_port.key: ServiceInput(node_port, (old,))}, full=True)
    stale = flow("192.168.1.7", "192.168.1.5", 30053, "10.244.1.9", 5353)
    conntrack.table = [stale]
    new = endpoint_slice("dns", "10.244.2.9", ports=PORTS)
    assert flows.clear_after({node_port.key: ServiceInput(node_port, (new,))}, full=False) == 1
    assert conntrack.table == []


def test_refused_clean_up_is_logged_and_retried_at_the_next_full_sync() -> None:
    conntrack = FakeConntrack([TO_OLD])
    h = Harness(conntrack=conntrack)
    h.start([DNS], [endpoint_slice("dns", "10.244.1.9", ports=PORTS)])
    h.step()
    conntrack.fail = True
    h.put(endpoint_slice("dns", "10.244.2.9", ports=PORTS))
    h.step()
    assert h.agent.last is not None and h.agent.last.ok  # the sync itself stands
    assert conntrack.table == [TO_OLD]
    conntrack.fail = False
    h.step()
    assert conntrack.table == [TO_OLD]  # nothing changed, no sync
    h.clock.t += 30
    h.step()
    assert h.agent.last is not None and h.agent.last.full
    assert conntrack.table == []


def test_deleted_service_is_forgotten() -> None:
    conntrack = FakeConntrack()
    flows = StaleUdpFlows(conntrack, log=RepeatedLog())
    old = endpoint_slice("dns", "10.244.1.9", ports=PORTS)
    flows.clear_after({DNS.key: ServiceInput(DNS, (old,))}, full=True)
    flows.clear_after({DNS.key: ServiceInput(None, ())}, full=False)
    # Back with the same endpoint: new to the agent again, so its flows are checked.
    flows.clear_after({DNS.key: ServiceInput(DNS, (old,))}, full=False)
    assert conntrack.dumps == [IPFamily.V4, IPFamily.V4]


def test_each_familys_clean_up_is_reported_refused_ones_too() -> None:
    ticks = iter(range(100))
    flows = StaleUdpFlows(
        conntrack := FakeConntrack([TO_OLD]), log=RepeatedLog(), clock=lambda: float(next(ticks))
    )
    reports: list[tuple[IPFamily, float, int, bool]] = []

    def report(family: IPFamily, *, seconds: float, deleted: int, failed: bool) -> None:
        reports.append((family, seconds, deleted, failed))

    flows.report = report
    old = endpoint_slice("dns", "10.244.1.9", ports=PORTS)
    new = endpoint_slice("dns", "10.244.2.9", ports=PORTS)
    flows.clear_after({DNS.key: ServiceInput(DNS, (old,))}, full=True)
    assert reports == [(IPFamily.V4, 1.0, 0, False)]  # first seen: checked, nothing stale
    conntrack.fail = True
    assert flows.clear_after({DNS.key: ServiceInput(DNS, (new,))}, full=False) == 0
    assert reports[1:] == [(IPFamily.V4, 1.0, 0, True)]
    conntrack.fail = False
    assert flows.clear_after({DNS.key: ServiceInput(DNS, (new,))}, full=False) == 1  # retried
    assert reports[2:] == [(IPFamily.V4, 1.0, 1, False)]
