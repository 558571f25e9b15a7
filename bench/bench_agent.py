"""Controller cost of a big cluster: cold start by stage, RSS, and one change at a time.

    python -m bench.bench_agent [--sizes 1000,10000,30000] [--changes 1000]
                                [--profile realistic|uniform] [--endpoints 10]
                                [--baseline TREE] [--repeat N] [--json FILE] [--cprofile N]

The kernel is replaced by a recorder that encodes every write as the adapters would and
sends nothing: IPVS messages through EncodeOnlySink, kube-ipvs0 addresses as rtnetlink
messages, ipset entries as `ipset restore` lines, chains as iptables-restore payloads.
Clusters come from bench/lib/gen_cluster.py (the realistic, long-tailed profile by default),
served as the API server's list answers (JSON bytes, pages of 500 as the reflector asks).

Each size runs in processes of their own (so that the RSS is the agent's) and reports:

- cold start, by stage, from the list answers to every message encoded: list+decode (JSON
  parse and conversion, as the reflector reads a page), desired (every Service's state and
  the merge), diff (observe the empty recorder, plan_sync), encode (apply_plan into the
  recorder); then the agent's own cold sync from the decoded objects, as a cross-check;
- peak RSS (the whole run) and steady RSS (after the cold start, the list answers
  dropped, the agent holding its applied state), and again after the changes;
- one endpoint (any one of its slice) changed in a random Service, one Service added
  (Service + slices), one deleted: --changes each, tracker call + partial sync, controller
  only, p50 and p99.

--repeat N runs the cold start N times per size (and tree, alternating with --baseline),
each in a process of its own, and reports each stage's median: on a shared machine one
run's CPU time can be off by half.

--cprofile N profiles each endpoint change and prints (to stderr) the N functions that
took most time in the slowest 1 % of them, those of the biggest Services; its timings are
the profiler's, not to be quoted.

Every figure is given as wall time and this thread's CPU time: the machine may be shared,
and then the wall time's tail is mostly waiting for a core. The script checks its own
result (the messages each change wrote) and exits 1 when they are wrong.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import itertools
import json
import os
import pstats
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.lib import baseline
from bench.lib.gen_cluster import build, build_realistic
from ipvsproxy.dataplane.interfaces import IpvsSnapshot
from ipvsproxy.dataplane.ipset import restore_line
from ipvsproxy.dataplane.ipvs import EncodeOnlySink
from ipvsproxy.dataplane.links import RTM_DELADDR, RTM_NEWADDR, encode_address
from ipvsproxy.dataplane.xtables_rules import XtablesRules
from ipvsproxy.k8s.objects import endpoint_slice_from_dict, service_from_dict

if TYPE_CHECKING:  # not in a --baseline tree from before steering
    from ipvsproxy.core.operations import EnsureSteering

try:  # the package layout (core/, agent/)
    from ipvsproxy.agent.apply import apply_plan
    from ipvsproxy.agent.full_sync import observe
    from ipvsproxy.agent.sync_loop import Agent, AgentSettings
    from ipvsproxy.core.desired import (
        NodeInfo,
        ServiceState,
        index_slices,
        merge_service_states,
        service_state,
    )
    from ipvsproxy.core.full_plan import plan_sync
    from ipvsproxy.core.gcpause import gc_paused
    from ipvsproxy.core.model import (
        EndpointSlice,
        IPAddress,
        IPFamily,
        IptablesRuleset,
        IpvsStats,
        KernelState,
        RealServer,
        Service,
        VirtualServerKey,
    )
    from ipvsproxy.core.operations import (
        IPSetOperation,
        IpvsOperation,
        OperationFailure,
        RestoreChains,
    )
    from ipvsproxy.core.rules import JUMP_RULES, restore_payload
    from ipvsproxy.dataplane.interfaces import Dataplanes
except ModuleNotFoundError:  # a --baseline tree of the flat layout that came before it
    from ipvsproxy.apply import Dataplanes, apply_plan
    from ipvsproxy.desired import (
        NodeInfo,
        ServiceState,
        index_slices,
        merge_service_states,
        service_state,
    )
    from ipvsproxy.gcpause import gc_paused
    from ipvsproxy.model import (
        EndpointSlice,
        IPAddress,
        IPFamily,
        IptablesRuleset,
        IpvsStats,
        KernelState,
        RealServer,
        Service,
        VirtualServerKey,
    )
    from ipvsproxy.operations import (
        IPSetOperation,
        IpvsOperation,
        OperationFailure,
        RestoreChains,
    )
    from ipvsproxy.plan import plan_sync
    from ipvsproxy.proxier import observe
    from ipvsproxy.rules import JUMP_RULES, restore_payload

    from ipvsproxy.agent import Agent, AgentSettings

NODE = "node-0001"  # this node: a few endpoints of the realistic profile run on it
STAGES = ("list+decode", "desired", "diff", "encode")


class Recorder:
    """Every kernel adapter at once: encodes what would be written, sends nothing.

    Reads answer `held`, the state the bench says the kernel is in (empty: a cold start).
    """

    def __init__(self) -> None:
        self.ipvs = EncodeOnlySink()
        self.held = KernelState({}, {}, frozenset(), {})
        self.address_messages = 0
        self.ipset_lines = 0
        self.restores = 0
        self.bytes = 0
        self._seq = 0

    def writes(self) -> tuple[int, int, int, int]:
        return self.ipvs.writes, self.address_messages, self.ipset_lines, self.restores

    # IPVS
    def snapshot(self) -> IpvsSnapshot:
        held = self.held
        return {k: (v, dict(held.real_servers.get(k, {}))) for k, v in held.virtual_servers.items()}

    def real_servers(self, key: VirtualServerKey) -> list[RealServer]:
        return list(self.held.real_servers.get(key, {}).values())

    def stats(self) -> dict[VirtualServerKey, IpvsStats]:
        return {}

    def execute(self, ops: Sequence[IpvsOperation]) -> list[OperationFailure]:
        return self.ipvs.execute(ops)

    def set_timeouts(self, timeouts: tuple[int, int, int]) -> bool:
        return False

    # addresses
    def interface_exists(self, name: str) -> bool:
        return True

    def ensure_interface(self, name: str) -> None:
        pass

    def delete_interface(self, name: str) -> None:
        pass

    def addresses(self, name: str) -> frozenset[IPAddress]:
        return self.held.addresses

    def node_addresses(self, exclude: str) -> frozenset[IPAddress]:
        return frozenset()

    def _addresses(self, command: int, addresses: Sequence[IPAddress]) -> list[OperationFailure]:
        for address in addresses:
            self._seq += 1
            self.bytes += len(
                encode_address(command=command, index=7, address=address, seq=self._seq)
            )
        self.address_messages += len(addresses)
        return []

    def bind(self, name: str, addresses: Sequence[IPAddress]) -> list[OperationFailure]:
        return self._addresses(RTM_NEWADDR, addresses)

    def unbind(self, name: str, addresses: Sequence[IPAddress]) -> list[OperationFailure]:
        return self._addresses(RTM_DELADDR, addresses)

    # policy routing of steered ports
    def steering(self, families: Iterable[IPFamily]) -> frozenset[tuple[IPFamily, int]]:
        return frozenset(item for item in self.held.steering if item[0] in families)

    def ensure_steering(self, op: EnsureSteering) -> OperationFailure | None:
        self.bytes += 2 * 64  # a rule and a route request, about 64 bytes each
        return None

    def remove_steering(self, family: IPFamily) -> None:
        pass

    # ipsets
    def read(self, names: Collection[str]) -> dict[str, frozenset[str]]:
        return {name: self.held.ipsets.get(name, frozenset()) for name in names}

    def apply(self, ops: Sequence[IPSetOperation]) -> list[OperationFailure]:
        self.bytes += len("\n".join(restore_line(op) for op in ops))
        self.ipset_lines += len(ops)
        return []

    def destroy(self, names: Collection[str]) -> list[OperationFailure]:
        return []


class RecorderIptables:
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def read(self, family: IPFamily) -> IptablesRuleset:
        # The held chains plus the jump rules in the built-in chains, as iptables-save shows.
        held = self._recorder.held.iptables.get(family)
        tables = {t: dict(chains) for t, chains in (held.tables if held else {}).items()}
        for jump in JUMP_RULES:
            chain = tables.setdefault(jump.table, {}).get(jump.chain, ())
            tables[jump.table][jump.chain] = (*chain, jump.rule)
        return IptablesRuleset(family, tables)

    def restore(self, op: RestoreChains) -> OperationFailure | None:
        self._recorder.bytes += len(restore_payload(op.ruleset, op.missing_jumps))
        self._recorder.restores += 1
        return None

    def remove(self, family: IPFamily) -> None:
        pass


def dataplanes_of(recorder: Recorder) -> Dataplanes:
    return Dataplanes(
        ipvs=recorder, links=recorder, rules=XtablesRules(recorder, RecorderIptables(recorder))
    )


PAGE = 500  # items per list page, the reflector's default limit


def write_pages(profile: str, services: int, endpoints: int, directory: Path) -> None:
    """The API server's answers to the two lists, in pages as the reflector asks for them,
    one file each, so that the measured process holds only what an agent would."""
    cluster = build_realistic(services) if profile == "realistic" else build(services, endpoints)
    for kind, api_version in (("Service", "v1"), ("EndpointSlice", "discovery.k8s.io/v1")):
        items = [i for i in cluster["items"] if i["kind"] == kind]
        for page, start in enumerate(range(0, len(items), PAGE)):
            document = {
                "kind": f"{kind}List",
                "apiVersion": api_version,
                "metadata": {"resourceVersion": "1", "continue": str(start + PAGE)},
                "items": items[start : start + PAGE],
            }
            (directory / f"{kind}-{page:05d}.json").write_text(json.dumps(document))


def pages(directory: Path, kind: str) -> Iterator[bytes]:
    for path in sorted(directory.glob(f"{kind}-*.json")):
        yield path.read_bytes()


def decode(bodies: Iterable[bytes], convert: Callable[[Any], Any]) -> dict[str, Any]:
    """List answers into model values by namespace/name, as the reflector reads pages."""
    found = {}
    for body in bodies:
        for obj in json.loads(body)["items"]:
            value = convert(obj)
            if value is not None:
                found[f"{value.namespace}/{value.name}"] = value
    return found


CPU: list[float] = []  # the CPU time of every timed() call, in order


def timed(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of fn(); its CPU seconds (this thread's) go to CPU."""
    cpu = time.thread_time()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    CPU.append(time.thread_time() - cpu)
    return wall


