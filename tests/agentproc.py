"""ipvsproxy as a process in a sandbox kernel, for the kernel tests of both guests: its
commands (`cli`) on cluster files (`cluster_file`), the agent (`run`) and its log, a
client sending TCP requests back to back, and readers of the kernel's tables with the
real tools (`tool`)."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from ipvsproxy_testkit.sandbox.pods import tcp_requests
from ipvsproxy_testkit.testapi import TestAPIServer
from ipvsproxy_testkit.testapi.resources import ENDPOINT_SLICES

# The same traffic test through either rules backend (parametrize with these): the
# nftables one runs in the qemu guest, since the user-mode-linux kernel has no nftables
# NAT chain type.
RULES_BACKENDS = [
    pytest.param("iptables", id="iptables"),
    pytest.param("nftables", id="nftables", marks=pytest.mark.kernel_qemu),
]

CLUSTER_IP = "10.96.0.10"
NODE = "node-a"
HEALTHZ_PORT = 10256
METRICS_PORT = 10249
# The agent starts slowly in the guest (importing the kubernetes client takes seconds).
START_TIMEOUT = 90.0
# The agent's configuration in the kernel tests: full syncs every 2 s. The conntrack table
# size is global, read-only outside the initial network namespace the tests run in (as on
# kind's nodes, whose kube-proxy configuration says the same).
AGENT_CONFIG = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
syncPeriod: 2s
minSyncPeriod: 0s
clusterCIDR: 10.244.0.0/16
conntrack: {maxPerCore: 0}
"""


def service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": CLUSTER_IP,
            "clusterIPs": [CLUSTER_IP],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    }


def endpoint_slice(*addresses: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-1",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [address], "conditions": {"ready": True}} for address in addresses
        ],
    }


def set_endpoints(api: TestAPIServer, *addresses: str) -> None:
    api.store.replace(ENDPOINT_SLICES, "shop", "web-1", endpoint_slice(*addresses))


