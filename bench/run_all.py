"""Run every benchmark, then write bench/README.md (the aims, tables, the machine, the date)
and plots.

    python -m bench.run_all                 # Services 1k, 10k, 30k; kernel 1k and 5k
    python -m bench.run_all --quick         # a few minutes: small sizes, few repeats
    python -m bench.run_all --only agent hollow --readme /tmp/README.md

Each benchmark runs as its own process, exactly as one would run it by hand; its whole
output goes into the README under the command that printed it, and the figures of the
tables, the aims and the plots are read from that output (or from the JSON it writes).
The soak and the crash sweep run in a short form (a minute of churn, one seed): their full
forms are reliability runs of their own. bench/runs/fuzz.py is left out: it prints how many
cases the fuzz tests ran, not a measurement. Where an aim of the controller is missed,
bench/runs/profile_agent.py (and bench/bench_memory.py for memory) then profile it, and the
report quotes what dominates; where the hollow agents miss theirs, a second run without
periodic full syncs shows how much those cost.

Plots need matplotlib (`pip install -e '.[bench]'`); without it the README is written
without them. A benchmark that fails (or reports a wrong result) is marked so in the README,
its figures count as not measured, and the command exits 1 at the end.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import aims, figures
from bench.report.plots import plots
from bench.report.readme import Report, Step, readme

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"

STEPS = (
    "plan",
    "decode",
    "codec",
    "agent",
    "testapi",
    "convert",
    "hollow",
    "soak",
    "kernel_read",
    "kernel_sync",
    "datapath",
    "datapath_nft",
    "rules_backend",
    "crash",
)
KERNEL_STEPS = ("kernel_read", "kernel_sync", "datapath", "datapath_nft", "rules_backend", "crash")


def shown(argv: list[str]) -> str:
    """The command as one would type it from the tree's top."""
    return shlex.join(
        "python" if arg == sys.executable else os.path.relpath(arg, ROOT) if "/" in arg else arg
        for arg in argv
    )


def module(name: str) -> list[str]:
    """The command running bench.<name> (bench/<name>.py, dots for folders) as a module;
    run() runs it from the tree's top, where the bench package is found."""
    return [sys.executable, "-m", f"bench.{name}"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(
    key: str,
    title: str,
    argv: list[str],
    *,
    timeout: float,
    parse: Callable[[str], Any] | None = None,
    note: str = "",
) -> Step:
    """Run one benchmark, echoing its output; never raises on failure. parse reads its
    figures from the output, only when it succeeded."""
    step = Step(key, title, shown(argv), note=note)
    print(f"\n### {title}\n$ {step.command}", flush=True)
    start, cpu = time.perf_counter(), children_cpu()
    try:
        proc = subprocess.run(
            argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
            # loguru's default handler logs DEBUG; the servers some benchmarks start would
            # bury their figures under one line per request
            env={**os.environ, "LOGURU_LEVEL": "INFO"},
        )
        step.output, step.status = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        step.output, step.status = partial + f"\n(killed after {timeout:.0f} s)\n", 124
    step.seconds = time.perf_counter() - start
    step.cpu = children_cpu() - cpu  # processes it waited for; a killed one's are lost
    step.output = step.output.replace(f"{ROOT}/", "")  # paths as the command shows them
    print(step.output, end="", flush=True)
    print(f"({step.seconds:.0f} s, {step.cpu:.0f} s CPU; status {step.status})", flush=True)
    if parse is not None and step.status == 0:
        step.data = parse(step.output)
    return step


def machine() -> list[str]:
    cpu = "unknown CPU"
    memory = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f", {int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return [
        f"- {cpu}, {os.cpu_count()} cores{memory}; {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}; ipvsproxy at commit {commit or 'unknown'}",
        f"- load average when the run started: {os.getloadavg()[0]:.1f}",
    ]


