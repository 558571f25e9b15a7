"""`ipvsproxy run`'s wiring in one process, for tests: the test API server, the real
reflectors and client, the agent on the fake kernel, and /healthz and /metrics over HTTP.

Shared by the daemon, API-fault, kernel-fault and soak tests. The daemon's threads run on
real time; tests poll for the end state they expect (`wait_for`), never sleep on the
code's timers.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from ipvsproxy_testkit.testapi import TestAPIServer, kubeconfig

from ipvsproxy.agent.daemon import run_daemon
from ipvsproxy.config.settings import BindAddress, ProxyConfig
from ipvsproxy.core.desired import NodeInfo
from ipvsproxy.core.model import Protocol, VirtualServerKey
from ipvsproxy.dataplane.fake import FakeConntrack, FakeKernel, fake_dataplanes
from ipvsproxy.k8s.watch import WatchSettings

# Short backoffs and confirm delay, so faults end in seconds rather than minutes.
FAST_WATCH = WatchSettings(
    backoff_initial=0.05, backoff_max=0.4, backoff_reset=5.0, confirm_delay=0.5
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll a condition the daemon's threads bring about (not a timer of the code under test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not reached: {what}"
        time.sleep(0.02)


def svc(name: str, ip: str, *, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "clusterIP": ip,
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            **spec,
        },
    }


def eps(
    name: str,
    service: str,
    *ips: str,
    namespace: str = "default",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {"kubernetes.io/service-name": service},
    }
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": metadata,
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
    }


def vs_key(ip: str, port: int = 80) -> VirtualServerKey:
    return VirtualServerKey(ip_address(ip), Protocol.TCP, port)


def serving(kernel: FakeKernel, ip: str, port: int = 80) -> set[str]:
    """The real servers at a non-zero weight behind ip:port ("addr:port"), as traffic sees them."""
    servers = dict(kernel.destinations.get(vs_key(ip, port)) or {})
    return {f"{rs.address}:{rs.port}" for rs in servers.values() if rs.weight}


@dataclass
class Daemon:
    api: TestAPIServer
    kernel: FakeKernel
    healthz_port: int
    metrics_port: int
    thread: threading.Thread
    stop: threading.Event

    def healthz(self) -> tuple[int, dict[str, Any]]:
        return http_json(self.healthz_port, "/healthz")

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text: str = reply.read().decode()
            return text


def http_json(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def metric(text: str, name: str) -> float:
    """The sum of the samples of `name` (exact name, any labels) in a /metrics text."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name)] in " {"
    )


@contextmanager
def running_daemon(
    api: TestAPIServer,
    tmp_path: Path,
    *,
    kernel: FakeKernel | None = None,
    conntrack: FakeConntrack | None = None,
    sync_period: float = 30.0,
    watch: WatchSettings = FAST_WATCH,
) -> Iterator[Daemon]:
    """run_daemon on a thread against `api`; stopped (and checked to stop) on exit."""
    config_file = tmp_path / "kubeconfig"
    config_file.write_text(kubeconfig(api.url))
    healthz, metrics = free_port(), free_port()
    config = ProxyConfig(
        kubeconfig=str(config_file),
        sync_period=sync_period,
        healthz_bind_address=BindAddress.parse(f"127.0.0.1:{healthz}", default_port=0),
        metrics_bind_address=BindAddress.parse(f"127.0.0.1:{metrics}", default_port=0),
    )
    kernel = kernel or FakeKernel()
    dataplanes = fake_dataplanes(kernel, conntrack=conntrack)
    stop = threading.Event()
    thread = threading.Thread(
        target=run_daemon,
        args=(config, dataplanes),
        kwargs={
            "node": NodeInfo(name="n1"),
            "stop": stop,
            "traffic": kernel.stats,
            "watch_settings": watch,
        },
        daemon=True,
    )
    thread.start()
    try:
        yield Daemon(api, kernel, healthz, metrics, thread, stop)
    finally:
        stop.set()
        thread.join(5)
        assert not thread.is_alive(), "the daemon did not stop"


@dataclass
class Outages:
    """Watches the fake kernel from another thread, as a client sending traffic would:
    counts the samples in which a watched Service had no serving real server."""

    kernel: FakeKernel
    watched: dict[str, set[str]]  # cluster IP -> the real servers it must keep
    samples: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            for ip, expected in self.watched.items():
                try:
                    now = serving(self.kernel, ip)
                except RuntimeError:  # a dict changed while copied: sample again
                    continue
                self.samples += 1
                if not expected <= now:
                    self.failures.append(f"{ip}: {sorted(now)}")
            time.sleep(0.005)

    def __enter__(self) -> Outages:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(2)
