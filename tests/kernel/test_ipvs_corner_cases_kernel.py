"""The IPVS-mode problems users of kube-proxy hit, each with real packets in the sandbox
kernel: source-port reuse (conn_reuse_mode), strictARP, session affinity against endpoint
removal and expiry, a CNI hostPort rule ahead of the Service jump, stale UDP conntrack
entries of external and load-balancer IPs, an IPv6 NodePort from outside, and a
per-Service scheduler.

Each test builds pods (and hosts outside the cluster) around its own network namespace,
the node, and programs it with `ipvsproxy once`, which also writes the sysctls.
"""

from __future__ import annotations

import errno
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from agentproc import cli, cluster_file, tool, wait_for
from ipvsproxy_testkit.sandbox.netns import switch_netns
from ipvsproxy_testkit.sandbox.pods import Pod, PodNetwork

pytestmark = pytest.mark.kernel

NODE = "node-a"


def once(tmp_path: Path, items: str, *extra: str, name: str = "cluster.yaml") -> str:
    """Program the node with these objects (YAML list items); the command's log."""
    text = "apiVersion: v1\nkind: List\nitems:\n" + items
    path = cluster_file(tmp_path, text, name)
    return cli("once", "-f", path, "--hostname-override", NODE, *extra).stderr


def service(
    name: str, cluster_ip: str, *, port: int = 80, protocol: str = "TCP", extra: str = ""
) -> str:
    return f"""\
- apiVersion: v1
  kind: Service
  metadata: {{name: {name}, namespace: shop}}
  spec:
    clusterIP: {cluster_ip}
{extra}    ports: [{{name: p, port: {port}, protocol: {protocol}, targetPort: 8080}}]
"""


def endpoints(
    name: str, *addresses: str, protocol: str = "TCP", family: str = "IPv4", port_name: str = "p"
) -> str:
    listed = "".join(f"  - {{addresses: ['{a}'], nodeName: {NODE}}}\n" for a in addresses)
    return f"""\
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: {name}-1
    namespace: shop
    labels: {{kubernetes.io/service-name: {name}}}
  addressType: {family}
  ports: [{{name: {port_name}, port: 8080, protocol: {protocol}}}]
  endpoints:
{listed}"""


def sysctl(name: str) -> str:
    return Path(f"/proc/sys/{name}").read_text().strip()


def weights_of(vip: str) -> dict[str, int]:
    """Real server -> weight of the TCP virtual server vip:80."""
    return {
        line.split()[1]: int(line.split()[3])
        for line in tool("ipvsadm", "-Ln", "-t", f"{vip}:80").splitlines()
        if line.startswith("  -> ") and line.split()[1][0].isdigit()
    }


def set_sysctl(name: str, value: str) -> None:
    Path(f"/proc/sys/{name}").write_text(value + "\n")