def tool(*argv: str) -> str:
    """A program's output; AssertionError with its stderr when it fails."""
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr}")
    return result.stdout


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ipvsproxy ARGS` as its own process; with `check`, AssertionError unless it exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "ipvsproxy.cli", *args], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"ipvsproxy {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        )
    return result


def assert_rules_in(backend: str) -> None:
    """The proxy's rules are in `backend` and nowhere else (this namespace's tables)."""
    nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert ("ipvsproxy" in nft) is (backend == "nftables"), nft
    if backend == "nftables":
        # No iptables run: reading its tables here would load the modules in question.
        return
    saves = [
        subprocess.run([save, "-t", "nat"], capture_output=True, text=True).stdout
        for save in ("iptables-legacy-save", "iptables-nft-save")
    ]
    assert any("KUBE-SERVICES" in text for text in saves)


def cluster_file(directory: Path, text: str, name: str = "cluster.yaml") -> str:
    """Kubernetes objects (YAML) written to directory/name, for `-f`; the file's path."""
    path = directory / name
    path.write_text(text)
    return str(path)


def real_servers() -> set[str]:
    """The destinations of every virtual server, as `ipvsadm -Ln` prints their addresses."""
    return {
        line.split()[1]
        for line in tool("ipvsadm", "-Ln").splitlines()[3:]  # after the three header lines
        if line.startswith("  -> ")
    }


def ipvs_table() -> list[str]:
    """`ipvsadm -Ln` without its connection counters, which traffic changes."""
    return [
        " ".join(line.split()[:4] if line.startswith("  -> ") else line.split())
        for line in tool("ipvsadm", "-Ln").splitlines()[3:]
    ]


def weights() -> dict[str, int]:
    """Real server address:port -> weight, over every virtual server."""
    return {
        line.split()[1]: int(line.split()[3])
        for line in tool("ipvsadm", "-Ln").splitlines()[3:]
        if line.startswith("  -> ")
    }


def nat_rules() -> list[str]:
    """The nat table as iptables-legacy-save prints it, without its comment lines and the
    built-in chains' packet counters."""
    return [
        re.sub(r"\[\d+:\d+\]$", "", line)
        for line in tool("iptables-legacy-save", "-t", "nat").splitlines()
        if not line.startswith("#")
    ]


def wait_for(
    what: str, check: Callable[[], bool], timeout: float = 20.0, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def http_json(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def metric(name: str) -> float:
    """The sum of a metric's samples (``name`` may carry labels) on the agent's /metrics;
    0 for a labelled series not yet created, but the metric must exist."""
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    family = name.split("{", 1)[0].removesuffix("_total")
    assert f"# HELP {family}" in text, f"no metric {family} on /metrics"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name)] in " {"
    )


class Agent:
    """One `ipvsproxy run` process and its log."""

    def __init__(
        self,
        workdir: Path,
        kubeconfig_path: Path | None,
        config: Path,
        *,
        prefix: Sequence[str] = (),
        entry: Sequence[str] = ("-m", "ipvsproxy.cli"),
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        """kubeconfig_path: None for the in-cluster configuration; prefix: a command the
        agent runs under (setpriv); entry: what python runs; args: more options of `run`."""
        self.log_path = workdir / f"agent-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        # As kube-proxy, run takes only --hostname-override, --master and the logging
        # flags beside a --config file: the API server and the ports go into the file.
        document = yaml.safe_load(config.read_text()) or {}
        if kubeconfig_path is not None:  # else the in-cluster configuration
            document.setdefault("clientConnection", {})["kubeconfig"] = str(kubeconfig_path)
        document["healthzBindAddress"] = f"127.0.0.1:{HEALTHZ_PORT}"
        document["metricsBindAddress"] = f"127.0.0.1:{METRICS_PORT}"
        merged = workdir / f"config-{time.monotonic_ns()}.yaml"
        merged.write_text(yaml.safe_dump(document))
        self.process = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                *entry,
                "run",
                "--config",
                str(merged),
                "--hostname-override",
                NODE,
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_synced(self, timeout: float = START_TIMEOUT) -> None:
        """Until /metrics reports a finished sync."""

        def synced() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"agent exited {self.process.returncode}:\n{self.log()}")
            try:
                return metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 0
            except OSError:
                return False

        wait_for("the agent's first sync", synced, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> float:
        """Signal the agent; seconds until it exited (killed after `timeout`)."""
        started = time.monotonic()
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._log.close()
        return time.monotonic() - started


class Traffic:
    """A client sending TCP requests to the ClusterIP one after another, counting failures.

    At most one new connection per `pause` seconds: each leaves two conntrack entries (the
    node's and the pod's) in TIME_WAIT for 120 s, and the guest's nf_conntrack_max is
    8,192; back to back, the client alone fills the table within a minute and the kernel
    then drops every new connection on the node, loopback included.
    """

    def __init__(self, pause: float = 0.05) -> None:
        self._pause = pause
        self.replies: list[str] = []
        self.replied_at: list[float] = []  # monotonic times of the replies
        self.failures: list[str] = []
        self.failed_at: list[float] = []  # monotonic times of the failures
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # A refused or reset connection fails at once; the long timeout only
                # spares a guest starved of CPU by a loaded host (its SYNs retransmit).
                self.replies += tcp_requests(CLUSTER_IP, 80, 1, timeout=15.0)
                self.replied_at.append(time.monotonic())
            except Exception as exc:  # every failure counts; the reason is kept
                self.failures.append(repr(exc))
                self.failed_at.append(time.monotonic())
            self._stop.wait(self._pause)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def longest_gap(self, since: float, until: float) -> float:
        """The longest time without a reply between monotonic times `since` and `until`."""
        times = [since, *(t for t in self.replied_at if since < t < until), until]
        return max(later - earlier for earlier, later in itertools.pairwise(times))

    def failures_between(self, since: float, until: float) -> int:
        return sum(since <= t <= until for t in self.failed_at)

    def wait_replies(self, count: int, timeout: float = 20.0) -> None:
        target = len(self.replies) + count
        wait_for(f"{count} more replies", lambda: len(self.replies) >= target, timeout)


@contextmanager
def agent(
    workdir: Path, kubeconfig_path: Path | None, config: Path, **options: Any
) -> Iterator[Agent]:
    """A started agent, synced; its log printed if the block fails; killed after."""
    running = Agent(workdir, kubeconfig_path, config, **options)
    try:
        running.wait_synced()
        yield running
    except BaseException:
        print(f"--- agent log ---\n{running.log()}")
        print(subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout)
        print(subprocess.run(["ps", "axf"], capture_output=True, text=True).stdout)
        print(running.process.poll(), running.process.args)  # shown by pytest for a failed test
        raise
    finally:
        if running.process.poll() is None:
            running.stop(signal.SIGKILL)
