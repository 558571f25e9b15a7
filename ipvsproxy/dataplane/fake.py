"""A stateful in-memory kernel for fast unit tests.

It keeps the same state the real kernel keeps and refuses what the real adapters would
report as failures: an unknown scheduler, a real server for a missing virtual server, an
address on a missing interface, an entry for a missing ipset. It never replaces the
real-kernel tests, which run the same scenarios against Linux itself.
"""

from __future__ import annotations

import errno
from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace

from ipvsproxy.core import nft_rules
from ipvsproxy.core.ipsets import all_set_names
from ipvsproxy.core.model import (
    KERNEL_SCHEDULERS,
    IPAddress,
    IPFamily,
    IptablesRuleset,
    IpvsStats,
    RealServer,
    RealServerKey,
    RulesBackend,
    VirtualServer,
    VirtualServerKey,
)
from ipvsproxy.core.operations import (
    AddIPSetEntry,
    AddRealServer,
    AddVirtualServer,
    BindAddress,
    CreateIPSet,
    DeleteIPSetEntry,
    DeleteVirtualServer,
    EnsureDummyInterface,
    EnsureSteering,
    IPSetOperation,
    IpvsOperation,
    OperationFailure,
    ReplaceNftTable,
    RestoreChains,
    RulesOperation,
    UnbindAddress,
    UpdateRealServer,
    UpdateVirtualServer,
)
from ipvsproxy.core.rules import CHAINS, JUMP_RULES, restore_payload
from ipvsproxy.core.stale_udp import ConntrackEntry
from ipvsproxy.dataplane.interfaces import (
    ConntrackDataplane,
    Dataplanes,
    IpvsSnapshot,
    RulesDataplane,
    RulesState,
)
from ipvsproxy.dataplane.iptables import parse_save
from ipvsproxy.dataplane.links import is_node_address
from ipvsproxy.dataplane.xtables_rules import XtablesRules
from ipvsproxy.errors import KernelError

KNOWN_SCHEDULERS = KERNEL_SCHEDULERS


