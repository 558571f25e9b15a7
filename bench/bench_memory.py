"""What a steady agent holds: its live memory grouped by allocation site and by type.

    python -m bench.bench_memory [--services 10000] [--profile realistic|uniform] [--top 25]

Builds the same agent as bench/bench_agent.py (the generated cluster decoded from its list
answers as the reflectors read them, handed to the tracker, one cold full sync into the
encode-only recorder, one steady full sync), with tracemalloc on from the first decoded
page, then prints:

- RSS and the bytes tracemalloc sees alive (the rest is the interpreter, modules, arenas);
- the live bytes by allocation site (file:line), largest first;
- the live objects by type reachable from the tracker, the applied cache and the metrics
  labels (gc.get_objects, sizes from sys.getsizeof, containers only as themselves).

tracemalloc makes every allocation slow: figures of time from this script mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path

from bench.bench_agent import NODE, Recorder, dataplanes_of, decode, pages, rss_mib, write_pages
from ipvsproxy.agent.sync_loop import Agent, AgentSettings
from ipvsproxy.core.desired import NodeInfo, merge_service_states
from ipvsproxy.k8s.objects import endpoint_slice_from_dict, service_from_dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--profile", choices=("realistic", "uniform"), default="realistic")
    parser.add_argument("--endpoints", type=int, default=10, help="uniform: per Service")
    parser.add_argument("--top", type=int, default=25, help="rows per table")
    args = parser.parse_args()
    from loguru import logger

    logger.remove()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as directory:
        write_pages(args.profile, args.services, args.endpoints, Path(directory))
        gc.collect()
        rss_before = rss_mib()
        tracemalloc.start(1)
        services = decode(pages(Path(directory), "Service"), service_from_dict)
        slices = decode(pages(Path(directory), "EndpointSlice"), endpoint_slice_from_dict)
    settings = AgentSettings(node=NodeInfo(name=NODE), sync_period=3600.0)
    recorder = Recorder()
    agent = Agent(dataplanes_of(recorder), settings)
    agent.tracker.services.replace(services)
    agent.tracker.slices.replace(slices)
    agent.tracker.services.listed()
    agent.tracker.slices.listed()
    del services, slices  # the tracker holds them now, as in an agent
    agent.sync()
    cache = agent._cache
    assert cache is not None
    recorder.held = merge_service_states(cache.states.items(), settings=settings.desired)
    agent.resync()
    agent.sync()
    recorder.held = Recorder().held  # the recorder stands for the kernel: not the agent's
    del cache
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"{args.services} Services: RSS {rss_mib():.0f} MiB (before decoding {rss_before:.0f}),"
        f" traced alive {traced / 2**20:.1f} MiB"
    )
    stats = snapshot.statistics("lineno")
    total = sum(s.size for s in stats)
    print(f"\nlive bytes by allocation site (top {args.top} of {total / 2**20:.1f} MiB):")
    print(f"{'MiB':>7} {'share':>6} {'blocks':>9}  site")
    for stat in stats[: args.top]:
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        print(f"{stat.size / 2**20:>7.2f} {stat.size / total:>6.1%} {stat.count:>9}  {where}")

    gc.unfreeze()  # the agent froze what it holds, which hides it from gc.get_objects
    sizes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        name = type(obj).__qualname__
        sizes[name] += sys.getsizeof(obj)
        counts[name] += 1
    # gc.get_objects misses untracked objects (str, int, tuples of atoms): count the
    # ones reachable from the values gc does track, once each.
    seen: set[int] = set()
    for obj in gc.get_objects():
        for ref in gc.get_referents(obj):
            if type(ref) in (str, int, bytes, float) and id(ref) not in seen:
                seen.add(id(ref))
                sizes[type(ref).__qualname__] += sys.getsizeof(ref)
                counts[type(ref).__qualname__] += 1
    print(f"\nlive objects by type (top {args.top}; str/int/bytes/float counted once each):")
    print(f"{'MiB':>7} {'count':>9}  type")
    for name, size in sizes.most_common(args.top):
        print(f"{size / 2**20:>7.2f} {counts[name]:>9}  {name}")


if __name__ == "__main__":
    main()
