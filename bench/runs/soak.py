"""Churn soak in fake-kernel mode: `run`'s wiring in one process (the test API server, the
real client and reflectors, the agent on the fake kernel) while the endpoints of hundreds
of Services change continuously. Prints RSS, open file descriptors and threads over time,
then checks that every change landed: the final kernel equals the final desired state.

    .venv/bin/python -m bench.runs.soak [--seconds 600] [--rate 50] [--services 300]

tests/test_soak.py runs a short version.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from ipvsproxy_testkit.testapi import TestAPIServer, kubeconfig
from ipvsproxy_testkit.testapi.resources import ENDPOINT_SLICES, SERVICES
from ipvsproxy_testkit.testapi.store import Store
from loguru import logger

from ipvsproxy.agent.daemon import run_daemon
from ipvsproxy.config.settings import BindAddress, ProxyConfig
from ipvsproxy.core.desired import NodeInfo
from ipvsproxy.core.model import Protocol, VirtualServerKey
from ipvsproxy.dataplane.fake import FakeKernel, fake_dataplanes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass(frozen=True, slots=True)
class Sample:
    seconds: float
    changes: int
    rss_kib: int
    fds: int
    threads: int


@dataclass
class SoakResult:
    changes: int = 0
    samples: list[Sample] = field(default_factory=list)
    converged_after: float | None = None  # seconds after the last change; None: never
    mismatches: list[str] = field(default_factory=list)


def _service(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc{index}", "namespace": "soak"},
        "spec": {
            "clusterIP": _cluster_ip(index),
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    }


def _cluster_ip(index: int) -> str:
    return f"10.96.{index // 250}.{index % 250 + 1}"


def _slice(index: int, endpoints: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc{index}-1",
            "namespace": "soak",
            "labels": {"kubernetes.io/service-name": f"svc{index}"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in endpoints],
    }


def _endpoints(rng: random.Random, index: int) -> list[str]:
    count = rng.randint(1, 4)
    return sorted(
        {f"10.{index // 250 + 100}.{index % 250}.{rng.randint(1, 30)}" for _ in range(count)}
    )


def _mismatches(kernel: FakeKernel, desired: dict[int, list[str]]) -> list[str]:
    """What differs between the fake kernel and the desired state (empty: equal)."""
    found: list[str] = []
    keys = {VirtualServerKey(ip_address(_cluster_ip(i)), Protocol.TCP, 80): i for i in desired}
    if set(kernel.services) != set(keys):
        found.append(f"virtual servers: {len(kernel.services)} held, {len(keys)} desired")
    for key, index in keys.items():
        held = dict(kernel.destinations.get(key) or {})
        serving = sorted(str(rs.address) for rs in held.values() if rs.weight)
        if serving != desired[index]:
            found.append(f"{key.address}: {serving} held, {desired[index]} desired")
    bound = {str(a) for a in kernel.links.get("kube-ipvs0", set())}
    if bound != {_cluster_ip(i) for i in desired}:
        found.append(f"kube-ipvs0: {len(bound)} addresses")
    entries = kernel.sets.get("KUBE-CLUSTER-IP", set())
    if entries != {f"{_cluster_ip(i)},tcp:80" for i in desired}:
        found.append(f"KUBE-CLUSTER-IP: {len(entries)} entries")
    return found


def soak(
    *,
    seconds: float,
    rate: float,
    services: int,
    report_every: float,
    seed: int = 1,
    out: Callable[[str], object] = print,
    settle_timeout: float = 60.0,
) -> SoakResult:
    """Run the soak; `out` gets the lines to print."""
    rng = random.Random(seed)
    result = SoakResult()
    desired = {i: _endpoints(rng, i) for i in range(services)}
    # The API server runs in this process: its event log is kept short (as a real one
    # compacts every few minutes) so that RSS over time shows the agent's memory, not
    # the server's history of every change.
    with TestAPIServer(Store(history=2000)) as api, tempfile.TemporaryDirectory() as tmp:
        for index, endpoints in desired.items():
            api.store.create(SERVICES, "soak", _service(index))
            api.store.create(ENDPOINT_SLICES, "soak", _slice(index, endpoints))
        config_path = Path(tmp) / "kubeconfig"
        config_path.write_text(kubeconfig(api.url))
        config = ProxyConfig(
            kubeconfig=str(config_path),
            sync_period=10.0,
            healthz_bind_address=BindAddress.parse(f"127.0.0.1:{_free_port()}", default_port=0),
            metrics_bind_address=BindAddress.parse(f"127.0.0.1:{_free_port()}", default_port=0),
        )
        kernel = FakeKernel()
        dataplanes = fake_dataplanes(kernel)
        stop = threading.Event()
        daemon = threading.Thread(
            target=run_daemon,
            args=(config, dataplanes),
            kwargs={"node": NodeInfo(name="n1"), "stop": stop, "traffic": kernel.stats},
            daemon=True,
        )
        daemon.start()
        try:
            deadline = time.monotonic() + settle_timeout
            while _mismatches(kernel, desired) and time.monotonic() < deadline:
                time.sleep(0.1)
            out(f"{'seconds':>8} {'changes':>8} {'RSS MiB':>8} {'fds':>5} {'threads':>7}")
            started = time.monotonic()
            next_report = started
            while True:
                now = time.monotonic()
                if now >= next_report:
                    sample = Sample(
                        now - started,
                        result.changes,
                        rss_kib(),
                        open_fds(),
                        threading.active_count(),
                    )
                    result.samples.append(sample)
                    out(
                        f"{sample.seconds:8.0f} {sample.changes:8d} "
                        f"{sample.rss_kib / 1024:8.1f} {sample.fds:5d} {sample.threads:7d}"
                    )
                    next_report += report_every
                if now - started >= seconds:
                    break
                index = rng.randrange(services)
                desired[index] = _endpoints(rng, index)
                api.store.replace(
                    ENDPOINT_SLICES, "soak", f"svc{index}-1", _slice(index, desired[index])
                )
                result.changes += 1
                time.sleep(max(0.0, started + result.changes / rate - time.monotonic()))
            ended = time.monotonic()
            deadline = ended + settle_timeout
            while True:
                result.mismatches = _mismatches(kernel, desired)
                if not result.mismatches:
                    result.converged_after = time.monotonic() - ended
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        finally:
            stop.set()
            daemon.join(5)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=50.0, help="endpoint changes per second")
    parser.add_argument("--services", type=int, default=300)
    parser.add_argument("--report-every", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    result = soak(
        seconds=args.seconds,
        rate=args.rate,
        services=args.services,
        report_every=args.report_every,
        seed=args.seed,
    )
    first, last = result.samples[1 if len(result.samples) > 1 else 0], result.samples[-1]
    print(
        f"{result.changes} changes to {args.services} Services in {args.seconds:g} s "
        f"({result.changes / args.seconds:.1f}/s)"
    )
    print(
        f"RSS {first.rss_kib / 1024:.1f} -> {last.rss_kib / 1024:.1f} MiB, "
        f"fds {first.fds} -> {last.fds}, threads {first.threads} -> {last.threads}"
    )
    if result.converged_after is None:
        print("final kernel differs from the final desired state:")
        for line in result.mismatches[:20]:
            print("  " + line)
        return 1
    print(
        f"final kernel equals the final desired state "
        f"({result.converged_after:.2f} s after the last change)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
