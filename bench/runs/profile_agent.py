"""What dominates the controller's cost: cProfile of bench_agent.py's cold start, and of
its slowest one-at-a-time changes (the ones that make the p99).

    python -m bench.runs.profile_agent [--sizes 10000] [--changes 1000] [--top 12]

For each size it writes the same list answers as bench/bench_agent.py and runs, in a
process of its own, (1) bench_agent's cold start (list+decode, desired, diff, encode) under
one profiler, then (2) bench_agent's whole per-size run (the agent's cold and steady full
syncs, --changes endpoint changes, Services added and deleted) with a profiler of its own
around each timed call. For each kind of change it merges the profiles of the slowest 1%
(by CPU time, as bench_agent's p99 is) and prints the functions that took the most time
in them, their own time and their time with callees. Profiling slows everything down:
the times printed here explain where the time goes, never how long it takes.

bench/run_all.py runs it for the sizes where an aim of the controller was missed.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import bench_agent

ROOT = Path(__file__).resolve().parents[2]
KINDS = {"endpoint": "endpoint change", "add": "Service added", "delete": "Service deleted"}


def where(file: str, line: int, function: str) -> str:
    """A function as module:line(name), paths relative to the tree or the library."""
    path = Path(file)
    for base in (ROOT, *(Path(p) for p in sys.path if p)):
        try:
            path = path.relative_to(base)
            break
        except ValueError:
            continue
    return f"{function} ({path}:{line})" if line else function


def top(stats: pstats.Stats, count: int) -> list[str]:
    """The count functions with the most own time: own ms, share, with callees ms, calls."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]  # not in the stubs
    total = sum(tt for _, _, tt, _, _ in table.values()) or 1.0
    rows = sorted(table.items(), key=lambda item: -item[1][2])[:count]
    lines = [f"  {'own ms':>9} {'share':>6} {'+callees ms':>11} {'calls':>9}  function"]
    for (file, line, function), (_, calls, own, cumulative, _) in rows:
        lines.append(
            f"  {own * 1e3:9.1f} {own / total:6.1%} {cumulative * 1e3:11.1f} {calls:9d}  "
            f"{where(file, line, function)}"
        )
    return lines


def profile_cold_start(directory: Path, services: int, count: int) -> list[str]:
    profiler = cProfile.Profile(time.thread_time)  # CPU: the machine may be shared
    profiler.enable()
    stages = bench_agent.cold_start(directory)
    profiler.disable()
    cpu = sum(c for _, c in stages.values())
    return [
        f"== profile: cold start, {services} Services (list+decode, desired, diff, encode:"
        f" {cpu:.2f} s CPU under the profiler)",
        *top(pstats.Stats(profiler), count),
    ]


def profile_changes(directory: Path, changes: int, count: int, seed: int) -> list[str]:
    """bench_agent.bench_size with each timed call profiled on its own."""
    calls: list[tuple[float, cProfile.Profile]] = []

    def timed(fn: Callable[[], Any]) -> float:  # bench_agent.timed, plus a profiler
        profiler = cProfile.Profile(time.thread_time)  # CPU: the machine may be shared
        cpu = time.thread_time()
        start = time.perf_counter()
        profiler.enable()
        fn()
        profiler.disable()
        wall = time.perf_counter() - start
        bench_agent.CPU.append(time.thread_time() - cpu)
        calls.append((bench_agent.CPU[-1], profiler))
        return wall

    original = bench_agent.timed
    bench_agent.timed = timed
    try:
        result = bench_agent.bench_size(directory, changes, random.Random(seed))
    finally:
        bench_agent.timed = original
    # bench_agent keeps, per kind, the very floats its timed() appended: find them by identity.
    by_cpu = {id(cpu): (cpu, profiler) for cpu, profiler in calls}
    lines = []
    for kind, label in KINDS.items():
        picked = [by_cpu[id(cpu)] for cpu in result[kind][1] if id(cpu) in by_cpu]
        if not picked:
            lines.append(f"== profile: {label}, {result['services']} Services: no calls found")
            continue
        slowest = sorted(picked, key=lambda c: -c[0])[: max(1, len(picked) // 100)]
        stats = pstats.Stats(slowest[0][1])
        for _, profiler in slowest[1:]:
            stats.add(profiler)
        lines += [
            f"== profile: {label}, {result['services']} Services (the slowest {len(slowest)} of"
            f" {len(picked)}: {min(c for c, _ in slowest) * 1e3:.2f}-"
            f"{max(c for c, _ in slowest) * 1e3:.2f} ms CPU each under the profiler)",
            *top(stats, count),
        ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000", help="Services per cluster, comma-separated")
    parser.add_argument("--changes", type=int, default=1000, help="changes per kind")
    parser.add_argument("--top", type=int, default=12, help="functions per profile")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the pages of one size: profile it
    args = parser.parse_args(argv)
    from loguru import logger

    logger.remove()
    if args.one:
        directory = Path(args.one)
        services = sum(
            len(json.loads(page)["items"]) for page in bench_agent.pages(directory, "Service")
        )
        lines = profile_cold_start(directory, services, args.top)
        lines += profile_changes(directory, args.changes, args.top, args.seed)
        print(json.dumps(lines))
        return 0
    status = 0
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory(prefix="profile-agent-") as directory:
            bench_agent.write_pages("realistic", int(size), 10, Path(directory))
            # A process of its own per size, as bench_agent measures them.
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.runs.profile_agent",
                    f"--one={directory}",
                    f"--changes={args.changes}",
                    f"--top={args.top}",
                    f"--seed={args.seed}",
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
                check=False,
            )
        if done.returncode:
            print(f"FAILED: profiling {size} Services (exit status {done.returncode})")
            status = 1
            continue
        print("\n".join(json.loads(done.stdout.splitlines()[-1])))
    return status


if __name__ == "__main__":
    sys.exit(main())
