"""kubeadm's kube-proxy command line and config.conf, unchanged but for the mounted files'
paths and $(NODE_NAME), run ipvsproxy in the real kernel: no `--dataplane` flag, no port
of the test's choosing, kube-proxy's defaults throughout."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from agentproc import (
    CLUSTER_IP,
    METRICS_PORT,
    START_TIMEOUT,
    metric,
    real_servers,
    wait_for,
)
from ipvsproxy_testkit.sandbox.pods import PodNetwork, tcp_requests
from ipvsproxy_testkit.testapi import TestAPIServer, kubeconfig
from test_kube_proxy_compat import KUBEADM_COMMAND, KUBEADM_CONFIG, node_command

pytestmark = pytest.mark.kernel


def test_kubeadms_command_line_programs_the_kernel(
    cluster: tuple[TestAPIServer, PodNetwork, Path, Path], tmp_path: Path
) -> None:
    api, _, _, _ = cluster
    mount = tmp_path / "var-lib-kube-proxy"
    mount.mkdir()
    # kubeadm's file as is: the servers on kube-proxy's default addresses
    (mount / "config.conf").write_text(
        KUBEADM_CONFIG.replace("127.0.0.1:HEALTHZ_PORT", '""')
        .replace("127.0.0.1:METRICS_PORT", '""')
        .replace("/var/lib/kube-proxy", str(mount))
    )
    (mount / "kubeconfig.conf").write_text(kubeconfig(api.url))
    log = tmp_path / "agent.log"
    with log.open("w") as out:
        agent = subprocess.Popen(
            node_command(KUBEADM_COMMAND, {"/var/lib/kube-proxy": mount}),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:

            def synced() -> bool:
                assert agent.poll() is None, log.read_text()
                try:
                    return metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 0
                except OSError:
                    return False

            wait_for("the agent's first sync", synced, timeout=START_TIMEOUT)
            assert METRICS_PORT == 10249  # kube-proxy's default, where metric() looks
            assert real_servers() == {"10.244.1.1:8080", "10.244.2.1:8080"}
            assert sorted(tcp_requests(CLUSTER_IP, 80, 2)) == ["web1", "web2"]
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(10)
    assert agent.returncode == 0, log.read_text()
