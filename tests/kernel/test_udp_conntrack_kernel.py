"""Removed endpoints under `ipvsproxy run`, by partial syncs (full syncs are ten minutes
apart here): a UDP client that keeps its socket moves to a live endpoint once its own is
removed through the API (its stale conntrack entry deleted), and with
gracefulTerminationTimeout 0s a TCP real server still counting a connection goes at once."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from agentproc import agent, real_servers, wait_for
from ipvsproxy_testkit.sandbox.netns import switch_netns
from ipvsproxy_testkit.sandbox.pods import PodNetwork
from ipvsproxy_testkit.testapi import TestAPIServer, kubeconfig
from ipvsproxy_testkit.testapi.resources import ENDPOINT_SLICES, SERVICES

from ipvsproxy.core.model import IPFamily
from ipvsproxy.core.stale_udp import ConntrackEntry
from ipvsproxy.dataplane.stale_udp_conntrack import ConntrackSocket

pytestmark = pytest.mark.kernel

VIP = "10.96.0.53"


def dns_slice(address: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "dns-1",
            "namespace": "kube-system",
            "labels": {"kubernetes.io/service-name": "dns"},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "dns", "port": 8080, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 8080, "protocol": "TCP"},
        ],
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
    }


def flows_to(endpoint: str) -> list[ConntrackEntry]:
    """The IPv4 conntrack entries whose replies come from `endpoint`."""
    with ConntrackSocket() as conntrack:
        entries = conntrack.entries(IPFamily.V4)
    return [entry for entry in entries if str(entry.reply_source) == endpoint]


def ask(sock: socket.socket) -> bytes | None:
    sock.send(b"?")
    try:
        return sock.recv(64)
    except TimeoutError:  # expire_nodest_conn drops the datagram that finds its server gone
        return None


def test_udp_client_keeping_its_socket_moves_after_its_endpoint_is_removed(
    tmp_path: Path,
) -> None:
    with PodNetwork() as pods, TestAPIServer().start() as api:
        client = pods.add_pod("client", "10.244.0.2")
        pods.add_pod("old", "10.244.1.1")
        pods.add_pod("new", "10.244.2.1")
        pods.serve(8080)
        api.store.create(
            SERVICES,
            "kube-system",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "dns", "namespace": "kube-system"},
                "spec": {
                    "clusterIP": VIP,
                    "clusterIPs": [VIP],
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 8080},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 8080},
                    ],
                },
            },
        )
        api.store.create(ENDPOINT_SLICES, "kube-system", dns_slice("10.244.1.1"))
        kubeconfig_path = tmp_path / "kubeconfig"
        kubeconfig_path.write_text(kubeconfig(api.url))
        config = tmp_path / "kube-proxy.yaml"
        config.write_text(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
            "syncPeriod: 10m\nclusterCIDR: 10.244.0.0/16\n"
            "ipvs: {gracefulTerminationTimeout: 0s}\n"
            # The table size is read-only in a network namespace (see AGENT_CONFIG).
            "conntrack: {maxPerCore: 0}\n"
        )
        with agent(tmp_path, kubeconfig_path, config):
            # A UDP flow answered once lives 30 s in conntrack; on a loaded host the change
            # below may take longer than that, and an expired entry proves nothing.
            Path("/proc/sys/net/netfilter/nf_conntrack_udp_timeout").write_text("600\n")
            with switch_netns(client.netns):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sock:
                sock.settimeout(2)
                sock.connect((VIP, 53))
                assert ask(sock) == b"old"
                assert flows_to("10.244.1.1")  # the flow's entry, whose deletion is awaited
                # Closed by the server: IPVS counts it inactive (TIME_WAIT) for two minutes.
                assert pods.tcp_requests(VIP, 53, 1, source=client) == ["old"]

                api.store.replace(ENDPOINT_SLICES, "kube-system", "dns-1", dns_slice("10.244.2.1"))
                # Both protocols' old real server gone at once: no TCP drain at weight 0.
                wait_for(
                    "the new endpoint", lambda: real_servers() == {"10.244.2.1:8080"}, timeout=60
                )
                # From 5.9 the kernel itself expires the connections of a deleted server
                # (expire_nodest_conn=1), conntrack entries included, within about 0.1 s:
                # it races the proxy's deletion, so wait for the entry to go, by either.
                # test_ipvs_corner_cases_kernel.py proves the proxy's own deletion.
                wait_for(
                    "the stale entry's deletion", lambda: not flows_to("10.244.1.1"), timeout=60
                )
                replies = [ask(sock) for _ in range(3)]
            assert b"new" in replies and b"old" not in replies, replies
