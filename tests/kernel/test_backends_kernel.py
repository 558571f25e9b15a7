"""Endpoint lifecycle and the fixed chains, with real traffic through the sandbox kernel.

Each test runs in a fresh network namespace of the guest; pods are namespaces around it
(see testkit/ipvsproxy_testkit/sandbox/pods.py) and the kernel is programmed with `ipvsproxy once`.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from agentproc import cli, tool
from ipvsproxy_testkit.sandbox.netns import switch_netns
from ipvsproxy_testkit.sandbox.pods import Pod, PodNetwork

pytestmark = pytest.mark.kernel

VIP = "10.96.5.1"


def web_cluster(
    path: Path,
    endpoints: Sequence[str | tuple[str, str]],
    *,
    protocol: str = "TCP",
    extra: str = "",
) -> str:
    """Service web (VIP:80 -> 8080) with these endpoints: "ip" (ready) or (ip, conditions)."""
    lines = []
    for item in endpoints:
        ip, conditions = (item, "{ready: true}") if isinstance(item, str) else item
        lines.append(f"  - {{addresses: [{ip}], conditions: {conditions}}}\n")
    path.write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- apiVersion: v1\n  kind: Service\n  metadata: {name: web, namespace: shop}\n"
        f"  spec:\n    clusterIP: {VIP}\n{extra}"
        f"    ports: [{{name: p, port: 80, protocol: {protocol}, targetPort: 8080}}]\n"
        "- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n"
        "  metadata:\n    name: web-1\n    namespace: shop\n"
        "    labels: {kubernetes.io/service-name: web}\n"
        f"  addressType: IPv4\n  ports: [{{name: p, port: 8080, protocol: {protocol}}}]\n"
        + ("  endpoints:\n" + "".join(lines) if lines else "  endpoints: []\n")
    )
    return str(path)


ECHO_SERVER = r"""
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
print("ready", flush=True)
def echo(c):
    with c:
        try:
            while data := c.recv(4096):
                c.sendall(data)
        except ConnectionResetError:
            pass
while True:
    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