class Plan:
    """What the run measures, at which sizes and how many times (default or --quick)."""

    def __init__(self, args: argparse.Namespace) -> None:
        quick = args.quick
        self.sizes: list[int] = [1000, 3000] if quick else args.sizes
        self.kernel_sizes: list[int] = [300] if quick else args.kernel_sizes
        self.datapath_sizes: list[int] = [100, 500] if quick else args.datapath_sizes
        self.repeat = 2 if quick else 3
        self.changes = 200 if quick else 1000
        self.kernel_runs = 2 if quick else 3
        self.connects = 40 if quick else 100
        # (agents, Services, changes, rate): issue 8's N = 10 and 50 at 10k Services
        self.hollow = [(2, 1000, 20, 10.0), (5, 1000, 20, 10.0)]
        if not quick:
            self.hollow = [(10, 10000, 300, 5.0), (50, 10000, 100, 5.0)]
        seconds, every = (15, 5) if quick else (60, 15)
        self.soak = ["--seconds", str(seconds), "--report-every", str(every)]
        self.codec = ["--services", "200" if quick else "1000", "--repeat", str(self.repeat)]
        self.convert = ["--services", "1000" if quick else "3000", "--runs", "1" if quick else "3"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 30000])
    parser.add_argument("--kernel-sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--datapath-sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--skip-kernel", action="store_true", help="no sandbox benchmarks")
    parser.add_argument("--only", nargs="+", choices=STEPS, help="run these steps alone")
    parser.add_argument(
        "--readme", default=str(BENCH / "README.md"), help="where to write the report"
    )
    args = parser.parse_args()
    plan = Plan(args)
    wanted = set(args.only or STEPS) - (set(KERNEL_STEPS) if args.skip_kernel else set())
    started = datetime.datetime.now(datetime.UTC)
    host = machine()
    OUT.mkdir(exist_ok=True)
    steps: list[Step] = []
    measured = aims.Measured()
    plan_figures: dict[int, dict[str, float]] = {}

    if wanted & {"plan", "decode"}:
        for size in plan.sizes if "plan" in wanted else [min(plan.sizes)]:
            cluster = OUT / f"cluster-{size}.json"
            gen = run(
                "gen",
                f"generate {size:,} Services",
                [*module("lib.gen_cluster"), "--services", str(size), "-o", str(cluster)],
                timeout=600,
            )
            steps.append(gen)
            if gen.status or "plan" not in wanted:
                continue
            step = run(
                "plan",
                f"plan, {size:,} Services",
                [*module("bench_plan"), str(cluster), "--repeat", str(plan.repeat)],
                timeout=1800,
                parse=figures.plan,
            )
            steps.append(step)
            if step.data:
                plan_figures[size] = step.data
    if "decode" in wanted:
        # Costs per object and ratios to the client's models: the smallest cluster shows
        # them (at 10k this step alone took a quarter of the run).
        size = min(plan.sizes)
        steps.append(
            run(
                "decode",
                f"decoding API answers, {size:,} Services",
                [
                    *module("bench_decode"),
                    "--file",
                    str(OUT / f"cluster-{size}.json"),
                    "--repeat",
                    "1" if args.quick else "3",
                ],
                timeout=1800,
                parse=figures.decode,
            )
        )
    if "codec" in wanted:
        steps.append(
            run(
                "codec",
                "IPVS message encoding",
                [*module("bench_ipvs_codec"), *plan.codec],
                timeout=900,
                parse=figures.codec,
            )
        )
    if "agent" in wanted:
        target = OUT / "agent.json"
        target.unlink(missing_ok=True)
        step = run(
            "agent",
            "controller: cold start, memory, one change (realistic clusters)",
            [
                *module("bench_agent"),
                "--sizes",
                ",".join(map(str, plan.sizes)),
                "--changes",
                str(plan.changes),
                "--json",
                str(target),
            ],
            timeout=3600,
            parse=lambda _: figures.agent(figures.read_json(target)),
        )
        steps.append(step)
        measured.agent = step.data or {}
    if "testapi" in wanted:
        big = [size for size in plan.sizes if size >= 10000] or [max(plan.sizes)]
        steps.append(
            run(
                "testapi",
                "the test API server: load, list, watch (uniform clusters)",
                [
                    *module("bench_testapi"),
                    "--sizes",
                    ",".join(map(str, big)),
                    "--repeat",
                    str(plan.repeat),
                ],
                timeout=1800,
                parse=figures.testapi,
            )
        )
    if "convert" in wanted:
        steps.append(
            run(
                "convert",
                "EndpointSlice conversion",
                [*module("bench_convert"), *plan.convert],
                timeout=900,
                parse=figures.convert,
            )
        )
    if "hollow" in wanted:
        for agents, services, changes, rate in plan.hollow:
            step = hollow(agents, services, changes, rate)
            steps.append(step)
            if step.data:
                measured.hollow[f"N={agents}"] = step.data
        # Missed at N=10: the same run with no periodic full sync shows what they cost.
        agents, services, changes, rate = plan.hollow[0]
        first = measured.hollow.get(f"N={agents}", {})
        if first.get("p99", 0.0) >= 1.0:
            step = hollow(agents, services, changes, rate, sync_period=3600)
            steps.append(step)
            if step.data:
                measured.hollow[f"N={agents}, syncPeriod 3600 s"] = step.data
    if "soak" in wanted:
        steps.append(
            run(
                "soak",
                "soak: endpoint churn on the fake kernel, short form",
                [*module("runs.soak"), *plan.soak],
                timeout=600,
                parse=figures.soak,
                note="short form; the full one is --seconds 600",
            )
        )
    kernel(plan, wanted, steps, measured)
    profile(plan, steps, measured)
    # The plots go next to the README, which links them by name.
    images = plots(Report([], steps, measured, plan_figures), Path(args.readme).parent)
    took = (datetime.datetime.now(datetime.UTC) - started).seconds // 60
    options = [*(["--quick"] * args.quick), *(["--skip-kernel"] * args.skip_kernel)]
    command = shlex.join(
        ["python", "-m", "bench.run_all", *options, *(["--only", *args.only] if args.only else [])]
    )
    header = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` on {started:%Y-%m-%d %H:%M} UTC (took {took} min). Every "
        "figure below was printed by the command shown above it; rerun that command to "
        "check it.",
        "",
        "The machine:",
        *host,
        "",
        "It was shared with other work (2 cores): absolute times are noisy and only medians "
        "of several runs are quoted; the controller's figures are CPU time. The kernel "
        "benchmarks run in the user-mode-linux sandbox kernel, where every system call traps "
        "to the host: there, only ratios measured side by side in one run mean anything.",
        "",
        "Clusters come from `bench/lib/gen_cluster.py` (realistic profile: long-tailed endpoints, "
        "NodePort, LoadBalancer, ETP=Local, multi-port, dual-stack) unless a benchmark says "
        "otherwise.",
    ]
    if args.quick:
        header += [
            "",
            "A --quick run: smaller clusters and fewer repeats than the aims are stated for, "
            "so most aims show as not measured.",
        ]
    report = Report(header, steps, measured, plan_figures, images)
    Path(args.readme).write_text(readme(report) + "\n")
    print(f"\n{'step':<60} {'wall s':>7} {'CPU s':>7}")
    for step in steps:
        print(f"{step.title[:60]:<60} {step.seconds:7.0f} {step.cpu:7.0f}")
    print(f"{'all':<60} {sum(s.seconds for s in steps):7.0f} {sum(s.cpu for s in steps):7.0f}")
    failed = [s.title for s in steps if s.status]
    print(f"\nwrote {args.readme}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def hollow(
    agents: int, services: int, changes: int, rate: float, sync_period: float | None = None
) -> Step:
    extra = [] if sync_period is None else ["--sync-period", f"{sync_period:g}"]
    return run(
        "hollow",
        f"hollow agents, N = {agents}, {services:,} Services"
        + ("" if sync_period is None else f", syncPeriod {sync_period:g} s"),
        [
            *module("bench_hollow"),
            "--agents",
            str(agents),
            "--services",
            str(services),
            "--changes",
            str(changes),
            "--rate",
            f"{rate:g}",
            *extra,
        ],
        timeout=600 + 30 * agents,
        parse=figures.hollow,
        note="" if sync_period is None else "to compare: no periodic full sync",
    )


def kernel(plan: Plan, wanted: set[str], steps: list[Step], measured: aims.Measured) -> None:
    read_runs, sync_runs = ["--runs", str(plan.kernel_runs + 2)], ["--runs", str(plan.kernel_runs)]
    path_runs = ["--connects", str(plan.connects), "--changes", str(plan.kernel_runs + 2)]
    for key, name, sizes, extra, by in (
        ("kernel_read", "bench_kernel_read", plan.kernel_sizes, read_runs, "virtual_servers"),
        ("kernel_sync", "bench_kernel_sync", plan.kernel_sizes, sync_runs, "virtual_servers"),
        ("datapath", "bench_datapath", plan.datapath_sizes, path_runs, "services"),
    ):
        if key not in wanted:
            continue
        target = OUT / f"{key}.json"
        target.unlink(missing_ok=True)
        step = run(
            key,
            key.replace("_", " ") + ", sandbox",
            [*module(name), "--sizes", *map(str, sizes), *extra, "--json", str(target)],
            timeout=3600,
            parse=lambda _, target=target, by=by: figures.kernel(figures.read_json(target), by),
        )
        steps.append(step)
        if key == "kernel_read":
            measured.kernel_read = step.data or {}
        elif key == "kernel_sync":
            measured.kernel_sync = step.data or {}
    if "datapath_nft" in wanted:
        # The qemu guest (nftables nat chains), emulated: its smallest sizes only.
        target = OUT / "datapath_nft.json"
        target.unlink(missing_ok=True)
        steps.append(
            run(
                "datapath_nft",
                "datapath with the nftables rules backend, qemu",
                [
                    *module("bench_datapath"),
                    "--guest",
                    "qemu",
                    "--nftables",
                    "1",
                    "--sizes",
                    *map(str, plan.datapath_sizes[:2]),
                    *path_runs,
                    "--json",
                    str(target),
                ],
                timeout=3600,
                parse=lambda _: figures.kernel(figures.read_json(target), "services"),
            )
        )
    if "rules_backend" in wanted:
        # On the host, in private network namespaces (nf_tables, ip_tables and ip_set).
        target = OUT / "rules_backend.json"
        target.unlink(missing_ok=True)
        steps.append(
            run(
                "rules_backend",
                "rules backends: iptables + ipset against nftables",
                [
                    *module("bench_rules_backend"),
                    "--sizes",
                    *map(str, plan.kernel_sizes),
                    "--runs",
                    str(plan.kernel_runs + 2),
                    "--json",
                    str(target),
                ],
                timeout=3600,
                parse=lambda _: figures.kernel(figures.read_json(target), "services"),
            )
        )
    if "crash" in wanted:
        steps.append(
            run(
                "crash",
                "crash sweep: SIGKILL mid-sync, restart, sandbox",
                [*module("runs.crash_sweep"), "1"],
                timeout=1200,
                parse=figures.crash,
                note="short form, one seed; the sweep takes a seed count",
            )
        )


def profile(plan: Plan, steps: list[Step], measured: aims.Measured) -> None:
    """Profile the controller where its aims were missed: CPU, then memory."""
    missed = [row for row in aims.judge_all(measured) if row.status == aims.MISSED]
    controller = [row for row in missed if row.source == "bench_agent.py" and row.at]
    cpu_sizes = sorted({row.at for row in controller if "RSS" not in row.aim and row.at})
    if row_flat := [row for row in controller if row.aim.startswith("one change flat")]:
        cpu_sizes = sorted({*cpu_sizes, 1000, row_flat[0].at or 30000})
    if cpu_sizes:
        step = run(
            "profile",
            "what dominates the missed controller aims (cProfile)",
            [
                *module("runs.profile_agent"),
                "--sizes",
                ",".join(map(str, cpu_sizes)),
                "--changes",
                str(plan.changes),
            ],
            timeout=3600,
            parse=figures.profiles,
            note="run because an aim was missed",
        )
        steps.append(step)
        measured.profiles = step.data or {}
    rss_sizes = sorted({row.at for row in controller if "RSS" in row.aim and row.at})
    for size in rss_sizes:
        step = run(
            "memory",
            f"what holds the memory, {size:,} Services (tracemalloc)",
            [*module("bench_memory"), "--services", str(size), "--top", "8"],
            timeout=1800,
            parse=memory_lines,
            note="run because an aim was missed",
        )
        steps.append(step)
        if step.data:
            measured.memory[size] = step.data


def memory_lines(output: str) -> list[str]:
    """bench_memory.py's RSS line and its tables (by allocation site, by type)."""
    blocks = [block for block in output.strip().split("\n\n") if block.strip()]
    return [line for block in blocks[:3] for line in [*block.splitlines(), ""]][:-1]


if __name__ == "__main__":
    sys.exit(main())
