"""ipvsproxy in kube-proxy's place: its DaemonSets' command lines, its metrics, /configz,
its User-Agent and its log lines.

- kubeadm's kube-proxy command line, and kubespray's (kubespray deploys kube-proxy
  through kubeadm: the same command line, kubespray's KubeProxyConfiguration), start
  `ipvsproxy run` against the test API server. Only what the node supplies is put in:
  the mounted files' paths and $(NODE_NAME), as kubelet expands it; and
  `--dataplane=fake`, as this host has no IPVS.
- The metric names, types and label sets kube-proxy registers in IPVS mode are all
  served with the same labels (KUBE_PROXY_METRICS, taken from kube-proxy's sources).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemonrig import eps, free_port, metric, svc, wait_for
from ipvsproxy_testkit.testapi import TestAPIServer
from ipvsproxy_testkit.testapi.resources import ENDPOINT_SLICES, SERVICES
from prometheus_client.parser import text_string_to_metric_families

from ipvsproxy.core.model import IPFamily
from ipvsproxy.serve.metrics import ProxyMetrics

# What kube-proxy registers in IPVS mode: name -> (type, label names). From
# kubernetes/kubernetes pkg/proxy/metrics/metrics.go (RegisterMetrics' core set and its
# ProxyModeIPVS case) with the ip_family labels of v1.33 (PR #129173, the generated
# Metrics Reference of v1.34 and v1.36 lists the same; conntrack reconciler metrics from
# PRs #130200 and #130204), as of commit 008b3652959ca58af8be3fb5b6ecfe9ae7638282; plus
# component-base's kubernetes_build_info (metrics/prometheus/version) and client-go's
# rest_client_requests_total and rest_client_request_duration_seconds
# (metrics/prometheus/restclient), registered by kube-proxy's cmd/kube-proxy/proxy.go.
KUBE_PROXY_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "kubeproxy_sync_proxy_rules_duration_seconds": ("histogram", frozenset({"ip_family"})),
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds": ("gauge", frozenset({"ip_family"})),
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds": ("gauge", frozenset({"ip_family"})),
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending": ("gauge", frozenset()),
    "kubeproxy_sync_proxy_rules_endpoint_changes_total": ("counter", frozenset()),
    "kubeproxy_sync_proxy_rules_service_changes_pending": ("gauge", frozenset()),
    "kubeproxy_sync_proxy_rules_service_changes_total": ("counter", frozenset()),
    "kubeproxy_proxy_healthz_total": ("counter", frozenset({"code"})),
    "kubeproxy_proxy_livez_total": ("counter", frozenset({"code"})),
    "kubeproxy_network_programming_duration_seconds": ("histogram", frozenset({"ip_family"})),
    "kubeproxy_sync_proxy_rules_no_local_endpoints_total": (
        "gauge",
        frozenset({"traffic_policy", "ip_family"}),
    ),
    "kubeproxy_sync_proxy_rules_iptables_restore_failures_total": (
        "counter",
        frozenset({"ip_family"}),
    ),
    "kubeproxy_conntrack_reconciler_sync_duration_seconds": ("histogram", frozenset({"ip_family"})),
    "kubeproxy_conntrack_reconciler_deleted_entries_total": ("counter", frozenset({"ip_family"})),
    "kubernetes_build_info": (
        "gauge",
        frozenset(
            {
                "major",
                "minor",
                "git_version",
                "git_commit",
                "git_tree_state",
                "build_date",
                "go_version",
                "compiler",
                "platform",
            }
        ),
    ),
    "rest_client_requests_total": ("counter", frozenset({"code", "method", "host"})),
    "rest_client_request_duration_seconds": ("histogram", frozenset({"verb", "host"})),
}  # fmt: skip


def served(text: str) -> dict[str, tuple[str, set[frozenset[str]]]]:
    """Per metric as kube-proxy names it (a counter with _total): its type and the label
    sets of its samples (a histogram's `le` left out)."""
    found: dict[str, tuple[str, set[frozenset[str]]]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {frozenset(set(s.labels) - {"le"}) for s in family.samples}
        found[name] = (family.type, labels)
    return found


def test_metric_names_types_and_labels_match_kube_proxys() -> None:
    from prometheus_client import generate_latest

    metrics = ProxyMetrics(families=(IPFamily.V4, IPFamily.V6))
    metrics.queued(now=1.0)
    metrics.changes_seen(services=1, endpoints=1)
    metrics.sync_finished(seconds=0.01, full=True, ok=True, now=2.0)
    metrics.network_programmed([1.0], 2.0)
    metrics.probe_answered("/healthz", 200)
    metrics.probe_answered("/livez", 503)
    metrics.no_local_endpoints({("internal", IPFamily.V4): 2})
    metrics.iptables_restore_failed(IPFamily.V6)
    metrics.conntrack_reconciled(IPFamily.V4, seconds=0.001, deleted=3, failed=False)
    metrics.api_request(method="GET", host="10.96.0.1:443", code="200", seconds=0.02)
    found = served(generate_latest(metrics.registry).decode())
    for name, (kind, labels) in KUBE_PROXY_METRICS.items():
        assert name in found, name
        assert found[name] == (kind, {labels}), name
    # families are both served, as kube-proxy's two proxiers serve them
    text = generate_latest(metrics.registry).decode()
    for family in ("IPv4", "IPv6"):
        assert (
            f'kubeproxy_sync_proxy_rules_last_timestamp_seconds{{ip_family="{family}"}} 2.0' in text
        )
    assert 'no_local_endpoints_total{ip_family="IPv4",traffic_policy="internal"} 2.0' in text
    assert 'no_local_endpoints_total{ip_family="IPv6",traffic_policy="external"} 0.0' in text
    # the runtime collectors: process_* and Python's counterparts of go_*
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"):
        assert name in found, name
    assert any(name.startswith("python_gc_") for name in found)


# --- the DaemonSets' command lines ---------------------------------------------------------

# kubeadm's kube-proxy DaemonSet (cmd/kubeadm/app/phases/addons/proxy/manifests.go),
# container command, verbatim.
KUBEADM_COMMAND = [
    "/usr/local/bin/kube-proxy",
    "--config=/var/lib/kube-proxy/config.conf",
    "--hostname-override=$(NODE_NAME)",
]

# kubeadm's config.conf as a kubeadm 1.31 cluster's kube-proxy ConfigMap holds it
# (every field written out, zero values for "default"), mode ipvs; the servers on ports
# of the test's choosing.
KUBEADM_CONFIG = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: 127.0.0.1:HEALTHZ_PORT
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: 127.0.0.1:METRICS_PORT
mode: ipvs
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"""

# kubespray's KubeProxyConfiguration (roles/kubernetes/control-plane/templates/
# kubeadm-config.v1beta4.yaml.j2) rendered with kubespray's defaults (kube_proxy_mode:
# ipvs); kubeadm then deploys it with KUBEADM_COMMAND.
KUBESPRAY_CONFIG = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: "0.0.0.0"
clientConnection:
  acceptContentTypes:
  burst: 10
  contentType: application/vnd.kubernetes.protobuf
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 5
clusterCIDR: "10.233.64.0/18"
configSyncPeriod: 15m0s
conntrack:
  maxPerCore: 32768
  min: 131072
  tcpCloseWaitTimeout: 1h0m0s
  tcpEstablishedTimeout: 24h0m0s
enableProfiling: False
healthzBindAddress: "127.0.0.1:HEALTHZ_PORT"
hostnameOverride: "node1"
iptables:
  masqueradeAll: False
  masqueradeBit: 14
  minSyncPeriod: 0s
  syncPeriod: 30s
ipvs:
  excludeCIDRs: []
  minSyncPeriod: 0s
  scheduler: rr
  syncPeriod: 30s
  strictARP: False
  tcpTimeout: 0s
  tcpFinTimeout: 0s
  udpTimeout: 0s
metricsBindAddress: "127.0.0.1:METRICS_PORT"
mode: ipvs
nodePortAddresses: []
oomScoreAdj: -999
portRange:
"""

TOKEN = "kubeadm-token-d8f1a2c9e3"
NODE = "worker-1"

# klog's text header: severity, mmdd, microseconds, PID in 7 columns, file:line.
KLOG_TEXT = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} {1,7}\d+ [\w.]+:\d+\] "')
USER_AGENT = re.compile(
    r"^ipvsproxy/v\d+\.\d+\.\d+ \(linux/[a-z0-9]+\) kubernetes/([0-9a-f]{7}|unknown)$"
)