"""


@contextmanager
def echo_server(pod: Pod, port: int) -> Iterator[None]:
    """A TCP echo server in the pod that keeps every connection open until the client
    closes it (the pod network's own servers answer once and close)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", pod.netns, sys.executable, "-c", ECHO_SERVER, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.communicate()


def ipvs_destinations() -> dict[str, tuple[int, int, int]]:
    """ipvsadm -Ln destinations of the VIP: "ip:port" -> (weight, active, inactive)."""
    found: dict[str, tuple[int, int, int]] = {}
    for line in tool("ipvsadm", "-Ln", "-t", f"{VIP}:80").splitlines():
        fields = line.split()
        if fields[:1] == ["->"] and fields[1][0].isdigit():
            found[fields[1]] = (int(fields[3]), int(fields[4]), int(fields[5]))
    return found


def wait_for(check: object, what: str, timeout: float = 30.0) -> None:
    """Poll the kernel until check() holds; the kernel's own timers decide when."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_long_lived_connection_survives_endpoint_removal(tmp_path: Path) -> None:
    with PodNetwork() as network:
        client = network.add_pod("client", "10.244.0.2")
        old = network.add_pod("old", "10.244.1.1")
        new = network.add_pod("new", "10.244.2.1")
        network.serve(8080, [new])
        with echo_server(old, 8080):
            cli("once", "-f", web_cluster(tmp_path / "a.yaml", ["10.244.1.1"]))
            with switch_netns(client.netns):
                conn = socket.create_connection((VIP, 80), timeout=10)
            with conn:
                conn.sendall(b"one")
                assert conn.recv(16) == b"one"

                # The endpoint goes: its real server is quiesced, not deleted.
                moved = web_cluster(tmp_path / "b.yaml", ["10.244.2.1"])
                cli("once", "-f", moved)
                assert ipvs_destinations() == {
                    "10.244.1.1:8080": (0, 1, 0),
                    "10.244.2.1:8080": (1, 0, 0),
                }
                conn.sendall(b"two")
                assert conn.recv(16) == b"two"  # the established connection carries on
                assert network.tcp_requests(VIP, 80, 3, source=client) == ["new"] * 3
                cli("once", "-f", moved)  # still busy: still there
                assert "10.244.1.1:8080" in ipvs_destinations()

                # Closed with a reset, the connection is inactive for IPVS's CLOSE state
                # timeout (10 s), then the kernel forgets it and the next sync deletes.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            wait_for(
                lambda: ipvs_destinations().get("10.244.1.1:8080", (0, 0, 0))[1:] == (0, 0),
                "the closed connection to leave IPVS's table",
            )
            cli("once", "-f", moved)
            assert list(ipvs_destinations()) == ["10.244.2.1:8080"]


def test_service_without_endpoints_refuses_promptly(tmp_path: Path) -> None:
    with PodNetwork() as network:
        client = network.add_pod("client", "10.244.0.2")
        cli("once", "-f", web_cluster(tmp_path / "empty.yaml", []))
        assert ipvs_destinations() == {}  # the virtual server exists, with no real server
        # IPVS answers ICMP port unreachable itself when it has no destination: a refusal,
        # not the timeout a dropped SYN would give.
        with switch_netns(client.netns), pytest.raises(ConnectionRefusedError):
            socket.create_connection((VIP, 80), timeout=10)


def test_service_address_answers_only_on_service_ports(tmp_path: Path) -> None:
    with PodNetwork() as network:
        client = network.add_pod("client", "10.244.0.2")
        web = network.add_pod("web", "10.244.1.1")
        network.serve(8080, [web])
        cli("once", "-f", web_cluster(tmp_path / "web.yaml", ["10.244.1.1"]))
        # A node service on every address (as sshd or the kubelet would be).
        listener = socket.create_server(("0.0.0.0", 9999))
        with listener, switch_netns(client.netns):
            socket.create_connection(("169.254.1.1", 9999), timeout=5).close()  # reachable
            with pytest.raises(ConnectionRefusedError):  # KUBE-IPVS-FILTER rejects
                socket.create_connection((VIP, 9999), timeout=5)
        assert network.tcp_requests(VIP, 80, 1, source=client) == ["web"]


def test_pod_reaches_itself_through_its_service(tmp_path: Path) -> None:
    with PodNetwork() as network:
        web = network.add_pod("web", "10.244.1.1")
        network.serve(8080, [web])
        cluster = web_cluster(tmp_path / "web.yaml", ["10.244.1.1"])
        text = (
            Path(cluster)
            .read_text()
            .replace("addresses: [10.244.1.1]", "addresses: [10.244.1.1], nodeName: node-1")
        )
        Path(cluster).write_text(text)
        cli("once", "-f", cluster, "--hostname-override", "node-1")
        assert "add KUBE-LOOP-BACK 10.244.1.1,tcp:8080,10.244.1.1" in tool("ipset", "save")
        # Without KUBE-LOOP-BACK's masquerade the pod would answer itself from its own
        # address, not the VIP's, and the connection would never complete.
        assert network.tcp_requests(VIP, 80, 2, source=web, timeout=5) == ["web", "web"]


KERNEL_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh")


def test_every_kernel_scheduler_passes_the_probe_and_a_missing_one_is_named(
    tmp_path: Path,
) -> None:
    from ipvsproxy.agent.scheduler_probe import probe_scheduler
    from ipvsproxy.dataplane.ipvs import IpvsSocket

    with IpvsSocket() as ipvs:
        for scheduler in KERNEL_SCHEDULERS:  # the guest loads each module on demand
            assert probe_scheduler(ipvs, scheduler) is None, scheduler
    assert len(tool("ipvsadm", "-Ln").splitlines()) == 3  # headers only: no probe left

    config = tmp_path / "kpc.yaml"
    config.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
        "ipvs: {scheduler: nosuch}\n"
    )
    cluster = web_cluster(tmp_path / "web.yaml", ["10.244.1.1"])
    result = cli("once", "-f", cluster, "--config", str(config), check=False)
    assert result.returncode == 1
    assert "no module ip_vs_nosuch" in result.stderr
    assert "Traceback" not in result.stderr
    # Refused before anything was touched.
    assert subprocess.run(["ip", "link", "show", "kube-ipvs0"], capture_output=True).returncode


def test_udp_client_keeping_its_socket_moves_to_a_live_endpoint(tmp_path: Path) -> None:
    from ipvsproxy.core.model import IPFamily
    from ipvsproxy.core.stale_udp import ConntrackEntry
    from ipvsproxy.dataplane.stale_udp_conntrack import ConntrackSocket

    def to_old() -> list[ConntrackEntry]:
        with ConntrackSocket() as conntrack:
            entries = conntrack.entries(IPFamily.V4)
        return [e for e in entries if str(e.reply_source) == "10.244.1.1"]

    with PodNetwork() as network:
        client = network.add_pod("client", "10.244.0.2")
        network.add_pod("old", "10.244.1.1")
        network.add_pod("new", "10.244.2.1")
        network.serve(8080)
        cli("once", "-f", web_cluster(tmp_path / "a.yaml", ["10.244.1.1"], protocol="UDP"))
        # A flow answered once lives 30 s in conntrack: longer, so that a slow second
        # `once` on a loaded host still finds it to delete.
        Path("/proc/sys/net/netfilter/nf_conntrack_udp_timeout").write_text("600\n")
        with switch_netns(client.netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.settimeout(3)
            sock.connect((VIP, 80))
            sock.send(b"?")
            assert sock.recv(64) == b"old"
            assert to_old()  # the flow's conntrack entry, replying from the old endpoint

            cli("once", "-f", web_cluster(tmp_path / "b.yaml", ["10.244.2.1"], protocol="UDP"))
            assert not to_old()  # deleted as stale
            replies = []
            for _ in range(3):  # expire_nodest_conn may drop the first datagram
                sock.send(b"?")
                try:
                    replies.append(sock.recv(64))
                except TimeoutError:
                    continue
            assert replies and set(replies) == {b"new"}


def selection_cluster(path: Path, endpoints: str, *, spec: str = "") -> str:
    """Service web (VIP:80 -> 8080) whose slice lists ``endpoints`` (YAML lines), and this
    node, node-a, in zone-a."""
    path.write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- apiVersion: v1\n  kind: Node\n  metadata:\n    name: node-a\n"
        "    labels: {topology.kubernetes.io/zone: zone-a}\n"
        "- apiVersion: v1\n  kind: Service\n  metadata: {name: web, namespace: shop}\n"
        f"  spec:\n    clusterIP: {VIP}\n{spec}"
        "    ports: [{name: p, port: 80, protocol: TCP, targetPort: 8080}]\n"
        "- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n"
        "  metadata:\n    name: web-1\n    namespace: shop\n"
        "    labels: {kubernetes.io/service-name: web}\n"
        "  addressType: IPv4\n  ports: [{name: p, port: 8080, protocol: TCP}]\n"
        "  endpoints:\n" + endpoints
    )
    return str(path)


def test_endpoint_selection_decides_where_packets_go(
    tmp_path: Path, pod_network: PodNetwork
) -> None:
    """internalTrafficPolicy Local, zone hints and the terminating fallback, each seen in
    where 30 real requests to the ClusterIP land."""
    for name, ip in (("e1", "10.244.1.1"), ("e2", "10.244.2.1"), ("e3", "10.244.3.1")):
        pod_network.add_pod(name, ip)
    pod_network.serve(8080)

    def landed(cluster: str) -> set[str]:
        cli("once", "-f", cluster, "--hostname-override", "node-a")
        return set(pod_network.tcp_requests(VIP, 80, 30))

    def endpoint(ip: str, node: str, *, zone: str = "", conditions: str = "{ready: true}") -> str:
        hints = f", hints: {{forZones: [{{name: {zone}}}]}}" if zone else ""
        return f"  - {{addresses: [{ip}], nodeName: {node}, conditions: {conditions}{hints}}}\n"

    spread = endpoint("10.244.1.1", "node-a") + endpoint("10.244.2.1", "node-b")
    assert landed(selection_cluster(tmp_path / "cluster.yaml", spread)) == {"e1", "e2"}
    local = selection_cluster(
        tmp_path / "local.yaml", spread, spec="    internalTrafficPolicy: Local\n"
    )
    assert landed(local) == {"e1"}  # only this node's endpoint

    zoned = (
        endpoint("10.244.1.1", "node-b", zone="zone-a")
        + endpoint("10.244.2.1", "node-c", zone="zone-b")
        + endpoint("10.244.3.1", "node-c", zone="zone-a")
    )
    assert landed(selection_cluster(tmp_path / "zones.yaml", zoned)) == {"e1", "e3"}

    draining = "{ready: false, serving: true, terminating: true}"
    gone = "{ready: false, serving: false, terminating: true}"
    terminating = endpoint("10.244.1.1", "node-b", conditions=draining) + endpoint(
        "10.244.2.1", "node-b", conditions=gone
    )
    # No ready endpoint: the serving, terminating one is used rather than none.
    assert landed(selection_cluster(tmp_path / "terminating.yaml", terminating)) == {"e1"}
    with_ready = terminating + endpoint("10.244.3.1", "node-b")
    assert landed(selection_cluster(tmp_path / "ready.yaml", with_ready)) == {"e3"}
