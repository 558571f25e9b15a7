"""Stale UDP conntrack entries deleted after each sync that applied (see core/stale_udp.py).

Each Service's UDP frontends, with their serving endpoints, are kept from one sync to the
next (only those that have one: none is the same as not known). Only the Services a sync
recomputed are compared with what was kept, so a partial sync costs its changed Services
alone; the conntrack table is dumped only when one of them may have left stale flows (a
frontend lost a serving endpoint, or got its first), and only the entries of those
Services' frontends are deleted.

As kube-proxy's CleanStaleEntries, a refused dump or delete is logged and the sync still
counts as successful (the Services keep working; their clients' stale flows time out);
unlike it, the Services whose clean-up was refused are checked again at their next sync.
Each family's clean-up is reported to `report` (kube-proxy's
kubeproxy_conntrack_reconciler_* metrics, see metrics.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Protocol as TypingProtocol

from loguru import logger

from ipvsproxy.agent.changes import ServiceInput
from ipvsproxy.core.model import IPFamily, Protocol
from ipvsproxy.core.stale_udp import (
    UdpFrontends,
    cleanup_needed,
    merge_frontends,
    stale_entries,
    udp_frontends,
)
from ipvsproxy.dataplane.interfaces import ConntrackDataplane
from ipvsproxy.errors import KernelError
from ipvsproxy.logs import RepeatedLog


class CleanupReport(TypingProtocol):
    """Told of each family's clean-up: how long it took, how many entries went, whether
    the kernel refused it."""

    def __call__(self, family: IPFamily, *, seconds: float, deleted: int, failed: bool) -> None: ...


class StaleUdpFlows:
    """What the last syncs knew of each Service's UDP frontends, and the clean-up.

    `report`, when set (by whoever serves metrics), is told of each family's clean-up.
    """

    def __init__(
        self,
        conntrack: ConntrackDataplane | None,
        *,
        log: RepeatedLog,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conntrack = conntrack
        self._log = log
        self._clock = clock
        self._known: dict[str, UdpFrontends] = {}
        self.dumps = 0  # conntrack dumps asked for (one per family)
        self.report: CleanupReport | None = None

    def clear_after(self, inputs: Mapping[str, ServiceInput], *, full: bool) -> int:
        """Call after a sync of `inputs` applied (every Service when full); deletes the
        entries they left stale and returns how many. A refusal is logged and the
        Services are tried again at their next sync."""
        if self._conntrack is None:
            return 0
        if full:
            for key in self._known.keys() - inputs.keys():
                del self._known[key]
        pending: dict[str, UdpFrontends] = {}
        for key, given in inputs.items():
            if given.service is None or not any(
                port.protocol is Protocol.UDP for port in given.service.ports
            ):
                self._known.pop(key, None)
                continue
            try:
                now = udp_frontends([given.service], {key: given.slices})
            except Exception as exc:  # a bad object costs its own clean-up only
                self._log.warning(
                    "cannot compute a Service's UDP frontends",
                    key=("udp frontends", key, repr(exc)),
                    service=key,
                    error=repr(exc),
                )
                continue
            if cleanup_needed(self._known.get(key), now):
                pending[key] = now
            elif now.addresses or now.node_ports:
                self._known[key] = now
            else:  # none kept: no frontend is the same as not known (see cleanup_needed)
                self._known.pop(key, None)
        if not pending:
            return 0
        frontends = merge_frontends(pending.values())
        families = {IPFamily.of(address) for address, _ in frontends.addresses}
        families |= {IPFamily.of(ip) for serving in frontends.node_ports.values() for ip in serving}
        deleted, refused = 0, False
        for family in sorted(families):
            try:
                deleted += self._delete(self._conntrack, frontends, family)
            except KernelError as exc:
                refused = True
                self._log.error(
                    "cannot delete stale UDP conntrack entries; retried at the next full sync",
                    key=("conntrack", str(exc)),
                    error=str(exc),
                    family=f"IPv{family.value}",
                )
        if not refused:
            self._known.update(pending)
        if deleted:
            logger.info("stale UDP conntrack entries deleted", count=deleted)
        return deleted

    def _delete(
        self, conntrack: ConntrackDataplane, frontends: UdpFrontends, family: IPFamily
    ) -> int:
        """One family's clean-up, reported; how many entries went. KernelError when the
        kernel refuses the dump or the delete."""
        started = self._clock()
        deleted, failed = 0, True
        try:
            self.dumps += 1
            stale = stale_entries(conntrack.entries(family), frontends)
            deleted = conntrack.delete(stale) if stale else 0
            failed = False
        finally:
            if self.report is not None:
                seconds = self._clock() - started
                self.report(family, seconds=seconds, deleted=deleted, failed=failed)
        return deleted
