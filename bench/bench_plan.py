"""Time each stage of `ipvsproxy plan` on a big cluster, and the peak memory.

    python -m bench.lib.gen_cluster                  # 10k Services, ~100k endpoints
    python -m bench.bench_plan bench/out/cluster-10k.json [--repeat 5] [--profile]

Stages: parse (file -> validated model values), desired state, diff against an empty
kernel (a cold start), encode (every IPVS operation packed as netlink bytes, plus the ipset
restore and iptables-restore payloads). Prints the median of --repeat runs per stage, the
cost per Service, peak RSS, and with --profile the functions that dominate each stage.
It checks its own result (counts of virtual/real servers and operations) and exits 1 when
they are wrong.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, get_args

from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
from ipvsproxy.core.full_plan import plan_sync
from ipvsproxy.core.model import KernelState
from ipvsproxy.core.operations import IPSetOperation, IpvsOperation, RestoreChains
from ipvsproxy.core.rules import restore_payload
from ipvsproxy.dataplane.ipset import restore_line
from ipvsproxy.dataplane.ipvs import EncodeOnlySink
from ipvsproxy.k8s.files import Cluster, read_cluster

FAMILY_ID = 0x25  # any generic netlink family id; nothing is sent


def encode(plan_ops: tuple[Any, ...]) -> tuple[int, int]:
    """Encode every kernel write of a plan as the adapters would; (IPVS messages, bytes)."""
    ipvs_ops = [op for op in plan_ops if isinstance(op, get_args(IpvsOperation))]
    sink = EncodeOnlySink(family_id=FAMILY_ID)
    if sink.execute(ipvs_ops):
        raise SystemExit("an IPVS operation could not be encoded")
    ipset_payload = "\n".join(
        restore_line(op) for op in plan_ops if isinstance(op, get_args(IPSetOperation))
    )
    rules = sum(
        len(restore_payload(op.ruleset, op.missing_jumps))
        for op in plan_ops
        if isinstance(op, RestoreChains)
    )
    return sink.writes, sink.bytes + len(ipset_payload) + rules


def timed(profile: bool, fn: Callable[..., Any], *args: Any) -> tuple[float, Any, str]:
    """Run fn(*args) once: seconds taken, its result, and a cProfile report if asked."""
    gc.collect()
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    result = fn(*args)
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - start
    report = ""
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(8)
        report = out.getvalue()
    return elapsed, result, report


def desired(cluster: Cluster) -> KernelState:
    return desired_state(
        cluster.services, cluster.slices, node=NodeInfo(name="node-1"), settings=DesiredSettings()
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile each stage once")
    args = parser.parse_args()

    times: dict[str, list[float]] = {"parse": [], "desired": [], "diff": [], "encode": []}
    empty = KernelState(
        virtual_servers={}, real_servers={}, addresses=frozenset(), ipsets={}, dummy_interface=False
    )
    reports: dict[str, str] = {}
    for run in range(args.repeat + (1 if args.profile else 0)):
        # The last run, with --profile, is profiled and left out of the timings.
        profile = args.profile and run == args.repeat
        t_parse, cluster, reports["parse"] = timed(profile, read_cluster, [args.file])
        t_desired, state, reports["desired"] = timed(profile, desired, cluster)
        t_diff, plan, reports["diff"] = timed(profile, plan_sync, state, empty)
        t_encode, (messages, size), reports["encode"] = timed(profile, encode, plan.operations)
        if not profile:
            for stage, seconds in zip(times, (t_parse, t_desired, t_diff, t_encode), strict=True):
                times[stage].append(seconds)

    services = len(cluster.services)
    virtual = len(state.virtual_servers)
    real = sum(len(v) for v in state.real_servers.values())
    endpoints = sum(len(s.endpoints) for s in cluster.slices)
    print(f"input: {args.file}")
    print(
        f"  {services} Services, {len(cluster.slices)} EndpointSlices, {endpoints} endpoints "
        f"-> {virtual} virtual servers, {real} real servers, {len(plan)} operations, "
        f"{messages} IPVS messages ({size / 1e6:.1f} MB encoded)"
    )
    print(f"median of {args.repeat} runs:")
    medians = {stage: statistics.median(values) for stage, values in times.items()}
    for stage, value in medians.items():
        print(f"  {stage:<8} {value * 1000:8.1f} ms   {value / services * 1e6:7.1f} us/Service")
    pure = medians["desired"] + medians["diff"] + medians["encode"]
    print(f"  {'pure':<8} {pure * 1000:8.1f} ms   (desired + diff + encode)")
    print(f"  {'total':<8} {(pure + medians['parse']) * 1000:8.1f} ms")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MiB")
    for stage, report in reports.items():
        if report:
            print(f"\n--- profile: {stage} ---\n{report}")

    # Check the result: every Service port became a virtual server with its endpoints.
    # one per port and address; no node addresses are given, so no NodePort servers
    expected_virtual = sum(
        len(s.ports) * (len(s.cluster_ips) + len(s.external_ips) + len(s.load_balancer_ips))
        for s in cluster.services
    )
    ok = virtual == expected_virtual and real > 0 and messages == virtual + real
    if not ok:
        print(f"WRONG RESULT: expected {expected_virtual} virtual servers", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