def node_command(command: list[str], mounts: dict[str, Path]) -> list[str]:
    """The container's command as the node runs it: kubelet expands $(NODE_NAME), the
    mounted directories are where this test put the files; ipvsproxy in kube-proxy's
    place."""
    args = []
    for arg in command[1:]:
        arg = arg.replace("$(NODE_NAME)", NODE)
        for mount, there in mounts.items():
            arg = arg.replace(mount, str(there))
        args.append(arg)
    return [sys.executable, "-m", "ipvsproxy.cli", "run", *args]


@pytest.fixture
def api() -> Iterator[TestAPIServer]:
    with TestAPIServer(bookmark_interval=0.5) as server:
        server.store.create(SERVICES, "default", svc("web", "10.96.0.10"))
        server.store.create(ENDPOINT_SLICES, "default", eps("web-1", "web", "10.244.1.5"))
        # internalTrafficPolicy Local, its only endpoint on another node
        local = svc("local", "10.96.0.11", internalTrafficPolicy="Local")
        server.store.create(SERVICES, "default", local)
        far = eps("local-1", "local", "10.244.2.5")
        far["endpoints"][0]["nodeName"] = "worker-2"
        server.store.create(ENDPOINT_SLICES, "default", far)
        yield server


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        body: bytes = reply.read()
    return body.decode()


