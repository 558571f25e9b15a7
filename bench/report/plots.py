"""run_all.py's PNG plots of cost against cluster size (matplotlib, when installed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.report.figures import KINDS
from bench.report.readme import Report

AIM_CHANGE_MS = 5.0  # issue 8's aims, drawn as dotted lines
AIM_COLD_S = 5.0
AIM_HOLLOW_S = 1.0


def legend(ax: Any, **options: Any) -> None:
    """A legend, if anything was drawn (a step may have measured only part of its figures)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**options)


def plots(report: Report, directory: Path) -> list[str]:
    """PNG files written to directory; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        return []
    written: list[str] = []

    def figure(name: str, panels: int, draw: Callable[[Sequence[Any]], None]) -> None:
        fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
        draw(axes[0])
        fig.tight_layout()
        fig.savefig(directory / name, dpi=90)
        plt.close(fig)
        written.append(name)

    def line(ax: Any, x: Sequence[float], y: Sequence[float | None], *a: Any, **k: Any) -> None:
        points = [(a_, b_) for a_, b_ in zip(x, y, strict=True) if b_ is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], *a, **k)

    plan = report.plan
    if plan:
        sizes = sorted(plan)

        def draw_plan(axes: Sequence[Any]) -> None:
            left, right = axes
            for stage in ("parse", "desired", "diff", "encode", "total"):
                values = [plan[s].get(stage) for s in sizes]
                seconds = [v / 1000 if v is not None else None for v in values]
                line(left, sizes, seconds, "o-", label=stage)
            left.set(xscale="log", xlabel="Services", ylabel="seconds", title="plan, cold start")
            legend(left)
            line(right, sizes, [plan[s].get("peak RSS MiB") for s in sizes], "o-")
            right.set(xscale="log", xlabel="Services", ylabel="MiB", title="plan, peak RSS")

        figure("plan.png", 2, draw_plan)

    agent = report.data("agent")
    if agent:
        sizes = sorted(agent)

        def draw_agent(axes: Sequence[Any]) -> None:
            cold, memory, change = axes
            for stage in ("list+decode", "desired", "diff", "encode", "total"):
                values = [agent[s].get(f"cold {stage} cpu") for s in sizes]
                line(cold, sizes, values, "o-", label=stage)
            cold.axhline(AIM_COLD_S, color="grey", linestyle=":", label="aim at 10k")
            cold.set(xscale="log", xlabel="Services", ylabel="CPU s", title="cold start")
            legend(cold, fontsize="small")
            for key, label in (("steady_rss", "steady"), ("peak_rss", "peak")):
                line(memory, sizes, [agent[s].get(key) for s in sizes], "o-", label=label)
            memory.set(xscale="log", xlabel="Services", ylabel="MiB", title="RSS")
            legend(memory, fontsize="small")
            for kind, label in KINDS.items():
                for stat, style in (("p50", "o-"), ("p99", "s--")):
                    values = [agent[s].get(f"{kind} {stat} cpu ms") for s in sizes]
                    line(change, sizes, values, style, label=f"{label} {stat}")
            change.axhline(AIM_CHANGE_MS, color="grey", linestyle=":", label="aim (p99)")
            change.set(xscale="log", xlabel="Services", ylabel="CPU ms", title="one change")
            legend(change, fontsize="x-small")

        figure("agent.png", 3, draw_agent)

    hollow = {
        label: f
        for label, f in report.measured.hollow.items()
        if "," not in label and "agents" in f and "p99" in f
    }
    if hollow:
        rows = sorted(hollow.values(), key=lambda f: f["agents"])
        n = [f["agents"] for f in rows]

        def draw_hollow(axes: Sequence[Any]) -> None:
            latency, cost = axes
            line(latency, n, [f.get("p50") for f in rows], "o-", label="p50")
            line(latency, n, [f.get("p99") for f in rows], "s--", label="p99")
            latency.axhline(AIM_HOLLOW_S, color="grey", linestyle=":", label="aim (p99)")
            latency.set(xlabel="hollow agents", ylabel="s", title="network programming latency")
            legend(latency, fontsize="small")
            line(cost, n, [f.get("rss") for f in rows], "o-", label="RSS per agent, MiB")
            per_change = [f.get("cpu_per_change_ms") for f in rows]
            line(cost, n, per_change, "s--", label="CPU per change per agent, ms")
            cost.set(xlabel="hollow agents", title="cost per agent")
            legend(cost, fontsize="small")

        figure("hollow.png", 2, draw_hollow)

    read = report.measured.kernel_read
    if read:
        x = sorted(read)

        def draw_read(axes: Sequence[Any]) -> None:
            (ax,) = axes
            names = (
                "observe (whole)",
                "IPVS: services dump + /proc/net/ip_vs",
                "ipvsadm -Ln",
                "the tools together",
            )
            for name in names:
                line(ax, x, [read[s]["medians"].get(name) for s in x], "o-", label=name)
            ax.set(xlabel="IPVS virtual servers", ylabel="seconds (guest)", title="reading")
            legend(ax, fontsize="small")

        figure("kernel_read.png", 1, draw_read)

    sync = report.measured.kernel_sync
    if sync:
        x = sorted(sync)

        def draw_sync(axes: Sequence[Any]) -> None:
            (ax,) = axes
            for name, label in (
                ("cold sync", "ipvsproxy cold sync (all)"),
                ("cold sync: ipvs.execute", "ipvsproxy IPVS writes"),
                ("ipvsadm -R", "ipvsadm -R"),
                ("cold sync: ipset.apply", "ipvsproxy ipset writes"),
                ("ipset restore", "ipset restore"),
            ):
                line(ax, x, [sync[s]["medians"].get(name) for s in x], "o-", label=label)
            ax.set(xlabel="IPVS virtual servers", ylabel="seconds (guest)", title="cold sync")
            legend(ax, fontsize="small")

        figure("kernel_sync.png", 1, draw_sync)

    path = report.data("datapath")
    if path:
        x = sorted(path)

        def ms(size: int, key: str) -> float | None:
            value = path[size].get(key)
            return value * 1000 if isinstance(value, int | float) else None

        def draw_path(axes: Sequence[Any]) -> None:
            left, right = axes
            for key, label in (
                ("ipt first", "iptables, first Service"),
                ("ipt last", "iptables, last Service"),
                ("ipvs first", "IPVS, first Service"),
                ("ipvs last", "IPVS, last Service"),
            ):
                line(left, x, [ms(s, key) for s in x], "o-", label=label)
            left.set(xscale="log", xlabel="Services", ylabel="ms (guest)", title="new connection")
            legend(left, fontsize="small")
            for key, label in (
                ("ipt change full", "iptables-restore, whole table"),
                ("ipt change minimal", "iptables-restore, minimal"),
                ("ipvs change", "IPVS operations"),
            ):
                line(right, x, [ms(s, key) for s in x], "o-", label=label)
            right.set(xscale="log", yscale="log", xlabel="Services", ylabel="ms (guest)")
            right.set_title("change one endpoint")
            legend(right, fontsize="small")

        figure("datapath.png", 2, draw_path)
    return written
