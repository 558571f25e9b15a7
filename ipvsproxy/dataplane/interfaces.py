"""One typed interface per kernel subsystem; real adapters and the fake kernel implement them."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ipvsproxy.core.model import (
    IPAddress,
    IPFamily,
    IptablesRuleset,
    IpvsStats,
    RealServer,
    RealServerKey,
    VirtualServer,
    VirtualServerKey,
)
from ipvsproxy.core.operations import (
    EnsureSteering,
    IPSetOperation,
    IpvsOperation,
    OperationFailure,
    RestoreChains,
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
class Dataplanes:
    """The kernel adapters a sync works through."""

    ipvs: IpvsDataplane
    links: AddressDataplane
    ipsets: IPSetDataplane
    iptables: IptablesDataplane
    conntrack: ConntrackDataplane | None = None  # stale UDP flows; None: left alone
