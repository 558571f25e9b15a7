"""Hollow agents: many `ipvsproxy run --dataplane fake` against one test API server.

    python -m bench.bench_hollow [--agents 10] [--services 10000] [--changes 300] [--rate 5]
                                 [--sync-period S] [--baseline TREE]

As kubemark's hollow kube-proxy: each agent is the whole node agent (reflectors, change
tracker, partial and full syncs, /metrics) programming an in-memory kernel, so that many
share one machine and load the control plane as many nodes would. The script

1. writes a realistic cluster (bench/lib/gen_cluster.py) and serves it with the test API
   server (`python -m ipvsproxy_testkit.testapi`), in a process of its own;
2. starts --agents agents, each its own process and node name, serving /metrics on its
   own loopback address (127.0.1.N, a free port), and waits until each has synced once;
3. changes one endpoint of a different EndpointSlice --rate times a second, --changes in
   all, each slice stamped with endpoints.kubernetes.io/last-change-trigger-time = now;
4. waits until every agent has programmed every change, then scrapes each agent's
   kubeproxy_network_programming_duration_seconds (trigger time to the end of the sync
   that applied it) and reads each agent's CPU time and RSS from /proc.

kube-proxy's histogram cannot tell 10 ms from 200 ms (its first bucket ends at 0.25 s), so
the exact latencies come from the agents' own debug log (run with -v 4 and klog's JSON):
each sync that programmed changes logs "network programmed" with, per change, its trigger
time and when the agent's change tracker recorded it, and the sync's start and end (wall
clock, microseconds; every process is on this machine's one clock). From these, per
change and agent: latency = end - trigger, made of delivery (trigger to recorded: the API
server's watch, the agent's decoding), wait (recorded to the start of the sync that took
it: the runner, or a sync in progress) and sync (that sync's start to its end).

It prints the latency p50 / p99 / max across agents from these exact times (and, for
comparison, as kube-proxy's buckets interpolate it, as Prometheus' histogram_quantile
does), its parts, per agent its cold start, CPU and RSS, and the API server's list and
watch bytes per agent. It checks its own result: every agent must have observed exactly
one latency per change, on /metrics and in its log, else it exits 1. All agents, the API
server and this script share the machine's cores: on a shared machine the latencies
include waiting for one.

--baseline TREE runs the same again with TREE's ipvsproxy package (an export of another
commit: `git archive REV ipvsproxy | tar -x -C TREE`; it must log "network programmed"),
this tree's first, and prints the two side by side with their ratios.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import http.client
import ipaddress
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.lib.gen_cluster import build_realistic

LATENCY = "kubeproxy_network_programming_duration_seconds"
LAST_SYNC = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"
TRIGGER = "endpoints.kubernetes.io/last-change-trigger-time"
TICKS = os.sysconf("SC_CLK_TCK")
NEW_PODS = ipaddress.ip_network("10.250.0.0/16")  # outside gen_cluster's pod network


@dataclass
class Agent:
    index: int
    process: subprocess.Popen[bytes]
    address: str
    port: int  # of its /metrics
    started: float  # wall clock at launch
    ready_after: float = 0.0  # seconds from launch to its first sync
    cpu_ready: float = 0.0  # CPU seconds at that point
    cpu: float = 0.0  # CPU seconds during the changes
    rss: float = 0.0  # MiB after the changes
    peak_rss: float = 0.0
    log: Path | None = None  # its stderr: klog JSON at -v 4
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    ipvs_messages: float = 0.0  # IPVS messages sent during the changes
    # Per change it programmed, seconds: (latency, delivery, wait, sync); see the docstring.
    latencies: list[tuple[float, float, float, float]] = field(default_factory=list)

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{self.port}/metrics"


@dataclass
class HollowResult:
    agents: list[Agent]
    changes: int
    list_bytes: int  # sent by the API server for the agents' first lists
    watch_bytes: int  # sent on watches while the changes were made
    seconds: float  # how long making the changes took

    def exact(self) -> list[tuple[float, float, float, float]]:
        return [parts for agent in self.agents for parts in agent.latencies]

    def merged(self) -> dict[float, float]:
        merged: dict[float, float] = {}
        for agent in self.agents:
            for le, count in agent.buckets.items():
                merged[le] = merged.get(le, 0.0) + count
        return merged


class Failed(Exception):
    """The run went wrong: an agent died, a change was lost, a wait timed out."""


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format, reduced to name -> [(labels, value)]."""
    with urllib.request.urlopen(url, timeout=120) as response:
        text = response.read().decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels = dict(
            (k, v.strip('"'))
            for k, _, v in (p.partition("=") for p in rest.rstrip("}").split(",") if p)
        )
        found.setdefault(name, []).append((labels, float(value)))
    return found


