"""The figures of each benchmark, read from what it printed (or the JSON it wrote).

Every reader is tolerant: it looks for each figure on its own, and a figure it cannot find
is left out, never guessed or set to zero, so that the report shows it as not measured.
Numbers may carry thousands separators ("1,234.5").
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

NUMBER = r"([\d,]*\.?\d+)"


def number(text: str) -> float:
    return float(text.replace(",", ""))


def find(pattern: str, text: str, flags: int = 0) -> float | None:
    """The first group of pattern in text, as a number; None when it is not there."""
    match = re.search(pattern, text, flags)
    if not match:
        return None
    try:
        return number(match.group(1))
    except ValueError:
        return None


def found(**values: float | None) -> dict[str, float]:
    """The values that were found, by name."""
    return {name: value for name, value in values.items() if value is not None}


def read_json(path: Path) -> dict[str, Any]:
    """A benchmark's JSON figures; {} when missing or not JSON."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- bench_plan.py --------------------------------------------------------------------------


def plan(output: str) -> dict[str, float]:
    """Stage medians in ms, peak RSS and the cluster's endpoints."""
    figures = {
        stage: number(ms)
        for stage, ms in re.findall(
            rf"^\s+(parse|desired|diff|encode|pure|total)\s+{NUMBER} ms", output, re.M
        )
    }
    return figures | found(
        **{
            "peak RSS MiB": find(rf"peak RSS: {NUMBER} MiB", output),
            "endpoints": find(rf"EndpointSlices, {NUMBER} endpoints", output),
        }
    )


# --- bench_agent.py (its --json) ------------------------------------------------------------

KINDS = {"endpoint": "endpoint change", "add": "Service added", "delete": "Service deleted"}


def agent(data: dict[str, Any]) -> dict[int, dict[str, float]]:
    """Per size: cold start by stage and in all (CPU and wall seconds), RSS (MiB), one
    change p50/p99 (ms) per kind, the agent's full syncs (ms)."""
    sizes: dict[int, dict[str, float]] = {}
    for row in data.get("sizes", []):
        if not isinstance(row, dict) or not isinstance(row.get("services"), int | float):
            continue
        figures: dict[str, float] = {}
        for key in ("endpoints", "peak_rss", "steady_rss", "after_rss"):
            if isinstance(row.get(key), int | float):
                figures[key] = float(row[key])
        for clock in ("cpu", "wall"):
            stages = {
                key.removeprefix("cold "): value[clock]
                for key, value in row.items()
                if key.startswith("cold ") and isinstance(value, dict) and clock in value
            }
            for stage, seconds in stages.items():
                figures[f"cold {stage} {clock}"] = float(seconds)
            if stages:
                figures[f"cold total {clock}"] = float(sum(stages.values()))
            for key, name in (
                ("agent cold sync", "full cold"),
                ("steady full sync", "full steady"),
            ):
                if isinstance(row.get(key), dict) and clock in row[key]:
                    figures[f"{name} {clock} ms"] = row[key][clock] * 1e3
        for kind in KINDS:
            for stat, seconds in (row.get(kind) or {}).items():
                if isinstance(seconds, int | float):
                    figures[f"{kind} {stat} ms"] = seconds * 1e3  # "endpoint p99 cpu ms"
        sizes[int(row["services"])] = figures
    return sizes


# --- bench_hollow.py ------------------------------------------------------------------------


def hollow(output: str) -> dict[str, float]:
    """One run's figures: agents, Services, changes, latency p50/p99 (s), per agent CPU,
    RSS and the API server's bytes."""
    latency = re.search(r"network programming latency[^\n]*", output)
    line = latency.group(0) if latency else ""
    return found(
        agents=find(rf"{NUMBER} hollow agents", output),
        services=find(rf"hollow agents, {NUMBER} Services", output),
        changes=find(rf"{NUMBER} endpoint changes", output),
        rate=find(rf"changes at {NUMBER}/s", output),
        p50=find(rf"\bp50 {NUMBER} s", line),
        p99=find(rf"\bp99 {NUMBER} s", line),
        max=find(rf"\bmax {NUMBER} s", line),
        within_1s=find(rf"{NUMBER}% within 1 s", line),
        worst_p99=find(rf"worst agent's p99 {NUMBER} s", output),
        cold_start=find(rf"cold start[^\n]*?median {NUMBER}", output),
        cpu_first_sync=find(rf"CPU to the first sync[^\n]*?median {NUMBER}", output),
        cpu_changes=find(rf"CPU during the changes[^\n]*?median {NUMBER}", output),
        cpu_per_change_ms=find(rf"{NUMBER} ms per change", output),
        rss=find(rf"RSS after the changes[^\n]*?median {NUMBER}", output),
        peak_rss=find(rf"peak RSS[^\n]*?median {NUMBER}", output),
        list_mib=find(rf"first lists {NUMBER} MiB", output),
        watch_kib=find(rf"watches during the changes {NUMBER} KiB", output),
        watch_bytes_per_change=find(rf"{NUMBER} B per change", output),
        load=find(rf"load average {NUMBER}", output),
        cpus=find(rf"load average [\d.]+ on {NUMBER} CPUs", output),
    )


# --- smaller benchmarks ---------------------------------------------------------------------