def full_sync_pieces(agent: Agent) -> float:
    """The longest stretch of a periodic full sync (the cache kept, the period over) in
    which no change can be applied, CPU seconds: from its start to the first point where
    it lets a partial sync run, between two such points, from the last to its end. With
    none (an older tree), the whole full sync. Median of 3."""
    longest = []
    checkpoint = getattr(agent, "_checkpoint", None)
    for _ in range(3):
        marks: list[float] = []
        if checkpoint is not None:

            def marked(
                checkpoint: Callable[[], None] = checkpoint, marks: list[float] = marks
            ) -> None:
                # A point where a pending change would be applied: the full sync lets
                # partial syncs run (not every full sync does; see sync_loop._full).
                box = agent._interleaved
                if box is not None and not box.failed and not box.closed:
                    marks.append(time.thread_time())
                checkpoint()

            agent._checkpoint = marked  # type: ignore[method-assign]
        agent._period = 0.0  # the periodic full sync is due
        gc.collect()
        begin = time.thread_time()
        agent.sync()
        end = time.thread_time()
        if not (agent.last and agent.last.full and agent.last.operations == 0):
            fail("periodic full sync: not full, or it wrote something")
        points = [begin, *marks, end]
        longest.append(max(b - a for a, b in itertools.pairwise(points)))
    if checkpoint is not None:
        del agent._checkpoint
    return statistics.median(longest)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def rss_mib() -> float:
    """This process's resident set now."""
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def fail(message: str) -> None:
    print(f"FAILED: {message}", file=sys.stderr)
    raise SystemExit(1)


