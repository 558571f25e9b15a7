"""Graceful termination of real servers that are no longer wanted. Pure.

A TCP real server whose endpoint went away is quiesced first: weight 0 takes it out of
scheduling while its established connections carry on, and it is deleted once the kernel
counts no active or inactive connection on it. UDP and SCTP servers are deleted at once:
IPVS counts no UDP connection as active, so a weight-0 UDP server would keep receiving the
flows it already has forever (kubernetes#71514), and expire_nodest_conn=1 moves them on.
A server whose endpoint comes back is set to weight 1 again by the ordinary diff.

Unlike kube-proxy, whose GracefulTerminationManager retries every minute with no limit,
a drain is bounded: a server still holding connections after `timeout` seconds is deleted
anyway, so a weight-0 server cannot linger for days behind one idle keep-alive connection.
The time a drain started is kept by the caller (a long-running agent) and handed back in;
a process that starts afresh starts the clock again for servers it finds at weight 0.

A partial sync knows no connection counters (it diffs against what it last applied, not
against the kernel), so `leave_without_counters` quiesces every leaving TCP server and the
next full sync, which reads the counters, deletes it once idle; that full sync starts the
drain clock, so a drain may last up to one syncPeriod longer than the timeout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from ipvsproxy.core.model import Protocol, RealServer, RealServerKey, VirtualServerKey
from ipvsproxy.core.operations import DeleteRealServer, UpdateRealServer

DEFAULT_DRAIN_TIMEOUT = 900.0
"""Seconds a TCP real server may drain at weight 0 before it is deleted anyway (15 min)."""

DrainKey = tuple[VirtualServerKey, RealServerKey]
"""A real server of a virtual server, as drains are tracked."""


@dataclass(frozen=True, slots=True)
class DrainStep:
    """What to do now with the leaving real servers of one virtual server.

    operations: weight-0 updates and deletes; draining: the servers still draining after
    them, with the (monotonic) time each drain started, to hand back next time.
    """

    operations: tuple[UpdateRealServer | DeleteRealServer, ...]
    draining: Mapping[DrainKey, float]


def drain_step(
    virtual: VirtualServerKey,
    leaving: Iterable[RealServer],
    *,
    started: Mapping[DrainKey, float],
    now: float,
    timeout: float = DEFAULT_DRAIN_TIMEOUT,
) -> DrainStep:
    """The operations for real servers of `virtual` that are in the kernel but no longer
    wanted, given their connection counters as read back and when each drain started.

    timeout 0 turns graceful termination off: every leaving server is deleted at once.
    """
    operations: list[UpdateRealServer | DeleteRealServer] = []
    draining: dict[DrainKey, float] = {}
    graceful = virtual.protocol is Protocol.TCP and timeout > 0
    for server in leaving:
        key = server.key
        connections = server.active_connections + server.inactive_connections
        if not graceful or connections == 0:
            operations.append(DeleteRealServer(virtual, key))
            continue
        since = started.get((virtual, key), now)
        if now - since >= timeout:
            operations.append(DeleteRealServer(virtual, key))
            continue
        if server.weight != 0:
            quiet = replace(server, weight=0, active_connections=0, inactive_connections=0)
            operations.append(UpdateRealServer(virtual, quiet))
        draining[(virtual, key)] = since
    return DrainStep(tuple(operations), draining)


def leave_without_counters(
    virtual: VirtualServerKey, server: RealServer, *, timeout: float = DEFAULT_DRAIN_TIMEOUT
) -> UpdateRealServer | DeleteRealServer:
    """The operation for a leaving real server when its connections are unknown: TCP goes
    to weight 0 (unless graceful termination is off), UDP and SCTP are deleted."""
    if virtual.protocol is Protocol.TCP and timeout > 0:
        quiet = replace(server, weight=0, active_connections=0, inactive_connections=0)
        return UpdateRealServer(virtual, quiet)
    return DeleteRealServer(virtual, server.key)
