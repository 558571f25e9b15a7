"""Partial syncs in the middle of a periodic full sync, and what the full sync then skips.

A periodic full sync at 10k Services costs a few hundred milliseconds of CPU (reading the
kernel back, diffing 100k real servers); a change arriving meanwhile would wait for all of
it. So the agent runs partial syncs between the full sync's pieces (see
`plan_sync`'s checkpoint): before the kernel is read, between pieces of the diff, before
the plan is applied. Each partial sync diffs against what was last applied, as always,
and writes the kernel at once.

That is sound only while the full sync's states are the very ones last applied (the agent
checks): then what the full sync wants of each object is what the partial syncs counted as
applied when they diffed. Its plan was computed from the states and the kernel as they
were before those partial syncs, so for whatever they touched it is out of date: applied
as is, it would undo them (re-add an endpoint just removed, delete a Service just added as
stale). `Interleaved` records every kernel object the partial syncs wrote, and the full
sync leaves those out of its plan: they were just written from the newer state, and their
repair, should they have drifted, waits for the next full sync. Nothing else changed under
the full sync (its other objects were not written, and what they should be did not change:
the partial syncs touch exactly the objects whose wanted value changed, counting shared
addresses and set entries), so the rest of its plan stays right. The chains are restored
from the newest ruleset, and an nftables table written whole holds the set entries as the
partial syncs left them. What was applied is then rebuilt from the full sync's states with
the partial syncs' updates on top.

A partial sync that fails stops the interleaving; the agent then drops what was applied,
and the next sync is full.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from ipvsproxy.agent.changes import Changes, ServiceInput
from ipvsproxy.core.desired import DesiredSettings, NodeInfo, ServiceState
from ipvsproxy.core.full_plan import Plan
from ipvsproxy.core.graceful import DrainKey
from ipvsproxy.core.model import IPFamily, IptablesRuleset
from ipvsproxy.core.operations import (
    AddIPSetEntry,
    AddRealServer,
    AddVirtualServer,
    BindAddress,
    DeleteIPSetEntry,
    DeleteRealServer,
    DeleteVirtualServer,
    EnsureSteering,
    Operation,
    ReplaceNftTable,
    RestoreChains,
    UnbindAddress,
    UpdateRealServer,
    UpdateVirtualServer,
)

__all__ = ["Interleaved", "touched_object"]


def touched_object(op: Operation) -> Hashable | None:
    """The kernel object an operation writes, as a key comparable across plans; None for
    what no partial sync writes (the interface, a set's creation) or the chains, which
    are handled apart."""
    if isinstance(op, AddVirtualServer | UpdateVirtualServer):
        return op.server.key
    if isinstance(op, DeleteVirtualServer):
        return op.key
    if isinstance(op, AddRealServer | UpdateRealServer | DeleteRealServer):
        return op.virtual  # a virtual server's real servers go with it
    if isinstance(op, BindAddress | UnbindAddress):
        return ("address", op.address)
    if isinstance(op, AddIPSetEntry | DeleteIPSetEntry):
        return ("entry", op.set_name, op.entry)
    if isinstance(op, EnsureSteering):
        return ("steering", op.family)
    return None


@dataclass(slots=True)
class Interleaved:
    """What the partial syncs run during one full sync wrote and changed."""

    objects: set[Hashable] = field(default_factory=set)
    # (set, entry) -> whether the last partial sync to write it left it present: a table
    # the full sync rewrites whole must hold the partial syncs' entries, not its own.
    entries: dict[tuple[str, str], bool] = field(default_factory=dict)
    chains: dict[IPFamily, IptablesRuleset] = field(default_factory=dict)  # restored, newest
    states: dict[str, ServiceState | None] = field(default_factory=dict)  # None: deleted
    inputs: dict[str, ServiceInput] = field(default_factory=dict)
    syncs: int = 0
    # When the full sync started or the last partial sync in it ended (the agent's
    # monotonic clock): min_sync_period holds between them too.
    since: float = 0.0
    # The full sync's node and settings: partial syncs in between compute for them.
    node: NodeInfo = field(default_factory=NodeInfo)
    settings: DesiredSettings = field(default_factory=DesiredSettings)
    # The changes the full sync took, for the first partial sync, and when it started.
    deferred: Changes | None = None
    deferred_started: float = 0.0
    failed: bool = False
    closed: bool = False  # the full sync's plan is being applied: no more partial syncs

    def wrote(self, operations: Iterable[Operation]) -> None:
        """A partial sync's plan, applied (or tried: a failed one may have written part)."""
        for op in operations:
            if isinstance(op, RestoreChains):
                self.chains[op.ruleset.family] = op.ruleset
                continue
            if isinstance(op, AddIPSetEntry | DeleteIPSetEntry):
                self.entries[(op.set_name, op.entry)] = isinstance(op, AddIPSetEntry)
            key = touched_object(op)
            if key is not None:
                self.objects.add(key)

    def applied(
        self, states: Mapping[str, ServiceState | None], inputs: Mapping[str, ServiceInput]
    ) -> None:
        """A partial sync's new states, applied, and the inputs they came from."""
        self.states.update(states)
        self.inputs.update({key: inputs[key] for key in states})

    def filter(self, plan: Plan) -> Plan:
        """The full sync's plan without what the partial syncs wrote; chains restored
        from the newest ruleset."""
        if not self.objects and not self.chains:
            return plan
        kept: list[Operation] = []
        for op in plan.operations:
            if isinstance(op, RestoreChains):
                newest = self.chains.get(op.ruleset.family)
                kept.append(op if newest is None else RestoreChains(newest, op.missing_jumps))
            elif isinstance(op, ReplaceNftTable):
                kept.append(self._newest_table(op))
            elif touched_object(op) not in self.objects:
                kept.append(op)
        return Plan(tuple(kept), plan.draining)

    def _newest_table(self, op: ReplaceNftTable) -> ReplaceNftTable:
        """A whole nftables table to write, its sets' entries as the partial syncs left
        them (the full sync's were computed before they ran)."""
        if not self.entries:
            return op
        sets = []
        for name, members in op.sets:
            newest = set(members)
            for (set_name, entry), present in self.entries.items():
                if set_name == name:
                    (newest.add if present else newest.discard)(entry)
            sets.append((name, frozenset(newest)))
        return replace(op, sets=tuple(sets))

    def drains(
        self, planned: Mapping[DrainKey, float], current: Mapping[DrainKey, float]
    ) -> dict[DrainKey, float]:
        """The full plan's drains, but for the virtual servers the partial syncs wrote,
        whose drains are theirs (`current`)."""
        return {k: v for k, v in planned.items() if k[0] not in self.objects} | {
            k: v for k, v in current.items() if k[0] in self.objects
        }

    def final_states(
        self, states: Sequence[tuple[str, ServiceState]]
    ) -> list[tuple[str, ServiceState]]:
        """The full sync's states (in its order) with the partial syncs' on top."""
        final = [(key, self.states.get(key, state)) for key, state in states]
        seen = {key for key, _ in states}
        final += [(key, state) for key, state in self.states.items() if key not in seen]
        return [(key, state) for key, state in final if state is not None]

    def final_inputs(self, inputs: Mapping[str, ServiceInput]) -> dict[str, ServiceInput]:
        merged = {**inputs, **self.inputs}
        return {key: given for key, given in merged.items() if given.service is not None}

    def iptables(
        self, desired: Mapping[IPFamily, IptablesRuleset]
    ) -> dict[IPFamily, IptablesRuleset]:
        return {**desired, **self.chains}
