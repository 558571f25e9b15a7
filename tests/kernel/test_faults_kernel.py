"""`ipvsproxy run` in the sandbox kernel with the privileges the DaemonSet grants, with the
xtables lock held by another process for a long time, and beside another tool that adds
and removes its own virtual servers all the while (keepalived-style)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentproc import (
    CLUSTER_IP,
    Traffic,
    agent,
    metric,
    real_servers,
    set_endpoints,
    tool,
    wait_for,
)
from ipvsproxy_testkit.sandbox.pods import PodNetwork
from ipvsproxy_testkit.testapi import TestAPIServer
from ipvsproxy_testkit.testapi.resources import ENDPOINT_SLICES, SERVICES

pytestmark = pytest.mark.kernel

DAEMONSET = Path(__file__).resolve().parents[2] / "deploy" / "base" / "daemonset.yaml"
CAPABILITY_BITS = {"NET_ADMIN": 12, "NET_RAW": 13}


def daemonset_capabilities() -> list[str]:
    """The capabilities deploy/ grants the agent's container (after dropping ALL)."""
    spec = yaml.safe_load(DAEMONSET.read_text())["spec"]["template"]["spec"]
    agent_container = next(c for c in spec["containers"] if c["name"] == "ipvsproxy")
    capabilities = agent_container["securityContext"]["capabilities"]
    assert capabilities["drop"] == ["ALL"]
    added: list[str] = capabilities["add"]
    return added


def proc_status(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return line.split()[1]
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_the_daemonsets_capabilities_are_enough(
    cluster: tuple[TestAPIServer, PodNetwork, Path, Path], tmp_path: Path
) -> None:
    api, _, kubeconfig_path, config = cluster
    granted = daemonset_capabilities()
    assert set(granted) <= set(CAPABILITY_BITS), granted
    keep = ",".join(f"+{name.lower()}" for name in granted)
    # Root, as the DaemonSet runs it, with every other capability out of the bounding set
    # (so neither the agent nor iptables/ipset it runs can have them) and no new privileges.
    prefix = ["setpriv", "--no-new-privs", f"--bounding-set=-all,{keep}", "--inh-caps=-all", "--"]
    with agent(tmp_path, kubeconfig_path, config, prefix=prefix) as running:
        pid = running.process.pid
        mask = sum(1 << CAPABILITY_BITS[name] for name in granted)
        assert int(proc_status(pid, "CapEff"), 16) == mask
        assert int(proc_status(pid, "CapBnd"), 16) == mask
        assert real_servers() == {"10.244.1.1:8080", "10.244.2.1:8080"}
        with Traffic() as traffic:
            traffic.wait_replies(3)
            set_endpoints(api, "10.244.1.1", "10.244.2.1", "10.244.3.1")
            wait_for("the third endpoint", lambda: "10.244.3.1:8080" in real_servers())
            wait_for("a reply from web3", lambda: "web3" in traffic.replies)
        assert traffic.failures == []
        assert f"{CLUSTER_IP},tcp:80" in tool("ipset", "save", "KUBE-CLUSTER-IP")
        assert "KUBE-SERVICES" in tool("iptables-legacy-save", "-t", "nat")
        log = running.log()
    assert "Operation not permitted" not in log, log


def external_service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "ext", "namespace": "shop"},
        "spec": {
            "clusterIP": "10.96.0.20",
            "clusterIPs": ["10.96.0.20"],
            "externalIPs": ["192.0.2.50"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    }


def test_xtables_lock_held_for_long_is_reported_once_and_retried(
    cluster: tuple[TestAPIServer, PodNetwork, Path, Path], tmp_path: Path
) -> None:
    api, _, kubeconfig_path, config = cluster
    with (
        agent(tmp_path, kubeconfig_path, config, args=["--v", "4"]) as running,
        Traffic() as traffic,
    ):
        traffic.wait_replies(3)
        # Held until the agent has failed (and retried) twice, however slow the guest.
        holder = subprocess.Popen(
            ["flock", "/run/xtables.lock", "sleep", "300"], start_new_session=True
        )
        try:
            # A Service with an external IP needs new iptables rules: a restore, which
            # waits 5 s for the lock, fails, and is retried while the lock stays held.
            api.store.create(SERVICES, "shop", external_service())
            eps = {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "ext-1",
                    "namespace": "shop",
                    "labels": {"kubernetes.io/service-name": "ext"},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["10.244.3.1"], "conditions": {"ready": True}}],
            }
            api.store.create(ENDPOINT_SLICES, "shop", eps)
            wait_for(
                "two failed syncs",
                lambda: metric("ipvsproxy_sync_failures_total") >= 2,
                90,
                0.5,
            )
        finally:
            os.killpg(holder.pid, signal.SIGKILL)  # flock and the sleep holding the lock
            holder.wait()
        wait_for(
            "the external IP rules",
            lambda: "KUBE-EXTERNAL-IP" in tool("iptables-legacy-save", "-t", "nat"),
            30,
        )
        wait_for("sync succeeded again", lambda: "sync succeeded again" in running.log(), 30)
        traffic.wait_replies(3)
        log = running.log()
    assert traffic.failures == [], traffic.failures[:5]
    lines = log.splitlines()
    failed = [n for n, line in enumerate(lines) if "sync failed" in line]
    assert len(failed) == 1, failed  # once, however many retries failed the same way
    # the line and the continuation lines of a multi-line value (klog's "key=<" block)
    end = failed[0] + 1
    while end < len(lines) and lines[end][:1] in ("\t", " "):
        end += 1
    entry = "\n".join(lines[failed[0] : end])
    assert "xtables lock" in entry or "iptables-restore" in entry, entry


