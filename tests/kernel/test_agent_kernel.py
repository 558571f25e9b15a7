"""`ipvsproxy run` against the test API server, in the real kernel, under real traffic.

Each test starts the test API server in its own network namespace, runs the agent as a
separate process against it (as a DaemonSet would run it, with a kubeconfig), changes
objects through the API and reads the kernel back with the real `ipvsadm`, `ipset` and
`iptables-legacy-save`, while pods answer real TCP requests.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ipvsproxy.sandbox.pods import PodNetwork, tcp_requests
from ipvsproxy.testapi import TestAPIServer, kubeconfig
from ipvsproxy.testapi.resources import ENDPOINT_SLICES, SERVICES

pytestmark = pytest.mark.kernel

CLUSTER_IP = "10.96.0.10"
NODE = "node-a"
HEALTHZ_PORT = 10256
METRICS_PORT = 10249
# The agent starts slowly in the guest (importing the kubernetes client takes seconds).
START_TIMEOUT = 90.0


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
    return subprocess.run(list(argv), capture_output=True, text=True, check=True).stdout


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


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def http_json(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def metric(name: str) -> float:
    """The sum of a metric's samples (``name`` may carry labels) on the agent's /metrics;
    0 for a labelled series not yet created, but the metric must exist."""
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as reply:
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

    def __init__(self, workdir: Path, kubeconfig_path: Path, config: Path) -> None:
        self.log_path = workdir / f"agent-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ipvsproxy.cli",
                "run",
                "--kubeconfig",
                str(kubeconfig_path),
                "--config",
                str(config),
                "--hostname-override",
                NODE,
                "--healthz-bind-address",
                f"127.0.0.1:{HEALTHZ_PORT}",
                "--metrics-bind-address",
                f"127.0.0.1:{METRICS_PORT}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_synced(self) -> None:
        """Until /metrics reports a finished sync."""

        def synced() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"agent exited {self.process.returncode}:\n{self.log()}")
            try:
                return metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 0
            except OSError:
                return False

        wait_for("the agent's first sync", synced, timeout=START_TIMEOUT)

    def stop(self, sig: int = signal.SIGTERM) -> float:
        """Signal the agent; seconds until it exited."""
        started = time.monotonic()
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._log.close()
        return time.monotonic() - started


class Traffic:
    """A client sending TCP requests to the ClusterIP back to back, counting failures."""

    def __init__(self) -> None:
        self.replies: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # A refused or reset connection fails at once; the long timeout only
                # spares a guest starved of CPU by a loaded host (its SYNs retransmit).
                self.replies += tcp_requests(CLUSTER_IP, 80, 1, timeout=15.0)
            except Exception as exc:  # every failure counts; the reason is kept
                self.failures.append(repr(exc))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def wait_replies(self, count: int, timeout: float = 20.0) -> None:
        target = len(self.replies) + count
        wait_for(f"{count} more replies", lambda: len(self.replies) >= target, timeout)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[TestAPIServer, PodNetwork, Path, Path]]:
    """Three pods serving 8080, an API server holding `web` with two of them as endpoints,
    and the agent's kubeconfig and configuration (full sync every 2 s)."""
    with PodNetwork() as pods, TestAPIServer().start() as api:
        for index in (1, 2, 3):
            pods.add_pod(f"web{index}", f"10.244.{index}.1")
        pods.serve(8080)
        api.store.create(SERVICES, "shop", service())
        api.store.create(ENDPOINT_SLICES, "shop", endpoint_slice("10.244.1.1", "10.244.2.1"))
        kubeconfig_path = tmp_path / "kubeconfig"
        kubeconfig_path.write_text(kubeconfig(api.url))
        config = tmp_path / "kube-proxy.yaml"
        config.write_text(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n"
            "kind: KubeProxyConfiguration\n"
            "mode: ipvs\n"
            "syncPeriod: 2s\n"
            "minSyncPeriod: 0s\n"
            "clusterCIDR: 10.244.0.0/16\n"
        )
        yield api, pods, kubeconfig_path, config


@contextmanager
def agent(workdir: Path, kubeconfig_path: Path, config: Path) -> Iterator[Agent]:
    running = Agent(workdir, kubeconfig_path, config)
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


