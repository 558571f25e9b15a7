"""Controller time of one change in a big cluster: partial syncs against a full sync.

    python bench/bench_agent.py [--sizes 1000,10000] [--changes 1000] [--endpoints 10]

The kernel is replaced by a recorder that encodes every write as the adapters would and
sends nothing: IPVS messages through EncodeOnlySink, kube-ipvs0 addresses as rtnetlink
messages, ipset entries as `ipset restore` lines, chains as iptables-restore payloads.
Clusters come from bench/gen_cluster.py, decoded by the watch layer's converters, fed to
the agent through its change tracker exactly as the reflectors do.

Per size it times, over --changes changes each (tracker call + sync, controller only):
one endpoint changed in a random Service, one Service added (Service + slice), one
deleted; and a full sync, cold (empty kernel) and steady (kernel already in step). It
prints medians and p99, the ratio 10k/1k of the medians, and peak RSS; it checks its
own result (the messages each change wrote) and exits 1 when they are wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_cluster import build

from ipvsproxy.agent import Agent, AgentSettings
from ipvsproxy.apply import Dataplanes
from ipvsproxy.dataplane.interfaces import IpvsSnapshot
from ipvsproxy.dataplane.ipset import restore_line
from ipvsproxy.dataplane.ipvs import EncodeOnlySink
from ipvsproxy.dataplane.links import RTM_DELADDR, RTM_NEWADDR, encode_address
from ipvsproxy.desired import NodeInfo, merge_service_states
from ipvsproxy.k8s.objects import endpoint_slice_from_dict, service_from_dict
from ipvsproxy.model import (
    EndpointSlice,
    IPAddress,
    IPFamily,
    IptablesRuleset,
    IpvsStats,
    KernelState,
    Service,
    VirtualServerKey,
)
from ipvsproxy.operations import (
    IPSetOperation,
    IpvsOperation,
    OperationFailure,
    RestoreChains,
)
from ipvsproxy.rules import JUMP_RULES, restore_payload


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


def cluster(services: int, endpoints: int) -> tuple[list[Service], list[EndpointSlice]]:
    items = build(services, endpoints)["items"]
    svcs = [s for s in (service_from_dict(i) for i in items if i["kind"] == "Service") if s]
    slices = [
        s for s in (endpoint_slice_from_dict(i) for i in items if i["kind"] == "EndpointSlice") if s
    ]
    return svcs, slices


CPU: list[float] = []  # the CPU time of every timed() call, in order


def timed(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of fn(); its CPU seconds (this thread's) go to CPU. On a shared
    machine the wall time's tail is mostly waiting for a core; CPU time is not."""
    cpu = time.thread_time()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    CPU.append(time.thread_time() - cpu)
    return wall


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def fail(message: str) -> None:
    print(f"FAILED: {message}")
    raise SystemExit(1)