def request(
    pod: Pod, address: str, port: int, *, source_port: int = 0, reset: bool = False
) -> tuple[str, float]:
    """One TCP request from the pod: (the reply, seconds the connect took). source_port
    pins the client's port (SO_REUSEADDR, as a client reusing ports does); reset closes
    with RST, so that IPVS keeps the connection 10 s (CLOSE) rather than 120 s
    (TIME_WAIT)."""
    with switch_netns(pod.netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.settimeout(5)
        if source_port:
            sock.bind((pod.ip, source_port))
        started = time.monotonic()
        for _ in range(50):
            try:
                sock.connect((address, port))
                break
            except OSError as exc:
                # The previous connection on this port is still in LAST_ACK for a moment.
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
                time.sleep(0.02)
                started = time.monotonic()
        took = time.monotonic() - started
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return b"".join(chunks).decode(), took


# --- 2. conn_reuse_mode -------------------------------------------------------------------


def test_reused_source_port_connects_at_once_is_balanced_and_leaves_a_removed_endpoint(
    tmp_path: Path, pod_network: PodNetwork
) -> None:
    """kubernetes#70747 (1 s connect stall on port reuse), #81775 and #93297: the client
    reconnects from one source port throughout."""
    client = pod_network.add_pod("client", "10.244.0.2")
    gone = pod_network.add_pod("a", "10.244.1.1")
    pod_network.add_pod("b", "10.244.2.1")
    pod_network.serve(8080)
    vip = "10.96.0.10"
    both = service("web", vip) + endpoints("web", "10.244.1.1", "10.244.2.1")
    once(tmp_path, both)
    # A conn_reuse_mode of 0 left behind by an earlier proxy (kube-proxy before 1.22
    # wrote it on every kernel) is set back to the 5.9+ kernel's 1 by the next sync.
    set_sysctl("net/ipv4/vs/conn_reuse_mode", "0")
    once(tmp_path, both)
    assert sysctl("net/ipv4/vs/conn_reuse_mode") == "1"
    assert sysctl("net/ipv4/vs/expire_nodest_conn") == "1"

    port = 40123
    first = [request(client, vip, 80, source_port=port) for _ in range(20)]
    assert max(took for _, took in first) < 1.0, first  # no SYN dropped and resent
    # Each reconnect is scheduled afresh; with 0 the kernel would send every one to the
    # server of the port's previous connection (the same pod 20 times).
    assert {reply for reply, _ in first} == {"a", "b"}, first

    # Pod a goes; its real server stays at weight 0 while IPVS counts its connections in
    # TIME_WAIT, and the pod is gone (its link down).
    once(tmp_path, service("web", vip) + endpoints("web", "10.244.2.1"))
    assert weights_of(vip) == {"10.244.1.1:8080": 0, "10.244.2.1:8080": 1}
    tool("ip", "link", "set", gone.node_link, "down")
    moved = [request(client, vip, 80, source_port=port) for _ in range(10)]
    assert {reply for reply, _ in moved} == {"b"}
    assert max(took for _, took in moved) < 1.0, moved


# --- 4. strictARP -------------------------------------------------------------------------


def arp_replies(netns: str, address: str) -> int:
    """Replies to one ARP request for address (waited for 1 s), sent by busybox arping
    from netns's eth0."""
    result = subprocess.run(
        ["ip", "netns", "exec", netns, "busybox", "arping", "-I", "eth0", "-c", "1", "-w", "1",
         address],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    for line in result.stdout.splitlines():
        if line.startswith("Received "):
            return int(line.split()[1])
    raise AssertionError(f"arping said: {result.stdout}{result.stderr}")


def test_strict_arp_keeps_service_addresses_off_the_node_link(
    tmp_path: Path, pod_network: PodNetwork
) -> None:
    """metallb#153: an address on kube-ipvs0 is answered by every node unless strictARP,
    while the node's own address is always answered. Load-balancer IPs are steered to IPVS
    by port, not bound (core/steering.py), so no node answers for them either way: the
    load balancer (MetalLB's speaker) does."""
    lan = pod_network.add_external_host("lan", "192.168.50.0/24")
    items = service(
        "web",
        "10.96.0.10",
        extra="    type: LoadBalancer\n",
    ) + (
        "  status: {loadBalancer: {ingress: [{ip: 192.168.50.100}]}}\n"
        + endpoints("web", "10.244.1.1")
    )
    once(tmp_path, items)
    (node_ip,) = lan.node_ips
    bound = tool("ip", "-brief", "address", "show", "kube-ipvs0")
    assert "10.96.0.10" in bound and "192.168.50.100" not in bound
    assert arp_replies(lan.netns, "10.96.0.10") > 0  # every node would claim it
    assert arp_replies(lan.netns, "192.168.50.100") == 0
    assert arp_replies(lan.netns, node_ip) > 0

    config = tmp_path / "strict.yaml"
    config.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
        "ipvs: {strictARP: true}\n"
    )
    once(tmp_path, items, "--config", str(config))
    assert (sysctl("net/ipv4/conf/all/arp_ignore"), sysctl("net/ipv4/conf/all/arp_announce")) == (
        "1",
        "2",
    )
    assert arp_replies(lan.netns, "10.96.0.10") == 0
    assert arp_replies(lan.netns, "192.168.50.100") == 0
    assert arp_replies(lan.netns, node_ip) > 0


# --- 5. session affinity ------------------------------------------------------------------


def test_affinity_leaves_a_removed_endpoint_at_once_and_expires(
    tmp_path: Path, pod_network: PodNetwork
) -> None:
    """kubernetes#71809/#71358 (a persistence template kept on a removed server) and
    #89358 (the template outlives its timeout while connections it controls live)."""
    client = pod_network.add_pod("client", "10.244.0.2")
    pod_network.add_pod("a", "10.244.1.1")
    pod_network.add_pod("b", "10.244.2.1")
    pod_network.serve(8080)
    sticky, brief = "10.96.0.10", "10.96.0.11"

    def cluster(*sticky_endpoints: str) -> str:
        affinity = (
            "    sessionAffinity: ClientIP\n"
            "    sessionAffinityConfig: {clientIP: {timeoutSeconds: %d}}\n"
        )
        return (
            service("sticky", sticky, extra=affinity % 600)
            + endpoints("sticky", *sticky_endpoints)
            # Longer than IPVS's 10 s for a connection closed by a reset: see below.
            + service("brief", brief, extra=affinity % 12)
            + endpoints("brief", "10.244.1.1", "10.244.2.1")
        )

    once(tmp_path, cluster("10.244.1.1", "10.244.2.1"))
    assert sysctl("net/ipv4/vs/expire_quiescent_template") == "1"
    stuck = {request(client, sticky, 80)[0] for _ in range(4)}
    assert len(stuck) == 1, stuck
    (pod,) = stuck
    other = {"a": "b", "b": "a"}[pod]
    other_ip = {"a": "10.244.1.1", "b": "10.244.2.1"}[other]

    # The client's pod is removed. Its real server stays at weight 0 (connections in
    # TIME_WAIT); the template pointing at it must not.
    once(tmp_path, cluster(other_ip), name="moved.yaml")
    removed = {"a": "10.244.1.1", "b": "10.244.2.1"}[pod]
    assert weights_of(sticky) == {f"{removed}:8080": 0, f"{other_ip}:8080": 1}
    set_sysctl("net/ipv4/vs/expire_quiescent_template", "0")  # kube-proxy before 1.13
    assert request(client, sticky, 80)[0] == pod  # the control: still stuck to it
    set_sysctl("net/ipv4/vs/expire_quiescent_template", "1")
    assert [request(client, sticky, 80)[0] for _ in range(3)] == [other] * 3

    # Expiry: the template is kept while a connection it controls lives in IPVS's table
    # (TIME_WAIT: 120 s), so these close with a reset (CLOSE: 10 s).
    held = {request(client, brief, 80, reset=True)[0] for _ in range(3)}
    assert len(held) == 1, held
    started = time.monotonic()
    wait_for(
        "the template to expire",
        lambda: brief not in tool("ipvsadm", "-Lnc"),
        timeout=40,
        interval=0.5,
    )
    assert time.monotonic() - started > 8  # it lasted about its 12 s
    # rr picks the other pod next: the client is balanced afresh.
    assert request(client, brief, 80)[0] not in held


# --- 6. a CNI hostPort rule ahead of the Service jump -------------------------------------


def cni_hostport(*, first: bool) -> None:
    """What CNI portmap before v0.7.5 did for a pod with hostPort 443: its entry rule
    prepended to nat PREROUTING and OUTPUT, matching every local address."""
    if first:
        tool("iptables-legacy", "-t", "nat", "-N", "CNI-HOSTPORT-DNAT")
        tool("iptables-legacy", "-t", "nat", "-A", "CNI-HOSTPORT-DNAT", "-p", "tcp",
             "--dport", "443", "-j", "DNAT", "--to-destination", "10.244.3.1:8080")  # fmt: skip
    for chain in ("PREROUTING", "OUTPUT"):
        rule = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"]
        if not first:
            tool("iptables-legacy", "-t", "nat", "-D", chain, *rule)
        tool("iptables-legacy", "-t", "nat", "-I", chain, "1", *rule)


def nat_chain(chain: str) -> list[str]:
    return tool("iptables-legacy", "-t", "nat", "-S", chain).splitlines()[1:]


def test_cni_hostport_rule_does_not_steal_a_service_port(
    tmp_path: Path, pod_network: PodNetwork
) -> None:
    """kubernetes#61938, #66103: a hostPort DNAT rule ahead of KUBE-SERVICES sends a
    ClusterIP on the same port to the hostPort pod."""
    client = pod_network.add_pod("client", "10.244.0.2")
    pod_network.add_pod("web", "10.244.1.1")
    pod_network.add_pod("hostport", "10.244.3.1")
    pod_network.serve(8080)
    vip = "10.96.0.1"
    items = service("kubernetes", vip, port=443) + endpoints("kubernetes", "10.244.1.1")

    cni_hostport(first=True)  # before the proxy's first sync
    once(tmp_path, items)
    assert pod_network.tcp_requests(vip, 443, 3, source=client) == ["web"] * 3
    assert pod_network.tcp_requests(vip, 443, 1) == ["web"]  # from the node (OUTPUT)
    # The hostPort itself still works, on the node's address.
    assert pod_network.tcp_requests("169.254.1.1", 443, 1, source=client) == ["hostport"]

    cni_hostport(first=False)  # the CNI prepends again after the sync
    assert pod_network.tcp_requests(vip, 443, 1, source=client) == ["hostport"]  # stolen
    log = once(tmp_path, items)
    assert "operations=0" not in log
    assert pod_network.tcp_requests(vip, 443, 3, source=client) == ["web"] * 3
    assert pod_network.tcp_requests(vip, 443, 1) == ["web"]
    for chain in ("PREROUTING", "OUTPUT"):
        rules = nat_chain(chain)
        assert "-j KUBE-SERVICES" in rules[0], rules
        assert sum("-j KUBE-SERVICES" in rule for rule in rules) == 1, rules
        assert any("CNI-HOSTPORT-DNAT" in rule for rule in rules)
    # Settled: the next sync finds nothing to do (no tug of war with the CNI's rule).
    assert "operations=0" in once(tmp_path, items)


# --- 7. stale UDP flows of external and load-balancer IPs, IPv6 NodePort from outside ----


def test_udp_clients_of_external_and_load_balancer_ips_move_to_a_live_endpoint(
    tmp_path: Path, pod_network: PodNetwork
) -> None:
    """The proxy deletes the conntrack entries of UDP flows to an external and a
    load-balancer IP whose endpoint went, and their clients, keeping their sockets,
    reach the live one."""
    from ipvsproxy.core.model import IPFamily
    from ipvsproxy.dataplane.stale_udp_conntrack import ConntrackSocket

    def to_old() -> set[str]:
        with ConntrackSocket() as conntrack:
            entries = conntrack.entries(IPFamily.V4)
        return {str(e.destination) for e in entries if str(e.reply_source) == "10.244.1.1"}

    lan = pod_network.add_external_host("lan", "192.168.50.0/24")
    pod_network.add_pod("old", "10.244.1.1")
    pod_network.add_pod("new", "10.244.2.1")
    pod_network.serve(8080)
    external, balancer = "203.0.113.7", "203.0.113.50"

    def cluster(endpoint: str) -> str:
        return service(
            "dns",
            "10.96.0.53",
            port=53,
            protocol="UDP",
            extra=f"    type: LoadBalancer\n    externalIPs: [{external}]\n",
        ).replace("targetPort: 8080}", "targetPort: 8080, nodePort: 30053}") + (
            f"  status: {{loadBalancer: {{ingress: [{{ip: {balancer}}}]}}}}\n"
            + endpoints("dns", endpoint, protocol="UDP")
        )

    once(tmp_path, cluster("10.244.1.1"))
    Path("/proc/sys/net/netfilter/nf_conntrack_udp_timeout").write_text("600\n")
    with switch_netns(lan.netns):
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for sock, address in zip(socks, (external, balancer), strict=True):
            sock.settimeout(2)
            sock.connect((address, 53))
            sock.send(b"?")
            assert sock.recv(64) == b"old"
        assert to_old() == {external, balancer}

        # From 5.9, deleting a real server with expire_nodest_conn=1 makes the kernel
        # expire every connection to a deleted server, conntrack entries included,
        # within about 0.1 s (seen here): it would clean up before the proxy looks.
        # Delete the server everywhere as a sync would with that off, as older kernels
        # behave (entries stay until a packet comes), so that only the proxy can remove
        # them: the sync below then deletes no server.
        set_sysctl("net/ipv4/vs/expire_nodest_conn", "0")
        for line in tool("ipvsadm", "-Sn").splitlines():
            if line.startswith("-a ") and "-r 10.244.1.1:8080" in line:
                tool("ipvsadm", "-d", *line.split()[1:5])
        time.sleep(0.5)
        assert to_old() == {external, balancer}  # the kernel left them

        once(tmp_path, cluster("10.244.2.1"), name="moved.yaml")
        assert not to_old()  # both flows' entries deleted as stale, by the proxy
        for sock in socks:
            replies = []
            for _ in range(3):  # expire_nodest_conn may drop the first datagram
                sock.send(b"?")
                try:
                    replies.append(sock.recv(64))
                except TimeoutError:
                    continue
            assert replies and set(replies) == {b"new"}, replies
    finally:
        for sock in socks:
            sock.close()


def test_ipv6_node_port_from_outside(tmp_path: Path, pod_network: PodNetwork) -> None:
    lan = pod_network.add_external_host("lan6", "fd00:50::/64")
    backends = [pod_network.add_pod(f"web{i}", f"fd00:244:{i}::1") for i in (1, 2)]
    pod_network.serve(8080, backends, echo_client=True)
    items = (
        service("web", "fd00:96::10", extra="    type: NodePort\n    ipFamilies: [IPv6]\n").replace(
            "    ports: [{name: p, port: 80, protocol: TCP, targetPort: 8080}]\n",
            "    ports:\n"
            "    - {name: tcp, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}\n"
            "    - {name: udp, port: 53, protocol: UDP, targetPort: 8080, nodePort: 30053}\n",
        )
        + endpoints("web", "fd00:244:1::1", "fd00:244:2::1", family="IPv6", port_name="tcp")
        + endpoints("web", "fd00:244:1::1", "fd00:244:2::1", family="IPv6", port_name="udp")
        .replace("web-1", "web-2")
        .replace("protocol: TCP", "protocol: UDP")
    )
    once(tmp_path, items)
    (node_ip,) = lan.node_ips
    assert f"TCP  [{node_ip}]:30080 rr" in tool("ipvsadm", "-Ln")
    for replies in (
        pod_network.tcp_requests(node_ip, 30080, 10, source=lan),
        pod_network.udp_requests(node_ip, 30053, 10, source=lan),
    ):
        names = sorted(reply.split()[0] for reply in replies)
        assert names == ["web1"] * 5 + ["web2"] * 5, replies
        # externalTrafficPolicy Cluster: masqueraded, the backend does not see the client.
        assert lan.ip not in {reply.split()[1] for reply in replies}, replies


# --- 8. a per-Service scheduler -----------------------------------------------------------


def test_services_on_one_node_balance_with_their_own_schedulers(
    tmp_path: Path, pod_network: PodNetwork
) -> None:
    """kubernetes#75502, #121591: the scheduler chosen per Service by annotation."""
    client = pod_network.add_pod("client", "10.244.0.2")
    for index in (1, 2, 3):
        pod_network.add_pod(f"web{index}", f"10.244.{index}.1")
    pod_network.serve(8080)
    pods = ("10.244.1.1", "10.244.2.1", "10.244.3.1")

    def annotated(name: str, vip: str, annotations: str) -> str:
        text = service(name, vip).replace(
            "namespace: shop}", f"namespace: shop, annotations: {{{annotations}}}}}"
        )
        return text + endpoints(name, *pods)

    log = once(
        tmp_path,
        annotated("spread", "10.96.0.20", "")
        + annotated("pinned", "10.96.0.21", "ipvsproxy.io/scheduler: sh")
        + annotated(
            "hashed",
            "10.96.0.22",
            "kube-router.io/service.scheduler: mh, kube-router.io/service.schedflags: flag-2",
        )
        + annotated("typo", "10.96.0.23", "ipvsproxy.io/scheduler: fastest"),
    )
    table = tool("ipvsadm", "-Ln")
    for line in ("10.96.0.20:80 rr", "10.96.0.21:80 sh", "10.96.0.22:80 mh (mh-port)",
                 "10.96.0.23:80 rr"):  # fmt: skip
        assert f"TCP  {line}\n" in table, table
    assert "shop/typo" in log and "'fastest'" in log

    spread = pod_network.tcp_requests("10.96.0.20", 80, 12, source=client)
    assert sorted(spread) == ["web1"] * 4 + ["web2"] * 4 + ["web3"] * 4
    # sh: one client address, one pod, whatever its source port.
    assert len(set(pod_network.tcp_requests("10.96.0.21", 80, 12, source=client))) == 1
    # mh with port hashing: the same client spread by source port.
    assert len(set(pod_network.tcp_requests("10.96.0.22", 80, 12, source=client))) > 1