def ipvs_messages(state: ServiceState) -> int:
    """IPVS messages that add a Service's whole state: each virtual server, its servers."""
    return sum(1 + len(state.real_servers.get(key, {})) for key in state.virtual_servers)


def cold_start(directory: Path) -> dict[str, tuple[float, float]]:
    """The first full sync from the two list answers, stage by stage: (wall, CPU) seconds.

    The stages call what the reflectors and Agent._full call, in their order."""
    stages: dict[str, tuple[float, float]] = {}
    found: dict[str, Any] = {}
    recorder = Recorder()
    dataplanes = dataplanes_of(recorder)
    settings = AgentSettings().desired
    node = NodeInfo(name=NODE)

    def stage(name: str, fn: Callable[[], Any]) -> None:
        wall = timed(lambda: found.__setitem__(name, fn()))
        stages[name] = (wall, CPU[-1])

    def desired() -> KernelState:
        services, slices = found["list+decode"]
        by_service = index_slices(slices.values())
        states = [
            (key, service_state(s, by_service.get(key, ()), node=node, settings=settings))
            for key, s in services.items()
        ]
        return merge_service_states(states, settings=settings)

    with gc_paused():
        stage(
            "list+decode",
            lambda: (
                decode(pages(directory, "Service"), service_from_dict),
                decode(pages(directory, "EndpointSlice"), endpoint_slice_from_dict),
            ),
        )
        stage("desired", desired)
        stage(
            "diff",
            lambda: plan_sync(
                found["desired"], observe(dataplanes, tuple(found["desired"].iptables))
            ),
        )
        stage("encode", lambda: apply_plan(found["diff"], dataplanes))
    if not found["encode"].ok or recorder.ipvs.writes == 0:
        fail("cold start: nothing encoded, or the recorder refused a message")
    return stages


