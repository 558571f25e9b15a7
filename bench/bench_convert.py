"""CPU time of converting EndpointSlices (parsed JSON into model values), optionally side by
side with another tree's ipvsproxy package.

    python -m bench.bench_convert [--services 3000] [--runs 3] [--baseline TREE]

The slices of a realistic cluster (bench/lib/gen_cluster.py) are converted five times per
process, and the median is kept; with --baseline, processes of this tree and of TREE (an
export of main, say: `git archive main ipvsproxy | tar -x -C TREE`) alternate --runs times.
JSON parsing is left out: it is the same C code for both.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import time

from bench.lib import baseline
from bench.lib.gen_cluster import build_realistic


def measure(services: int) -> dict[str, float]:
    from ipvsproxy.k8s.objects import endpoint_slice_from_dict

    items = [i for i in build_realistic(services)["items"] if i["kind"] == "EndpointSlice"]
    endpoints = sum(len(i["endpoints"]) for i in items)
    converted = [endpoint_slice_from_dict(i) for i in items]
    if sum(len(s.endpoints) for s in converted if s) != endpoints:
        raise SystemExit("FAILED: endpoints lost in conversion")
    gc.disable()
    times = []
    for _ in range(5):
        cpu = time.thread_time()
        for item in items:
            endpoint_slice_from_dict(item)
        times.append(time.thread_time() - cpu)
    median = statistics.median(times)
    return {"slices": len(items), "endpoints": endpoints, "seconds": median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", metavar="TREE")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.services)))
        return
    trees = {"this tree": ""} | ({"baseline": args.baseline} if args.baseline else {})
    found: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, tree in trees.items():
            command = baseline.command(
                "bench.bench_convert", tree, "--one", f"--services={args.services}"
            )
            out = subprocess.run(
                command, cwd=baseline.ROOT, capture_output=True, text=True, check=True
            ).stdout
            found[name].append(json.loads(out.splitlines()[-1]))
    medians = {}
    for name, runs in found.items():
        first = runs[0]
        seconds = statistics.median(r["seconds"] for r in runs)
        medians[name] = seconds
        print(
            f"{name}: {first['slices']:.0f} slices, {first['endpoints']:.0f} endpoints:"
            f" {seconds / first['slices'] * 1e6:.0f} us CPU per slice,"
            f" {seconds / first['endpoints'] * 1e6:.2f} us per endpoint"
            f" (median of {len(runs)} processes x 5)"
        )
    if args.baseline:
        print(f"this tree / baseline: {medians['this tree'] / medians['baseline']:.2f}")


if __name__ == "__main__":
    main()
