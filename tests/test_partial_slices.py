"""Partial syncs of Services with many EndpointSlices, one slice changing at a time.

The diff of such a Service reads only the slices' parts that changed
(endpoints.MergedServers); after every step the kernel and the cache must equal a full
sync's, and the operations must be those of a diff that compares every real server.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random

from test_partial import dataplanes, full_sync, kernel_state, states

from ipvsproxy.agent.apply import apply_plan
from ipvsproxy.core.desired import DesiredSettings, ServiceState
from ipvsproxy.core.endpoints import MergedServers
from ipvsproxy.core.model import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    IPFamily,
    Protocol,
    Service,
    ServicePort,
)
from ipvsproxy.core.partial_plan import AppliedCache, plan_partial
from ipvsproxy.dataplane.fake import FakeKernel

SETTINGS = DesiredSettings()


def big_service(name: str, ip: str) -> Service:
    return Service(
        namespace="default",
        name=name,
        type="ClusterIP",
        cluster_ips=(ipaddress.ip_address(ip),),
        ports=(ServicePort("http", Protocol.TCP, 80), ServicePort("dns", Protocol.UDP, 53)),
    )


def random_slice(rng: random.Random, service: str, index: int) -> EndpointSlice:
    base = ipaddress.ip_address("10.2.0.0") + (256 if service == "big" else 512)
    endpoints = []
    for _ in range(rng.randint(0, 20)):
        # Mostly addresses of this slice's own; sometimes one of a neighbour's.
        owner = index if rng.random() < 0.95 else rng.randrange(8)
        ready = rng.random() < 0.85
        endpoints.append(
            Endpoint(
                base + 30 * owner + rng.randint(0, 25),
                ready=ready,
                serving=ready or rng.random() < 0.5,
                terminating=not ready,
                node_name=rng.choice(["n1", "n2", "n3"]),
            )
        )
    ports = (EndpointPort("http", Protocol.TCP, 8080), EndpointPort("dns", Protocol.UDP, 5353))
    return EndpointSlice(
        "default", f"{service}-{index}", service, IPFamily.V4, ports, tuple(endpoints)
    )


def plain(state: ServiceState) -> ServiceState:
    """The state with every real server mapping a plain dict: the diff compares all."""
    return dataclasses.replace(
        state, real_servers={k: dict(v) for k, v in state.real_servers.items()}
    )


def test_big_services_changing_one_slice_at_a_time_match_full_syncs() -> None:
    rng = random.Random(3)
    services = [big_service("big", "10.96.1.1"), big_service("huge", "10.96.1.2")]
    slices = {(svc.name, i): random_slice(rng, svc.name, i) for svc in services for i in range(8)}
    kernel = FakeKernel()
    cache = full_sync(kernel, services, list(slices.values()))
    merged = 0
    for step in range(80):
        for _ in range(rng.randint(1, 2)):
            svc = rng.choice(services)
            index = rng.randrange(8)
            if rng.random() < 0.1:
                slices.pop((svc.name, index), None)  # a slice goes
            else:
                slices[(svc.name, index)] = random_slice(rng, svc.name, index)
        current = list(slices.values())
        new = states(services, current)
        merged += sum(
            isinstance(servers, MergedServers)
            for state in new.values()
            for servers in state.real_servers.values()
        )
        planned = plan_partial(cache, new, settings=SETTINGS)
        # The same operations, in the same order, as comparing every real server.
        flat = AppliedCache.rebuild(
            [(k, plain(s)) for k, s in cache.states.items()], cache.iptables
        )
        compared = plan_partial(flat, {k: plain(s) for k, s in new.items()}, settings=SETTINGS)
        assert planned.plan == compared.plan, step
        result = apply_plan(planned.plan, dataplanes(kernel))
        assert result.ok, result.failures
        cache.commit(planned.delta)
        reference = FakeKernel()
        rebuilt = full_sync(reference, services, current)
        assert kernel_state(kernel) == kernel_state(reference)
        assert cache == rebuilt
    assert merged > 100  # the diff of parts was taken, not only the plain one
