"""`ipvsproxy verify` against the real kernel: each kind of drift, made with the real tools
the way an operator or another program would, is caught and named; a sync repairs it.

Each test runs in a fresh network namespace of the sandbox kernel (see the pytest plugin).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from agentproc import cluster_file, tool
from ipvsproxy_testkit.testapi import Store, TestAPIServer, resources

from ipvsproxy.cli import main

pytestmark = pytest.mark.kernel

CLUSTER = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec:
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10]
    ports:
    - {name: http, port: 80, protocol: TCP, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP, targetPort: 8080}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-1
    namespace: shop
    labels: {kubernetes.io/service-name: web}
  addressType: IPv4
  ports:
  - {name: http, port: 8080, protocol: TCP}
  - {name: dns, port: 8080, protocol: UDP}
  endpoints:
  - addresses: [10.244.1.1]
  - addresses: [10.244.2.1]
"""

# (what an operator or another program does, a line verify must print for it)
DRIFTS = {
    "virtual server deleted": (
        "ipvsadm -D -t 10.96.0.10:80",
        "  + TCP 10.96.0.10:80  (rr)",
    ),
    "extra virtual server": (
        "ipvsadm -A -u 10.96.0.10:54 -s rr",
        "  - UDP 10.96.0.10:54  (rr)",
    ),
    "scheduler and persistence changed": (
        "ipvsadm -E -t 10.96.0.10:80 -s wlc -p 60",
        "  ~ TCP 10.96.0.10:80  (wlc persistent 60, want rr)",
    ),
    "real server deleted": (
        "ipvsadm -d -t 10.96.0.10:80 -r 10.244.1.1:8080",
        "  + TCP 10.96.0.10:80 -> 10.244.1.1:8080  (Masq weight 1)",
    ),
    "extra real server": (
        "ipvsadm -a -u 10.96.0.10:53 -r 10.244.7.7:8080 -m",
        "  - UDP 10.96.0.10:53 -> 10.244.7.7:8080",
    ),
    "weight changed": (
        "ipvsadm -e -t 10.96.0.10:80 -r 10.244.2.1:8080 -m -w 0",
        "  ~ TCP 10.96.0.10:80 -> 10.244.2.1:8080  (Masq weight 0, want Masq weight 1)",
    ),
    "address unbound": (
        "ip addr del 10.96.0.10/32 dev kube-ipvs0",
        "  + 10.96.0.10",
    ),
    "extra address": (
        "ip addr add 10.96.9.9/32 dev kube-ipvs0",
        "  - 10.96.9.9",
    ),
    "set entry deleted": (
        "ipset del KUBE-CLUSTER-IP 10.96.0.10,tcp:80",
        "  + KUBE-CLUSTER-IP 10.96.0.10,tcp:80",
    ),
    "extra set entry": (
        "ipset add KUBE-CLUSTER-IP 10.96.0.99,udp:53",
        "  - KUBE-CLUSTER-IP 10.96.0.99,udp:53",
    ),
    "chain flushed": (
        "iptables-legacy -t nat -F KUBE-SERVICES",
        "  ~ IPv4 nat KUBE-SERVICES  (0 rules, want ",
    ),
    "jump rule deleted": (
        "iptables-legacy -t nat -F POSTROUTING",
        "  + IPv4 nat POSTROUTING -j KUBE-POSTROUTING",
    ),
}


def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    status = main(["verify", "--iptables-backend", "legacy", *args])
    return status, capsys.readouterr().out


def program(cluster: Path) -> None:
    assert main(["once", "--iptables-backend", "legacy", "-f", str(cluster)]) == 0


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    path = Path(cluster_file(tmp_path, CLUSTER))
    program(path)
    return path


def test_in_sync_exits_0(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = verify(capsys, "-f", str(cluster))
    assert status == 0
    assert out.startswith("in sync")


@pytest.mark.parametrize("drift", DRIFTS, ids=list(DRIFTS))
def test_drift_is_caught_named_and_repaired(
    drift: str, cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command, expected = DRIFTS[drift]
    tool(*command.split())
    status, out = verify(capsys, "-f", str(cluster))
    assert status == 1, out
    assert out.startswith("drift: ")
    assert any(line.startswith(expected) for line in out.splitlines()), out
    program(cluster)  # a sync repairs exactly what verify reported
    assert verify(capsys, "-f", str(cluster))[0] == 0


def test_virtual_servers_of_others_are_not_drift(
    cluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tool("ipvsadm", "-A", "-t", "192.0.2.1:80", "-s", "rr")
    status, out = verify(capsys, "-f", str(cluster))
    assert status == 0, out


def test_against_the_api_server(cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    objects: list[dict[str, Any]] = yaml.safe_load(CLUSTER)["items"]
    with TestAPIServer(Store()) as server:
        for obj in objects:
            kind = resources.by_kind(obj["apiVersion"], obj["kind"])
            assert kind is not None
            server.store.create(kind, obj["metadata"]["namespace"], obj)
        status, out = verify(capsys, "--master", server.url)
        assert (status, out.split(":")[0]) == (0, "in sync")
        # The endpoints went away in the API: the kernel still sends traffic to them.
        server.store.delete(resources.ENDPOINT_SLICES, "shop", "web-1")
        status, out = verify(capsys, "--master", server.url)
    assert status == 1
    assert "  - TCP 10.96.0.10:80 -> 10.244.1.1:8080" in out.splitlines()
    assert "  - UDP 10.96.0.10:53 -> 10.244.2.1:8080" in out.splitlines()


def test_unreadable_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: List\nitems: [\n")
    assert verify(capsys, "-f", str(bad))[0] == 2
