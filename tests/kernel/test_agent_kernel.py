"""`ipvsproxy run` against the test API server, in the real kernel, under real traffic.

Each test starts the test API server in its own network namespace, runs the agent as a
separate process against it (as a DaemonSet would run it, with a kubeconfig), changes
objects through the API and reads the kernel back with the real `ipvsadm`, `ipset` and
`iptables-legacy-save`, while pods answer real TCP requests.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from agentproc import (
    AGENT_CONFIG,
    CLUSTER_IP,
    HEALTHZ_PORT,
    METRICS_PORT,
    START_TIMEOUT,
    Agent,
    Traffic,
    agent,
    http_json,
    ipvs_table,
    metric,
    nat_rules,
    real_servers,
    set_endpoints,
    tool,
    wait_for,
    weights,
)
from ipvsproxy_testkit.sandbox.pods import PodNetwork, tcp_requests
from ipvsproxy_testkit.testapi import TestAPIServer, kubeconfig

pytestmark = pytest.mark.kernel


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
        running.stop(signal.SIGTERM)  # kills it after 10 s: a hang shows as a nonzero status
        assert running.process.returncode == 0, running.log()
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


def test_partial_sync_deletes_idle_real_servers_and_drains_busy_ones(
    cluster: tuple[TestAPIServer, PodNetwork, Path, Path], tmp_path: Path
) -> None:
    """kube-proxy deletes a removed real server at once when it has no connection; only a
    busy one stays at weight 0. With full syncs an hour apart, only the partial sync that
    took the change can have deleted it (kubernetes' graceful_termination.go)."""
    api, _, kubeconfig_path, _ = cluster
    config = tmp_path / "slow-full-syncs.yaml"
    config.write_text(AGENT_CONFIG.replace("syncPeriod: 2s", "syncPeriod: 1h"))
    set_endpoints(api, "10.244.1.1")
    with agent(tmp_path, kubeconfig_path, config):
        assert real_servers() == {"10.244.1.1:8080"}
        # An established connection through the Service, held open: web1 is busy.
        held = socket.create_connection((CLUSTER_IP, 80), timeout=15)
        try:
            wait_for("web1's connection counted", lambda: _connections("10.244.1.1:8080") > 0)
            set_endpoints(api, "10.244.1.1", "10.244.2.1")
            wait_for("web2 added", lambda: "10.244.2.1:8080" in real_servers())
            # web2 never had a connection, web1 still has one: both leave.
            set_endpoints(api, "10.244.3.1")
            wait_for("web3 added", lambda: "10.244.3.1:8080" in real_servers())
            # Idle: deleted by the same partial sync (the next full sync is an hour away).
            wait_for("web2 deleted", lambda: "10.244.2.1:8080" not in real_servers())
            table = weights()
            assert table["10.244.1.1:8080"] == 0, ipvs_table()  # busy: drains
            assert table["10.244.3.1:8080"] == 1
        finally:
            held.close()
        assert sorted(tcp_requests(CLUSTER_IP, 80, 2)) == ["web3", "web3"]


def _connections(real_server: str) -> int:
    """Active plus inactive connections of a real server, as `ipvsadm -Ln` shows them."""
    for line in tool("ipvsadm", "-Ln").splitlines():
        fields = line.split()
        if fields[:2] == ["->", real_server]:
            return int(fields[4]) + int(fields[5])
    return 0


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
        # Not ready (never synced), yet alive: kubelet has no reason to restart it.
        assert http_json(HEALTHZ_PORT, "/healthz")[0] == 503
        assert http_json(HEALTHZ_PORT, "/livez")[0] == 200
        api.come_back()
        running.wait_synced()
        assert http_json(HEALTHZ_PORT, "/healthz")[0] == 200
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


@pytest.mark.kernel(netns=False)  # the table size can only change in the initial namespace
def test_agent_sizes_the_conntrack_table_at_start(tmp_path: Path) -> None:
    netfilter = Path("/proc/sys/net/netfilter")
    hashsize = Path("/sys/module/nf_conntrack/parameters/hashsize")
    max_before, hash_before = (
        int((netfilter / "nf_conntrack_max").read_text()),
        int(hashsize.read_text()),
    )
    size = max(1024 * (os.cpu_count() or 1), 2 * max_before)  # min wins: always a raise
    config = tmp_path / "kube-proxy.yaml"
    config.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n"
        "kind: KubeProxyConfiguration\n"
        f"conntrack: {{maxPerCore: 1024, min: {2 * max_before}, tcpEstablishedTimeout: 2h,"
        " tcpCloseWaitTimeout: 90s}\n"
    )
    kubeconfig_path = tmp_path / "kubeconfig"
    try:
        with TestAPIServer().start() as api:
            kubeconfig_path.write_text(kubeconfig(api.url))
            with agent(tmp_path, kubeconfig_path, config) as running:
                assert int((netfilter / "nf_conntrack_max").read_text()) == size
                assert int(hashsize.read_text()) == max(hash_before, size // 4)
                timeouts = ("tcp_timeout_established", "tcp_timeout_close_wait")
                assert [
                    int((netfilter / f"nf_conntrack_{name}").read_text()) for name in timeouts
                ] == [7200, 90]
                assert "cannot set sysctl" not in running.log()
    finally:  # what the agent made in the guest's own namespace
        tool(sys.executable, "-m", "ipvsproxy.cli", "cleanup")
