"""Kernel faults under the agent (fake kernel, fake clock): netlink ENOMEM and EBUSY
answers, iptables-restore failing, a scheduler module the kernel cannot load, another
tool's virtual servers. Each is reported once however long it lasts, retried, and costs
no other Service anything; /healthz turns unhealthy only when a change the agent was
asked for stays unapplied past its timeout, and healthy again once it lands.

A scheduler missing at start is refused before anything is touched: see
tests/kernel/test_backends_kernel.py and test_cli_kernel.py for that in the real kernel.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from ipaddress import ip_address

import pytest
from agentrig import Harness
from builders import endpoint_slice, service
from loguru import logger

from ipvsproxy.core.model import IPFamily, Protocol, VirtualServer, VirtualServerKey
from ipvsproxy.core.operations import (
    AddRealServer,
    AddVirtualServer,
    DeleteVirtualServer,
    IpvsOperation,
)
from ipvsproxy.dataplane.fake import FakeKernel

WEB = service("web", "10.96.0.10")
WEB_SLICE = endpoint_slice("web", "10.244.1.1", "10.244.2.1")
CART = service("cart", "10.96.0.11")
CART_SLICE = endpoint_slice("cart", "10.244.3.1")


class FlakyKernel(FakeKernel):
    """Answers IPVS requests on chosen virtual servers with an errno while `errors` says so."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: dict[tuple[type, str], int] = {}  # (operation type, address) -> errno
        self.missing_schedulers: set[str] = set()

    def _ipvs(self, op: IpvsOperation) -> int:
        key = op.server.key if isinstance(op, AddVirtualServer) else getattr(op, "virtual", None)
        if isinstance(op, DeleteVirtualServer):
            key = op.key
        address = str(key.address) if isinstance(key, VirtualServerKey) else ""
        code = self.errors.get((type(op), address))
        if code:
            return code
        if isinstance(op, AddVirtualServer) and op.server.scheduler in self.missing_schedulers:
            return errno.ENOENT
        return super()._ipvs(op)


@pytest.fixture
def errors() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING", format="{message} {extra}")
    yield lines
    logger.remove(sink)


def servers(h: Harness, ip: str) -> set[str]:
    key = VirtualServerKey(ip_address(ip), Protocol.TCP, 80)
    return {f"{rs.address}" for rs in h.kernel.destinations.get(key, {}).values() if rs.weight}


def fail_for_a_while(h: Harness, rounds: int = 6) -> None:
    """Syncs at the retry interval for a while; the agent keeps retrying."""
    for _ in range(rounds):
        h.clock.t += 5.0
        h.wall += 5.0
        h.step()


@pytest.mark.parametrize("code", [errno.ENOMEM, errno.EBUSY])
def test_netlink_errors_on_one_service_cost_no_other(code: int, errors: list[str]) -> None:
    h = Harness(kernel=FlakyKernel())
    kernel = h.kernel
    assert isinstance(kernel, FlakyKernel)
    h.start([WEB, CART], [WEB_SLICE, CART_SLICE])
    h.step()
    kernel.errors = {(AddRealServer, "10.96.0.11"): code}
    h.put(endpoint_slice("cart", "10.244.3.1", "10.244.3.2"))
    h.put(endpoint_slice("web", "10.244.1.1", "10.244.2.1", "10.244.9.9"))  # same sync
    h.step()
    assert h.agent.last is not None and not h.agent.last.ok
    fail_for_a_while(h)
    # web's change landed in the very sync that failed for cart; cart keeps what it had.
    assert servers(h, "10.96.0.10") == {"10.244.1.1", "10.244.2.1", "10.244.9.9"}
    assert servers(h, "10.96.0.11") == {"10.244.3.1"}
    failed = [line for line in errors if "sync failed" in line]
    assert len(failed) == 1, failed
    assert errno.errorcode[code] in failed[0]
    kernel.errors = {}
    fail_for_a_while(h, rounds=1)
    assert h.agent.last.ok
    h.assert_in_step()
    assert sum("sync succeeded again" in line for line in errors) == 0  # info, below WARNING