def bench_size(size: int, endpoints: int, changes: int, rng: random.Random) -> dict[str, Any]:
    services, slices = cluster(size, endpoints)
    recorder = Recorder()
    dataplanes = Dataplanes(
        ipvs=recorder, links=recorder, ipsets=recorder, iptables=RecorderIptables(recorder)
    )
    agent = Agent(dataplanes, AgentSettings(node=NodeInfo(name="node-1"), sync_period=3600.0))
    tracker = agent.tracker
    tracker.services.replace({s.key: s for s in services})
    tracker.slices.replace({s.key: s for s in slices})
    tracker.services.synced()
    tracker.slices.synced()

    gc.collect()
    cold = [timed(agent.sync)]
    cold_cpu = CPU[-1]
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
    by_key = {s.key: s for s in slices if s.family is IPFamily.V4}
    slice_keys = list(by_key)
    endpoint_times: list[float] = []
    mark = len(CPU)
    for n in range(changes):
        key = rng.choice(slice_keys)
        old = by_key[key]
        moved = dataclasses.replace(old.endpoints[0], address=old.endpoints[0].address + 2**20 + n)
        new = dataclasses.replace(old, endpoints=(moved, *old.endpoints[1:]))
        before = recorder.writes()

        def change(key: str = key, new: EndpointSlice = new) -> None:
            tracker.slices.upsert(key, new)
            agent.sync()

        endpoint_times.append(timed(change))
        by_key[key] = new
        written = tuple(a - b for a, b in zip(recorder.writes(), before, strict=True))
        # One real server added and one deleted per virtual server of the Service.
        if not agent.last or agent.last.full or written[0] not in (2, 4) or any(written[1:]):
            fail(f"endpoint change wrote {written}")

    endpoint_cpu = CPU[mark:]
    add_times: list[float] = []
    delete_times: list[float] = []
    mark = len(CPU)
    template_service, template_slice = (
        services[1],
        by_key[f"{services[1].namespace}/{services[1].name}-ipv4-0"],
    )
    for n in range(changes):
        ip = template_service.cluster_ips[0] + 2**16 + n
        name = f"bench-{n}"
        svc = dataclasses.replace(template_service, name=name, cluster_ips=(ip,))
        eps = dataclasses.replace(template_slice, name=f"{name}-1", service_name=name)
        before = recorder.writes()

        def add(svc: Service = svc, eps: EndpointSlice = eps) -> None:
            tracker.services.upsert(svc.key, svc)
            tracker.slices.upsert(eps.key, eps)
            agent.sync()

        add_times.append(timed(add))
        written = tuple(a - b for a, b in zip(recorder.writes(), before, strict=True))
        if written[0] != 1 + endpoints or written[1] != 1 or written[3]:
            fail(f"adding a Service wrote {written}")
        before = recorder.writes()

        def delete(svc: Service = svc, eps: EndpointSlice = eps) -> None:
            tracker.services.delete(svc.key)
            tracker.slices.delete(eps.key)
            agent.sync()

        delete_times.append(timed(delete))
        written = tuple(a - b for a, b in zip(recorder.writes(), before, strict=True))
        if written[0] != 1 or written[1] != 1 or written[3]:
            fail(f"deleting a Service wrote {written}")

    change_cpu = CPU[mark:]
    return {
        "endpoint_cpu": endpoint_cpu,
        "add_cpu": change_cpu[0::2],
        "delete_cpu": change_cpu[1::2],
        "services": len(services),
        "real_servers": sum(len(r) for r in cache.states.values() for r in r.real_servers.values()),
        "cold": statistics.median(cold),
        "cold_cpu": cold_cpu,
        "steady_cpu": steady_cpu,
        "steady": statistics.median(steady),
        "endpoint": endpoint_times,
        "add": add_times,
        "delete": delete_times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="1000,10000", help="Services per cluster, comma-separated"
    )
    parser.add_argument("--changes", type=int, default=1000, help="changes timed per kind")
    parser.add_argument("--endpoints", type=int, default=10, help="ready endpoints per Service")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    from loguru import logger

    logger.remove()  # the agent's per-sync lines would dominate what is measured
    rng = random.Random(args.seed)
    results = [
        bench_size(int(size), args.endpoints, args.changes, rng) for size in args.sizes.split(",")
    ]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    header = ("Services", "change", "median ms", "p99 ms", "CPU median", "CPU p99")
    print("{:>9} {:<18} {:>10} {:>8} {:>10} {:>8}".format(*header))
    for r in results:
        for label, key in (
            ("endpoint change", "endpoint"),
            ("Service added", "add"),
            ("Service deleted", "delete"),
        ):
            wall, cpu = r[key], r[f"{key}_cpu"]
            print(
                f"{r['services']:>9} {label:<18} {statistics.median(wall) * 1e3:>10.3f}"
                f" {percentile(wall, 0.99) * 1e3:>8.3f}"
                f" {statistics.median(cpu) * 1e3:>10.3f} {percentile(cpu, 0.99) * 1e3:>8.3f}"
            )
        for label, key in (("full sync, cold", "cold"), ("full sync, steady", "steady")):
            print(
                f"{r['services']:>9} {label:<18} {r[key] * 1e3:>10.1f} {'':>8}"
                f" {r[key + '_cpu'] * 1e3:>10.1f}"
            )
    if len(results) > 1:
        small, big = results[0], results[-1]
        ratios = ", ".join(
            f"{key} {statistics.median(big[key]) / statistics.median(small[key]):.2f}x"
            for key in ("endpoint", "add", "delete")
        )
        print(f"median ratio {big['services']} / {small['services']} Services: {ratios}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
