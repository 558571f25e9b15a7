"""The one full-sync path: read the kernel, diff it against the desired state, apply.

`ipvsproxy once` and the agent's full syncs (the first, the periodic ones, the retries) all
go through `full_sync`; the agent's partial syncs skip the read and diff against what they
last applied instead (core/partial_plan.py). A full sync adopts what the kernel holds and
rewrites nothing that is already right, so it also repairs whatever changed from outside.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ipvsproxy.agent.apply import ApplyResult, apply_plan
from ipvsproxy.core.full_plan import Plan, plan_sync
from ipvsproxy.core.gcpause import gc_paused
from ipvsproxy.core.graceful import DEFAULT_DRAIN_TIMEOUT, DrainKey
from ipvsproxy.core.model import DUMMY_INTERFACE, IPFamily, IPNetwork, KernelState
from ipvsproxy.dataplane.interfaces import Dataplanes


def observe(dataplanes: Dataplanes, families: Sequence[IPFamily]) -> KernelState:
    """The kernel's current state, as far as the proxy may own it."""
    snapshot = dataplanes.ipvs.snapshot()
    rules = dataplanes.rules.read(families)
    return KernelState(
        virtual_servers={key: server for key, (server, _) in snapshot.items()},
        real_servers={key: servers for key, (_, servers) in snapshot.items()},
        addresses=dataplanes.links.addresses(DUMMY_INTERFACE),
        ipsets=rules.sets,
        iptables=rules.iptables,
        nftables=rules.nftables,
        dummy_interface=dataplanes.links.interface_exists(DUMMY_INTERFACE),
        steering=dataplanes.links.steering(families),
    )


@dataclass(frozen=True, slots=True)
class SyncResult:
    plan: Plan
    result: ApplyResult


def full_sync(
    desired: KernelState,
    dataplanes: Dataplanes,
    *,
    exclude_cidrs: Sequence[IPNetwork] = (),
    drains: Mapping[DrainKey, float] | None = None,
    now: float | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    apply: Callable[[Plan], ApplyResult] | None = None,
    checkpoint: Callable[[], None] | None = None,
) -> SyncResult:
    """Make the kernel match the desired state; failures are returned, never swallowed.

    drains: when each real server still draining started, from the previous sync's plan
    (`result.plan.draining`); now: the monotonic clock, read here when None. apply: how
    the plan reaches the kernel (the agent counts what it sends, and leaves out what it
    changed meanwhile); by default apply_plan through `dataplanes`. checkpoint: called
    between pieces of the reading and planning (see plan_sync), for the agent's partial
    syncs to run meanwhile.
    """
    with gc_paused():
        observed = observe(dataplanes, desired.rule_families)
        if checkpoint is not None:
            checkpoint()
        plan = plan_sync(
            desired,
            observed,
            exclude_cidrs=exclude_cidrs,
            drains=drains,
            now=time.monotonic() if now is None else now,
            drain_timeout=drain_timeout,
            checkpoint=checkpoint,
        )
    del observed  # a full copy of the kernel's state: not kept while the plan is applied
    result = apply_plan(plan, dataplanes) if apply is None else apply(plan)
    return SyncResult(plan=plan, result=result)
