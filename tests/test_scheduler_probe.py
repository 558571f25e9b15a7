"""The start-up scheduler probe against the fake kernel."""

from __future__ import annotations

from ipvsproxy.agent.scheduler_probe import PROBE_ADDRESS, probe_scheduler
from ipvsproxy.core.model import Protocol, VirtualServer
from ipvsproxy.core.operations import AddVirtualServer
from ipvsproxy.dataplane.fake import KNOWN_SCHEDULERS, FakeKernel


def test_every_kernel_scheduler_passes_and_leaves_nothing() -> None:
    kernel = FakeKernel()
    for scheduler in sorted(KNOWN_SCHEDULERS):
        assert probe_scheduler(kernel, scheduler) is None
    assert kernel.services == {}


def test_missing_module_is_named() -> None:
    kernel = FakeKernel()
    problem = probe_scheduler(kernel, "nosuch")
    assert problem is not None
    assert "no module ip_vs_nosuch" in problem
    assert kernel.services == {}


def test_no_probe_when_a_virtual_server_uses_the_scheduler() -> None:
    kernel = FakeKernel()
    server = VirtualServer(PROBE_ADDRESS, Protocol.TCP, 1, scheduler="wlc")
    kernel.execute([AddVirtualServer(server)])
    writes = kernel.writes
    assert probe_scheduler(kernel, "wlc") is None
    assert kernel.writes == writes