def bench_size(
    directory: Path, changes: int, rng: random.Random, profile_top: int = 0
) -> dict[str, Any]:
    """The agent's cold start, RSS and changes (cold_start's stages run in another process,
    so that this one's RSS is an agent's)."""
    services = decode(pages(directory, "Service"), service_from_dict)
    slices = decode(pages(directory, "EndpointSlice"), endpoint_slice_from_dict)
    list_bytes = sum(p.stat().st_size for p in directory.glob("*.json"))
    recorder = Recorder()
    agent = Agent(
        dataplanes_of(recorder), AgentSettings(node=NodeInfo(name=NODE), sync_period=3600.0)
    )
    tracker = agent.tracker
    tracker.services.replace(services)
    tracker.slices.replace(slices)
    for handler in (tracker.services, tracker.slices):
        # `listed` since handlers stopped calling it "synced"; a --baseline tree may be older
        (handler.listed if hasattr(handler, "listed") else handler.synced)()
    gc.collect()
    agent_cold = timed(agent.sync)
    agent_cold_cpu = CPU[-1]
    if not (agent.last and agent.last.ok and agent.last.full):
        fail("cold full sync")
    # From now on the "kernel" holds what was applied.
    cache = agent._cache
    assert cache is not None
    recorder.held = merge_service_states(cache.states.items(), settings=AgentSettings().desired)
    steady = []
    mark = len(CPU)
    for _ in range(3):
        agent.resync()
        gc.collect()
        steady.append(timed(agent.sync))
        if not (agent.last and agent.last.full and agent.last.operations == 0):
            fail(
                f"steady full sync wrote {agent.last.operations if agent.last else '?'} operations"
            )
    steady_cpu = statistics.median(CPU[mark:])
    longest_piece = full_sync_pieces(agent)
    cache = agent._cache  # rebuilt by each full sync
    assert cache is not None
    gc.collect()
    steady_rss = rss_mib()

    by_key = {k: s for k, s in slices.items() if s.family is IPFamily.V4 and s.endpoints}
    slice_keys = sorted(by_key)
    endpoint_times: list[float] = []
    profiled: list[tuple[float, int, cProfile.Profile]] = []
    mark = len(CPU)
    for n in range(changes):
        key = rng.choice(slice_keys)
        old = by_key[key]
        # Any endpoint of the slice, as a pod anywhere in it may be replaced: the tracker
        # compares the old and new slice up to the first difference.
        at = rng.randrange(len(old.endpoints))
        replaced = old.endpoints[at]
        moved = dataclasses.replace(replaced, address=replaced.address + 2**20 + n)
        new = dataclasses.replace(
            old, endpoints=(*old.endpoints[:at], moved, *old.endpoints[at + 1 :])
        )
        state = cache.states.get(old.service_key)
        # One real server added and one taken out per virtual server that served it.
        expected = 2 * sum(
            any(k.address == replaced.address for k in servers)
            for servers in (state.real_servers.values() if state else ())
        )
        before = recorder.writes()

        def change(key: str = key, new: EndpointSlice = new) -> None:
            tracker.slices.upsert(key, new)
            agent.sync()

        profiler = cProfile.Profile() if profile_top else None
        if profiler:
            profiler.enable()
        endpoint_times.append(timed(change))
        if profiler:
            profiler.disable()
            profiled.append((CPU[-1], n, profiler))
        by_key[key] = new
        written = tuple(a - b for a, b in zip(recorder.writes(), before, strict=True))
        if not agent.last or agent.last.full or written[0] != expected or written[1]:
            fail(f"endpoint change wrote {written}, expected {expected} IPVS messages")
    endpoint_cpu = CPU[mark:]
    if profiled:
        slowest = sorted(profiled, key=lambda item: item[:2])[-max(1, changes // 100) :]
        print(f"the slowest {len(slowest)} endpoint changes, profiled:", file=sys.stderr)
        stats = pstats.Stats(*(p for _, _, p in slowest), stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(profile_top)

    # A ClusterIP Service and its slices, copied under new names and a new cluster IP.
    template = next(
        s
        for s in services.values()
        if s.type == "ClusterIP" and not s.external_ips and len(s.cluster_ips) == 1
    )
    template_slices = [s for s in slices.values() if s.service_key == template.key]
    add_times: list[float] = []
    delete_times: list[float] = []
    mark = len(CPU)
    base = template.cluster_ips[0].__class__("10.95.0.0")
    for n in range(changes):
        name = f"bench-{n}"
        svc = dataclasses.replace(template, name=name, cluster_ips=(base + n,))
        eps = [
            dataclasses.replace(s, name=f"{name}-{i}", service_name=name)
            for i, s in enumerate(template_slices)
        ]
        before = recorder.writes()

        def add(svc: Service = svc, eps: list[EndpointSlice] = eps) -> None:
            tracker.services.upsert(svc.key, svc)
            for s in eps:
                tracker.slices.upsert(s.key, s)
            agent.sync()

        add_times.append(timed(add))
        written = tuple(a - b for a, b in zip(recorder.writes(), before, strict=True))
        state = cache.states[svc.key]
        if written[0] != ipvs_messages(state) or written[1] != 1 or written[3]:
            fail(f"adding a Service wrote {written}")
        before = recorder.writes()

        def delete(svc: Service = svc, eps: list[EndpointSlice] = eps) -> None:
            tracker.services.delete(svc.key)
            for s in eps:
                tracker.slices.delete(s.key)
            agent.sync()

        delete_times.append(timed(delete))
        written = tuple(a - b for a, b in zip(recorder.writes(), before, strict=True))
        if written[0] != len(state.virtual_servers) or written[1] != 1 or written[3]:
            fail(f"deleting a Service wrote {written}")
    change_cpu = CPU[mark:]
    gc.collect()
    return {
        "services": len(services),
        "slices": len(slices),
        "endpoints": sum(len(s.endpoints) for s in slices.values()),
        "list_mib": list_bytes / 2**20,
        "real_servers": sum(
            len(r) for st in cache.states.values() for r in st.real_servers.values()
        ),
        "agent_cold": (agent_cold, agent_cold_cpu),
        "steady": (statistics.median(steady), steady_cpu),
        "longest_piece": longest_piece,
        "steady_rss": steady_rss,
        "after_rss": rss_mib(),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "endpoint": (endpoint_times, endpoint_cpu),
        "add": (add_times, change_cpu[0::2]),
        "delete": (delete_times, change_cpu[1::2]),
    }


def report(results: list[dict[str, Any]]) -> None:
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall / CPU)")
    print("cold start, seconds:")
    print(
        "{:>9} {:>9} {:>8} ".format("Services", "endpoints", "list MiB")
        + " ".join(f"{s:>17}" for s in (*STAGES, "total", "agent's sync"))
    )
    for r in results:
        stages = [r["stages"][s] for s in STAGES]
        total = (sum(w for w, _ in stages), sum(c for _, c in stages))
        cells = [*stages, total, tuple(r["agent_cold"])]
        print(
            f"{r['services']:>9} {r['endpoints']:>9} {r['list_mib']:>8.1f} "
            + " ".join(f"{w:>8.2f} /{c:>7.2f}" for w, c in cells)
        )
    print("memory, MiB:")
    print(
        "{:>9} {:>10} {:>10} {:>14}".format("Services", "peak RSS", "steady RSS", "after changes")
    )
    for r in results:
        print(
            f"{r['services']:>9} {r['peak_rss']:>10.0f} {r['steady_rss']:>10.0f}"
            f" {r['after_rss']:>14.0f}"
        )
    print("one change, ms (tracker call + partial sync):")
    header = ("Services", "change", "p50 wall", "p99 wall", "p50 CPU", "p99 CPU")
    print("{:>9} {:<18} {:>9} {:>9} {:>9} {:>9}".format(*header))
    for r in results:
        for label, key in (
            ("endpoint change", "endpoint"),
            ("Service added", "add"),
            ("Service deleted", "delete"),
        ):
            wall, cpu = r[key]
            print(
                f"{r['services']:>9} {label:<18} {statistics.median(wall) * 1e3:>9.3f}"
                f" {percentile(wall, 0.99) * 1e3:>9.3f}"
                f" {statistics.median(cpu) * 1e3:>9.3f} {percentile(cpu, 0.99) * 1e3:>9.3f}"
            )
        wall, cpu = r["agent_cold"]
        print(
            f"{r['services']:>9} {'full sync, cold':<18} {wall * 1e3:>9.1f} {'':>9}"
            f" {cpu * 1e3:>9.1f}"
        )
        wall, cpu = r["steady"]
        print(
            f"{r['services']:>9} {'full sync, steady':<18} {wall * 1e3:>9.1f} {'':>9}"
            f" {cpu * 1e3:>9.1f}"
        )
        if "longest_piece" in r:
            print(
                f"{r['services']:>9} {'  longest piece':<18} {'':>9} {'':>9}"
                f" {r['longest_piece'] * 1e3:>9.1f}  (of a periodic full sync, in which"
                " no change can be applied)"
            )
    if len(results) > 1:
        small, big = results[0], results[-1]
        ratios = ", ".join(
            f"{key} {statistics.median(big[key][1]) / statistics.median(small[key][1]):.2f}x"
            for key in ("endpoint", "add", "delete")
        )
        print(f"CPU median ratio {big['services']} / {small['services']} Services: {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="1000,10000,30000", help="Services per cluster, comma-separated"
    )
    parser.add_argument("--changes", type=int, default=1000, help="changes timed per kind")
    parser.add_argument(
        "--profile", choices=("realistic", "uniform"), default="realistic", help="cluster mix"
    )
    parser.add_argument("--endpoints", type=int, default=10, help="uniform: endpoints per Service")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--baseline",
        metavar="TREE",
        help="also run with the ipvsproxy package in TREE (e.g. `git archive main ipvsproxy`"
        " unpacked there), alternating, and print the ratios",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="cold starts per tree and size (each stage's median is reported)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    parser.add_argument(
        "--cprofile",
        type=int,
        default=0,
        metavar="N",
        help="profile the slowest endpoint changes, print the top N functions",
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one size, JSON out
    parser.add_argument("--pages", help=argparse.SUPPRESS)  # where its list pages are
    parser.add_argument("--part", choices=("stages", "agent"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    from loguru import logger

    logger.remove()  # the agent's per-sync lines would dominate what is measured
    if args.one:
        directory = Path(args.pages)
        if args.part == "stages":
            print(json.dumps({"stages": cold_start(directory)}))
        else:
            rng = random.Random(args.seed)
            print(json.dumps(bench_size(directory, args.changes, rng, args.cprofile)))
        return
    runs: dict[str, list[dict[str, Any]]] = {"": []}
    if args.baseline:
        runs[args.baseline] = []
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory(prefix="bench-agent-") as directory:
            write_pages(args.profile, int(size), args.endpoints, Path(directory))
            results_now: dict[str, dict[str, Any]] = {source: {} for source in runs}
            cold: dict[str, list[dict[str, list[float]]]] = {source: [] for source in runs}
            # The cold-start stages --repeat times, alternating trees (both see the same
            # load), then each tree's agent part once.
            for part in ("stages",) * args.repeat + ("agent",):
                for source in runs:
                    command = baseline.command(
                        "bench.bench_agent",
                        source,
                        f"--one={size}",
                        f"--pages={directory}",
                        f"--part={part}",
                        f"--changes={args.changes}",
                        f"--seed={args.seed}",
                        f"--cprofile={args.cprofile}",
                    )
                    done = subprocess.run(
                        command, cwd=baseline.ROOT, stdout=subprocess.PIPE, text=True, check=False
                    )
                    if done.returncode:
                        raise SystemExit(done.returncode)
                    found = json.loads(done.stdout.splitlines()[-1])
                    if part == "stages":
                        cold[source].append(found["stages"])
                    else:
                        results_now[source].update(found)
            for source, results in runs.items():
                result = results_now[source]
                # Each stage's median over the repeats, wall and CPU apart.
                result["stages"] = {
                    stage: [
                        statistics.median(run[stage][i] for run in cold[source]) for i in (0, 1)
                    ]
                    for stage in STAGES
                }
                results.append(result)
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": [summary(r) for r in runs[""]]}))
    for source, results in runs.items():
        if args.baseline:
            print(f"== {source or 'this tree'}")
        report(results)
    if args.baseline:
        compare(runs[""], runs[args.baseline])


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """One size's figures for --json: seconds and MiB, wall and CPU."""
    out: dict[str, Any] = {
        k: r[k] for k in ("services", "endpoints", "peak_rss", "steady_rss", "after_rss")
    }
    for stage, (wall, cpu) in r["stages"].items():
        out[f"cold {stage}"] = {"wall": wall, "cpu": cpu}
    out["agent cold sync"] = dict(zip(("wall", "cpu"), r["agent_cold"], strict=True))
    out["steady full sync"] = dict(zip(("wall", "cpu"), r["steady"], strict=True))
    out["steady full sync, longest piece"] = {"cpu": r["longest_piece"]}
    for key in ("endpoint", "add", "delete"):
        wall, cpu = r[key]
        out[key] = {
            "p50 wall": statistics.median(wall),
            "p99 wall": percentile(wall, 0.99),
            "p50 cpu": statistics.median(cpu),
            "p99 cpu": percentile(cpu, 0.99),
        }
    return out


def compare(new: list[dict[str, Any]], old: list[dict[str, Any]]) -> None:
    """Ratios of CPU medians and RSS, this tree over the baseline (below 1: better)."""
    print("this tree / baseline (CPU time; below 1.00 is better):")
    for a, b in zip(new, old, strict=True):
        cells = [
            f"{s} {a['stages'][s][1] / b['stages'][s][1]:.2f}" for s in STAGES if b["stages"][s][1]
        ]
        for key in ("endpoint", "add", "delete"):
            ratio = statistics.median(a[key][1]) / statistics.median(b[key][1])
            p99 = percentile(a[key][1], 0.99) / percentile(b[key][1], 0.99)
            cells.append(f"{key} p50 {ratio:.2f} p99 {p99:.2f}")
        cells.append(f"steady full sync {a['steady'][1] / b['steady'][1]:.2f}")
        if a.get("longest_piece") and b.get("longest_piece"):
            cells.append(f"its longest piece {a['longest_piece'] / b['longest_piece']:.2f}")
        cells.append(f"steady RSS {a['steady_rss'] / b['steady_rss']:.2f}")
        cells.append(f"peak RSS {a['peak_rss'] / b['peak_rss']:.2f}")
        print(f"{a['services']:>9}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