def test_agent_follows_endpoint_changes_under_traffic(
    cluster: tuple[TestAPIServer, PodNetwork, Path, Path], tmp_path: Path
) -> None:
    api, _, kubeconfig_path, config = cluster
    with agent(tmp_path, kubeconfig_path, config) as running:
        assert real_servers() == {"10.244.1.1:8080", "10.244.2.1:8080"}
        assert f"add KUBE-CLUSTER-IP {CLUSTER_IP},tcp:80" in tool("ipset", "save")
        nat = tool("iptables-legacy-save", "-t", "nat")
        assert "-A PREROUTING -m comment --comment" in nat and "KUBE-SERVICES" in nat

        with Traffic() as traffic:
            traffic.wait_replies(5)
            set_endpoints(api, "10.244.1.1", "10.244.2.1", "10.244.3.1")
            wait_for("the third endpoint", lambda: "10.244.3.1:8080" in real_servers())
            wait_for("a reply from web3", lambda: "web3" in traffic.replies)
            set_endpoints(api, "10.244.3.1")
            # Removed TCP real servers drain at weight 0 before they go.
            wait_for(
                "web1 and web2 out of rotation",
                lambda: all(
                    weight == 0 for rs, weight in weights().items() if rs != "10.244.3.1:8080"
                ),
            )
            traffic.wait_replies(10)
            recent = traffic.replies[-5:]
        assert traffic.failures == [], traffic.failures[:5]
        assert recent == ["web3"] * 5

        assert metric("ipvsproxy_syncs_total") >= 3
        assert metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 0
        status, body = http_json(HEALTHZ_PORT, "/healthz")
        assert status == 200 and body["nodeEligible"] is True
        status, body = http_json(HEALTHZ_PORT, "/livez")
        assert status == 200 and "nodeEligible" not in body
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/proxyMode") as reply:
            assert reply.read().decode().strip() == "ipvs"

        # SIGTERM: a prompt, clean exit that leaves the dataplane in place.
        before = ipvs_table()
        seconds = running.stop(signal.SIGTERM)
        assert running.process.returncode == 0, running.log()
        assert seconds < 3.0, f"took {seconds:.1f} s to exit"
        assert ipvs_table() == before
        assert tcp_requests(CLUSTER_IP, 80, 3) == ["web3"] * 3


def test_restart_under_traffic_loses_no_request(
    cluster: tuple[TestAPIServer, PodNetwork, Path, Path], tmp_path: Path
) -> None:
    _, _, kubeconfig_path, config = cluster
    with agent(tmp_path, kubeconfig_path, config) as first:
        table = ipvs_table()
        with Traffic() as traffic:
            traffic.wait_replies(5)
            first.stop(signal.SIGTERM)
            traffic.wait_replies(5)
            with agent(tmp_path, kubeconfig_path, config) as second:
                traffic.wait_replies(5)
                # The restarted agent adopted the kernel's state: it wrote no IPVS message.
                assert metric('ipvsproxy_netlink_messages_sent_total{subsystem="ipvs"}') == 0, (
                    second.log()
                )
        assert traffic.failures == [], traffic.failures[:5]
        assert ipvs_table() == table
        assert {"web1", "web2"} <= set(traffic.replies)


def test_full_sync_repairs_drift(
    cluster: tuple[TestAPIServer, PodNetwork, Path, Path], tmp_path: Path
) -> None:
    _, _, kubeconfig_path, config = cluster
    with agent(tmp_path, kubeconfig_path, config) as running:
        table = ipvs_table()
        sets = tool("ipset", "save")
        nat = nat_rules()
        addresses = tool("ip", "-o", "addr", "show", "dev", "kube-ipvs0")

        tool("ipvsadm", "-C")
        tool("ip", "addr", "del", f"{CLUSTER_IP}/32", "dev", "kube-ipvs0")
        tool("ipset", "del", "KUBE-CLUSTER-IP", f"{CLUSTER_IP},tcp:80")
        tool("iptables-legacy", "-t", "nat", "-F", "KUBE-SERVICES")

        wait_for("IPVS repaired", lambda: ipvs_table() == table)
        wait_for("ipsets repaired", lambda: tool("ipset", "save") == sets)
        wait_for(
            "kube-ipvs0 repaired",
            lambda: tool("ip", "-o", "addr", "show", "dev", "kube-ipvs0") == addresses,
        )
        wait_for("iptables repaired", lambda: nat_rules() == nat)
        assert sorted(tcp_requests(CLUSTER_IP, 80, 4)) == ["web1", "web1", "web2", "web2"]
        assert running.process.poll() is None, running.log()


def test_nothing_is_programmed_before_both_lists(
    cluster: tuple[TestAPIServer, PodNetwork, Path, Path], tmp_path: Path
) -> None:
    """With the API server gone from the start, the agent programs nothing and says so on
    /healthz; once it is back, the node converges."""
    api, _, kubeconfig_path, config = cluster
    api.go_away()
    running = Agent(tmp_path, kubeconfig_path, config)
    try:
        wait_for(
            "the health server",
            lambda: _answers(HEALTHZ_PORT, "/livez"),
            timeout=START_TIMEOUT,
        )
        time.sleep(2)  # a window for a wrong early sync to show; nothing may appear in it
        assert tool("ipvsadm", "-Ln").count("->") == 1  # the header line only
        assert "kube-ipvs0" not in tool("ip", "-o", "link")
        api.come_back()
        running.wait_synced()
        assert real_servers() == {"10.244.1.1:8080", "10.244.2.1:8080"}
    finally:
        if running.process.poll() is None:
            running.stop(signal.SIGKILL)


def _answers(port: int, path: str) -> bool:
    try:
        http_json(port, path)
    except OSError:
        return False
    return True
