"""One sync: read the kernel, diff against the desired state, apply; and cleanup."""

from __future__ import annotations

import errno
import ipaddress
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from loguru import logger

from ipvsproxy.agent.apply import ApplyResult, apply_plan
from ipvsproxy.core.full_plan import Plan, plan_sync
from ipvsproxy.core.graceful import DEFAULT_DRAIN_TIMEOUT, DrainKey
from ipvsproxy.core.ipsets import all_set_names, steered
from ipvsproxy.core.model import (
    DUMMY_INTERFACE,
    IPFamily,
    IPNetwork,
    IptablesRuleset,
    KernelState,
    Protocol,
    VirtualServer,
)
from ipvsproxy.core.operations import AddVirtualServer, DeleteVirtualServer
from ipvsproxy.dataplane.interfaces import Dataplanes, IpvsDataplane
from ipvsproxy.errors import KernelError


def observe(dataplanes: Dataplanes, families: Sequence[IPFamily]) -> KernelState:
    """The kernel's current state, as far as the proxy may own it."""
    snapshot = dataplanes.ipvs.snapshot()
    iptables: dict[IPFamily, IptablesRuleset] = {
        family: dataplanes.iptables.read(family) for family in families
    }
    return KernelState(
        virtual_servers={key: server for key, (server, _) in snapshot.items()},
        real_servers={key: servers for key, (_, servers) in snapshot.items()},
        addresses=dataplanes.links.addresses(DUMMY_INTERFACE),
        ipsets=dataplanes.ipsets.read(all_set_names()),
        iptables=iptables,
        dummy_interface=dataplanes.links.interface_exists(DUMMY_INTERFACE),
        steering=dataplanes.links.steering(families),
    )


@dataclass(frozen=True, slots=True)
class SyncResult:
    plan: Plan
    result: ApplyResult


def sync(
    desired: KernelState,
    dataplanes: Dataplanes,
    *,
    exclude_cidrs: Sequence[IPNetwork] = (),
    drains: Mapping[DrainKey, float] | None = None,
    now: float | None = None,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
) -> SyncResult:
    """Make the kernel match the desired state; failures are returned, never swallowed.

    drains: when each real server still draining started, from the previous sync's
    plan (`result.plan.draining`); now: the monotonic clock, read here when None.
    """
    observed = observe(dataplanes, tuple(desired.iptables))
    plan = plan_sync(
        desired,
        observed,
        exclude_cidrs=exclude_cidrs,
        drains=drains,
        now=time.monotonic() if now is None else now,
        drain_timeout=drain_timeout,
    )
    result = apply_plan(plan, dataplanes)
    for failure in result.failures:
        logger.error(
            "kernel refused an operation",
            operation=type(failure.operation).__name__,
            error=failure.message,
        )
    if result.removals_skipped:
        logger.warning("removals postponed to a later sync: an earlier step failed")
    return SyncResult(plan=plan, result=result)


# kube-proxy's probe (CanUseIPVSProxier): a documentation address (RFC 5737), never bound
# to kube-ipvs0, so the probe is never mistaken for one of the proxy's virtual servers.
PROBE_ADDRESS = ipaddress.IPv4Address("198.51.100.0")
PROBE_PORT = 20000


def probe_scheduler(ipvs: IpvsDataplane, scheduler: str) -> str | None:
    """Whether the kernel can use `scheduler`: None if so, else why not.

    Like kube-proxy at start: unless a virtual server already uses the scheduler, create a
    throw-away one with it and delete it again. The kernel loads ip_vs_<scheduler> on
    demand and answers ENOENT when it has no such module.
    """
    if any(server.scheduler == scheduler for server, _ in ipvs.snapshot().values()):
        return None
    probe = VirtualServer(PROBE_ADDRESS, Protocol.TCP, PROBE_PORT, scheduler=scheduler)
    failures = ipvs.execute([AddVirtualServer(probe)])
    ipvs.execute([DeleteVirtualServer(probe.key)])
    if not failures:
        return None
    if failures[0].errno == errno.ENOENT:
        return (
            f"IPVS scheduler {scheduler!r} is not available: the kernel has no module "
            f"ip_vs_{scheduler} (try `modprobe ip_vs_{scheduler}`; kernel schedulers are "
            "rr wrr lc wlc lblc lblcr dh sh sed nq mh fo ovf twos)"
        )
    return f"IPVS scheduler {scheduler!r} cannot be used: {failures[0].message}"


def cleanup(dataplanes: Dataplanes) -> list[str]:
    """Remove everything the proxy created: its virtual servers, chains, ipsets, steering
    rules and routes, kube-ipvs0.

    Like `kube-proxy --cleanup`, except that virtual servers neither on addresses bound to
    kube-ipvs0 nor in KUBE-IPVS-STEERED belong to someone else and stay. Every step runs
    even if an earlier one failed; the reasons are returned. kube-ipvs0 is kept while a
    virtual server on its addresses could not be deleted, so a later cleanup still knows
    that server is ours.
    """
    problems: list[str] = []
    try:
        owned = dataplanes.links.addresses(DUMMY_INTERFACE)
        sets = dataplanes.ipsets.read(all_set_names())
        stale = [
            key for key in dataplanes.ipvs.snapshot() if key.address in owned or steered(sets, key)
        ]
        failures = dataplanes.ipvs.execute([DeleteVirtualServer(key) for key in stale])
        problems += [failure.message for failure in failures]
        virtual_servers_left = bool(failures)
    except KernelError as exc:
        problems.append(f"deleting virtual servers: {exc}")
        virtual_servers_left = True
    for family in IPFamily:
        try:
            dataplanes.links.remove_steering(family)
        except KernelError as exc:
            problems.append(f"removing IPv{family.value} steering rule and route: {exc}")
        # Rules first: the kernel refuses to destroy a set a rule still matches.
        try:
            dataplanes.iptables.remove(family)
        except KernelError as exc:
            problems.append(f"removing IPv{family.value} iptables chains: {exc}")
    try:
        problems += [f.message for f in dataplanes.ipsets.destroy(all_set_names())]
    except KernelError as exc:
        problems.append(f"destroying ipsets: {exc}")
    if virtual_servers_left:
        problems.append(f"{DUMMY_INTERFACE} kept: virtual servers on its addresses remain")
        return problems
    try:
        dataplanes.links.delete_interface(DUMMY_INTERFACE)
    except KernelError as exc:
        problems.append(f"deleting {DUMMY_INTERFACE}: {exc}")
    return problems