def decode(output: str) -> dict[str, dict[str, float]]:
    """Per kind and path ("Service list", "EndpointSlice watch events"): our us/object and
    the client models' time and memory as multiples of ours."""
    figures: dict[str, dict[str, float]] = {}
    for block in re.split(r"^(?=\S+: [\d,]+ objects)", output, flags=re.M):
        kind = re.match(r"(\S+): [\d,]+ objects", block)
        if not kind:
            continue
        for path in ("list", "watch events"):
            values = found(
                ours_us=find(rf"^\s+{path}, ours\s+{NUMBER} us/object", block, re.M),
                theirs_us=find(rf"^\s+{path}, client models\s+{NUMBER} us/object", block, re.M),
                time_x=find(rf"{path}: client models take {NUMBER}x the time", block),
                memory_x=find(rf"{path}: client models take [^\n]*?and {NUMBER}x the peak", block),
            )
            if values:
                figures[f"{kind.group(1)} {path}"] = values
    return figures


def codec(output: str) -> dict[str, float]:
    return found(
        ours=find(rf"ipvs_codec[^\n]*?{NUMBER} msg/s", output),
        pyroute2=find(rf"pyroute2[^\n]*?{NUMBER} msg/s", output),
        ratio=find(rf"ratio:\s+{NUMBER}x", output),
    )


def testapi(output: str) -> dict[int, dict[str, float]]:
    """Per size: loading (us/object), lists (ms, us/object), watch events/s."""
    sizes: dict[int, dict[str, float]] = {}
    for block in re.split(r"^(?=\d+ Services, \d+ EndpointSlices)", output, flags=re.M):
        size = re.match(r"(\d+) Services", block)
        if not size:
            continue
        values = found(
            load_us=find(rf"load [\d.]+ s \({NUMBER} us/object\)", block),
            services_list_ms=find(rf"services, one list\s+{NUMBER} ms", block),
            services_pages_ms=find(rf"services, pages of \d+\s+{NUMBER} ms", block),
            slices_list_ms=find(rf"endpointslices, one list\s+{NUMBER} ms", block),
            watch_events_s=find(rf"{NUMBER} events/s", block),
        )
        if values:
            sizes[int(size.group(1))] = values
    return sizes


def convert(output: str) -> dict[str, float]:
    return found(
        us_per_slice=find(rf"this tree:[^\n]*?{NUMBER} us CPU per slice", output),
        us_per_endpoint=find(rf"this tree:[^\n]*?{NUMBER} us per endpoint", output),
    )


def soak(output: str) -> dict[str, float]:
    rss = re.search(rf"RSS {NUMBER} -> {NUMBER} MiB", output)
    fds = re.search(r"fds (\d+) -> (\d+)", output)
    threads = re.search(r"threads (\d+) -> (\d+)", output)
    values = found(
        changes=find(rf"^{NUMBER} changes to", output, re.M),
        services=find(rf"changes to {NUMBER} Services", output),
        seconds=find(rf"Services in {NUMBER} s", output),
        converged_after=find(rf"final desired state \({NUMBER} s after", output),
    )
    for name, match in (("rss", rss), ("fds", fds), ("threads", threads)):
        if match:
            values[f"{name} first"] = number(match.group(1))
            values[f"{name} last"] = number(match.group(2))
    return values


def crash(output: str) -> dict[str, float]:
    """Summed over the crash test's lines (one per seed's session)."""
    lines = re.findall(r"crash test: (\d+) SIGKILLs.*?; (\d+) requests.*?, (\d+) failed", output)
    if not lines:
        return {}
    return {
        "kills": float(sum(int(k) for k, _, _ in lines)),
        "requests": float(sum(int(r) for _, r, _ in lines)),
        "failed": float(sum(int(f) for _, _, f in lines)),
    }


# --- the kernel benchmarks (their --json) ---------------------------------------------------


def kernel(data: dict[str, Any], key: str = "virtual_servers") -> dict[int, dict[str, Any]]:
    """Per size (virtual servers, or Services for the data path): that size's figures.
    Nothing when the benchmark's own result check failed: its figures came from a wrong
    state."""
    sizes: dict[int, dict[str, Any]] = {}
    if data.get("ok") is not True:
        return sizes
    for row in (data.get("sizes") or {}).values():
        if isinstance(row, dict) and isinstance(row.get(key), int | float):
            sizes[int(row[key])] = row
    return sizes


def ratio(medians: dict[str, Any], top: str, bottom: str) -> float | None:
    """medians[top] / medians[bottom]; None when either is missing or the bottom is 0."""
    a, b = medians.get(top), medians.get(bottom)
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return float(a) / float(b)


# --- profiles (profile_agent.py) ------------------------------------------------------------


def profiles(output: str) -> dict[tuple[str, int], list[str]]:
    """(what, size) -> the profile's lines, from sections headed
    `== profile: WHAT, SIZE Services ...`."""
    sections: dict[tuple[str, int], list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        head = re.match(r"== profile: (.+?), (\d+) Services", line)
        if head:
            current = sections.setdefault((head.group(1), int(head.group(2))), [])
            current.append(line.removeprefix("== profile: "))
        elif line.startswith("=="):
            current = None
        elif current is not None and line.strip():
            current.append(line)
    return sections