def histogram(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> dict[float, float]:
    return {float(labels["le"]): value for labels, value in metrics.get(f"{LATENCY}_bucket", [])}


def ipvs_sent(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> float:
    return sum(
        value
        for labels, value in metrics.get("ipvsproxy_netlink_messages_sent_total", [])
        if labels.get("subsystem") == "ipvs"
    )


def quantile(buckets: dict[float, float], q: float) -> float:
    """histogram_quantile: linear interpolation within the bucket holding the quantile."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if not total:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 1)
        lower, below = le, count
    return bounds[-1]


def exact_quantile(values: list[float], q: float) -> float:
    """The q-quantile of exact values: the smallest value with at least q of them at or
    below it (nearest rank, no interpolation)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def programmed(log: Path) -> list[tuple[float, float, float, float]]:
    """Every change an agent's log says it programmed: (latency, delivery, wait, sync)."""
    found: list[tuple[float, float, float, float]] = []
    with log.open("rb") as stream:
        for line in stream:
            if b'"network programmed"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            started, ended = float(entry["started"]), float(entry["programmed"])
            for trigger, received in entry["changes"]:
                found.append(
                    (
                        ended - trigger,
                        received - trigger,
                        started - received,
                        ended - started,
                    )
                )
    return found


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stream:
        fields = stream.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def proc_rss(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as stream:
        for line in stream:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def api_state(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/testapi/state", timeout=30) as response:
        state: dict[str, Any] = json.loads(response.read())
        return state


def wait(condition: Any, timeout: float, what: str, pause: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise Failed(f"{what} not within {timeout:g} s")
        time.sleep(pause)


def start_api(cluster_file: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with log.open("wb") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "ipvsproxy_testkit.testapi", "-f", str(cluster_file)],
            stdout=subprocess.PIPE,
            stderr=stream,
        )
    assert process.stdout is not None
    url = process.stdout.readline().decode().strip()
    if not url.startswith("http"):
        raise Failed(f"the test API server did not start (see {log})")
    return process, url


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


def start_agent(
    index: int, url: str, log: Path, config: str | None, tree: str | None = None
) -> Agent:
    """config: a KubeProxyConfiguration's text; None: flags only. As with kube-proxy, a
    --config file wins over the flags, so the servers' addresses then go into the file.
    tree: run that tree's ipvsproxy package rather than this one's."""
    address = f"127.0.1.{index + 1}"
    metrics, healthz = free_port(address), free_port(address)  # others may run agents too
    servers = {
        "metricsBindAddress": f"{address}:{metrics}",
        "healthzBindAddress": f"{address}:{healthz}",
    }
    if config is None:
        # kube-proxy's flags-only minSyncPeriod is 1s; the benchmark measures every change.
        options = [
            f"--metrics-bind-address={servers['metricsBindAddress']}",
            f"--healthz-bind-address={servers['healthzBindAddress']}",
            "--ipvs-min-sync-period=0s",
        ]
    else:
        path = log.with_suffix(".config.yaml")
        path.write_text(config + "".join(f"{key}: {value}\n" for key, value in servers.items()))
        options = [f"--config={path}"]
    prelude = ""
    if tree is not None:
        # The editable install's finder would answer for ipvsproxy before the tree does.
        prelude = (
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            f"sys.path.insert(0, {os.path.abspath(tree)!r}); "
        )
    command = [
        sys.executable,
        "-c",
        f"import sys; {prelude}from ipvsproxy.cli import main; sys.exit(main())",
        "run",
        "--dataplane=fake",
        f"--master={url}",
        f"--hostname-override=node-{index:04d}",
        "-v",
        "4",
        "--logging-format=json",
        *options,
    ]
    started = time.time()
    with log.open("wb") as stream:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stream)
    return Agent(index, process, address, metrics, started, log=log)


def synced_at(agent: Agent) -> float | None:
    """When the agent last finished a sync (epoch seconds), None before its first."""
    if agent.process.poll() is not None:
        raise Failed(f"agent {agent.index} exited with {agent.process.returncode}")
    try:
        values = scrape(agent.metrics_url).get(LAST_SYNC, [])
    except OSError:
        return None
    return values[0][1] if values and values[0][1] > 0 else None


def changed_slice(obj: dict[str, Any], n: int) -> dict[str, Any]:
    """The slice with its first endpoint moved to a new pod, stamped with the time now."""
    new = copy.deepcopy(obj)
    new["endpoints"][0]["addresses"] = [str(NEW_PODS[n + 1])]
    # Ready, so that every change writes real servers whatever the endpoint was before.
    new["endpoints"][0]["conditions"] = {"ready": True, "serving": True, "terminating": False}
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
    new["metadata"].setdefault("annotations", {})[TRIGGER] = now.replace("+00:00", "Z")
    return new


def run_hollow(
    *,
    agents: int,
    services: int,
    changes: int,
    rate: float,
    workdir: Path,
    ready_timeout: float = 600.0,
    sync_period: float | None = None,
    tree: str | None = None,
) -> HollowResult:
    cluster = build_realistic(services)
    cluster_file = workdir / "cluster.json"
    cluster_file.write_text(json.dumps(cluster))
    slices = [
        item
        for item in cluster["items"]
        if item["kind"] == "EndpointSlice" and item["addressType"] == "IPv4" and item["endpoints"]
    ]
    if changes > len(slices):
        raise Failed(f"{changes} changes need as many slices, there are {len(slices)}")
    api, url = start_api(cluster_file, workdir / "api.log")
    running: list[Agent] = []
    try:
        config: str | None = None
        if sync_period is not None:
            config = (
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
                f"mode: ipvs\nipvs:\n  syncPeriod: {sync_period:g}s\n"
            )
        running = [
            start_agent(i, url, workdir / f"agent-{i}.log", config, tree) for i in range(agents)
        ]
        for agent in running:
            wait(
                lambda a=agent: synced_at(a) is not None,
                ready_timeout,
                f"agent {agent.index}'s first sync",
            )
            agent.ready_after = (synced_at(agent) or 0.0) - agent.started
            agent.cpu_ready = proc_cpu(agent.process.pid)
        messages = {a.index: ipvs_sent(scrape(a.metrics_url)) for a in running}
        sent_before = api_state(url)["bytesSent"]
        host = url.split("//", 1)[1]
        connection = http.client.HTTPConnection(host, timeout=30)
        began = time.monotonic()
        for n, obj in enumerate(slices[:changes]):
            delay = began + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            meta = obj["metadata"]
            path = (
                f"/apis/discovery.k8s.io/v1/namespaces/{meta['namespace']}"
                f"/endpointslices/{meta['name']}"
            )
            body = json.dumps(changed_slice(obj, n)).encode()
            connection.request("PUT", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise Failed(f"PUT {path}: {response.status}")
        seconds = time.monotonic() - began
        connection.close()

        def all_programmed() -> bool:
            for agent in running:
                agent.buckets = histogram(scrape(agent.metrics_url))
                assert agent.log is not None
                agent.latencies = programmed(agent.log)
            return all(
                a.buckets.get(float("inf"), 0) >= changes and len(a.latencies) >= changes
                for a in running
            )

        wait(all_programmed, 120 + 10 * agents, "every agent programming every change", 1.0)
        sent_after = api_state(url)["bytesSent"]
        for agent in running:
            agent.cpu = proc_cpu(agent.process.pid) - agent.cpu_ready
            agent.ipvs_messages = ipvs_sent(scrape(agent.metrics_url)) - messages[agent.index]
            agent.rss, agent.peak_rss = proc_rss(agent.process.pid)
            if agent.buckets[float("inf")] != changes:
                raise Failed(
                    f"agent {agent.index} observed {agent.buckets[float('inf')]:.0f}"
                    f" latencies for {changes} changes"
                )
            if len(agent.latencies) != changes:
                raise Failed(
                    f"agent {agent.index} logged {len(agent.latencies)} programmed changes"
                    f" for {changes}"
                )
        return HollowResult(
            agents=running,
            changes=changes,
            list_bytes=sent_before["list"],
            watch_bytes=sent_after["watch"] - sent_before["watch"],
            seconds=seconds,
        )
    finally:
        for process in [*(a.process for a in running), api]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*(a.process for a in running), api]:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if api.stdout is not None:
            api.stdout.close()


def latency_figures(result: HollowResult) -> dict[str, float]:
    """Exact quantiles across agents, seconds: latency and each of its parts."""
    exact = result.exact()
    figures: dict[str, float] = {}
    for index, part in enumerate(("latency", "delivery", "wait", "sync")):
        values = [parts[index] for parts in exact]
        figures[f"{part} p50"] = exact_quantile(values, 0.5)
        figures[f"{part} p99"] = exact_quantile(values, 0.99)
        figures[f"{part} max"] = max(values, default=float("nan"))
    return figures


def report(result: HollowResult, services: int, rate: float) -> None:
    agents = result.agents
    n = len(agents)
    merged = result.merged()
    total = merged[float("inf")]
    within = merged.get(1.0, 0.0) / total
    figures = latency_figures(result)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(
        f"{n} hollow agents, {services} Services, {result.changes} endpoint changes at"
        f" {rate:g}/s ({result.seconds:.1f} s)"
    )
    print(
        f"network programming latency across agents (exact): p50 {figures['latency p50']:.4f} s,"
        f" p99 {figures['latency p99']:.4f} s, max {figures['latency max']:.4f} s,"
        f" {within:.1%} within 1 s ({total:.0f} observations)"
    )
    print(
        f"  as kube-proxy's histogram buckets interpolate it: p50 {quantile(merged, 0.5):.2f} s,"
        f" p99 {quantile(merged, 0.99):.2f} s"
    )
    print("  made of, ms (p50 / p99 / max):")
    for part, what in (
        ("delivery", "trigger to recorded by the agent (API server, watch, decode)"),
        ("wait", "recorded to its sync's start (runner, a sync in progress)"),
        ("sync", "the sync that programmed it"),
    ):
        print(
            f"    {part:<9} {figures[f'{part} p50'] * 1e3:8.1f} {figures[f'{part} p99'] * 1e3:8.1f}"
            f" {figures[f'{part} max'] * 1e3:8.1f}  {what}"
        )
    by_full = [parts[0] for a in agents for parts in a.latencies]
    slow = sum(value > 0.1 for value in by_full)
    print(f"  changes slower than 0.1 s: {slow} of {len(by_full)}")

    def p99(agent: Agent) -> float:
        return exact_quantile([parts[0] for parts in agent.latencies], 0.99)

    worst = max(agents, key=p99)
    print(f"worst agent's p99 {p99(worst):.4f} s (agent {worst.index})")

    def spread(values: list[float], fmt: str) -> str:
        return (
            f"median {statistics.median(values):{fmt}}, min {min(values):{fmt}},"
            f" max {max(values):{fmt}}"
        )

    print(f"cold start (launch to first sync), s: {spread([a.ready_after for a in agents], '.1f')}")
    print(f"CPU to the first sync, s: {spread([a.cpu_ready for a in agents], '.1f')}")
    per_change = [a.cpu / result.changes * 1e3 for a in agents]
    print(
        f"CPU during the changes, s: {spread([a.cpu for a in agents], '.2f')}"
        f" ({statistics.median(per_change):.1f} ms per change, median)"
    )
    print(f"RSS after the changes, MiB: {spread([a.rss for a in agents], '.0f')}")
    print(f"peak RSS, MiB: {spread([a.peak_rss for a in agents], '.0f')}")
    print(
        f"API server bytes per agent: first lists {result.list_bytes / n / 2**20:.1f} MiB,"
        f" watches during the changes {result.watch_bytes / n / 2**10:.0f} KiB"
        f" ({result.watch_bytes / n / result.changes:.0f} B per change)"
    )


def compare(new: HollowResult, old: HollowResult) -> None:
    """The two runs' exact figures side by side, ms, and new / old."""
    a, b = latency_figures(new), latency_figures(old)
    print("\nthis tree vs --baseline, ms (ratio this / baseline)")
    print(f"  {'':<14} {'this':>9} {'baseline':>9} {'ratio':>7}")
    for key in a:
        ratio = a[key] / b[key] if b[key] else float("nan")
        print(f"  {key:<14} {a[key] * 1e3:9.1f} {b[key] * 1e3:9.1f} {ratio:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=300, help="endpoint changes in all")
    parser.add_argument("--rate", type=float, default=5.0, help="endpoint changes per second")
    parser.add_argument(
        "--sync-period", type=float, help="the agents' ipvs.syncPeriod (default kube-proxy's 30 s)"
    )
    parser.add_argument(
        "--baseline", metavar="TREE", help="run again with TREE's ipvsproxy, and compare"
    )
    args = parser.parse_args()
    # Stopped from outside: still stop the agents and the API server (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    results: list[HollowResult] = []
    for tree in [None, args.baseline] if args.baseline else [None]:
        with tempfile.TemporaryDirectory(prefix="hollow-") as workdir:
            try:
                result = run_hollow(
                    agents=args.agents,
                    services=args.services,
                    changes=args.changes,
                    rate=args.rate,
                    workdir=Path(workdir),
                    sync_period=args.sync_period,
                    tree=tree,
                )
            except Failed as exc:
                print(f"FAILED: {exc}")
                raise SystemExit(1) from None
        if tree is not None:
            print(f"\n== baseline: {tree}")
        report(result, args.services, args.rate)
        sys.stdout.flush()
        results.append(result)
    if len(results) == 2:
        compare(*results)


if __name__ == "__main__":
    main()
