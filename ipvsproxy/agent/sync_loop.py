"""The node agent's sync loop: changes in, partial or full syncs out, on one worker thread.

Reflector threads feed the ChangeTracker and ask the runner for a sync; only the runner's
thread computes desired state and touches the kernel:

- nothing is programmed until Services and EndpointSlices have both finished their first
  list (a half-synced view must never wipe a node);
- the first sync is full and adopts what the kernel holds: plan_sync diffs against what
  it reads back, so a restarted proxy rewrites nothing that is already right;
- later syncs are partial (only the Services that changed, diffed against what was last
  applied; see core/partial_plan.py) except every `sync_period` (counted from the end of the last
  full sync, shortened by a random share of up to `sync_period_jitter` so that agents
  sharing a machine drift out of step), after a Node change, and after any failure: a
  full sync re-reads the kernel and repairs whatever drifted. It recomputes only the
  Services whose inputs changed since their state was computed (all of them after a Node
  change or when the host's addresses changed); changes pending when a periodic full sync
  falls due are applied by a partial sync first, and the full sync runs right after it;
  changes arriving while it runs are applied by partial syncs between its pieces, and its
  plan leaves out what they wrote (agent/interleave.py). For this it wants exactly what
  was last applied: the changes it took when it started go to the first of those partial
  syncs. None during the first full sync or one after a failure or a Node change;
- a failed sync is logged once with its reason, retried after `retry_interval`, and
  makes the next sync full.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from loguru import logger

from ipvsproxy.agent.apply import ApplyResult, apply_plan
from ipvsproxy.agent.changes import Changes, ChangeTracker, ServiceInput
from ipvsproxy.agent.full_sync import full_sync
from ipvsproxy.agent.interleave import Interleaved
from ipvsproxy.agent.runner import BoundedFrequencyRunner, Clock, MonotonicClock
from ipvsproxy.agent.scheduler_probe import ServiceSchedulers
from ipvsproxy.agent.stale_udp_flows import StaleUdpFlows
from ipvsproxy.core.desired import (
    DesiredSettings,
    NodeInfo,
    ServiceState,
    merge_service_states,
    service_state,
    settings_for_node,
    with_node_object,
)
from ipvsproxy.core.full_plan import Plan
from ipvsproxy.core.gcpause import gc_paused
from ipvsproxy.core.graceful import (
    DEFAULT_DRAIN_TIMEOUT,
    DrainKey,
    drain_step,
    leave_without_counters,
)
from ipvsproxy.core.ipvs_diff import LeavePolicy
from ipvsproxy.core.local_endpoints import NoLocalCounts, no_local_endpoints
from ipvsproxy.core.model import (
    DUMMY_INTERFACE,
    IPAddress,
    IPNetwork,
    Protocol,
    RealServer,
    Service,
    VirtualServerKey,
)
from ipvsproxy.core.operations import (
    BindAddress,
    DeleteRealServer,
    DeleteVirtualServer,
    IpvsOperation,
    Operation,
    RestoreChains,
    UnbindAddress,
)
from ipvsproxy.core.partial_plan import AppliedCache, plan_partial
from ipvsproxy.dataplane.interfaces import Dataplanes
from ipvsproxy.errors import IpvsProxyError, KernelError
from ipvsproxy.logs import RepeatedLog
from ipvsproxy.serve.metrics import ProxyMetrics, ServicePortLabels, service_port_labels
from ipvsproxy.serve.proxy_health import ProxyHealth
from ipvsproxy.serve.service_health import HealthCheckPorts, health_check_ports

__all__ = ["Agent", "AgentSettings", "SyncOutcome"]

_MAX_UNREPORTED_TRIGGERS = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    """What the sync loop needs beyond the objects; times in seconds."""

    desired: DesiredSettings = field(default_factory=DesiredSettings)
    node: NodeInfo = field(default_factory=NodeInfo)
    exclude_cidrs: tuple[IPNetwork, ...] = ()
    sync_period: float = 30.0
    """At least one sync, a full one, per sync_period (kube-proxy's syncPeriod)."""
    sync_period_jitter: float = 0.1
    """Each period is shortened by a random share of up to this much, drawn anew each time:
    agents started together (hollow nodes sharing a machine, a fleet restarted at once)
    would otherwise run their full syncs in step, and changes queue behind all of them."""
    min_sync_period: float = 0.0
    """At most one sync per min_sync_period (kube-proxy's minSyncPeriod)."""
    retry_interval: float = 5.0
    """A failed sync is retried this long after (capped at sync_period)."""
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    """Longest graceful termination of a TCP real server (see graceful.py)."""


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    """One sync, as the loop saw it (the last one is kept for tests and debugging)."""

    full: bool
    ok: bool
    services: int  # Services recomputed
    operations: int
    reason: str = ""  # why it failed
    failed: int = 0  # operations the kernel refused


class Agent:
    """Owns the tracker, the runner and what was last applied."""

    def __init__(
        self,
        dataplanes: Dataplanes,
        settings: AgentSettings,
        *,
        metrics: ProxyMetrics | None = None,
        health: ProxyHealth | None = None,
        health_check_ports: Callable[[HealthCheckPorts], Collection[int]] | None = None,
        clock: Clock | None = None,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._dp = dataplanes
        self._settings = settings
        self._metrics = metrics
        self._health = health
        # Told the health-check node ports to serve after every sync that changed them.
        self._serve_health_checks = health_check_ports
        self._health_checks: dict[str, tuple[int, int]] = {}  # Service -> (port, local endpoints)
        self._served_health_checks: HealthCheckPorts = {}
        # Ports that could not be bound, and when they are tried again: at the next full
        # sync or after retry_interval, not at every partial sync (a port another process
        # holds would cost a bind and an error line per port at each change).
        self._unbound_ports: frozenset[int] = frozenset()
        self._bind_retry_at = 0.0
        self._clock = clock or MonotonicClock()
        self._wall = wall_clock
        self.tracker = ChangeTracker(
            on_change=self._on_change, started_at=wall_clock(), wall_clock=wall_clock
        )
        self.runner = BoundedFrequencyRunner(
            self.sync,
            min_interval=settings.min_sync_period,
            max_interval=settings.sync_period,
            retry_interval=self._retry_interval,
            clock=self._clock,
        )
        self._cache: AppliedCache | None = None  # None: the next sync is full
        self._other_backend_removed = False  # the other rules backend's leftovers
        self._computed: dict[str, ServiceState] = {}  # each Service's last good state
        # The inputs each state in _computed was computed from, and the node it was
        # computed for: a full sync reuses a state whose inputs are the very same objects
        # (the tracker keeps an object until a different one replaces it).
        self._inputs: dict[str, ServiceInput] = {}
        self._computed_node: NodeInfo | None = None
        self._drains: Mapping[DrainKey, float] = {}  # real servers draining, since when
        # The host's interface addresses (NodePorts), read at each full sync only.
        self._local_addresses: frozenset[IPAddress] = frozenset()
        self._last_full: float | None = None  # when the last full sync ended
        self._rng = rng or random.Random()
        self._period = self._next_period()  # from _last_full to the next periodic full sync
        self._deferred_full = False  # a due full sync waits for one partial sync
        # Set while a periodic full sync runs: partial syncs run between its pieces.
        self._interleaved: Interleaved | None = None
        self._full_operations = 0  # what the last full sync's plan held once filtered
        self._handed_over = False  # the full sync's changes went to a partial sync
        # Trigger times of applied changes not yet measured, each with when the tracker
        # recorded it.
        self._unreported_triggers: list[tuple[float, float]] = []
        self._log = RepeatedLog(clock=self._clock.now)
        self.schedulers = ServiceSchedulers(dataplanes.ipvs, settings.desired.scheduler)
        self._failing = False
        self.udp_flows = StaleUdpFlows(dataplanes.conntrack, log=self._log)
        self.labels: dict[VirtualServerKey, ServicePortLabels] = {}
        self._labelled: dict[str, tuple[VirtualServerKey, ...]] = {}  # Service -> its keys
        # Service -> what its labels were made from, and them (see _relabel_all)
        self._label_sources: dict[
            str, tuple[Service, ServiceState, Mapping[VirtualServerKey, ServicePortLabels]]
        ] = {}
        self.last: SyncOutcome | None = None
        self.syncs = 0
        # Per Service, its ports with a Local policy and no endpoint on this node.
        self._no_local: dict[str, NoLocalCounts] = {}

    # -- the reflectors' side

    def _on_change(self, kind: str) -> None:
        if self._metrics is not None:
            if kind in ("service", "slice"):
                self._metrics.changes_seen(services=kind == "service", endpoints=kind == "slice")
            pending = self.tracker.pending()
            self._metrics.changes_pending(services=pending.services, endpoints=pending.endpoints)
            self._metrics.queued(self._wall())
        if self._health is not None:
            if kind == "node":
                node = self.tracker.current_node()
                self._health.set_node_eligible(node is None or node.eligible)
            self._health.queued_update(self._wall())
        self.runner.run()

    def resync(self) -> None:
        """Make the next sync a full one (re-read the kernel, rebuild what was applied);
        Services whose inputs did not change keep their computed states."""
        self._cache = None

    def labels_for(self, key: VirtualServerKey) -> ServicePortLabels | None:
        """The Service port of a virtual server the proxy applied (traffic metrics)."""
        return self.labels.get(key)

    # -- the worker's side

    def sync(self) -> bool:
        """One sync, full or partial; whether it succeeded (the runner's function)."""
        if not self.tracker.ready:
            logger.debug("waiting for the first list of Services and EndpointSlices")
            return True
        full = self._cache is None or self._last_full is None
        if not full and self._full_due():
            if self._deferred_full or not self._pending():
                full = True
            else:
                # Changes are waiting: apply them first (a partial sync is quick), then run
                # the periodic full sync at once, rather than make them wait for it. Once:
                # a steady stream of changes must not put the full sync off for ever.
                self._deferred_full = True
                self.runner.run()
        started_wall = self._wall()
        changes = self.tracker.take(full=full)
        full = changes.full
        started = time.perf_counter()
        try:
            outcome = self._full(changes, started_wall) if full else self._partial(changes)
        except IpvsProxyError as exc:
            outcome = SyncOutcome(full, False, len(changes.services), 0, f"kernel: {exc}")
        except Exception as exc:
            logger.opt(exception=exc).error("sync failed with an unexpected error")
            outcome = SyncOutcome(full, False, len(changes.services), 0, f"bug: {exc!r}")
        seconds = time.perf_counter() - started
        if full and self._handed_over:
            # Its changes were applied, and measured, by a partial sync in between.
            changes = replace(changes, trigger_times=(), received_times=())
            self._handed_over = False
        if full:
            # The period runs from the end of a full sync, as the runner's max interval
            # does: counted from its start, a full sync longer than the period (a cold
            # start on a busy machine) would make the very next sync full again.
            self._last_full = self._clock.now()
            self._period = self._next_period()
            self._deferred_full = False
            self.runner.run_by(self._last_full + self._period)
        self.syncs += 1
        self.last = outcome
        if not outcome.ok:
            self.resync()
        self._report(outcome, changes, seconds, started_wall)
        return outcome.ok

    def _next_period(self) -> float:
        share = min(max(self._settings.sync_period_jitter, 0.0), 1.0)
        return self._settings.sync_period * (1.0 - share * self._rng.random())

    def _full_due(self) -> bool:
        assert self._last_full is not None
        return self._clock.now() - self._last_full >= self._period

    def _pending(self) -> bool:
        pending = self.tracker.pending()
        return bool(pending.services or pending.endpoints)

    def _report(
        self, outcome: SyncOutcome, changes: Changes, seconds: float, started_wall: float
    ) -> None:
        wall = self._wall()
        # Kept across failed syncs, to be measured once applied; bounded, should the
        # kernel refuse for hours.
        received = changes.received_times or (wall,) * len(changes.trigger_times)
        self._unreported_triggers = [
            *self._unreported_triggers,
            *zip(changes.trigger_times, received, strict=True),
        ][-_MAX_UNREPORTED_TRIGGERS:]
        if outcome.ok:
            if self._failing:
                logger.info("sync succeeded again", full=outcome.full)
                self._log.clear()
                self._failing = False
            if self._health is not None:
                self._health.updated(wall)
            if self._metrics is not None:
                self._metrics.network_programmed(
                    [trigger for trigger, _ in self._unreported_triggers], wall
                )
            if self._unreported_triggers:
                # Each change's latency exactly, and what it is made of: trigger to
                # received is the watch's delivery, received to started the wait for the
                # runner (and for a sync in progress), started to programmed the sync.
                logger.debug(
                    "network programmed",
                    full=outcome.full,
                    started=round(started_wall, 6),
                    programmed=round(wall, 6),
                    changes=[[round(t, 6), round(r, 6)] for t, r in self._unreported_triggers],
                )
            self._unreported_triggers = []
        else:
            self._failing = True
            self._log.error(
                "sync failed; the next sync is full",
                key=("sync failed", outcome.reason),
                reason=outcome.reason,
                failed_operations=outcome.failed,
                retry_in=f"{self._retry_interval:g}s",
            )
        if self._metrics is not None:
            self._count_no_local(changes)
            self._metrics.sync_finished(seconds=seconds, full=outcome.full, ok=outcome.ok, now=wall)
            if not outcome.ok:
                self._metrics.sync_failed(outcome.reason.split(":", 1)[0])
            pending = self.tracker.pending()
            self._metrics.changes_pending(services=pending.services, endpoints=pending.endpoints)
        # Partial syncs and quiet periodic ones are routine; the first sync and a full
        # sync that had to change something (a repair) are worth a line.
        noteworthy = outcome.full and (self.syncs == 1 or outcome.operations or not outcome.ok)
        log = logger.info if noteworthy else logger.debug
        log(
            "synced",
            full=outcome.full,
            ok=outcome.ok,
            services=outcome.services,
            operations=outcome.operations,
            seconds=f"{seconds:.4f}",
        )

    def _count_no_local(self, changes: Changes) -> None:
        """kubeproxy_sync_proxy_rules_no_local_endpoints_total from the Services this
        sync looked at (every one for a full sync)."""
        assert self._metrics is not None
        if changes.full:
            self._no_local = {}
        node = self._settings.node.name
        for key, given in changes.services.items():
            counts = (
                no_local_endpoints(given.service, given.slices, node)
                if given.service is not None
                else None
            )
            if counts:
                self._no_local[key] = counts
            else:
                self._no_local.pop(key, None)
        totals: NoLocalCounts = {}
        for counts in self._no_local.values():
            for label, count in counts.items():
                totals[label] = totals.get(label, 0) + count
        self._metrics.no_local_endpoints(totals)

    @property
    def _retry_interval(self) -> float:
        return min(self._settings.retry_interval, self._settings.sync_period)

    def _desired_settings(self) -> tuple[NodeInfo, DesiredSettings]:
        node = with_node_object(self._settings.node, self.tracker.current_node())
        # With detectLocalMode NodeCIDR the chains follow the Node's pod CIDRs; a Node
        # change makes the sync full, which rewrites them.
        settings = settings_for_node(self._settings.desired, node)
        # The rules backend chosen at start (never "auto" by now) shapes the fixed rules.
        if settings.rules_backend is not self._dp.rules.backend:
            settings = replace(settings, rules_backend=self._dp.rules.backend)
        return replace(node, local_addresses=self._local_addresses), settings

    def _state(self, key: str, given: ServiceInput, node: NodeInfo) -> ServiceState | None:
        """One Service's desired state; None (logged) when computing it fails, so that one
        bad object never costs the others their sync."""
        assert given.service is not None
        try:
            service = self.schedulers.usable(given.service)
            return service_state(service, given.slices, node=node, settings=self._settings.desired)
        except Exception as exc:
            self._log.warning(
                "cannot compute a Service's state; it keeps what it had",
                key=("bad service", key, repr(exc)),
                service=key,
                error=repr(exc),
            )
            return None

    def _full(self, changes: Changes, started_wall: float) -> SyncOutcome:
        self._local_addresses = self._dp.links.node_addresses(DUMMY_INTERFACE)
        node, settings = self._desired_settings()
        if settings.masquerade.node_cidrs and not settings.masquerade.cluster_cidrs:
            self._log.warning(
                "detectLocalMode NodeCIDR: the Node has no spec.podCIDRs (yet); only "
                "node traffic from service addresses is masqueraded until it has",
                node=node.name,
            )
        # A Service whose state cannot be computed keeps its last good one, even when the
        # cache was dropped after a failed sync. One whose inputs did not change since its
        # state was computed keeps that state: the periodic full sync then costs an
        # observe and a diff, not every Service's state again (a Node change, or new host
        # addresses, recompute all).
        reuse = node == self._computed_node
        # Partial syncs between the pieces of this one need what was applied, and the
        # same node and settings as the full sync (a Node change recomputes everything).
        cache = self._cache if reuse else None
        self._full_operations = 0
        self._handed_over = False
        gc.unfreeze()  # what the last full sync froze may be garbage now
        box: Interleaved | None = None
        try:
            with gc_paused():
                if cache is not None:
                    states, computed, deferred = self._full_states(changes, node, reuse, cache)
                    # By construction the very states last applied; should they not be,
                    # the full plan could remove from under a partial sync in between
                    # what the applied states say is still wanted: then no interleaving.
                    if _same_states(cache, states):
                        box = Interleaved(since=self._clock.now(), node=node, settings=settings)
                        if deferred:
                            # The changes this sync took, applied by a partial sync at the
                            # first checkpoint (and measured there), not recomputed here.
                            box.deferred = replace(
                                changes, services=deferred, node_changed=False, full=False
                            )
                            box.deferred_started = started_wall
                            self._handed_over = True
                if box is None:
                    states, computed, _ = self._full_states(changes, node, reuse, None)
                self._computed = dict(states)
                self._inputs = computed
                self._computed_node = node
            self._interleaved = box
            self._checkpoint()
            with gc_paused():
                desired = merge_service_states(states, settings=settings)
            self._checkpoint()
            synced = full_sync(
                desired,
                self._dp,
                exclude_cidrs=self._settings.exclude_cidrs,
                drains=self._drains,
                now=self._clock.now(),
                drain_timeout=self._settings.drain_timeout,
                apply=self._apply_full,
                checkpoint=self._checkpoint,
            )
            result = synced.result
            if result.ok and not self._other_backend_removed:
                # Only now that this backend's rules are in place (a switch of backend
                # leaves traffic without rules for no longer than this one sync).
                self._remove_other_backend()
            if result.ok:
                if box is not None:
                    box.closed = False  # the plan is applied: nothing more to leave out
                self._checkpoint()
                if box is None or not box.failed:
                    applied_inputs = self._applied_inputs(box, changes.services)
                    with gc_paused():
                        self._relabel_all(applied_inputs, self._applied_states(box, states))
                    self._health_checks = {}
                    self._note_health_checks(applied_inputs, node.name, retry=True)
                    self.udp_flows.clear_after(applied_inputs, full=True)
                    self._checkpoint()
            plan = synced.plan
            iptables = desired.iptables
            states = self._applied_states(box, states)
            if box is not None and box.syncs:
                self._drains = box.drains(plan.draining, self._drains)
                iptables = box.iptables(iptables)
            else:
                self._drains = plan.draining
            if result.ok and (box is None or not box.failed):
                with gc_paused():
                    self._cache = AppliedCache.rebuild(states, iptables)
                # Partial syncs from here on diff against the rebuilt cache and change
                # only what comes after: the metrics, the log line.
                self._checkpoint()
        finally:
            self._interleaved = None
        # A partial sync in between failed: what it wrote is unknown, so what was applied
        # is not rebuilt (or dropped, by the caller) and this sync fails as that one did:
        # the next sync is full.
        failed_between = box is not None and box.failed
        operations = self._full_operations
        del desired, plan, synced, iptables
        # The cache holds millions of long-lived values without cycles: keep the cyclic
        # collector from rescanning them all on its own schedule, which would stall a
        # partial sync now and then for tens of milliseconds. Cycles frozen with them are
        # collected after the next full sync's unfreeze.
        gc.freeze()
        reason = _reason(result) or ("a partial sync in between failed" if failed_between else "")
        return SyncOutcome(
            True,
            result.ok and not failed_between,
            len(states),
            operations,
            reason,
            len(result.failures),
        )

    def _remove_other_backend(self) -> None:
        """Remove the other rules backend's objects, once per start; a failure is logged
        and tried again after the next full sync."""
        try:
            problems = self._dp.rules.remove_other_backend()
        except KernelError as exc:
            problems = [str(exc)]
        for problem in problems:
            self._log.warning("cannot remove the other rules backend's objects", error=problem)
        self._other_backend_removed = not problems

    def _full_states(
        self, changes: Changes, node: NodeInfo, reuse: bool, cache: AppliedCache | None
    ) -> tuple[list[tuple[str, ServiceState]], dict[str, ServiceInput], dict[str, ServiceInput]]:
        """A full sync's states, the inputs each was computed from, and (with `cache`) the
        changes left to a partial sync in between.

        A Service whose inputs are the very objects its state was computed from keeps that
        state. Without `cache` every other one is computed now (or keeps its last good
        state when that fails). With it the full sync wants exactly what was last applied:
        a changed, added or deleted Service keeps its applied state (or stays absent) and
        is returned in the third mapping, for the partial sync that applies it.
        """
        previous, inputs = self._computed, self._inputs
        states: list[tuple[str, ServiceState]] = []
        computed: dict[str, ServiceInput] = {}
        deferred: dict[str, ServiceInput] = {}
        for key, given in changes.services.items():
            if given.service is None:
                continue
            state = previous.get(key)
            if (
                state is not None
                and cache is None
                and reuse
                and _same_inputs(inputs.get(key), given)
            ):
                computed[key] = given
            elif cache is not None:
                state = cache.states.get(key)
                if state is not None and _same_inputs(inputs.get(key), given):
                    computed[key] = given
                else:
                    deferred[key] = given
                    if key in inputs:
                        computed[key] = inputs[key]
            else:
                fresh = self._state(key, given, node)
                if fresh is not None:
                    state = fresh
                    computed[key] = given
            if state is not None:
                states.append((key, state))
        if cache is not None:
            # Deleted since they were applied: kept until the partial sync deletes them.
            for key, state in cache.states.items():
                if key not in changes.services:
                    states.append((key, state))
                    deferred[key] = ServiceInput(None, ())
                    if key in inputs:
                        computed[key] = inputs[key]
        return states, computed, deferred

    @staticmethod
    def _applied_states(
        box: Interleaved | None, states: list[tuple[str, ServiceState]]
    ) -> list[tuple[str, ServiceState]]:
        return box.final_states(states) if box is not None and box.syncs else states

    @staticmethod
    def _applied_inputs(
        box: Interleaved | None, inputs: Mapping[str, ServiceInput]
    ) -> Mapping[str, ServiceInput]:
        return box.final_inputs(inputs) if box is not None and box.syncs else inputs

    def _checkpoint(self) -> None:
        """Between pieces of a periodic full sync: apply the changes it took, then those
        pending, if any, by a partial sync of their own (see interleave.py), so that none
        waits for the whole."""
        box = self._interleaved
        if box is None or box.failed or box.closed or self._cache is None:
            return
        changes, box.deferred = box.deferred, None
        started_wall = box.deferred_started
        if changes is None:
            if not self._pending():
                return
            # At most one sync per min_sync_period, in between as anywhere else: changes
            # batched by it must not be applied one partial sync per piece.
            if self._clock.now() - box.since < self._settings.min_sync_period:
                return
            started_wall = self._wall()
            changes = self.tracker.take_partial()
            if changes is None:  # a Node change: for the next sync, a full one
                return
        started = time.perf_counter()
        try:
            outcome = self._partial(changes, (box.node, box.settings))
        except IpvsProxyError as exc:
            outcome = SyncOutcome(False, False, len(changes.services), 0, f"kernel: {exc}")
        except Exception as exc:
            logger.opt(exception=exc).error("sync failed with an unexpected error")
            outcome = SyncOutcome(False, False, len(changes.services), 0, f"bug: {exc!r}")
        box.syncs += 1
        box.failed = not outcome.ok
        box.since = self._clock.now()
        self.syncs += 1
        self._report(outcome, changes, time.perf_counter() - started, started_wall)

    def _apply_full(self, plan: Plan) -> ApplyResult:
        """A full sync's plan, without what partial syncs wrote while it was computed."""
        box = self._interleaved
        if box is not None:
            box.closed = True
            plan = box.filter(plan)
        self._full_operations = len(plan)
        return self._apply(plan)

    def _partial(
        self, changes: Changes, desired: tuple[NodeInfo, DesiredSettings] | None = None
    ) -> SyncOutcome:
        """desired: the node and settings to compute states for; by default the current
        ones (during a full sync, the full sync's: what it wants and they diff against)."""
        assert self._cache is not None
        node, settings = desired or self._desired_settings()
        updates: dict[str, ServiceState | None] = {}
        for key, given in changes.services.items():
            if given.service is None:
                updates[key] = None
                self._computed.pop(key, None)
                self._inputs.pop(key, None)
                continue
            state = self._state(key, given, node)
            if state is not None:
                updates[key] = state
                self._computed[key] = state
                if node == self._computed_node:  # else the next full sync recomputes it
                    self._inputs[key] = given
                else:
                    self._inputs.pop(key, None)
        started: dict[DrainKey, float] = {}
        planned = plan_partial(
            self._cache,
            updates,
            settings=settings,
            exclude_cidrs=self._settings.exclude_cidrs,
            drain_timeout=self._settings.drain_timeout,
            leave=self._leave_by_counters(started),
        )
        result = self._apply(planned.plan)
        if self._interleaved is not None:
            self._interleaved.wrote(planned.plan.operations)
            if result.ok:
                self._interleaved.applied(updates, changes.services)
        if result.ok:
            self._cache.commit(planned.delta)
            self._note_drains(planned.plan, started)
            for key in updates:
                for vs_key in self._labelled.pop(key, ()):
                    self.labels.pop(vs_key, None)
            for key, state in updates.items():
                self._label(changes.services[key], state)
            applied = {key: changes.services[key] for key in updates}
            self._note_health_checks(applied, node.name)
            self.udp_flows.clear_after(applied, full=False)
        return SyncOutcome(
            False,
            result.ok,
            planned.services,
            len(planned.plan),
            _reason(result),
            len(result.failures),
        )

    def _leave_by_counters(self, started: dict[DrainKey, float]) -> LeavePolicy:
        """How a partial sync takes real servers out of a virtual server that stays.

        kube-proxy deletes an idle real server at once; without counters a partial sync
        could only quiesce it and leave it listed by `ipvsadm -Ln` until the next full
        sync. So the counters are read, in one dump per virtual server that loses TCP real
        servers (no other is read): idle ones are deleted now, busy ones drain at weight 0
        (graceful.drain_step), and the drains started are added to `started`. UDP and
        SCTP servers need no counters: they are deleted at once anyway.
        """
        timeout = self._settings.drain_timeout
        now = self._clock.now()

        def leave(key: VirtualServerKey, leaving: Sequence[RealServer]) -> list[Operation]:
            without_counters: list[Operation] = [
                leave_without_counters(key, server, timeout=timeout) for server in leaving
            ]
            if key.protocol is not Protocol.TCP or timeout <= 0:
                return without_counters
            # The dump holds every real server of the virtual server (thousands for a big
            # Service): pick the leaving ones by address, cheaper than building each key.
            addresses = {server.address for server in leaving}
            try:
                counted = {
                    server.key: server
                    for server in self._dp.ipvs.real_servers(key)
                    if server.address in addresses
                }
            except KernelError as exc:
                self._log.warning(
                    "cannot read connection counters; leaving real servers drain until "
                    "the next full sync",
                    key=("counters", str(exc)),
                    error=str(exc),
                )
                return without_counters
            # A server the kernel no longer holds has no connection: deleting it again
            # is the idempotent no-op it should be.
            step = drain_step(
                key,
                [counted.get(server.key, server) for server in leaving],
                started=self._drains,
                now=now,
                timeout=timeout,
            )
            started.update(step.draining)
            return list(step.operations)

        return leave

    def _note_drains(self, plan: Plan, started: Mapping[DrainKey, float]) -> None:
        """Keep the drain clocks in step with an applied partial plan."""
        gone = {(op.virtual, op.key) for op in plan.operations if isinstance(op, DeleteRealServer)}
        removed = {op.key for op in plan.operations if isinstance(op, DeleteVirtualServer)}
        if gone or removed or started:
            self._drains = {
                key: since
                for key, since in self._drains.items()
                if key not in gone and key[0] not in removed
            } | dict(started)

    def _apply(self, plan: Plan) -> ApplyResult:
        if not plan:
            return ApplyResult(applied=0, failures=())
        result = apply_plan(plan, self._dp)
        for failure in result.failures:
            logger.debug(
                "kernel refused an operation",
                operation=type(failure.operation).__name__,
                error=failure.message,
            )
            if self._metrics is not None and isinstance(failure.operation, RestoreChains):
                self._metrics.iptables_restore_failed(failure.operation.ruleset.family)
        if self._metrics is not None:
            ops = plan.operations
            self._metrics.netlink_sent(
                sum(isinstance(op, IpvsOperation) for op in ops), subsystem="ipvs"
            )
            self._metrics.netlink_sent(
                sum(isinstance(op, BindAddress | UnbindAddress) for op in ops),
                subsystem="addresses",
            )
        return result

    # -- health-check node ports (externalTrafficPolicy Local)

    def _note_health_checks(
        self, inputs: Mapping[str, ServiceInput], node_name: str, *, retry: bool = False
    ) -> None:
        """Record the health-check ports of these Services, then serve the result if it
        changed. Costs the changed Services only; the ports are few. Ports that could not
        be bound are tried again with `retry` or once retry_interval has passed."""
        for key, given in inputs.items():
            self._health_checks.pop(key, None)
            if given.service is not None and given.service.health_check_node_port:
                found = health_check_ports([given.service], given.slices, node_name=node_name)
                for port, (_, count) in found.items():
                    self._health_checks[key] = (port, count)
        if self._serve_health_checks is None:
            return
        wanted: dict[int, tuple[str, int]] = {}
        for key in sorted(self._health_checks):  # the first Service on a port keeps it
            port, count = self._health_checks[key]
            wanted.setdefault(port, (key, count))
        now = self._clock.now()
        retry = retry or now >= self._bind_retry_at
        if not retry:
            wanted = {p: v for p, v in wanted.items() if p not in self._unbound_ports}
        if wanted != self._served_health_checks:
            failed = frozenset(self._serve_health_checks(wanted))
            # A port that could not be bound stays unserved, to be tried again later.
            self._served_health_checks = {p: v for p, v in wanted.items() if p not in failed}
            self._unbound_ports = failed if retry else self._unbound_ports | failed
            if failed and retry:
                self._bind_retry_at = now + self._retry_interval

    # -- traffic labels

    def _relabel_all(
        self, inputs: Mapping[str, ServiceInput], states: Iterable[tuple[str, ServiceState]]
    ) -> None:
        labels: dict[VirtualServerKey, ServicePortLabels] = {}
        labelled: dict[str, tuple[VirtualServerKey, ...]] = {}
        known, sources = self._label_sources, {}
        for key, state in states:
            service = inputs[key].service
            if service is not None:
                # The labels follow from the Service and its state alone: those of a
                # periodic full sync, which reuses nearly every state, are mostly known.
                seen = known.get(key)
                if seen is not None and seen[0] is service and seen[1] is state:
                    found = seen[2]
                else:
                    found = service_port_labels(service, state.virtual_servers)
                labels.update(found)
                labelled[key] = tuple(found)
                sources[key] = (service, state, found)
        # Swapped whole: the scrape thread sees the old dict or the new one.
        self.labels, self._labelled, self._label_sources = labels, labelled, sources

    def _label(self, given: ServiceInput, state: ServiceState | None) -> None:
        # The scrape thread only ever does single lookups, safe while entries change.
        if state is not None and given.service is not None:
            found = service_port_labels(given.service, state.virtual_servers)
            self.labels.update(found)
            self._labelled[given.service.key] = tuple(found)
            self._label_sources[given.service.key] = (given.service, state, found)


def _same_states(cache: AppliedCache | None, states: Sequence[tuple[str, ServiceState]]) -> bool:
    """Whether these are the very states last applied (the same objects, no more, no less)."""
    if cache is None or len(cache.states) != len(states):
        return False
    applied = cache.states
    return all(applied.get(key) is state for key, state in states)


def _same_inputs(seen: ServiceInput | None, given: ServiceInput) -> bool:
    """Whether a Service's inputs are the very objects its state was computed from."""
    return (
        seen is not None
        and seen.service is given.service
        and len(seen.slices) == len(given.slices)
        and all(a is b for a, b in zip(seen.slices, given.slices, strict=True))
    )


def _reason(result: ApplyResult) -> str:
    """Why a plan failed, the same words each time it fails the same way (so that the
    repeats are counted rather than logged); how many operations failed is logged apart."""
    if result.ok:
        return ""
    if result.failures:
        first = result.failures[0]
        return f"apply: {type(first.operation).__name__}: {first.message}"
    return "apply: removals postponed after an earlier failure"
