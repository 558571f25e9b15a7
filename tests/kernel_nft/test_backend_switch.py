"""Switching the rules backend under traffic, both ways (issue 17).

The agent runs with `ipvs.rulesBackend: iptables` to its first sync; while a client opens
new connections to a ClusterIP in a loop, it is stopped and started with `nftables`, then
stopped and started with `iptables` again. Each start programs its backend and then
removes the other's leftovers; between the stop and that first sync the old rules stay in
the kernel. Per direction the test prints the failed requests and the longest time without
a reply, and asserts that time is no longer than the new agent's first sync plus a margin.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from agentproc import (
    AGENT_CONFIG,
    Agent,
    Traffic,
    endpoint_slice,
    real_servers,
    service,
    wait_for,
)
from ipvsproxy_testkit.sandbox.pods import PodNetwork
from ipvsproxy_testkit.testapi import TestAPIServer, kubeconfig
from ipvsproxy_testkit.testapi.resources import ENDPOINT_SLICES, SERVICES

pytestmark = pytest.mark.kernel_qemu

# The kubernetes client's import alone takes tens of seconds in this guest.
START_TIMEOUT = 400.0
# Beyond the first sync: one request's round trip and the client's pause between two.
MARGIN = 0.5


def _output(*argv: str) -> str:
    """stdout of a reader that may find nothing to read (no table, no module)."""
    return subprocess.run(list(argv), capture_output=True, text=True, check=False).stdout


def iptables_leftovers() -> list[str]:
    """KUBE- chains in either iptables, and KUBE- ipsets."""
    saves = _output("iptables-legacy-save") + _output("iptables-nft-save")
    chains = [line for line in saves.splitlines() if line.startswith(":KUBE-")]
    return chains + [name for name in _output("ipset", "list", "-n").split() if "KUBE-" in name]


def nft_tables() -> list[str]:
    return [line for line in _output("nft", "list", "tables").splitlines() if "ipvsproxy" in line]


def first_sync_seconds(log: str) -> float:
    """The duration of the first sync, from its "synced" log line."""
    found = re.search(r'"synced".*?\bseconds="?([0-9.]+)', log)
    assert found is not None, log
    return float(found.group(1))


def test_switch_backend_both_ways_under_traffic(tmp_path: Path, pod_network: PodNetwork) -> None:
    pod_network.add_pod("web1", "10.244.1.1")
    pod_network.serve(8080)
    results: list[tuple[str, int, float, float]] = []
    with TestAPIServer().start() as api:
        api.store.create(SERVICES, "shop", service())
        api.store.create(ENDPOINT_SLICES, "shop", endpoint_slice("10.244.1.1"))
        (tmp_path / "kubeconfig").write_text(kubeconfig(api.url))

        def start(backend: str) -> Agent:
            # With --config, run takes the backend from the file (as kube-proxy its flags).
            config = tmp_path / f"{backend}.yaml"
            config.write_text(f"{AGENT_CONFIG}ipvs: {{rulesBackend: {backend}}}\n")
            agent = Agent(tmp_path, tmp_path / "kubeconfig", config)
            agent.wait_synced(START_TIMEOUT)
            assert f'"rules backend chosen" backend="{backend}"' in agent.log(), agent.log()
            return agent

        running = start("iptables")
        try:
            assert real_servers() == {"10.244.1.1:8080"}
            assert iptables_leftovers() and not nft_tables()
            with Traffic() as traffic:
                traffic.wait_replies(20)
                steady = traffic.longest_gap(traffic.replied_at[-20], traffic.replied_at[-1])
                print(f"\nsteady traffic: longest gap {steady:.3f} s")
                for backend, other_gone in (
                    ("nftables", lambda: not iptables_leftovers()),
                    ("iptables", lambda: not nft_tables()),
                ):
                    began = time.monotonic()
                    running.stop(signal.SIGTERM, timeout=20)
                    assert running.process.returncode == 0, running.log()
                    running = start(backend)
                    wait_for(f"the other backend's leftovers gone ({backend})", other_gone, 30)
                    if backend == "nftables":
                        assert nft_tables(), "no nft table"
                    else:
                        assert iptables_leftovers(), "no iptables chains"
                    traffic.wait_replies(20)
                    ended = time.monotonic()
                    sync = first_sync_seconds(running.log())
                    failed = traffic.failures_between(began, ended)
                    gap = traffic.longest_gap(began, ended)
                    results.append((backend, failed, gap, sync))
                    print(
                        *(line for line in running.log().splitlines() if line[:1] in "IW"), sep="\n"
                    )
                    print(
                        f"switch to {backend}: {failed} failed requests, longest gap"
                        f" {gap:.3f} s, first sync {sync:.3f} s, switch took"
                        f" {ended - began:.1f} s"
                    )
            failures = traffic.failures
        except BaseException:
            print(f"--- agent log ---\n{running.log()}")
            raise
        finally:
            if running.process.poll() is None:
                running.stop(signal.SIGTERM, timeout=20)
    assert failures == [], failures[:5]
    for backend, _, gap, sync in results:
        assert gap <= sync + MARGIN, (backend, gap, sync)
