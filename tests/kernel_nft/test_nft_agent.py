"""`ipvsproxy run` against the test API server on a node whose iptables is nft.

One change, as the user-mode-linux agent tests do many: the agent (its own process, as a
DaemonSet runs it) detects the nft backend, programs it, follows an endpoint change, and
its periodic full syncs leave the nft chains exactly as they were (each jump once).
The agent imports the kubernetes client, which takes tens of seconds in this guest.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from agentproc import (
    AGENT_CONFIG,
    Agent,
    endpoint_slice,
    metric,
    real_servers,
    service,
    tool,
    wait_for,
)
from ipvsproxy_testkit.sandbox.pods import PodNetwork
from ipvsproxy_testkit.testapi import TestAPIServer, kubeconfig
from ipvsproxy_testkit.testapi.resources import ENDPOINT_SLICES, SERVICES

from ipvsproxy.core.rules import JUMP_RULES
from ipvsproxy.dataplane.iptables import parse_save

pytestmark = pytest.mark.kernel_qemu

START_TIMEOUT = 400.0


def test_agent_programs_nft_and_follows_one_change(tmp_path: Path, pod_network: PodNetwork) -> None:
    for index in (1, 2):
        pod_network.add_pod(f"web{index}", f"10.244.{index}.1")
    pod_network.serve(8080)
    with TestAPIServer().start() as api:
        api.store.create(SERVICES, "shop", service())
        api.store.create(ENDPOINT_SLICES, "shop", endpoint_slice("10.244.1.1"))
        (tmp_path / "kubeconfig").write_text(kubeconfig(api.url))
        (tmp_path / "kube-proxy.yaml").write_text(AGENT_CONFIG)
        running = Agent(tmp_path, tmp_path / "kubeconfig", tmp_path / "kube-proxy.yaml")
        try:
            wait_for("the first sync", lambda: real_servers() == {"10.244.1.1:8080"}, START_TIMEOUT)
            assert 'backend="nft"' in running.log()  # klog's text quotes strings
            first = parse_save(tool("iptables-nft-save"))
            assert "KUBE-SERVICES" in first["nat"]
            assert "KUBE-" not in tool("iptables-legacy-save")

            api.store.replace(
                ENDPOINT_SLICES, "shop", "web-1", endpoint_slice("10.244.1.1", "10.244.2.1")
            )
            wait_for(
                "the second endpoint",
                lambda: real_servers() == {"10.244.1.1:8080", "10.244.2.1:8080"},
                60.0,
            )
            replies = pod_network.tcp_requests("10.96.0.10", 80, 4)
            assert sorted(replies) == ["web1", "web1", "web2", "web2"]
            # Two more periodic full syncs: the nft chains stay as they were.
            seen = metric("ipvsproxy_syncs_total")
            wait_for("two periodic syncs", lambda: metric("ipvsproxy_syncs_total") >= seen + 2, 60)
            after = parse_save(tool("iptables-nft-save"))
            assert after == first
            assert [after[j.table][j.chain].count(j.rule) for j in JUMP_RULES] == [1] * len(
                JUMP_RULES
            )
        except BaseException:
            print(f"--- agent log ---\n{running.log()}")
            raise
        finally:
            if running.process.poll() is None:
                running.stop(signal.SIGTERM, timeout=20)
    assert running.process.returncode == 0, running.log()