class FakeKernel:
    """IPVS, links, ipsets and iptables of one network namespace, in memory."""

    def __init__(self) -> None:
        self.services: dict[VirtualServerKey, VirtualServer] = {}
        self.destinations: dict[VirtualServerKey, dict[RealServerKey, RealServer]] = {}
        # Interfaces and their addresses; the host's own (eth0, lo) may be added by tests.
        self.links: dict[str, set[IPAddress]] = {}
        self.sets: dict[str, set[str]] = {}
        self.tables: dict[IPFamily, dict[str, dict[str, list[str]]]] = {
            family: {
                "nat": {c: [] for c in ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")},
                "filter": {c: [] for c in ("INPUT", "FORWARD", "OUTPUT")},
                "mangle": {
                    c: [] for c in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
                },
            }
            for family in IPFamily
        }
        # Family -> fwmark of the steering rule (with its local route) in place.
        self.steer_rules: dict[IPFamily, int] = {}
        # Traffic counters per virtual server, as the kernel keeps them (see count_traffic).
        self.traffic: dict[VirtualServerKey, IpvsStats] = {}
        self.stats_reads = 0  # stats() calls: each is one dump in the real kernel
        self.real_server_reads = 0  # real_servers() calls: one dump each, likewise
        self.timeouts = (900, 120, 300)  # IPVS tcp, tcpfin, udp connection timeouts
        self.writes = 0  # every state-changing call, whatever the subsystem
        self.xtables_calls = 0  # ipset and iptables reads and writes (the tools' runs)
        # The nftables backend's tables: family -> (sets by ipset name, chains).
        self.nft: dict[IPFamily, tuple[dict[str, set[str]], dict[str, tuple[str, ...]]]] = {}
        self.nft_transactions = 0  # `nft -f` runs
        self.fail_restore = False  # make the next iptables restores fail, as a broken rule would
        # Operation types refused with EPERM, as a kernel or a security module might.
        self.refuse: set[type] = set()

    # --- IPVS ---

    def snapshot(self) -> IpvsSnapshot:
        return {
            key: (server, dict(self.destinations[key])) for key, server in self.services.items()
        }

    def real_servers(self, key: VirtualServerKey) -> list[RealServer]:
        self.real_server_reads += 1
        return list(self.destinations.get(key, {}).values())

    def stats(self) -> dict[VirtualServerKey, IpvsStats]:
        self.stats_reads += 1
        return {key: self.traffic.get(key, IpvsStats()) for key in self.services}

    def count_traffic(self, key: VirtualServerKey, traffic: IpvsStats) -> None:
        """Add traffic to a virtual server's counters, as packets through it would; like
        the kernel, traffic to a missing virtual server is not counted anywhere."""
        if key in self.services:
            self.traffic[key] = self.traffic.get(key, IpvsStats()) + traffic

    def set_connections(
        self, virtual: VirtualServerKey, key: RealServerKey, *, active: int, inactive: int = 0
    ) -> None:
        """Set a real server's connection counters, as clients connecting through it would."""
        server = self.destinations[virtual][key]
        self.destinations[virtual][key] = replace(
            server, active_connections=active, inactive_connections=inactive
        )

    def execute(self, ops: Sequence[IpvsOperation]) -> list[OperationFailure]:
        failures: list[OperationFailure] = []
        for op in ops:
            self.writes += 1
            code = self._ipvs(op)
            if code:
                failures.append(
                    OperationFailure(op, code, f"{type(op).__name__}: {errno.errorcode[code]}")
                )
        return failures

    def set_timeouts(self, timeouts: tuple[int, int, int]) -> bool:
        # The kernel keeps a timeout given as 0; the defaults are 900, 120 and 300 s.
        new = tuple(v or held for v, held in zip(timeouts, self.timeouts, strict=True))
        if new == self.timeouts:
            return False
        self.writes += 1
        self.timeouts = (new[0], new[1], new[2])
        return True

    def _ipvs(self, op: IpvsOperation) -> int:
        if type(op) in self.refuse:
            return errno.EPERM
        if isinstance(op, AddVirtualServer | UpdateVirtualServer):
            if op.server.scheduler not in KNOWN_SCHEDULERS:
                return errno.ENOENT  # the kernel cannot load the scheduler module
            if isinstance(op, UpdateVirtualServer) and op.server.key not in self.services:
                return errno.ESRCH
            self.services[op.server.key] = op.server
            self.destinations.setdefault(op.server.key, {})
            return 0
        if isinstance(op, DeleteVirtualServer):
            self.services.pop(op.key, None)
            self.destinations.pop(op.key, None)
            self.traffic.pop(op.key, None)  # a re-created one counts from zero
            return 0
        if op.virtual not in self.services:
            return errno.ESRCH
        destinations = self.destinations[op.virtual]
        if isinstance(op, AddRealServer | UpdateRealServer):
            if op.server.address.version != op.virtual.address.version:
                return errno.EINVAL  # what ip_vs answers for a mixed-family masq dest
            if isinstance(op, UpdateRealServer) and op.server.key not in destinations:
                return errno.ENOENT
            existing = destinations.get(op.server.key)
            if existing is not None:
                op_server = replace(
                    op.server,
                    active_connections=existing.active_connections,
                    inactive_connections=existing.inactive_connections,
                )
                destinations[op.server.key] = op_server
            else:
                destinations[op.server.key] = op.server
            return 0
        destinations.pop(op.key, None)
        return 0

    # --- links ---

    def interface_exists(self, name: str) -> bool:
        return name in self.links

    def ensure_interface(self, name: str) -> None:
        if EnsureDummyInterface in self.refuse:
            raise KernelError(f"cannot create dummy interface {name}", errno=errno.EPERM)
        if name not in self.links:
            self.writes += 1
            self.links[name] = set()

    def delete_interface(self, name: str) -> None:
        if self.links.pop(name, None) is not None:
            self.writes += 1

    def addresses(self, name: str) -> frozenset[IPAddress]:
        return frozenset(self.links.get(name, ()))

    def node_addresses(self, exclude: str) -> frozenset[IPAddress]:
        return frozenset(
            address
            for name, addresses in self.links.items()
            if name != exclude
            for address in addresses
            if is_node_address(address)
        )

    def bind(self, name: str, addresses: Sequence[IPAddress]) -> list[OperationFailure]:
        if name not in self.links:
            return [OperationFailure(BindAddress(a), errno.ENODEV, name) for a in addresses]
        if BindAddress in self.refuse:
            return [OperationFailure(BindAddress(a), errno.EPERM, name) for a in addresses]
        self.writes += len(addresses)
        self.links[name].update(addresses)
        return []

    def unbind(self, name: str, addresses: Sequence[IPAddress]) -> list[OperationFailure]:
        if name not in self.links:
            return [OperationFailure(UnbindAddress(a), errno.ENODEV, name) for a in addresses]
        self.writes += len(addresses)
        self.links[name].difference_update(addresses)
        return []

    # --- policy routing (steering) ---

    def steering(self, families: Iterable[IPFamily]) -> frozenset[tuple[IPFamily, int]]:
        return frozenset((f, mark) for f, mark in self.steer_rules.items() if f in families)

    def ensure_steering(self, op: EnsureSteering) -> OperationFailure | None:
        if EnsureSteering in self.refuse:
            return OperationFailure(op, errno.EPERM, "add steering rule: Operation not permitted")
        if self.steer_rules.get(op.family) != op.mark:
            self.writes += 1
            self.steer_rules[op.family] = op.mark
        return None

    def remove_steering(self, family: IPFamily) -> None:
        if self.steer_rules.pop(family, None) is not None:
            self.writes += 1

    # --- ipsets ---

    def read(self, names: Collection[str]) -> dict[str, frozenset[str]]:
        self.xtables_calls += 1
        return {name: frozenset(self.sets[name]) for name in names if name in self.sets}

    def apply(self, ops: Sequence[IPSetOperation]) -> list[OperationFailure]:
        self.xtables_calls += 1
        failures: list[OperationFailure] = []
        for op in ops:
            self.writes += 1
            if type(op) in self.refuse:
                failures.append(OperationFailure(op, errno.EPERM, "Operation not permitted"))
            elif isinstance(op, CreateIPSet):
                self.sets.setdefault(op.name, set())
            elif op.set_name not in self.sets:
                failures.append(OperationFailure(op, errno.ENOENT, f"set {op.set_name} missing"))
            elif isinstance(op, AddIPSetEntry):
                self.sets[op.set_name].add(op.entry)
            elif isinstance(op, DeleteIPSetEntry):
                self.sets[op.set_name].discard(op.entry)
        return failures

    def destroy(self, names: Collection[str]) -> list[OperationFailure]:
        self.xtables_calls += 1
        for name in names:
            if self.sets.pop(name, None) is not None:
                self.writes += 1
        return []

    # --- iptables ---

    def read_rules(self, family: IPFamily) -> IptablesRuleset:
        self.xtables_calls += 1
        return IptablesRuleset(
            family=family,
            tables={
                table: {chain: tuple(rules) for chain, rules in chains.items()}
                for table, chains in self.tables[family].items()
            },
        )

    def restore(self, op: RestoreChains) -> OperationFailure | None:
        self.xtables_calls += 1
        self.writes += 1
        if self.fail_restore:
            return OperationFailure(op, 0, "iptables-restore: line 3 failed")
        # Apply the same payload the real adapter sends, parsed the way iptables-save reads.
        parsed = parse_save(restore_payload(op.ruleset))
        tables = self.tables[op.ruleset.family]
        for table, chains in parsed.items():
            for chain, rules in chains.items():
                tables[table][chain] = list(rules)
        for jump in op.missing_jumps:
            tables[jump.table][jump.chain].insert(0, jump.rule)
        return None

    def remove(self, family: IPFamily) -> None:
        self.xtables_calls += 1
        tables = self.tables[family]
        for jump in JUMP_RULES:
            rules = tables[jump.table][jump.chain]
            if jump.rule in rules:
                rules.remove(jump.rule)
                self.writes += 1
        for table, chains in CHAINS.items():
            for chain in chains:
                if tables[table].pop(chain, None) is not None:
                    self.writes += 1


class FakeIptables:
    """The fake kernel's iptables under the IptablesDataplane interface."""

    def __init__(self, kernel: FakeKernel) -> None:
        self._kernel = kernel

    def read(self, family: IPFamily) -> IptablesRuleset:
        return self._kernel.read_rules(family)

    def restore(self, op: RestoreChains) -> OperationFailure | None:
        return self._kernel.restore(op)

    def remove(self, family: IPFamily) -> None:
        self._kernel.remove(family)


class FakeNftables:
    """The fake kernel's nftables tables under the RulesDataplane interface.

    A table is written from the very text `nft -f` would take, read back with the parser
    of `nft list table`'s output, so the two stay consistent; element changes fail as one
    transaction when a table is missing, as nft's do.
    """

    def __init__(self, kernel: FakeKernel, *, switch_back: bool = True) -> None:
        self._kernel = kernel
        self._switch_back = switch_back  # remove the iptables backend's leftovers

    @property
    def backend(self) -> RulesBackend:
        return RulesBackend.NFTABLES

    def read(self, families: Iterable[IPFamily]) -> RulesState:
        wanted = set(families)
        sets: dict[str, frozenset[str]] = {}
        chains: dict[IPFamily, dict[str, tuple[str, ...]]] = {}
        for family, (table_sets, table_chains) in self._kernel.nft.items():
            sets.update({name: frozenset(members) for name, members in table_sets.items()})
            if family in wanted:
                chains[family] = dict(table_chains)
        return RulesState(sets=sets, nftables=chains)

    def apply_sets(self, ops: Sequence[IPSetOperation]) -> list[OperationFailure]:
        kernel = self._kernel
        kernel.nft_transactions += 1
        changes: list[tuple[str, str, bool]] = []
        for op in ops:
            if isinstance(op, AddIPSetEntry | DeleteIPSetEntry):
                found = nft_rules.nft_set_for(op.set_name)
                if found is None or found[1] not in kernel.nft or type(op) in kernel.refuse:
                    reason = "No such file or directory" if found else "not a set of ours"
                    if type(op) in kernel.refuse:
                        reason = "Operation not permitted"
                    return [OperationFailure(o, errno.ENOENT, f"nft -f: {reason}") for o in ops]
                changes.append((op.set_name, op.entry, isinstance(op, AddIPSetEntry)))
        for name, entry, add in changes:
            family = nft_rules.nft_set_for(name)
            assert family is not None
            members = kernel.nft[family[1]][0].setdefault(name, set())
            if add:
                members.add(entry)
            else:
                members.discard(entry)
        kernel.writes += 1
        return []

    def write_rules(self, ops: Sequence[RulesOperation]) -> list[OperationFailure]:
        kernel = self._kernel
        kernel.nft_transactions += 1
        kernel.writes += 1
        if kernel.fail_restore or not all(isinstance(op, ReplaceNftTable) for op in ops):
            return [OperationFailure(op, 0, "nft -f: Error: Could not process rule") for op in ops]
        for op in ops:
            assert isinstance(op, ReplaceNftTable)
            text = nft_rules.render_chains(op.family, dict(op.sets), dict(op.chains))
            table = nft_rules.parse_listing(op.family, text)
            kernel.nft[op.family] = (
                {name: set(members) for name, members in table.sets.items()},
                dict(table.chains),
            )
        return []

    def remove(self, families: Iterable[IPFamily], *, keep_sets: bool = False) -> list[str]:
        kernel = self._kernel
        kernel.nft_transactions += 1
        for family in families:
            if family not in kernel.nft:
                continue
            kernel.writes += 1
            if keep_sets:
                kernel.nft[family] = (kernel.nft[family][0], {})
            else:
                del kernel.nft[family]
        return []

    def remove_other_backend(self) -> list[str]:
        """As remove_leftovers does on a real node: only where traces are (here, the
        fake kernel's ipsets or chains, looked at without counting as a tool's run)."""
        kernel = self._kernel
        ours = any(
            chain in kernel.tables[family].get(table, {})
            for family in IPFamily
            for table, chains in CHAINS.items()
            for chain in chains
        )
        if not self._switch_back or not (ours or set(kernel.sets) & set(all_set_names())):
            return []
        return XtablesRules(kernel, FakeIptables(kernel)).remove(tuple(IPFamily))


def fake_rules(kernel: FakeKernel, backend: RulesBackend = RulesBackend.IPTABLES) -> RulesDataplane:
    """The fake kernel's rules backend; each removes the other's leftovers on a switch."""
    if backend is RulesBackend.NFTABLES:
        return FakeNftables(kernel)
    nft = FakeNftables(kernel)

    def other() -> list[str]:
        return nft.remove(tuple(kernel.nft)) if kernel.nft else []

    return XtablesRules(kernel, FakeIptables(kernel), other_backend=other)


def fake_dataplanes(
    kernel: FakeKernel,
    backend: RulesBackend = RulesBackend.IPTABLES,
    *,
    conntrack: ConntrackDataplane | None = None,
) -> Dataplanes:
    """Every adapter on one fake kernel."""
    return Dataplanes(
        ipvs=kernel, links=kernel, rules=fake_rules(kernel, backend), conntrack=conntrack
    )


class FakeConntrack:
    """A conntrack table under the ConntrackDataplane interface: tests add entries, the
    proxy dumps and deletes them. `fail` makes every call refuse, as a kernel without
    nf_conntrack_netlink would."""

    def __init__(self, entries: Sequence[ConntrackEntry] = ()) -> None:
        self.table: list[ConntrackEntry] = list(entries)
        self.dumps: list[IPFamily] = []
        self.deleted: list[ConntrackEntry] = []
        self.fail = False

    def entries(self, family: IPFamily) -> list[ConntrackEntry]:
        if self.fail:
            raise KernelError("conntrack: Operation not supported", errno=errno.EOPNOTSUPP)
        self.dumps.append(family)
        return [entry for entry in self.table if entry.family is family]

    def delete(self, entries: Sequence[ConntrackEntry]) -> int:
        if self.fail:
            raise KernelError("conntrack: Operation not supported", errno=errno.EOPNOTSUPP)
        doomed = set(entries)
        kept = [entry for entry in self.table if entry not in doomed]
        gone = len(self.table) - len(kept)
        self.deleted += [entry for entry in self.table if entry in doomed]
        self.table = kept
        return gone
