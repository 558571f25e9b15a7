"""One typed interface per kernel subsystem; real adapters and the fake kernel implement them."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ipvsproxy.core.model import (
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
    EnsureSteering,
    IPSetOperation,
    IpvsOperation,
    OperationFailure,
    RestoreChains,
    RulesOperation,
)
from ipvsproxy.core.stale_udp import ConntrackEntry

IpvsSnapshot = dict[VirtualServerKey, tuple[VirtualServer, dict[RealServerKey, RealServer]]]


class IpvsDataplane(Protocol):
    """IPVS virtual and real servers. Deleting what is missing and adding what exists
    (with the same end state) are not errors."""

    def snapshot(self) -> IpvsSnapshot: ...

    def real_servers(self, key: VirtualServerKey) -> list[RealServer]:
        """One virtual server's real servers with their connection counters, in one dump
        (empty when it does not exist): what a partial sync reads for servers that leave."""
        ...

    def stats(self) -> dict[VirtualServerKey, IpvsStats]:
        """The traffic counters of every TCP/UDP/SCTP virtual server, in one dump."""
        ...

    def execute(self, ops: Sequence[IpvsOperation]) -> list[OperationFailure]: ...

    def set_timeouts(self, timeouts: tuple[int, int, int]) -> bool: ...


class AddressDataplane(Protocol):
    """The dummy interface and the service addresses bound to it, and the policy routing
    that delivers steered Service ports to IPVS."""

    def interface_exists(self, name: str) -> bool: ...

    def ensure_interface(self, name: str) -> None: ...

    def delete_interface(self, name: str) -> None: ...

    def addresses(self, name: str) -> frozenset[IPAddress]: ...

    def node_addresses(self, exclude: str) -> frozenset[IPAddress]:
        """The host's addresses outside interface ``exclude``, loopback and link-local."""
        ...

    def bind(self, name: str, addresses: Sequence[IPAddress]) -> list[OperationFailure]: ...

    def unbind(self, name: str, addresses: Sequence[IPAddress]) -> list[OperationFailure]: ...

    def steering(self, families: Iterable[IPFamily]) -> frozenset[tuple[IPFamily, int]]:
        """(family, fwmark) of each family whose steering rule and route are in place
        (core/steering.py)."""
        ...

    def ensure_steering(self, op: EnsureSteering) -> OperationFailure | None: ...

    def remove_steering(self, family: IPFamily) -> None:
        """Delete the family's steering rule and route; absent ones are no error."""
        ...


class IPSetDataplane(Protocol):
    """ipsets, read and written in bulk."""

    def read(self, names: Collection[str]) -> dict[str, frozenset[str]]: ...

    def apply(self, ops: Sequence[IPSetOperation]) -> list[OperationFailure]: ...

    def destroy(self, names: Collection[str]) -> list[OperationFailure]: ...


class IptablesDataplane(Protocol):
    """The nat and filter tables of one backend, for both families."""

    def read(self, family: IPFamily) -> IptablesRuleset: ...

    def restore(self, op: RestoreChains) -> OperationFailure | None: ...

    def remove(self, family: IPFamily) -> None: ...


class ConntrackDataplane(Protocol):
    """The conntrack table: dumped per family, entries deleted by their original tuple."""

    def entries(self, family: IPFamily) -> list[ConntrackEntry]: ...

    def delete(self, entries: Sequence[ConntrackEntry]) -> int:
        """How many were deleted (one already gone is not an error)."""
        ...


@dataclass(frozen=True, slots=True)
class RulesState:
    """What a rules backend holds, read back: the sets' entries by ipset name (the
    nftables sets named after the ipsets they stand for), and the fixed rules of the
    backend in use (KernelState.iptables or KernelState.nftables; the other is empty)."""

    sets: dict[str, frozenset[str]]
    iptables: dict[IPFamily, IptablesRuleset] = field(default_factory=dict)
    nftables: dict[IPFamily, dict[str, tuple[str, ...]]] = field(default_factory=dict)


class RulesDataplane(Protocol):
    """The proxy's sets and its fixed rules: ipsets and iptables chains
    (dataplane/xtables_rules.py), or one nftables table per family
    (dataplane/nftables.py). Chosen once at start; IPVS balances behind either."""

    @property
    def backend(self) -> RulesBackend: ...

    def read(self, families: Iterable[IPFamily]) -> RulesState:
        """The sets of every family (ownership needs them all) and the families' rules."""
        ...

    def apply_sets(self, ops: Sequence[IPSetOperation]) -> list[OperationFailure]:
        """Set entries added and deleted (sets created, for ipsets), in one batch."""
        ...

    def write_rules(self, ops: Sequence[RulesOperation]) -> list[OperationFailure]:
        """The fixed rules: an iptables restore per family, or the nftables tables in
        one transaction."""
        ...

    def remove(self, families: Iterable[IPFamily], *, keep_sets: bool = False) -> list[str]:
        """Delete the families' rules, then every set of the proxy's unless keep_sets
        (cleanup keeps them while a virtual server they record remains); the problems met."""
        ...

    def remove_other_backend(self) -> list[str]:
        """Delete what the other rules backend left behind (after a switch), touching
        nothing of it when there is no trace of it; the problems met."""
        ...


@dataclass(frozen=True, slots=True)
class Dataplanes:
    """The kernel adapters a sync works through."""

    ipvs: IpvsDataplane
    links: AddressDataplane
    rules: RulesDataplane
    conntrack: ConntrackDataplane | None = None  # stale UDP flows; None: left alone
