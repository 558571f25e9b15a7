"""Partial syncs: diff a few Services' new desired state against what was last applied.

`AppliedCache` keeps, per Service, the ServiceState the proxy last applied, plus who owns
each virtual server and reference counts of addresses and ipset entries across Services
(two Services may share an external IP, and with it a kube-ipvs0 address and set
entries). `plan_partial` turns the new ServiceStates of the Services that changed into
operations, in full_plan.py's order, without looking at the kernel or at any other Service:

- a virtual server's operations come from comparing its old owner's entry with its new
  owner's (normally the same Service), so a virtual server that moves between Services
  in one batch is updated, not deleted and re-added;
- an address is bound when its count goes 0 -> 1 and unbound at 1 -> 0, an ipset entry
  added or deleted likewise;
- the fixed chains are restored only when a set goes empty <-> non-empty (a rule that
  matches the set appears or disappears), or when the load-balancer firewall's entries
  change (KUBE-IPVS-OUT-FILTER has a rule per firewalled port the node may not reach).

The plan is applied with apply_plan (ownership rules included); the cache takes the
delta only when everything was applied. Anything else makes the next sync a full one,
which re-reads the kernel and rebuilds the cache (`AppliedCache.rebuild`).

When two Services claim one virtual server the first keeps it, as in a full sync; a
Service that loses such a claim gets the server at the next full sync after the winner
lets it go.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from loguru import logger

from ipvsproxy.core import ipsets
from ipvsproxy.core.desired import (
    EMPTY_SERVICE_STATE,
    DesiredSettings,
    ServiceState,
    desired_iptables,
)
from ipvsproxy.core.full_plan import Plan
from ipvsproxy.core.graceful import DEFAULT_DRAIN_TIMEOUT, leave_without_counters
from ipvsproxy.core.ipvs_diff import IpvsDiff, LeavePolicy, VirtualEntry, excluded
from ipvsproxy.core.model import (
    IPAddress,
    IPFamily,
    IPNetwork,
    IptablesRuleset,
    RealServer,
    VirtualServerKey,
    address_sort_key,
    host_port,
)
from ipvsproxy.core.operations import (
    AddIPSetEntry,
    BindAddress,
    DeleteIPSetEntry,
    EnsureSteering,
    Operation,
    RestoreChains,
    UnbindAddress,
)
from ipvsproxy.core.steering import steer_mark

SetEntry = tuple[str, str]  # (set name, entry)
K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


def real_server_removed(
    virtual: VirtualServerKey, server: RealServer, *, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
) -> list[Operation]:
    """The operations that take a real server out of a virtual server that stays.

    Graceful termination (graceful.py): a TCP server drains at weight 0 and the next full
    sync, which reads its connection counters, deletes it once idle or after the drain
    timeout; UDP and SCTP servers are deleted at once, and so is every server when the
    drain timeout is 0 (graceful termination off).
    """
    return [leave_without_counters(virtual, server, timeout=drain_timeout)]


@dataclass(slots=True)
class AppliedCache:
    """What the proxy last applied, per Service, with the counts shared objects need."""

    states: dict[str, ServiceState] = field(default_factory=dict)
    owners: dict[VirtualServerKey, str] = field(default_factory=dict)
    address_refs: dict[IPAddress, int] = field(default_factory=dict)
    entry_refs: dict[SetEntry, int] = field(default_factory=dict)
    set_sizes: dict[str, int] = field(default_factory=dict)  # distinct entries per set
    iptables: dict[IPFamily, IptablesRuleset] = field(default_factory=dict)

    @classmethod
    def rebuild(
        cls,
        states: Iterable[tuple[str, ServiceState]],
        iptables: Mapping[IPFamily, IptablesRuleset],
    ) -> AppliedCache:
        """The cache after a full sync applied these states (in merge_service_states' order)."""
        cache = cls(iptables=dict(iptables))
        for key, state in states:
            cache.states[key] = state
            for vs_key in state.virtual_servers:
                cache.owners.setdefault(vs_key, key)
            for address in state.addresses:
                cache.address_refs[address] = cache.address_refs.get(address, 0) + 1
            for entry in set(state.set_entries):
                count = cache.entry_refs.get(entry, 0)
                if not count:
                    cache.set_sizes[entry[0]] = cache.set_sizes.get(entry[0], 0) + 1
                cache.entry_refs[entry] = count + 1
        return cache

    def nonempty_sets(self) -> set[str]:
        return {name for name, size in self.set_sizes.items() if size}

    def commit(self, delta: CacheDelta) -> None:
        """Take in a delta whose plan was applied completely."""
        for key, state in delta.states.items():
            if state is None:
                self.states.pop(key, None)
            else:
                self.states[key] = state
        _update(self.owners, delta.owners)
        _update(self.address_refs, {a: n or None for a, n in delta.address_refs.items()})
        _update(self.entry_refs, {e: n or None for e, n in delta.entry_refs.items()})
        _update(self.set_sizes, {name: n or None for name, n in delta.set_sizes.items()})
        self.iptables.update(delta.iptables)


def _update(target: dict[K, V], changes: Mapping[K, V | None]) -> None:
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


@dataclass(frozen=True, slots=True)
class CacheDelta:
    """The cache's new values for what a partial plan touched (None / 0: gone)."""

    states: Mapping[str, ServiceState | None]
    owners: Mapping[VirtualServerKey, str | None]
    address_refs: Mapping[IPAddress, int]
    entry_refs: Mapping[SetEntry, int]
    set_sizes: Mapping[str, int]
    iptables: Mapping[IPFamily, IptablesRuleset]


@dataclass(frozen=True, slots=True)
class PartialPlan:
    plan: Plan
    delta: CacheDelta
    services: int  # Services whose state differed from the applied one


def plan_partial(
    cache: AppliedCache,
    updates: Mapping[str, ServiceState | None],
    *,
    settings: DesiredSettings,
    exclude_cidrs: Sequence[IPNetwork] = (),
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    leave: LeavePolicy | None = None,
) -> PartialPlan:
    """The operations that take the kernel from the cached states to `updates`.

    updates: Service key -> its new ServiceState, None when the Service is gone. Reads
    `cache` only for the keys it touches; changes nothing (see AppliedCache.commit).
    drain_timeout: as plan_sync's; 0 deletes leaving TCP real servers at once.
    leave: the operations for real servers that leave a virtual server that stays; by
    default they are decided without connection counters (`real_server_removed`). The
    agent passes one that reads the counters of just those virtual servers, so an idle
    server is deleted at once, as kube-proxy does.
    """
    changed: dict[str, tuple[ServiceState, ServiceState]] = {}
    for key, new in updates.items():
        old = cache.states.get(key, EMPTY_SERVICE_STATE)
        new_state = EMPTY_SERVICE_STATE if new is None else new
        if old != new_state:
            changed[key] = (old, new_state)

    address_refs = _counts(
        cache.address_refs,
        ((old.addresses, new.addresses) for old, new in changed.values()),
    )
    entry_refs = _counts(
        cache.entry_refs,
        ((frozenset(old.set_entries), frozenset(new.set_entries)) for old, new in changed.values()),
    )
    binds = sorted(
        (a for a, n in address_refs.items() if n and not cache.address_refs.get(a)),
        key=address_sort_key,
    )
    unbinds = sorted(
        (a for a, n in address_refs.items() if not n and cache.address_refs.get(a)),
        key=address_sort_key,
    )
    entry_adds = sorted(e for e, n in entry_refs.items() if n and not cache.entry_refs.get(e))
    entry_deletes = sorted(e for e, n in entry_refs.items() if not n and cache.entry_refs.get(e))

    set_sizes: dict[str, int] = {}
    for name, _ in entry_adds:
        set_sizes[name] = set_sizes.get(name, cache.set_sizes.get(name, 0)) + 1
    for name, _ in entry_deletes:
        set_sizes[name] = set_sizes.get(name, cache.set_sizes.get(name, 0)) - 1
    iptables: dict[IPFamily, IptablesRuleset] = {}
    toggled = any(bool(size) != bool(cache.set_sizes.get(name)) for name, size in set_sizes.items())
    firewall_changed = any(name in _FIREWALL_SETS for name, _ in (*entry_adds, *entry_deletes))
    if toggled or firewall_changed:
        nonempty = cache.nonempty_sets()
        nonempty |= {name for name, size in set_sizes.items() if size}
        nonempty -= {name for name, size in set_sizes.items() if not size}
        # Rules depend on whether a set has entries, except the load-balancer firewall's
        # KUBE-IPVS-OUT-FILTER rules, which name the entries of two sets: those are read in
        # full (rare: only when they change or a set turns empty or non-empty).
        entries: dict[str, Collection[str]] = {name: (name,) for name in nonempty}
        for name in _FIREWALL_SETS & nonempty:
            entries[name] = _members(name, cache.entry_refs, entry_refs)
        wanted = desired_iptables(entries, settings=settings)
        iptables = {f: r for f, r in wanted.items() if cache.iptables.get(f) != r}

    owners = _owners(cache, changed)
    states = {key: None if updates[key] is None else new for key, (_, new) in changed.items()}
    if leave is None:

        def leave(vs_key: VirtualServerKey, leaving: Sequence[RealServer]) -> list[Operation]:
            return [
                op
                for server in leaving
                for op in real_server_removed(vs_key, server, drain_timeout=drain_timeout)
            ]

    ipvs = _ipvs_operations(cache, changed, owners, exclude_cidrs, leave)

    ops: list[Operation] = [BindAddress(a) for a in binds]
    ops += _steering(entry_adds, settings)
    ops += [AddIPSetEntry(name, entry) for name, entry in entry_adds]
    ops += [RestoreChains(ruleset) for ruleset in iptables.values()]
    ops += ipvs
    ops += [UnbindAddress(a) for a in unbinds]
    ops += [DeleteIPSetEntry(name, entry) for name, entry in entry_deletes]
    delta = CacheDelta(
        states=states,
        owners=owners,
        address_refs=address_refs,
        entry_refs=entry_refs,
        set_sizes=set_sizes,
        iptables=iptables,
    )
    return PartialPlan(plan=Plan(tuple(ops)), delta=delta, services=len(changed))


def _counts(
    current: Mapping[T, int], pairs: Iterable[tuple[frozenset[T], frozenset[T]]]
) -> dict[T, int]:
    """New reference counts of the items whose users changed (0: no user left)."""
    counts: dict[T, int] = {}
    for old, new in pairs:
        for item in old - new:
            counts[item] = counts.get(item, current.get(item, 0)) - 1
        for item in new - old:
            counts[item] = counts.get(item, current.get(item, 0)) + 1
    return {item: count for item, count in counts.items() if count != current.get(item, 0)}


def _owners(
    cache: AppliedCache, changed: Mapping[str, tuple[ServiceState, ServiceState]]
) -> dict[VirtualServerKey, str | None]:
    """Virtual servers whose owner changes: released ones first, then new claims."""
    owners: dict[VirtualServerKey, str | None] = {}
    for key, (old, new) in changed.items():
        for vs_key in old.virtual_servers:
            if vs_key not in new.virtual_servers and cache.owners.get(vs_key) == key:
                owners[vs_key] = None
    for key, (_, new) in changed.items():
        for vs_key in new.virtual_servers:
            owner = owners[vs_key] if vs_key in owners else cache.owners.get(vs_key)
            if owner is None:
                owners[vs_key] = key
            elif owner != key:
                where = host_port(vs_key.address, vs_key.port)
                logger.warning(
                    "two Services claim one virtual server; the first keeps it",
                    virtual_server=f"{vs_key.protocol.value} {where}",
                    kept=owner,
                    skipped=key,
                )
    return owners


def _ipvs_operations(
    cache: AppliedCache,
    changed: Mapping[str, tuple[ServiceState, ServiceState]],
    owners: Mapping[VirtualServerKey, str | None],
    exclude_cidrs: Sequence[IPNetwork],
    leave: LeavePolicy,
) -> list[Operation]:
    def before(vs_key: VirtualServerKey) -> VirtualEntry | None:
        owner = cache.owners.get(vs_key)
        if owner is None:
            return None
        state = cache.states[owner]
        return state.virtual_servers[vs_key], state.real_servers.get(vs_key, {})

    def after(vs_key: VirtualServerKey) -> VirtualEntry | None:
        owner = owners[vs_key] if vs_key in owners else cache.owners.get(vs_key)
        if owner is None:
            return None
        state = changed[owner][1] if owner in changed else cache.states[owner]
        return state.virtual_servers[vs_key], state.real_servers.get(vs_key, {})

    touched: set[VirtualServerKey] = set(owners)
    for key, (old, new) in changed.items():
        touched.update(k for k in old.virtual_servers if cache.owners.get(k) == key)
        touched.update(k for k in new.virtual_servers if owners.get(k, cache.owners.get(k)) == key)

    diff = IpvsDiff(leave=leave)
    for vs_key in sorted(touched, key=lambda k: k.sort_key()):
        new_entry = after(vs_key)
        if new_entry is None and excluded(vs_key.address, exclude_cidrs):
            continue  # excludeCIDRs: never deleted
        diff.virtual_server(vs_key, new_entry, before(vs_key))
    return diff.operations()


_FIREWALL_SETS = frozenset(
    spec.name_for(family)
    for family in IPFamily
    for spec in (ipsets.LOAD_BALANCER_FW, ipsets.LOAD_BALANCER_SOURCE_IP)
)


def _members(
    name: str, applied: Mapping[SetEntry, int], changed: Mapping[SetEntry, int]
) -> set[str]:
    """A set's entries once the changed reference counts are applied."""
    members = {entry for (set_name, entry), n in applied.items() if set_name == name and n}
    for (set_name, entry), n in changed.items():
        if set_name == name:
            if n:
                members.add(entry)
            else:
                members.discard(entry)
    return members


def _steering(entry_adds: Iterable[SetEntry], settings: DesiredSettings) -> list[Operation]:
    """The policy routing of each family that gains KUBE-IPVS-STEERED entries (steering.py);
    ensuring it is idempotent, and it is never removed but by cleanup."""
    names = {ipsets.STEERED.name_for(family): family for family in settings.families}
    families = {names[name] for name, _ in entry_adds if name in names}
    mark = steer_mark(settings.masquerade.mark)
    return [EnsureSteering(family, mark) for family in sorted(families)]
