"""Run every benchmark, then write bench/README.md (tables, the machine, the date) and plots.

    python bench/run_all.py                 # Services 1k, 10k, 30k; kernel 1k and 5k
    python bench/run_all.py --quick         # a few minutes: small sizes, few repeats
    python bench/run_all.py --sizes 1000 10000 --kernel-sizes 1000 --datapath-sizes 100 1000

Each benchmark runs as its own process, exactly as one would run it by hand; its whole
output goes into the README under the command that printed it, and the figures of the
tables and plots are read from that output (or from the JSON the kernel benchmarks write).
Plots need matplotlib (`pip install -e '.[bench]'`); without it the README is written
without them. A benchmark that fails (or reports a wrong result) is marked so in the README
and the command exits 1 at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"


@dataclass
class Run:
    title: str
    argv: list[str]
    output: str = ""
    status: int = 0
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def command(self) -> str:
        shown = [
            "python" if arg == sys.executable else os.path.relpath(arg, ROOT) if "/" in arg else arg
            for arg in self.argv
        ]
        return shlex.join(shown)


def run(title: str, argv: list[str], *, timeout: float) -> Run:
    """Run one benchmark, echoing its output; never raises on failure."""
    result = Run(title, argv)
    print(f"\n### {title}\n$ {result.command}", flush=True)
    start = time.perf_counter()
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
        result.output, result.status = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        result.output, result.status = partial + f"\n(killed after {timeout:.0f} s)\n", 124
    result.seconds = time.perf_counter() - start
    result.output = result.output.replace(f"{ROOT}/", "")  # paths as the command shows them
    print(result.output, end="", flush=True)
    return result


# --- reading figures from the outputs -----------------------------------------------------

_PLAN_STAGE = re.compile(r"^\s+(parse|desired|diff|encode|pure|total)\s+([\d.]+) ms", re.M)
_PLAN_RSS = re.compile(r"peak RSS: (\d+) MiB")
_PLAN_COUNTS = re.compile(r"(\d+) Services, \d+ EndpointSlices, (\d+) endpoints")
_AGENT_ROW = re.compile(
    r"^\s*(\d+) (endpoint change|Service added|Service deleted)\s+([\d.]+)\s+([\d.]+)", re.M
)
_AGENT_FULL = re.compile(r"^\s*(\d+) full sync, (cold|steady)\s+([\d.]+)", re.M)


def plan_figures(output: str) -> dict[str, float]:
    figures = {stage: float(ms) for stage, ms in _PLAN_STAGE.findall(output)}
    if match := _PLAN_RSS.search(output):
        figures["peak RSS MiB"] = float(match.group(1))
    if match := _PLAN_COUNTS.search(output):
        figures["endpoints"] = float(match.group(2))
    return figures


def agent_figures(output: str) -> dict[int, dict[str, float]]:
    sizes: dict[int, dict[str, float]] = {}
    for size, kind, p50, p99 in _AGENT_ROW.findall(output):
        sizes.setdefault(int(size), {})[f"{kind} p50"] = float(p50)
        sizes[int(size)][f"{kind} p99"] = float(p99)
    for size, kind, ms in _AGENT_FULL.findall(output):
        sizes.setdefault(int(size), {})[f"full sync {kind}"] = float(ms)
    return sizes


# --- the machine --------------------------------------------------------------------------


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


# --- plots --------------------------------------------------------------------------------


def plots(runs: dict[str, Run], plan: dict[int, dict[str, float]]) -> list[str]:
    """PNG files written next to this script; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        return []
    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(BENCH / name, dpi=90)
        plt.close(fig)
        written.append(name)

    if plan:
        sizes = sorted(plan)
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        for stage in ("parse", "desired", "diff", "encode", "total"):
            left.plot(sizes, [plan[s].get(stage, 0) / 1000 for s in sizes], "o-", label=stage)
        left.set(xscale="log", xlabel="Services", ylabel="seconds", title="plan, cold start")
        left.legend()
        right.plot(sizes, [plan[s].get("peak RSS MiB", 0) for s in sizes], "o-")
        right.set(xscale="log", xlabel="Services", ylabel="MiB", title="plan, peak RSS")
        save(fig, "plan.png")

    agent = runs.get("agent")
    if agent and agent.data:
        sizes = sorted(agent.data)
        fig, ax = plt.subplots(figsize=(6, 4))
        for kind in ("endpoint change", "Service added", "Service deleted"):
            for quantile, style in (("p50", "o-"), ("p99", "s--")):
                ax.plot(
                    sizes,
                    [agent.data[s].get(f"{kind} {quantile}", 0) for s in sizes],
                    style,
                    label=f"{kind} {quantile}",
                )
        ax.set(xscale="log", xlabel="Services", ylabel="ms", title="one change, controller")
        ax.legend(fontsize="small")
        save(fig, "agent.png")

    read = runs.get("kernel_read")
    if read and read.data:
        rows = sorted(read.data.values(), key=lambda r: r["virtual_servers"])
        x = [r["virtual_servers"] for r in rows]
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in (
            "observe (whole)",
            "IPVS: services dump + /proc/net/ip_vs",
            "IPVS: one socket, a dump per service",
            "ipvsadm -Ln",
            "the tools together",
        ):
            ax.plot(x, [r["medians"].get(name, 0) for r in rows], "o-", label=name)
        ax.set(xlabel="IPVS virtual servers", ylabel="seconds (guest)", title="reading the kernel")
        ax.legend(fontsize="small")
        save(fig, "kernel_read.png")

    sync = runs.get("kernel_sync")
    if sync and sync.data:
        rows = sorted(sync.data.values(), key=lambda r: r["virtual_servers"])
        x = [r["virtual_servers"] for r in rows]
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, label in (
            ("cold sync", "ipvsproxy cold sync (all)"),
            ("cold sync: ipvs.execute", "ipvsproxy IPVS writes"),
            ("ipvsadm -R", "ipvsadm -R"),
            ("cold sync: ipset.apply", "ipvsproxy ipset writes"),
            ("ipset restore", "ipset restore"),
        ):
            ax.plot(x, [r["medians"].get(name, 0) for r in rows], "o-", label=label)
        ax.set(xlabel="IPVS virtual servers", ylabel="seconds (guest)", title="cold sync")
        ax.legend(fontsize="small")
        save(fig, "kernel_sync.png")

    path = runs.get("datapath")
    if path and path.data:
        rows = sorted(path.data.values(), key=lambda r: r["services"])
        x = [r["services"] for r in rows]
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        for key, label in (
            ("ipt first", "iptables, first Service"),
            ("ipt last", "iptables, last Service"),
            ("ipvs first", "IPVS, first Service"),
            ("ipvs last", "IPVS, last Service"),
        ):
            left.plot(x, [r[key] * 1000 for r in rows], "o-", label=label)
        left.set(xscale="log", xlabel="Services", ylabel="ms (guest)", title="new connection")
        left.legend(fontsize="small")
        for key, label in (
            ("ipt change full", "iptables-restore, whole table"),
            ("ipt change minimal", "iptables-restore, minimal"),
            ("ipvs change", "IPVS operations"),
        ):
            right.plot(x, [r[key] * 1000 for r in rows], "o-", label=label)
        right.set(
            xscale="log",
            yscale="log",
            xlabel="Services",
            ylabel="ms (guest)",
            title="change one endpoint",
        )
        right.legend(fontsize="small")
        save(fig, "datapath.png")
    return written