@pytest.mark.parametrize("config", [KUBEADM_CONFIG, KUBESPRAY_CONFIG], ids=["kubeadm", "kubespray"])
def test_kube_proxys_daemonset_command_line_starts_run(
    config: str, api: TestAPIServer, tmp_path: Path
) -> None:
    mount = tmp_path / "var-lib-kube-proxy"
    mount.mkdir()
    healthz, metrics_port = free_port(), free_port()
    (mount / "config.conf").write_text(
        config.replace("HEALTHZ_PORT", str(healthz))
        .replace("METRICS_PORT", str(metrics_port))
        .replace("/var/lib/kube-proxy", str(mount))
    )
    # kubeadm's kubeconfig.conf names a token file; here a token, to show it stays out
    (mount / "kubeconfig.conf").write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: default\n  cluster:\n    server: {api.url}\n"
        f"users:\n- name: default\n  user:\n    token: {TOKEN}\n"
        "contexts:\n- name: default\n  context: {cluster: default, user: default}\n"
        "current-context: default\n"
    )
    argv = [*node_command(KUBEADM_COMMAND, {"/var/lib/kube-proxy": mount}), "--dataplane=fake"]
    log = tmp_path / "agent.log"
    with log.open("w") as out:
        agent = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:

            def synced() -> bool:
                assert agent.poll() is None, log.read_text()
                try:
                    text = get(metrics_port, "/metrics")
                except OSError:
                    return False
                return metric(text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 0

            wait_for(synced, timeout=60, what="the agent's first sync")
            assert get(healthz, "/healthz").startswith("{")
            text = get(metrics_port, "/metrics")
            configz = json.loads(get(metrics_port, "/configz"))
            proxy_mode = get(metrics_port, "/proxyMode")
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(10)
    assert agent.returncode == 0, log.read_text()
    lines = log.read_text().splitlines()

    # the command line was taken: no warning about it, the hostname from the flag
    assert not [line for line in lines if line.startswith("W")], lines
    assert proxy_mode == "ipvs"
    internal = configz["kubeproxy.config.k8s.io"]
    assert internal["HostnameOverride"] == NODE
    assert internal["Mode"] == "ipvs"
    assert internal["ClientConnection"]["Kubeconfig"] == str(mount / "kubeconfig.conf")
    assert internal["MetricsBindAddress"] == f"127.0.0.1:{metrics_port}"
    assert TOKEN not in json.dumps(configz)
    # every kube-proxy metric is served, by name and type
    found = served(text)
    for name, (kind, _) in KUBE_PROXY_METRICS.items():
        if name.startswith("kubeproxy_conntrack_reconciler"):
            continue  # no conntrack table in the fake dataplane
        assert found.get(name, ("missing",))[0] == kind, name
    assert (
        'kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",'
        'traffic_policy="internal"} 1.0' in text
    )
    requests = [
        line
        for line in text.splitlines()
        if line.startswith("rest_client_requests_total{") and 'code="200"' in line
    ]
    assert requests and float(requests[0].rsplit(" ", 1)[1]) >= 3  # three lists, at least
    # the build's identity in the User-Agent, client-go's shape
    agents = api.user_agents()
    assert agents and all(USER_AGENT.match(agent) for agent in agents), agents
    # klog's text lines
    assert lines and all(KLOG_TEXT.match(line) for line in lines if line[:1] in "IWEF"), lines
    assert any(line[:1] == "I" for line in lines)
    assert str(os.getpid()) not in lines[0].split()[2:3]  # the agent's own PID, not ours
