"""The one per-virtual-server differ, used by full and partial syncs alike.

A full sync compares each virtual server the proxy wants with what the kernel holds; a
partial sync compares it with what the proxy last applied. Both hand each virtual server's
(wanted, current) pair to `IpvsDiff.virtual_server`, so the operations, their order and the
real-server comparison are the same in both. They differ only in what they know about a
leaving real server: a full sync has its connection counters (graceful.drain_step), a
partial sync does not (graceful.leave_without_counters); the caller passes that choice in.

Order keeps traffic flowing: virtual servers and their new or changed real servers first,
then leaving real servers (drained or deleted), then virtual servers no longer wanted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ipvsproxy.core.endpoints import MergedServers
from ipvsproxy.core.model import (
    IPAddress,
    IPNetwork,
    RealServer,
    RealServerKey,
    VirtualServer,
    VirtualServerKey,
)
from ipvsproxy.core.operations import (
    AddRealServer,
    AddVirtualServer,
    DeleteVirtualServer,
    Operation,
    UpdateRealServer,
    UpdateVirtualServer,
    add_real_servers,
)

RealServers = Mapping[RealServerKey, RealServer]
VirtualEntry = tuple[VirtualServer, RealServers]
"""A virtual server with its real servers, as wanted or as current."""

LeavePolicy = Callable[[VirtualServerKey, Sequence[RealServer]], Iterable[Operation]]
"""The operations for real servers that are current but no longer wanted (in key order)."""


def excluded(address: IPAddress, exclude_cidrs: Sequence[IPNetwork]) -> bool:
    """Whether `address` lies in ipvs.excludeCIDRs: its virtual servers are never deleted."""
    return any(address.version == net.version and address in net for net in exclude_cidrs)


@dataclass(slots=True)
class IpvsDiff:
    """IPVS operations collected virtual server by virtual server, kept in apply order."""

    leave: LeavePolicy
    _adds: list[Operation] = field(default_factory=list)
    _leaving: list[Operation] = field(default_factory=list)
    _deletes: list[Operation] = field(default_factory=list)

    def virtual_server(
        self, key: VirtualServerKey, wanted: VirtualEntry | None, current: VirtualEntry | None
    ) -> None:
        """Add the operations that turn `current` into `wanted` (None: absent).

        A wanted None deletes the virtual server: the caller decides ownership and
        excludeCIDRs, and passes None only for a server the proxy may delete.
        """
        if wanted is None:
            if current is not None:
                self._deletes.append(DeleteVirtualServer(key))
            return
        server, servers = wanted
        if current is None:
            self._adds.append(AddVirtualServer(server))
            self._adds += add_real_servers(key, servers.values())
            return
        current_server, current_servers = current
        if not server.same_settings(current_server):
            self._adds.append(UpdateVirtualServer(server))
        if servers is current_servers:
            return
        self._real_servers(key, servers, current_servers)

    def _real_servers(
        self, key: VirtualServerKey, wanted: RealServers, current: RealServers
    ) -> None:
        new_parts, old_parts = _differing_parts(wanted, current)
        kept = 0
        for part in new_parts:
            for rs_key, rs in part.items():
                have = current.get(rs_key)
                if have is None:
                    self._adds.append(AddRealServer(key, rs))
                    continue
                kept += 1
                # Same key, so same address and port: compare the rest only (a full sync
                # compares every real server of the node; ipaddress compares in Python).
                if have is not rs and (have.weight != rs.weight or have.forward is not rs.forward):
                    self._adds.append(UpdateRealServer(key, rs))
        if kept == sum(len(part) for part in old_parts):
            return  # every current server is still wanted
        gone = sorted(
            (rs_key for part in old_parts for rs_key in part if rs_key not in wanted),
            key=lambda k: k.sort_key(),
        )
        self._leaving += self.leave(key, [current[rs_key] for rs_key in gone])

    def operations(self) -> list[Operation]:
        return self._adds + self._leaving + self._deletes


def _differing_parts(
    wanted: RealServers, current: RealServers
) -> tuple[Sequence[RealServers], Sequence[RealServers]]:
    """Where wanted and current real servers may differ: the parts of each that the
    other does not share (endpoints.MergedServers), else the whole of both.

    The parts of one MergedServers share no key, so a key of a part both hold has the
    same real server in both: only the other parts' keys need comparing. Those of
    wanted are kept in its order, so additions come out in endpoint order either way.
    """
    if isinstance(wanted, MergedServers) and isinstance(current, MergedServers):
        shared = {id(part) for part in wanted.parts}
        shared.intersection_update(id(part) for part in current.parts)
        return (
            [part for part in wanted.parts if id(part) not in shared],
            [part for part in current.parts if id(part) not in shared],
        )
    return (wanted,), (current,)