# --- the README ---------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def readme(
    args: argparse.Namespace,
    runs: dict[str, Run],
    plan: dict[int, dict[str, float]],
    images: list[str],
    started: datetime.datetime,
    host: list[str],
) -> str:
    out = [
        "# Benchmarks",
        "",
        "Generated by `python bench/run_all.py"
        + (" --quick" if args.quick else "")
        + f"` on {started:%Y-%m-%d %H:%M} UTC (took "
        f"{(datetime.datetime.now(datetime.UTC) - started).seconds // 60} min). Every figure "
        "below was printed by the command shown above it; rerun that command to check it.",
        "",
        "The machine:",
        *host,
        "",
        "It was shared with other work (2 cores): absolute times are noisy and "
        "only medians of several runs are quoted. The kernel benchmarks run in the "
        "user-mode-linux sandbox kernel, where every system call traps to the host: there, "
        "only ratios measured side by side in one run mean anything.",
        "",
        "Clusters come from `bench/gen_cluster.py` (realistic profile: long-tailed endpoints, "
        "NodePort, LoadBalancer, ETP=Local, multi-port, dual-stack) unless a benchmark says "
        "otherwise.",
        "",
    ]
    if plan:
        out += ["## Controller: `plan` of a whole cluster (no kernel)", ""]
        rows = [
            [
                f"{size:,}",
                f"{int(f.get('endpoints', 0)):,}",
                *(f"{f.get(stage, 0):.0f}" for stage in ("parse", "desired", "diff", "encode")),
                f"{f.get('total', 0):.0f}",
                f"{f.get('peak RSS MiB', 0):.0f}",
            ]
            for size, f in sorted(plan.items())
        ]
        out += table(
            [
                "Services",
                "endpoints",
                "parse ms",
                "desired ms",
                "diff ms",
                "encode ms",
                "total ms",
                "peak RSS MiB",
            ],
            rows,
        )
        out.append("")
    agent = runs.get("agent")
    if agent and agent.data:
        out += ["## Controller: one change (partial sync, no kernel)", ""]
        rows = [
            [
                f"{size:,}",
                *(
                    f"{f.get(f'{kind} p50', 0):.3f} / {f.get(f'{kind} p99', 0):.3f}"
                    for kind in ("endpoint change", "Service added", "Service deleted")
                ),
                f"{f.get('full sync cold', 0):.0f}",
            ]
            for size, f in sorted(agent.data.items())
        ]
        out += table(
            [
                "Services",
                "endpoint change p50/p99 ms",
                "Service added p50/p99 ms",
                "Service deleted p50/p99 ms",
                "full sync cold ms",
            ],
            rows,
        )
        out.append("")
    read = runs.get("kernel_read")
    if read and read.data:
        out += ["## Reading the kernel (observe step of a full resync), sandbox", ""]
        rows = []
        for r in sorted(read.data.values(), key=lambda r: r["virtual_servers"]):
            m = r["medians"]
            rows.append(
                [
                    f"{r['virtual_servers']:,}",
                    f"{m['observe (whole)'] / m['ipvsadm -Ln']:.2f}",
                    f"{m['observe (whole)'] / m['the tools together']:.2f}",
                    f"{m['IPVS: services dump + /proc/net/ip_vs'] / m['ipvsadm -Ln']:.2f}",
                    f"{m['IPVS: one socket, a dump per service'] / m['ipvsadm -Ln']:.2f}",
                ]
            )
        out += table(
            [
                "virtual servers",
                "observe / ipvsadm -Ln",
                "observe / (ipvsadm + ipset save + iptables-save)",
                "IPVS read / ipvsadm -Ln",
                "old IPVS read / ipvsadm -Ln",
            ],
            rows,
        )
        out.append("")
    sync = runs.get("kernel_sync")
    if sync and sync.data:
        out += ["## Cold sync against the tools, sandbox", ""]
        rows = []
        for r in sorted(sync.data.values(), key=lambda r: r["virtual_servers"]):
            m = r["medians"]
            rows.append(
                [
                    f"{r['virtual_servers']:,}",
                    f"{r['real_servers']:,}",
                    f"{m['ipvsadm -R'] / m['cold sync: ipvs.execute']:.2f}",
                    f"{m['ipset restore'] / m['cold sync: ipset.apply']:.2f}",
                    f"{m['cold sync']:.1f}",
                ]
            )
        out += table(
            [
                "virtual servers",
                "real servers",
                "ipvsadm -R / our IPVS writes",
                "ipset restore / our ipset writes",
                "whole cold sync s (guest)",
            ],
            rows,
        )
        out.append("")
    path = runs.get("datapath")
    if path and path.data:
        out += ["## Data path: kube-proxy's iptables mode against IPVS, sandbox", ""]
        rows = []
        for r in sorted(path.data.values(), key=lambda r: r["services"]):
            rows.append(
                [
                    f"{r['services']:,}",
                    f"{r['rules_first']:g} / {r['rules_last']:g}",
                    f"{r['ipvs_kube_rules']} + 1 lookup",
                    f"{r['ipt first'] / r['ipvs first']:.2f}",
                    f"{r['ipt last'] / r['ipvs last']:.2f}",
                    f"{r['ipt change full'] / r['ipvs change']:.0f}",
                    f"{r['ipt change minimal'] / r['ipvs change']:.0f}",
                ]
            )
        out += table(
            [
                "Services",
                "iptables rules on the path, first / last Service",
                "IPVS mode: rules (at most)",
                "new connection iptables / IPVS, first",
                "same, last",
                "change one endpoint: full restore / IPVS",
                "minimal restore / IPVS",
            ],
            rows,
        )
        out.append("")
    if images:
        out += ["## Plots", ""] + [f"![{name}]({name})" for name in images] + [""]
    out += ["## Every run, as printed", ""]
    for name, r in runs.items():
        state = "" if r.status == 0 else f" (FAILED: exit status {r.status})"
        out += [
            f"### {r.title}{state}",
            "",
            f"`{r.command}` ({r.seconds:.0f} s)",
            "",
            "```",
            r.output.rstrip(),
            "```",
            "",
        ]
        del name
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 30000])
    parser.add_argument("--kernel-sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--datapath-sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--skip-kernel", action="store_true", help="no sandbox benchmarks")
    parser.add_argument(
        "--readme", default=str(BENCH / "README.md"), help="where to write the report"
    )
    args = parser.parse_args()
    repeat, changes, kernel_runs = 5, 1000, 3
    if args.quick:
        args.sizes, args.kernel_sizes, args.datapath_sizes = [1000, 3000], [300], [100, 500]
        repeat, changes, kernel_runs = 2, 200, 2
    started = datetime.datetime.now(datetime.UTC)
    host = machine()
    py = sys.executable
    OUT.mkdir(exist_ok=True)
    runs: dict[str, Run] = {}
    plan: dict[int, dict[str, float]] = {}
    for size in args.sizes:
        cluster = OUT / f"cluster-{size}.json"
        gen = run(
            f"generate {size:,} Services",
            [py, str(BENCH / "gen_cluster.py"), "--services", str(size), "-o", str(cluster)],
            timeout=600,
        )
        runs[f"gen {size}"] = gen
        if gen.status:
            continue
        r = run(
            f"plan, {size:,} Services",
            [py, str(BENCH / "bench_plan.py"), str(cluster), "--repeat", str(repeat)],
            timeout=1800,
        )
        runs[f"plan {size}"] = r
        plan[size] = plan_figures(r.output)
    middle = sorted(args.sizes)[len(args.sizes) // 2]
    runs["decode"] = run(
        f"decoding API answers, {middle:,} Services",
        [
            py,
            str(BENCH / "bench_decode.py"),
            "--file",
            str(OUT / f"cluster-{middle}.json"),
            "--repeat",
            str(repeat),
        ],
        timeout=1800,
    )
    runs["codec"] = run(
        "IPVS message encoding",
        [py, str(BENCH / "bench_ipvs_codec.py"), "--repeat", str(repeat)],
        timeout=600,
    )
    if (BENCH / "bench_agent.py").exists():
        agent = run(
            "one change, partial syncs (uniform clusters, 10 endpoints per Service)",
            [
                py,
                str(BENCH / "bench_agent.py"),
                "--sizes",
                ",".join(map(str, args.sizes)),
                "--changes",
                str(changes),
            ],
            timeout=3600,
        )
        agent.data = agent_figures(agent.output)
        runs["agent"] = agent
    if (BENCH / "bench_testapi.py").exists():
        big = [size for size in args.sizes if size >= 10000] or [max(args.sizes)]
        runs["testapi"] = run(
            "the test API server: load, list, watch (uniform clusters)",
            [
                py,
                str(BENCH / "bench_testapi.py"),
                "--sizes",
                ",".join(map(str, big)),
                "--repeat",
                str(repeat),
            ],
            timeout=1800,
        )
    if not args.skip_kernel:
        for key, script, sizes, extra in (
            (
                "kernel_read",
                "bench_kernel_read.py",
                args.kernel_sizes,
                ["--runs", str(kernel_runs + 2)],
            ),
            (
                "kernel_sync",
                "bench_kernel_sync.py",
                args.kernel_sizes,
                ["--runs", str(kernel_runs)],
            ),
            (
                "datapath",
                "bench_datapath.py",
                args.datapath_sizes,
                ["--connects", "40" if args.quick else "200", "--changes", str(kernel_runs + 2)],
            ),
        ):
            target = OUT / f"{key}.json"
            target.unlink(missing_ok=True)
            r = run(
                key.replace("_", " "),
                [
                    py,
                    str(BENCH / script),
                    "--sizes",
                    *map(str, sizes),
                    *extra,
                    "--json",
                    str(target),
                ],
                timeout=3600,
            )
            if target.exists():
                r.data = json.loads(target.read_text())["sizes"]
            runs[key] = r
    images = plots(runs, plan)
    Path(args.readme).write_text(readme(args, runs, plan, images, started, host) + "\n")
    failed = [r.title for r in runs.values() if r.status]
    print(f"\nwrote {args.readme}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
