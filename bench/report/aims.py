"""The aims of large-cluster scale (issue 8), judged from the figures the benchmarks printed.

Each aim gives one row: the target, the measured figure, met / MISSED / not measured, and by
how much; a missed aim also lists what dominates it (stages, profiles, the parts of the
step). A figure that was not found is "not measured", never met. Targets are the issue's;
where it names none (how flat is flat), the target says which bound is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.report.figures import KINDS, ratio

MET, MISSED, NOT_MEASURED = "met", "MISSED", "not measured"

CHANGE_SIZES = (1000, 10000, 30000)  # the controller's one-change aims hold at each of these
KERNEL_SIZES = (1000, 5000)  # virtual servers
FLAT = 1.5  # "flat from 1k to 30k": the largest size within this multiple of the smallest
TOOLS = (
    "ipvsadm -Ln",
    "ipset save",
    "iptables-legacy-save",
    "ip6tables-legacy-save",
    "iptables-save",
    "ip6tables-save",
    "the tools together",
)


@dataclass(frozen=True)
class Row:
    aim: str
    target: str
    measured: str
    status: str  # MET, MISSED or NOT_MEASURED
    margin: str = ""  # by how much it was missed, or what was to spare
    source: str = ""  # the benchmark that measured it
    dominates: tuple[str, ...] = ()  # what dominates, for a missed aim
    at: int | None = None  # the size that decided it (the worst), where there are several


@dataclass
class Measured:
    """Everything the aims are judged from; empty where a step did not run or failed."""

    agent: dict[int, dict[str, float]] = field(default_factory=dict)  # Services -> figures
    hollow: dict[str, dict[str, float]] = field(default_factory=dict)  # "N=10" -> figures
    kernel_read: dict[int, dict[str, Any]] = field(default_factory=dict)  # virtual servers
    kernel_sync: dict[int, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    memory: dict[int, list[str]] = field(default_factory=dict)  # Services -> what holds it


def short(size: int) -> str:
    return f"{size // 1000}k" if size >= 1000 and size % 1000 == 0 else f"{size:,}"


def below(value: float, bound: float, unit: str, digits: int = 2) -> tuple[str, str]:
    """(status, margin) of the aim value < bound."""
    gap = value - bound
    share = abs(gap) / bound if bound else 0.0
    unit = unit if unit == "x" else f" {unit}"  # 0.32x, 1.20 s
    if value < bound:
        return MET, f"{-gap:.{digits}f}{unit} ({share:.0%}) to spare"
    return MISSED, f"by {gap:.{digits}f}{unit} ({share:.0%} over)"


def at_least(value: float, bound: float) -> tuple[str, str]:
    """(status, margin) of the aim ratio >= bound."""
    if value >= bound:
        return MET, f"{value / bound:.2f}x the bound"
    return MISSED, f"by {1 - value / bound:.0%} ({value:.2f}x where {bound:g}x is the aim)"


def near(sizes: Iterable[int], wanted: int) -> int | None:
    """The measured size within 25% of wanted, the closest; None if there is none."""
    close = [s for s in sizes if abs(s - wanted) <= wanted / 4]
    return min(close, key=lambda s: abs(s - wanted)) if close else None


def worst_of(
    values: dict[int, float], required: Sequence[int], judge: Any
) -> tuple[str, str, int | None]:
    """Judge each size; MISSED if any measured size misses, else not measured if a required
    size is absent, else met. Returns (status, margin, the size that decides)."""
    judged = {size: judge(value) for size, value in values.items()}
    missed = {s: j for s, j in judged.items() if j[0] == MISSED}
    if missed:
        size = max(missed, key=lambda s: values[s])
        return MISSED, f"at {short(size)}: {missed[size][1]}", size
    absent = [s for s in required if s not in values]
    if absent:
        return NOT_MEASURED, "no figure at " + ", ".join(short(s) for s in absent), None
    size = max(values, key=lambda s: values[s])
    return MET, f"worst at {short(size)}: {judged[size][1]}", size


def profile(measured: Measured, what: str, size: int | None, count: int = 8) -> list[str]:
    lines = measured.profiles.get((what, size or 0), [])
    if not lines:
        return [f"(no profile of {what} at {short(size or 0)} Services was taken)"]
    return lines[: count + 2]


# --- the controller (bench_agent.py) ---------------------------------------------------------


def cold_start(m: Measured) -> Row:
    aim, target = "cold start, 10k Services (list+decode, desired, diff, encode)", "< 5 s CPU"
    f = m.agent.get(10000, {})
    cpu = f.get("cold total cpu")
    if cpu is None:
        return Row(aim, target, "", NOT_MEASURED, source="bench_agent.py")
    wall = f.get("cold total wall")
    endpoints = f.get("endpoints")
    measured = f"{cpu:.2f} s" + (f" ({wall:.2f} s wall)" if wall is not None else "")
    if endpoints:
        measured += f", {endpoints:,.0f} endpoints"
    status, margin = below(cpu, 5.0, "s")
    dominates: list[str] = []
    if status == MISSED:
        stages = {
            key.removeprefix("cold ").removesuffix(" cpu"): value
            for key, value in f.items()
            if key.startswith("cold ") and key.endswith(" cpu") and key != "cold total cpu"
        }
        dominates.append(
            "stages, CPU: "
            + ", ".join(
                f"{name} {seconds:.2f} s ({seconds / cpu:.0%})"
                for name, seconds in sorted(stages.items(), key=lambda item: -item[1])
            )
        )
        dominates += profile(m, "cold start", 10000)
    return Row(aim, target, measured, status, margin, "bench_agent.py", tuple(dominates), 10000)


def one_change(m: Measured, kind: str) -> Row:
    label = KINDS[kind]
    aim = f"one change: {label}, p99 at 1k, 10k and 30k Services"
    target = "< 5 ms CPU"
    values = {
        size: f[f"{kind} p99 cpu ms"] for size, f in m.agent.items() if f"{kind} p99 cpu ms" in f
    }
    if not values:
        return Row(aim, target, "", NOT_MEASURED, source="bench_agent.py")
    measured = ", ".join(f"{short(s)} {v:.2f}" for s, v in sorted(values.items())) + " ms"
    status, margin, size = worst_of(values, CHANGE_SIZES, lambda v: below(v, 5.0, "ms"))
    dominates: tuple[str, ...] = ()
    if status == MISSED:
        dominates = tuple(profile(m, label, size))
    return Row(aim, target, measured, status, margin, "bench_agent.py", dominates, size)


def flat(m: Measured) -> Row:
    aim = "one change flat from 1k to 30k Services (each kind)"
    target = f"30k / 1k <= {FLAT:g}x, p50 and p99 CPU"
    small, big = m.agent.get(1000, {}), m.agent.get(30000, {})
    ratios: dict[str, float] = {}
    for kind, label in KINDS.items():
        for stat in ("p50", "p99"):
            a, b = big.get(f"{kind} {stat} cpu ms"), small.get(f"{kind} {stat} cpu ms")
            if a is not None and b:
                ratios[f"{label} {stat}"] = a / b
    if len(ratios) < 2 * len(KINDS):
        return Row(aim, target, "", NOT_MEASURED, "no figures at 1k and 30k", "bench_agent.py")
    measured = ", ".join(f"{name} {value:.2f}x" for name, value in ratios.items())
    name = max(ratios, key=lambda n: ratios[n])
    status, margin = below(ratios[name], FLAT, "x")
    margin = f"{name}: {margin}"
    dominates: tuple[str, ...] = ()
    if status == MISSED:
        label = name.rsplit(" ", 1)[0]
        dominates = tuple(profile(m, label, 1000) + profile(m, label, 30000))
    return Row(aim, target, measured, status, margin, "bench_agent.py", dominates, 30000)


def steady_rss(m: Measured, size: int, bound: float) -> Row:
    aim = f"steady RSS at {short(size)} Services"
    target = f"< {bound:g} MB (read as MiB, as the issue's figures are)"
    rss = m.agent.get(size, {}).get("steady_rss")
    if rss is None:
        return Row(aim, target, "", NOT_MEASURED, source="bench_agent.py")
    peak = m.agent[size].get("peak_rss")
    measured = f"{rss:.0f} MiB ({rss * 2**20 / 1e6:.0f} MB)" + (
        f", peak {peak:.0f} MiB" if peak is not None else ""
    )
    status, margin = below(rss, bound, "MiB", 0)
    dominates: tuple[str, ...] = ()
    if status == MISSED:
        dominates = tuple(m.memory.get(size) or [f"(no memory profile at {short(size)})"])
    return Row(aim, target, measured, status, margin, "bench_agent.py", dominates, size)


# --- the kernel (sandbox) ---------------------------------------------------------------------


def observe(m: Measured) -> Row:
    aim = "observe step of a full resync vs `ipvsadm -Ln`, 1k and 5k virtual servers"
    target = "<= 1.00x"
    values: dict[int, float] = {}
    for wanted in KERNEL_SIZES:
        size = near(m.kernel_read, wanted)
        value = (
            ratio(m.kernel_read[size]["medians"], "observe (whole)", "ipvsadm -Ln")
            if size
            else None
        )
        if value is not None and size is not None:
            values[size] = value
    if not values:
        return Row(aim, target, "", NOT_MEASURED, source="bench_kernel_read.py")
    measured = ", ".join(f"{s:,} VS {v:.2f}x" for s, v in sorted(values.items()))

    def judge(value: float) -> tuple[str, str]:
        if value <= 1.0:
            return MET, f"{1 - value:.0%} faster"
        return MISSED, f"by {value - 1:.0%} ({value:.2f}x)"

    required = [near(values, w) or w for w in KERNEL_SIZES]
    status, margin, size = worst_of(values, required, judge)
    dominates: tuple[str, ...] = ()
    if status == MISSED and size is not None:
        medians = m.kernel_read[size]["medians"]
        parts = {
            name: ratio(medians, name, "ipvsadm -Ln")
            for name in medians
            if name not in TOOLS and name != "observe (whole)"
        }
        dominates = (
            f"at {size:,} virtual servers, the parts and alternatives measured, / ipvsadm -Ln: "
            + ", ".join(
                f"{name} {value:.2f}x"
                for name, value in sorted(parts.items(), key=lambda item: -(item[1] or 0))
                if value is not None
            ),
        )
    return Row(aim, target, measured, status, margin, "bench_kernel_read.py", dominates)


def cold_sync(m: Measured, tool: str, ours: str, label: str) -> Row:
    aim = f"cold sync, {label}: `{tool}` time / ours, 1k and 5k virtual servers"
    target = ">= 1.00x (no slower than the tool)"
    values: dict[int, float] = {}
    for wanted in KERNEL_SIZES:
        size = near(m.kernel_sync, wanted)
        value = ratio(m.kernel_sync[size]["medians"], tool, ours) if size else None
        if value is not None and size is not None:
            values[size] = value
    if not values:
        return Row(aim, target, "", NOT_MEASURED, source="bench_kernel_sync.py")
    measured = ", ".join(f"{s:,} VS {v:.2f}x" for s, v in sorted(values.items()))
    # worst_of picks the largest value as the worst: judge the inverse (ours / tool).
    inverse = {s: 1 / v for s, v in values.items()}

    def judge(value: float) -> tuple[str, str]:
        return at_least(1 / value, 1.0)

    required = [near(values, w) or w for w in KERNEL_SIZES]
    status, margin, size = worst_of(inverse, required, judge)
    dominates: tuple[str, ...] = ()
    if status == MISSED and size is not None:
        medians = m.kernel_sync[size]["medians"]
        parts = {
            k.removeprefix("cold sync: "): v
            for k, v in medians.items()
            if k.startswith("cold sync: ") and isinstance(v, int | float)
        }
        dominates = (
            f"at {size:,} virtual servers, the cold sync's parts, s (guest): "
            + ", ".join(
                f"{name} {v:.2f}" for name, v in sorted(parts.items(), key=lambda i: -i[1])
            ),
        )
    return Row(aim, target, measured, status, margin, "bench_kernel_sync.py", dominates)


# --- hollow agents (bench_hollow.py) -------------------------------------------------------------


def hollow(m: Measured, agents: int) -> Row:
    aim = f"hollow agents: network programming latency p99, {agents} agents, 10k Services"
    target = "< 1 s"
    f = m.hollow.get(f"N={agents}", {})
    if f.get("p99") is None or f.get("services") != 10000:
        note = f"measured at {f['services']:,.0f} Services" if "services" in f else ""
        return Row(aim, target, "", NOT_MEASURED, note, "bench_hollow.py")
    # Exact latencies (bench_hollow reads them from the agents' logs): to the millisecond.
    measured = f"{f['p99']:.3f} s (p50 {f.get('p50', float('nan')):.3f} s)"
    status, margin = below(f["p99"], 1.0, "s")
    dominates: list[str] = []
    if status == MISSED:
        dominates.append(
            "per agent: "
            + ", ".join(
                text
                for key, text in (
                    ("cpu_per_change_ms", "{:.1f} ms CPU per change"),
                    ("cpu_first_sync", "{:.1f} s CPU to the first sync"),
                    ("rss", "RSS {:.0f} MiB"),
                    ("load", "load average {:.1f}"),
                )
                if key in f
                for text in [text.format(f[key])]
            )
        )
        if {"cpu_per_change_ms", "rate", "cpus"} <= f.keys():
            busy = agents * f["cpu_per_change_ms"] / 1e3 * f["rate"]
            dominates.append(
                f"the changes alone kept {busy:.2f} of the {f['cpus']:.0f} cores busy"
                f" ({agents} agents x {f['cpu_per_change_ms']:.1f} ms x {f['rate']:g}/s),"
                " besides the agents' periodic full syncs"
            )
        for label, other in m.hollow.items():
            if label.startswith(f"N={agents},") and "p99" in other:
                dominates.append(
                    f"side by side, {label}: p50 {other.get('p50', float('nan')):.2f} s,"
                    f" p99 {other['p99']:.2f} s"
                )
    return Row(aim, target, measured, status, margin, "bench_hollow.py", tuple(dominates))


def judge_all(m: Measured) -> list[Row]:
    return [
        cold_start(m),
        *(one_change(m, kind) for kind in KINDS),
        flat(m),
        steady_rss(m, 10000, 200),
        steady_rss(m, 30000, 500),
        observe(m),
        cold_sync(m, "ipvsadm -R", "cold sync: ipvs.execute", "IPVS"),
        cold_sync(m, "ipset restore", "cold sync: ipset.apply", "ipsets"),
        hollow(m, 10),
        hollow(m, 50),
    ]


def table(rows: Sequence[Row]) -> list[str]:
    """The aims as a markdown table, then what dominates each missed one."""
    out = [
        "| aim | target | measured | status | by how much | measured by |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        status = f"**{r.status}**" if r.status == MISSED else r.status
        out.append(
            f"| {r.aim} | {r.target} | {r.measured or '-'} | {status} | {r.margin} | `{r.source}` |"
        )
    missed = [r for r in rows if r.status == MISSED]
    if missed:
        out += ["", "What dominates where an aim was missed:", ""]
        for r in missed:
            out += [f"- {r.aim} ({r.measured}):", ""]
            out += [
                "  ```",
                *(f"  {line}" for line in r.dominates or ["(nothing recorded)"]),
                "  ```",
                "",
            ]
    return out