def test_a_delete_refused_keeps_the_address_then_converges() -> None:
    h = Harness(kernel=FlakyKernel())
    kernel = h.kernel
    assert isinstance(kernel, FlakyKernel)
    h.start([WEB, CART], [WEB_SLICE, CART_SLICE])
    h.step()
    kernel.errors = {(DeleteVirtualServer, "10.96.0.11"): errno.EBUSY}
    h.remove(CART)
    h.remove(CART_SLICE)
    h.step()
    fail_for_a_while(h)
    # Ownership holds: a virtual server that could not be deleted keeps its address.
    cart = ip_address("10.96.0.11")
    assert any(key.address == cart for key in kernel.services)
    assert cart in kernel.links["kube-ipvs0"]
    assert servers(h, "10.96.0.10") == {"10.244.1.1", "10.244.2.1"}
    kernel.errors = {}
    fail_for_a_while(h, rounds=1)
    h.assert_in_step()


def test_iptables_restore_failing_is_reported_once_and_health_tells(errors: list[str]) -> None:
    h = Harness()
    h.start([WEB, CART], [WEB_SLICE, CART_SLICE])
    h.step()
    h.kernel.fail_restore = True
    nat = h.kernel.tables[IPFamily.V4]["nat"]
    nat["KUBE-SERVICES"] = []  # drift only a restore repairs
    h.clock.t += 31.0  # a full sync, which restores the chains
    h.step()
    assert h.agent.last is not None and not h.agent.last.ok
    h.remove(CART)  # waits for a sync that succeeds: every sync is full until one does
    h.remove(CART_SLICE)
    assert h.health.is_healthy(h.wall)
    fail_for_a_while(h, rounds=13)  # 65 s: past the 60 s health timeout
    assert not h.health.is_healthy(h.wall)
    assert sum("sync failed" in line for line in errors) == 1
    # Removals wait for a sync that succeeds: cart still serves, web untouched.
    assert servers(h, "10.96.0.11") == {"10.244.3.1"}
    assert servers(h, "10.96.0.10") == {"10.244.1.1", "10.244.2.1"}
    h.kernel.fail_restore = False
    fail_for_a_while(h, rounds=1)
    assert h.agent.last.ok and h.health.is_healthy(h.wall)
    h.assert_in_step()


def test_a_scheduler_module_the_kernel_cannot_load(errors: list[str]) -> None:
    h = Harness(kernel=FlakyKernel())
    kernel = h.kernel
    assert isinstance(kernel, FlakyKernel)
    h.start([WEB], [WEB_SLICE])
    h.step()
    kernel.missing_schedulers = {"rr"}  # the module went away after start
    h.put(CART)
    h.put(CART_SLICE)
    h.step()
    fail_for_a_while(h)
    assert sum("sync failed" in line for line in errors) == 1
    assert "ENOENT" in errors[0]
    assert servers(h, "10.96.0.10") == {"10.244.1.1", "10.244.2.1"}
    assert not any(key.address == ip_address("10.96.0.11") for key in kernel.services)
    kernel.missing_schedulers = set()
    fail_for_a_while(h, rounds=1)
    h.assert_in_step()


def test_another_tools_virtual_servers_come_and_go_untouched() -> None:
    h = Harness()
    h.start([WEB], [WEB_SLICE])
    h.step()
    foreign = VirtualServer(ip_address("192.0.2.10"), Protocol.TCP, 443, scheduler="wlc")
    for round_ in range(6):
        if round_ % 2 == 0:
            h.kernel._ipvs(AddVirtualServer(foreign))  # keepalived adds its own
        else:
            h.kernel._ipvs(DeleteVirtualServer(foreign.key))
        h.put(endpoint_slice("web", "10.244.1.1", f"10.244.2.{round_ + 1}"))
        h.step()
        h.clock.t += 31.0  # and a full sync each round
        h.step()
        assert (foreign.key in h.kernel.services) == (round_ % 2 == 0)
        assert servers(h, "10.96.0.10") == {"10.244.1.1", f"10.244.2.{round_ + 1}"}
