"""An agent on the fake kernel and a fake clock, fed the way the reflectors feed it, and
the reference a scenario ends on: a fresh kernel given one full sync of the same objects.
Shared by the agent, kernel-fault and soak tests."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from ipvsproxy.agent.full_sync import full_sync, observe
from ipvsproxy.agent.sync_loop import Agent, AgentSettings
from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
from ipvsproxy.core.graceful import DEFAULT_DRAIN_TIMEOUT
from ipvsproxy.core.model import (
    EndpointSlice,
    IPAddress,
    IPFamily,
    KernelState,
    RulesBackend,
    Service,
)
from ipvsproxy.dataplane.fake import FakeConntrack, FakeKernel, fake_dataplanes
from ipvsproxy.dataplane.interfaces import Dataplanes, RulesDataplane
from ipvsproxy.serve.metrics import ProxyMetrics
from ipvsproxy.serve.proxy_health import ProxyHealth

NODE = NodeInfo(name="n1")


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t


def dataplanes(
    kernel: FakeKernel,
    conntrack: FakeConntrack | None = None,
    backend: RulesBackend = RulesBackend.IPTABLES,
    rules: RulesDataplane | None = None,
) -> Dataplanes:
    """The fake kernel's adapters; with `rules`, a real rules backend beside it."""
    planes = fake_dataplanes(kernel, backend, conntrack=conntrack)
    return planes if rules is None else dataclasses.replace(planes, rules=rules)


def kernel_state(kernel: FakeKernel, backend: RulesBackend = RulesBackend.IPTABLES) -> KernelState:
    return observe(dataplanes(kernel, backend=backend), tuple(IPFamily))


def without_draining(state: KernelState) -> KernelState:
    """The state less the real servers at weight 0: a partial sync quiesces a leaving TCP
    server (graceful termination), the next full sync deletes it once it is idle."""
    return dataclasses.replace(
        state,
        real_servers={
            key: {k: rs for k, rs in servers.items() if rs.weight}
            for key, servers in state.real_servers.items()
        },
    )


def reference(
    services: Sequence[Service],
    slices: Sequence[EndpointSlice],
    local: frozenset[IPAddress] = frozenset(),
    backend: RulesBackend = RulesBackend.IPTABLES,
) -> KernelState:
    kernel = FakeKernel()
    node = dataclasses.replace(NODE, local_addresses=local)
    settings = DesiredSettings(rules_backend=backend)
    desired = desired_state(services, slices, node=node, settings=settings)
    assert full_sync(desired, dataplanes(kernel, backend=backend)).result.ok
    return kernel_state(kernel, backend)


class Harness:
    """An agent on a fake kernel and a fake clock, with the reflectors' calls at hand."""

    def __init__(
        self,
        *,
        min_sync_period: float = 0.0,
        kernel: FakeKernel | None = None,
        desired: DesiredSettings | None = None,
        conntrack: FakeConntrack | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        sync_period_jitter: float = 0.0,  # exact periods, unless a test is about them
        rng: random.Random | None = None,
        backend: RulesBackend = RulesBackend.IPTABLES,
        rules: RulesDataplane | None = None,
    ) -> None:
        self.kernel = kernel or FakeKernel()
        self.backend = backend
        self.clock = FakeClock()
        self.metrics = ProxyMetrics()
        self.wall = 1000.0  # seconds since the epoch, for trigger times and health
        self.health = ProxyHealth(health_timeout=60, clock=lambda: self.wall)
        self.agent = Agent(
            dataplanes(self.kernel, conntrack, backend, rules),
            AgentSettings(
                desired=desired or DesiredSettings(),
                node=NODE,
                sync_period=30.0,
                min_sync_period=min_sync_period,
                drain_timeout=drain_timeout,
                sync_period_jitter=sync_period_jitter,
            ),
            metrics=self.metrics,
            health=self.health,
            clock=self.clock,
            wall_clock=lambda: self.wall,
            rng=rng,
        )
        self.tracker = self.agent.tracker
        self.services: dict[str, Service] = {}
        self.slices: dict[str, EndpointSlice] = {}

    def start(self, services: Sequence[Service] = (), slices: Sequence[EndpointSlice] = ()) -> None:
        self.services = {s.key: s for s in services}
        self.slices = {s.key: s for s in slices}
        self.tracker.services.replace(dict(self.services))
        self.tracker.services.listed()
        self.tracker.slices.replace(dict(self.slices))
        self.tracker.slices.listed()

    def put(self, obj: Service | EndpointSlice) -> None:
        if isinstance(obj, Service):
            self.services[obj.key] = obj
            self.tracker.services.upsert(obj.key, obj)
        else:
            self.slices[obj.key] = obj
            self.tracker.slices.upsert(obj.key, obj)

    def remove(self, obj: Service | EndpointSlice) -> None:
        if isinstance(obj, Service):
            del self.services[obj.key]
            self.tracker.services.delete(obj.key)
        else:
            del self.slices[obj.key]
            self.tracker.slices.delete(obj.key)

    def step(self) -> bool:
        """What the worker does when woken: run a sync if one is due."""
        return self.agent.runner.step()

    def assert_in_step(self) -> None:
        local = self.kernel.node_addresses("kube-ipvs0")
        assert without_draining(kernel_state(self.kernel, self.backend)) == reference(
            list(self.services.values()), list(self.slices.values()), local, self.backend
        )
