"""Graceful termination: the pure drain step, and whole syncs against the fake kernel."""

from __future__ import annotations

import ipaddress

import pytest
from builders import endpoint_slice, service

from ipvsproxy.agent.full_sync import full_sync
from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
from ipvsproxy.core.graceful import DrainKey, drain_step
from ipvsproxy.core.model import (
    EndpointSlice,
    KernelState,
    Protocol,
    RealServer,
    RealServerKey,
    Service,
    VirtualServerKey,
)
from ipvsproxy.core.operations import DeleteRealServer, UpdateRealServer
from ipvsproxy.dataplane.fake import FakeKernel, fake_dataplanes
from ipvsproxy.dataplane.interfaces import Dataplanes

TCP = VirtualServerKey(ipaddress.ip_address("10.96.0.10"), Protocol.TCP, 80)
UDP = VirtualServerKey(ipaddress.ip_address("10.96.0.10"), Protocol.UDP, 53)
SCTP = VirtualServerKey(ipaddress.ip_address("10.96.0.10"), Protocol.SCTP, 9)


def rs(ip: str, *, weight: int = 1, active: int = 0, inactive: int = 0) -> RealServer:
    return RealServer(
        ipaddress.ip_address(ip),
        8080,
        weight=weight,
        active_connections=active,
        inactive_connections=inactive,
    )


def described(ops: tuple[UpdateRealServer | DeleteRealServer, ...]) -> list[str]:
    out = []
    for op in ops:
        if isinstance(op, DeleteRealServer):
            out.append(f"delete {op.key.address}")
        else:
            out.append(f"weight {op.server.weight} {op.server.address}")
    return out


# (virtual server, leaving server, drain started (None: not yet), now) -> (ops, still draining)
STEPS = [
    pytest.param(TCP, rs("10.0.0.1"), None, 0.0, ["delete 10.0.0.1"], False, id="tcp-idle"),
    pytest.param(
        TCP, rs("10.0.0.1", active=2), None, 5.0, ["weight 0 10.0.0.1"], True, id="tcp-busy"
    ),
    pytest.param(
        TCP, rs("10.0.0.1", inactive=1), None, 5.0, ["weight 0 10.0.0.1"], True, id="tcp-timewait"
    ),
    pytest.param(
        TCP, rs("10.0.0.1", weight=0, active=1), 0.0, 899.0, [], True, id="tcp-draining-quietly"
    ),
    pytest.param(
        TCP,
        rs("10.0.0.1", weight=0, active=1),
        0.0,
        900.0,
        ["delete 10.0.0.1"],
        False,
        id="tcp-drain-bounded",
    ),
    pytest.param(
        TCP, rs("10.0.0.1", weight=0), 0.0, 10.0, ["delete 10.0.0.1"], False, id="tcp-drained"
    ),
    pytest.param(UDP, rs("10.0.0.1", active=3), None, 0.0, ["delete 10.0.0.1"], False, id="udp"),
    pytest.param(SCTP, rs("10.0.0.1", active=3), None, 0.0, ["delete 10.0.0.1"], False, id="sctp"),
]


@pytest.mark.parametrize(("virtual", "server", "started", "now", "ops", "draining"), STEPS)
def test_drain_step(
    virtual: VirtualServerKey,
    server: RealServer,
    started: float | None,
    now: float,
    ops: list[str],
    draining: bool,
) -> None:
    drains: dict[DrainKey, float] = {} if started is None else {(virtual, server.key): started}
    step = drain_step(virtual, [server], started=drains, now=now, timeout=900.0)
    assert described(step.operations) == ops
    expected = {(virtual, server.key): started if started is not None else now} if draining else {}
    assert step.draining == expected


def test_timeout_zero_turns_graceful_termination_off() -> None:
    step = drain_step(TCP, [rs("10.0.0.1", active=5)], started={}, now=0.0, timeout=0.0)
    assert described(step.operations) == ["delete 10.0.0.1"]
    assert step.draining == {}


def test_weight_zero_update_carries_no_counters() -> None:
    step = drain_step(TCP, [rs("10.0.0.1", active=5)], started={}, now=0.0)
    (op,) = step.operations
    assert isinstance(op, UpdateRealServer)
    assert op.server == RealServer(ipaddress.ip_address("10.0.0.1"), 8080, weight=0)


# --- whole syncs --------------------------------------------------------------------------

WEB = service("web", "10.96.0.10")
DNS = service("dns", "10.96.0.53", ports=(("dns", "UDP", 53),))
ONE = RealServerKey(ipaddress.ip_address("10.244.1.1"), 8080)
TWO = RealServerKey(ipaddress.ip_address("10.244.2.1"), 8080)


