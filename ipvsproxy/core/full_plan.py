"""Diff desired against observed kernel state into an ordered list of minimal operations.

Ownership (ownership.py): a virtual server belongs to the proxy when its address is bound
to kube-ipvs0, or when the proxy's ipsets record it (NodePorts and other virtual servers
on host addresses). Both records are written before the virtual server and removed after
it, so this holds across crashes and restarts, and it leaves alone virtual servers that
other tools created. Virtual servers inside excludeCIDRs are never deleted.

Order keeps traffic flowing: the interface and addresses first, ipset entries before the
rules that match them, virtual servers before their real servers, removals last.

With the nftables backend the sets are the table's (KernelState.ipsets names them after
the ipsets they stand for) and the chains are fixed: a table missing or with other chains
is written whole in one transaction (ReplaceNftTable); otherwise only the elements that
differ are added (before IPVS) and deleted (after it), as ipset entries are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from ipvsproxy.core import ipsets
from ipvsproxy.core.gcpause import gc_paused
from ipvsproxy.core.graceful import DEFAULT_DRAIN_TIMEOUT, DrainKey, drain_step
from ipvsproxy.core.ipsets import all_set_names
from ipvsproxy.core.ipvs_diff import IpvsDiff, excluded
from ipvsproxy.core.model import (
    DUMMY_INTERFACE,
    IPNetwork,
    KernelState,
    RealServer,
    VirtualServerKey,
    address_sort_key,
)
from ipvsproxy.core.operations import (
    AddIPSetEntry,
    BindAddress,
    CreateIPSet,
    DeleteIPSetEntry,
    EnsureDummyInterface,
    EnsureSteering,
    Operation,
    ReplaceNftTable,
    RestoreChains,
    UnbindAddress,
)
from ipvsproxy.core.ownership import owned
from ipvsproxy.core.rules import JUMP_RULES


@dataclass(frozen=True, slots=True)
class Plan:
    """Operations in the order they must be applied, and the real servers left draining
    (with the time each drain started) for the next plan."""

    operations: tuple[Operation, ...]
    draining: Mapping[DrainKey, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.operations)

    def __len__(self) -> int:
        return len(self.operations)


def plan_sync(
    desired: KernelState,
    observed: KernelState,
    *,
    exclude_cidrs: Sequence[IPNetwork] = (),
    drains: Mapping[DrainKey, float] | None = None,
    now: float = 0.0,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    checkpoint: Callable[[], None] | None = None,
) -> Plan:
    """The operations that turn observed into desired (see module docstring).

    Real servers no longer wanted drain gracefully (see graceful.py): `drains` holds when
    each drain started, as the previous plan returned it, and `now` is the current time
    on the same (monotonic) clock. `checkpoint` is called between pieces of the work
    (every CHECKPOINT_EVERY virtual servers), so that the caller may do something else
    meanwhile (the agent's partial syncs); it must leave desired and observed alone.
    """
    draining: dict[DrainKey, float] = {}
    timing = _DrainTiming(drains or {}, now, drain_timeout, draining, checkpoint)
    with gc_paused():
        return Plan(tuple(_operations(desired, observed, exclude_cidrs, timing)), draining)


# About 10 ms of a 2-core machine's CPU per piece (a full sync's IPVS diff at 10k Services
# compares 13k virtual servers and 115k real servers in about 100 ms).
CHECKPOINT_EVERY: Final = 1000


@dataclass(frozen=True, slots=True)
class _DrainTiming:
    started: Mapping[DrainKey, float]
    now: float
    timeout: float
    draining: dict[DrainKey, float]  # filled in by the plan
    checkpoint: Callable[[], None] | None = None


def _operations(
    desired: KernelState,
    observed: KernelState,
    exclude_cidrs: Sequence[IPNetwork],
    timing: _DrainTiming,
) -> list[Operation]:
    ops: list[Operation] = []
    if not observed.dummy_interface:
        ops.append(EnsureDummyInterface(DUMMY_INTERFACE))

    ops += [
        BindAddress(a) for a in sorted(desired.addresses - observed.addresses, key=address_sort_key)
    ]
    ops += [EnsureSteering(f, mark) for f, mark in sorted(desired.steering - observed.steering)]

    set_specs = all_set_names()
    # nftables: a table whose chains differ, or that lacks a set, is written whole (its
    # sets holding the wanted entries and the stale ones, deleted below after IPVS as with
    # ipsets, so that a set entry recording a virtual server outlives it).
    replaced = _nft_tables(desired, observed)
    ops += replaced
    written = {name for op in replaced for name, _ in op.sets}
    for name, entries in desired.ipsets.items():
        if name in written:
            continue
        current = observed.ipsets.get(name)
        if current is None:
            if not desired.nftables:
                ops.append(CreateIPSet(name, set_specs[name][0].create_args(set_specs[name][1])))
            current = frozenset()
        ops += [AddIPSetEntry(name, e) for e in sorted(entries - current)]

    for family, ruleset in desired.iptables.items():
        seen = observed.iptables.get(family)
        seen_tables = seen.tables if seen is not None else {}
        missing_jumps = tuple(
            jump
            for jump in JUMP_RULES
            if jump.rule not in seen_tables.get(jump.table, {}).get(jump.chain, ())
        )
        chains_differ = any(
            seen_tables.get(table, {}).get(chain) != rules
            for table, chains in ruleset.tables.items()
            for chain, rules in chains.items()
        )
        if chains_differ or missing_jumps:
            ops.append(RestoreChains(ruleset, missing_jumps))

    ops += _ipvs_operations(desired, observed, exclude_cidrs, timing)

    ops += [
        UnbindAddress(a)
        for a in sorted(observed.addresses - desired.addresses, key=address_sort_key)
    ]
    for name, current in observed.ipsets.items():
        if name not in set_specs:
            continue
        wanted = desired.ipsets.get(name, frozenset())
        ops += [DeleteIPSetEntry(name, e) for e in sorted(current - wanted)]
    return ops


def _nft_tables(desired: KernelState, observed: KernelState) -> list[ReplaceNftTable]:
    """The nftables backend's tables to write whole: missing, lacking a set, or with
    chains other than the fixed ones (drift from outside). A table that differs only in
    set elements is repaired element by element instead."""
    ops: list[ReplaceNftTable] = []
    for family, chains in desired.nftables.items():
        names = [spec.name_for(family) for spec in ipsets.IPSETS]
        seen = observed.nftables.get(family)
        if seen == chains and all(name in observed.ipsets for name in names):
            continue
        sets = tuple(
            (
                name,
                frozenset(desired.ipsets.get(name, ())) | observed.ipsets.get(name, frozenset()),
            )
            for name in names
        )
        ops.append(ReplaceNftTable(family, sets, tuple(chains.items())))
    return ops


def _ipvs_operations(
    desired: KernelState,
    observed: KernelState,
    exclude_cidrs: Sequence[IPNetwork],
    timing: _DrainTiming,
) -> list[Operation]:
    def drain(key: VirtualServerKey, leaving: Sequence[RealServer]) -> Sequence[Operation]:
        step = drain_step(
            key, leaving, started=timing.started, now=timing.now, timeout=timing.timeout
        )
        timing.draining.update(step.draining)
        return step.operations

    diff = IpvsDiff(leave=drain)
    # Virtual servers go in address order; real servers keep the desired state's order,
    # which follows the input, so plans are deterministic without sorting 100k entries.
    checkpoint = timing.checkpoint
    for n, key in enumerate(sorted(desired.virtual_servers, key=lambda k: k.sort_key())):
        if checkpoint is not None and n % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1:
            checkpoint()
        current_server = observed.virtual_servers.get(key)
        diff.virtual_server(
            key,
            (desired.virtual_servers[key], desired.real_servers.get(key, {})),
            None
            if current_server is None
            else (current_server, observed.real_servers.get(key, {})),
        )
    stale = [
        key
        for key in observed.virtual_servers
        if key not in desired.virtual_servers
        and owned(key, observed.addresses, observed.ipsets)
        and not excluded(key.address, exclude_cidrs)
    ]
    for key in sorted(stale, key=lambda k: k.sort_key()):
        diff.virtual_server(key, None, (observed.virtual_servers[key], {}))
    return diff.operations()