def test_a_keepalived_style_neighbour_is_never_touched(
    cluster: tuple[TestAPIServer, PodNetwork, Path, Path], tmp_path: Path
) -> None:
    api, _, kubeconfig_path, config = cluster
    errors: list[str] = []
    rounds = 0
    stop = threading.Event()

    def neighbour() -> None:
        """Adds and removes its own virtual server on its own address, and checks that
        nobody else did: an add that finds it there or a delete that finds it gone fails."""
        nonlocal rounds
        tool("ip", "link", "add", "vrrp0", "type", "dummy")
        tool("ip", "addr", "add", "192.0.2.20/32", "dev", "vrrp0")
        while not stop.is_set():
            for argv in (
                ["ipvsadm", "-A", "-t", "192.0.2.20:80", "-s", "wlc"],
                ["ipvsadm", "-a", "-t", "192.0.2.20:80", "-r", "10.9.9.9:80", "-m"],
                ["ipvsadm", "-D", "-t", "192.0.2.20:80"],
            ):
                done = subprocess.run(argv, capture_output=True, text=True, check=False)
                if done.returncode:
                    errors.append(f"{' '.join(argv)}: {done.stderr.strip()}")
            rounds += 1

    with agent(tmp_path, kubeconfig_path, config) as running, Traffic() as traffic:
        thread = threading.Thread(target=neighbour, daemon=True)
        thread.start()
        try:
            for addresses in (
                ("10.244.1.1", "10.244.2.1", "10.244.3.1"),
                ("10.244.3.1",),
                ("10.244.1.1", "10.244.2.1"),
            ):
                set_endpoints(api, *addresses)
                expected = {f"{a}:8080" for a in addresses}
                wait_for(
                    "the endpoints",
                    lambda expected=expected: (
                        {rs for rs in real_servers() if rs.endswith(":8080")} >= expected
                    ),
                )
                traffic.wait_replies(3)
            syncs = metric("ipvsproxy_syncs_total")
            wait_for("three more syncs", lambda: metric("ipvsproxy_syncs_total") >= syncs + 3, 30)
        finally:
            stop.set()
            thread.join(10)
        log = running.log()
    assert rounds >= 5  # add, add a real server, delete: each a round
    assert errors == [], errors[:5]
    assert traffic.failures == [], traffic.failures[:5]
    assert "sync failed" not in log
    assert "192.0.2.20" in tool("ip", "-o", "addr", "show", "dev", "vrrp0")