def want(services: list[Service], slices: list[EndpointSlice]) -> KernelState:
    return desired_state(services, slices, node=NodeInfo(name="n1"), settings=DesiredSettings())


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def dataplanes(kernel: FakeKernel) -> Dataplanes:
    return fake_dataplanes(kernel)


def weights(kernel: FakeKernel, virtual: VirtualServerKey) -> dict[str, int]:
    return {str(k.address): s.weight for k, s in kernel.destinations.get(virtual, {}).items()}


def test_busy_tcp_server_drains_then_goes(dataplanes: Dataplanes, kernel: FakeKernel) -> None:
    both = [endpoint_slice("web", "10.244.1.1", "10.244.2.1")]
    full_sync(want([WEB], both), dataplanes, now=0.0)
    kernel.set_connections(TCP, TWO, active=1)

    only_one = [endpoint_slice("web", "10.244.1.1")]
    first = full_sync(want([WEB], only_one), dataplanes, now=10.0)
    assert weights(kernel, TCP) == {"10.244.1.1": 1, "10.244.2.1": 0}
    assert first.plan.draining == {(TCP, TWO): 10.0}

    # Still busy: nothing to do, and the drain keeps its start time.
    again = full_sync(want([WEB], only_one), dataplanes, drains=first.plan.draining, now=20.0)
    assert not again.plan
    assert again.plan.draining == {(TCP, TWO): 10.0}

    kernel.set_connections(TCP, TWO, active=0)
    done = full_sync(want([WEB], only_one), dataplanes, drains=again.plan.draining, now=30.0)
    assert weights(kernel, TCP) == {"10.244.1.1": 1}
    assert done.plan.draining == {}


def test_drain_is_bounded(dataplanes: Dataplanes, kernel: FakeKernel) -> None:
    full_sync(want([WEB], [endpoint_slice("web", "10.244.1.1", "10.244.2.1")]), dataplanes, now=0.0)
    kernel.set_connections(TCP, TWO, active=1)
    only_one = want([WEB], [endpoint_slice("web", "10.244.1.1")])
    first = full_sync(only_one, dataplanes, now=100.0, drain_timeout=60.0)
    assert weights(kernel, TCP) == {"10.244.1.1": 1, "10.244.2.1": 0}
    late = full_sync(
        only_one, dataplanes, drains=first.plan.draining, now=160.0, drain_timeout=60.0
    )
    assert weights(kernel, TCP) == {"10.244.1.1": 1}
    assert late.plan.draining == {}


def test_returning_endpoint_gets_weight_one(dataplanes: Dataplanes, kernel: FakeKernel) -> None:
    both = want([WEB], [endpoint_slice("web", "10.244.1.1", "10.244.2.1")])
    full_sync(both, dataplanes, now=0.0)
    kernel.set_connections(TCP, TWO, active=1)
    first = full_sync(want([WEB], [endpoint_slice("web", "10.244.1.1")]), dataplanes, now=1.0)
    back = full_sync(both, dataplanes, drains=first.plan.draining, now=2.0)
    # Updated in place (kube-proxy deletes and re-adds it), its connections untouched.
    assert [type(op).__name__ for op in back.plan.operations] == ["UpdateRealServer"]
    assert weights(kernel, TCP) == {"10.244.1.1": 1, "10.244.2.1": 1}
    assert kernel.destinations[TCP][TWO].active_connections == 1
    assert back.plan.draining == {}


def test_udp_server_goes_at_once(dataplanes: Dataplanes, kernel: FakeKernel) -> None:
    ports = (("dns", "UDP", 53),)
    udp = VirtualServerKey(ipaddress.ip_address("10.96.0.53"), Protocol.UDP, 53)
    full_sync(
        want([DNS], [endpoint_slice("dns", "10.244.1.1", "10.244.2.1", ports=ports)]), dataplanes
    )
    kernel.set_connections(udp, RealServerKey(ipaddress.ip_address("10.244.2.1"), 53), active=4)
    full_sync(want([DNS], [endpoint_slice("dns", "10.244.1.1", ports=ports)]), dataplanes)
    assert weights(kernel, udp) == {"10.244.1.1": 1}


def test_deleted_service_takes_its_draining_servers(
    dataplanes: Dataplanes, kernel: FakeKernel
) -> None:
    full_sync(want([WEB], [endpoint_slice("web", "10.244.1.1", "10.244.2.1")]), dataplanes, now=0.0)
    kernel.set_connections(TCP, TWO, active=1)
    first = full_sync(want([WEB], [endpoint_slice("web", "10.244.1.1")]), dataplanes, now=1.0)
    gone = full_sync(want([], []), dataplanes, drains=first.plan.draining, now=2.0)
    assert TCP not in kernel.services
    assert gone.plan.draining == {}
