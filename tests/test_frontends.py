"""Frontends from Services to desired state: NodePorts, external and load-balancer IPs,
source ranges, externalTrafficPolicy Local, affinity, dual-stack.

Expectations follow kube-proxy's IPVS proxier (pkg/proxy/ipvs/proxier.go syncProxyRules and
writeIptablesRules; the proxier_test.go case each one mirrors is named in its docstring).
"""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from builders import endpoint_slice, service

from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
from ipvsproxy.core.frontends import NodePortSettings, node_port_addresses
from ipvsproxy.core.model import (
    IPVS_FLAG_PERSISTENT,
    IPAddress,
    IPFamily,
    KernelState,
    Service,
    ServicePort,
)

ip = ipaddress.ip_address
net = ipaddress.ip_network

# The host: two interfaces' addresses, plus loopback and link-local that never serve.
HOST = frozenset(
    map(ip, ["192.168.1.10", "10.0.0.5", "127.0.0.1", "2001:db8::10", "fe80::1", "::1"])
)


def frontend(
    base: Service,
    *,
    node_ports: tuple[int, ...] = (),
    type: str = "NodePort",
    **changes: object,
) -> Service:
    ports = tuple(
        dataclasses.replace(port, node_port=node_port)
        for port, node_port in zip(base.ports, node_ports or (0,) * len(base.ports), strict=True)
    )
    return dataclasses.replace(base, type=type, ports=ports, **changes)  # type: ignore[arg-type]


def run(
    services: list[Service],
    slices: list[object] = [],  # noqa: B006 (never mutated)
    *,
    local: frozenset[IPAddress] = HOST,
    node_ips: tuple[str, ...] = ("192.168.1.10",),
    node_ports: NodePortSettings | None = None,
) -> KernelState:
    return desired_state(
        services,
        slices,  # type: ignore[arg-type]
        node=NodeInfo(name="node-a", addresses=tuple(map(ip, node_ips)), local_addresses=local),
        settings=DesiredSettings(node_ports=node_ports or NodePortSettings()),
    )


def servers(state: KernelState) -> dict[str, set[str]]:
    return {
        f"{key.protocol.value} {key.address}:{key.port}": {
            f"{rs.address}:{rs.port}" for rs in reals.values()
        }
        for key, reals in state.real_servers.items()
    }


def nonempty(state: KernelState) -> dict[str, set[str]]:
    return {name: set(entries) for name, entries in state.ipsets.items() if entries}


WEB = service("web", "10.96.0.10")
TWO_NODES = [endpoint_slice("web", ("10.244.1.1", True, "node-a"), ("10.244.2.1", True, "node-b"))]
ALL = {"10.244.1.1:8080", "10.244.2.1:8080"}


def test_node_port_on_every_node_address() -> None:
    """TestNodePortIPv4 "1 service with node port, has 2 endpoints"."""
    state = run([frontend(WEB, node_ports=(30080,))], TWO_NODES)
    assert servers(state) == {
        "TCP 10.96.0.10:80": ALL,
        "TCP 10.0.0.5:30080": ALL,
        "TCP 192.168.1.10:30080": ALL,
    }
    # Node addresses are never bound to kube-ipvs0 (syncService(..., bindAddr=false)).
    assert state.addresses == {ip("10.96.0.10")}
    assert nonempty(state) == {
        "KUBE-CLUSTER-IP": {"10.96.0.10,tcp:80"},
        "KUBE-NODE-PORT-TCP": {"30080"},
        "KUBE-IPVS-IPS": {"10.96.0.10"},
        "KUBE-LOOP-BACK": {"10.244.1.1,tcp:8080,10.244.1.1"},
    }
    nat = state.iptables[IPFamily.V4].tables["nat"]
    assert nat["KUBE-NODE-PORT"] == (
        "-p tcp -m comment --comment "
        '"Kubernetes nodeport TCP port for masquerade purpose" '
        "-m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ",
    )


def test_ipv4_service_has_no_ipv6_node_ports() -> None:
    """A Service's families are its cluster IPs' (the per-family proxiers of kube-proxy)."""
    state = run([frontend(WEB, node_ports=(30080,))])
    assert {key.address.version for key in state.virtual_servers} == {4}
    assert state.ipsets["KUBE-6-NODE-PORT-TCP"] == frozenset()


def test_node_port_udp_and_sctp_sets() -> None:
    """TestNodePortIPv4 "1 UDP service" and "1 SCTP service": SCTP is hash:ip,port with one
    entry per node address, TCP and UDP a port bitmap."""
    svc = service("multi", "10.96.0.11", ports=(("u", "UDP", 53), ("s", "SCTP", 5000)))
    state = run([frontend(svc, node_ports=(30053, 30500))])
    assert set(servers(state)) == {
        "UDP 10.96.0.11:53",
        "SCTP 10.96.0.11:5000",
        "UDP 10.0.0.5:30053",
        "UDP 192.168.1.10:30053",
        "SCTP 10.0.0.5:30500",
        "SCTP 192.168.1.10:30500",
    }
    assert state.ipsets["KUBE-NODE-PORT-UDP"] == {"30053"}
    assert state.ipsets["KUBE-NODE-PORT-SCTP-HASH"] == {
        "10.0.0.5,sctp:30500",
        "192.168.1.10,sctp:30500",
    }
    assert state.ipsets["KUBE-NODE-PORT-TCP"] == frozenset()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param(NodePortSettings(), {"10.0.0.5", "192.168.1.10"}, id="default-all"),
        pytest.param(
            NodePortSettings(networks=(net("0.0.0.0/0"),)),
            {"10.0.0.5", "192.168.1.10"},
            id="zero-cidr-is-all",
        ),
        pytest.param(
            NodePortSettings(networks=(net("10.0.0.0/8"),)), {"10.0.0.5"}, id="cidr-narrows"
        ),
        pytest.param(NodePortSettings(networks=(net("127.0.0.0/8"),)), set(), id="never-loopback"),
        pytest.param(NodePortSettings(primary=True), {"192.168.1.10"}, id="primary"),
        pytest.param(
            NodePortSettings(networks=(net("10.0.0.0/8"),), primary=True),
            {"10.0.0.5", "192.168.1.10"},
            id="primary-and-cidr",
        ),
    ],
)
def test_node_port_addresses(settings: NodePortSettings, expected: set[str]) -> None:
    """TestGetNodeIPs and TestNodePortIPv4 "nodePortAddresses"; "primary" as in
    pkg/proxy/util/nodeport_addresses.go."""
    found = node_port_addresses(
        HOST, family=IPFamily.V4, settings=settings, primary_ips=(ip("192.168.1.10"),)
    )
    assert {str(a) for a in found} == expected


def test_no_node_address_no_node_port() -> None:
    """kube-proxy skips NodePorts entirely when no node address matches."""
    state = run([frontend(WEB, node_ports=(30080,))], local=frozenset())
    assert set(servers(state)) == {"TCP 10.96.0.10:80"}
    assert state.ipsets["KUBE-NODE-PORT-TCP"] == frozenset()


def test_node_ports_follow_the_host_addresses() -> None:
    svc = frontend(WEB, node_ports=(30080,))
    before = run([svc], local=frozenset({ip("192.168.1.10")}))
    after = run([svc], local=frozenset({ip("192.168.1.10"), ip("192.168.2.20")}))
    assert set(servers(after)) - set(servers(before)) == {"TCP 192.168.2.20:30080"}


def test_external_traffic_policy_local_node_port() -> None:
    """TestOnlyLocalNodePorts: the NodePort gets local endpoints, the cluster IP all; the
    -LOCAL set makes the KUBE-NODE-PORT chain RETURN before masquerading."""
    svc = frontend(WEB, node_ports=(30080,), external_traffic_local=True)
    state = run([svc], TWO_NODES)
    assert servers(state) == {
        "TCP 10.96.0.10:80": ALL,
        "TCP 10.0.0.5:30080": {"10.244.1.1:8080"},
        "TCP 192.168.1.10:30080": {"10.244.1.1:8080"},
    }
    assert state.ipsets["KUBE-NODE-PORT-LOCAL-TCP"] == {"30080"}
    assert state.ipsets["KUBE-NODE-PORT-TCP"] == {"30080"}
    rules = state.iptables[IPFamily.V4].tables["nat"]["KUBE-NODE-PORT"]
    assert [rule.split()[-1] for rule in rules] == ["RETURN", "KUBE-MARK-MASQ"]


def test_external_traffic_policy_local_without_local_endpoints() -> None:
    """syncEndpoint's fallback (PR #97081, kept by endpoints.external_servers): with no local
    endpoint, external frontends take the cluster's so pods of this node still reach them."""
    svc = frontend(WEB, node_ports=(30080,), external_traffic_local=True)
    slices = [endpoint_slice("web", ("10.244.2.1", True, "node-b"))]
    state = run([svc], slices)
    assert servers(state)["TCP 192.168.1.10:30080"] == {"10.244.2.1:8080"}
    assert servers(state)["TCP 10.96.0.10:80"] == {"10.244.2.1:8080"}


def test_external_ips() -> None:
    """TestExternalIPs and TestOnlyLocalExternalIPs, except that external IPs are steered
    by port, not bound (core/steering.py); one that is already a node address is served
    but neither bound nor steered (kube-proxy's shouldBind, kubernetes#114815)."""
    cluster = frontend(WEB, type="ClusterIP", external_ips=(ip("203.0.113.1"), ip("192.168.1.10")))
    state = run([cluster], TWO_NODES)
    assert servers(state) == {
        "TCP 10.96.0.10:80": ALL,
        "TCP 203.0.113.1:80": ALL,
        "TCP 192.168.1.10:80": ALL,
    }
    assert state.addresses == {ip("10.96.0.10")}
    assert state.ipsets["KUBE-IPVS-IPS"] == {"10.96.0.10"}
    assert state.ipsets["KUBE-IPVS-STEERED"] == {"203.0.113.1,tcp:80"}
    assert state.steering == {(IPFamily.V4, 0x2000)}
    assert state.ipsets["KUBE-EXTERNAL-IP"] == {"203.0.113.1,tcp:80", "192.168.1.10,tcp:80"}

    local = dataclasses.replace(cluster, external_traffic_local=True)
    state = run([local], TWO_NODES)
    assert servers(state)["TCP 203.0.113.1:80"] == {"10.244.1.1:8080"}
    assert state.ipsets["KUBE-EXTERNAL-IP"] == frozenset()
    assert state.ipsets["KUBE-EXTERNAL-IP-LOCAL"] == {"203.0.113.1,tcp:80", "192.168.1.10,tcp:80"}
    nat = state.iptables[IPFamily.V4].tables["nat"]["KUBE-SERVICES"]
    # -LOCAL: the two ACCEPT rules, no KUBE-MARK-MASQ (the backend sees the client).
    assert [r for r in nat if "KUBE-EXTERNAL-IP-LOCAL" in r and "MARK-MASQ" in r] == []
    assert len([r for r in nat if "KUBE-EXTERNAL-IP-LOCAL" in r]) == 2


def test_load_balancer() -> None:
    """TestLoadBalancer and TestOnlyLocalLoadBalancing: ingress IPs in KUBE-LOAD-BALANCER,
    and in -LOCAL with policy Local; steered by port, not bound (core/steering.py)."""
    svc = frontend(
        WEB,
        type="LoadBalancer",
        node_ports=(30080,),
        load_balancer_ips=(ip("203.0.113.50"),),
        external_traffic_local=True,
        health_check_node_port=31862,
    )
    state = run([svc], TWO_NODES)
    assert servers(state)["TCP 203.0.113.50:80"] == {"10.244.1.1:8080"}
    assert ip("203.0.113.50") not in state.addresses
    sets = nonempty(state)
    assert sets["KUBE-IPVS-STEERED"] == {"203.0.113.50,tcp:80"}
    assert sets["KUBE-LOAD-BALANCER"] == {"203.0.113.50,tcp:80"}
    assert sets["KUBE-LOAD-BALANCER-LOCAL"] == {"203.0.113.50,tcp:80"}
    assert sets["KUBE-HEALTH-CHECK-NODE-PORT"] == {"31862"}
    assert "KUBE-LOAD-BALANCER-FW" not in sets
    nat = state.iptables[IPFamily.V4].tables["nat"]
    assert nat["KUBE-LOAD-BALANCER"][0].endswith("KUBE-LOAD-BALANCER-LOCAL dst,dst -j RETURN")
    assert nat["KUBE-LOAD-BALANCER"][-1] == "-j KUBE-MARK-MASQ"


def test_load_balancer_source_ranges_admitting_the_node() -> None:
    """TestLoadBalancerSourceRanges: FW entry, one SOURCE-CIDR entry per range, and a
    SOURCE-IP entry (VIP, VIP) because a range holds the node's IP."""
    svc = frontend(
        WEB,
        type="LoadBalancer",
        load_balancer_ips=(ip("203.0.113.50"),),
        load_balancer_source_ranges=(net("198.51.100.0/24"), net("192.168.1.0/24")),
    )
    state = run([svc])
    sets = nonempty(state)
    assert sets["KUBE-LOAD-BALANCER-FW"] == {"203.0.113.50,tcp:80"}
    assert sets["KUBE-LOAD-BALANCER-SOURCE-CIDR"] == {
        "203.0.113.50,tcp:80,198.51.100.0/24",
        "203.0.113.50,tcp:80,192.168.1.0/24",
    }
    assert sets["KUBE-LOAD-BALANCER-SOURCE-IP"] == {"203.0.113.50,tcp:80,203.0.113.50"}
    filt = state.iptables[IPFamily.V4].tables["filter"]
    assert filt["KUBE-IPVS-OUT-FILTER"] == ()
    assert len(filt["KUBE-PROXY-FIREWALL"]) == 1
    assert filt["KUBE-SOURCE-RANGES-FIREWALL"][-1] == "-j DROP"
    assert len(filt["KUBE-SOURCE-RANGES-FIREWALL"]) == 3


def test_load_balancer_source_ranges_refusing_the_node() -> None:
    """TestLoadBalancerSourceRanges, PR #119791: with no range holding the node's IP, the
    node's own traffic to the VIP is dropped in KUBE-IPVS-OUT-FILTER."""
    svc = frontend(
        WEB,
        type="LoadBalancer",
        load_balancer_ips=(ip("203.0.113.50"),),
        load_balancer_source_ranges=(net("198.51.100.0/24"), net("10.0.0.9/32")),
    )
    state = run([svc])
    sets = nonempty(state)
    assert "KUBE-LOAD-BALANCER-SOURCE-IP" not in sets
    # ipset prints a full-length network as a bare address.
    assert "203.0.113.50,tcp:80,10.0.0.9" in sets["KUBE-LOAD-BALANCER-SOURCE-CIDR"]
    filt = state.iptables[IPFamily.V4].tables["filter"]
    # The node's packets are told by their local source: a steered VIP is not local.
    assert filt["KUBE-IPVS-OUT-FILTER"] == (
        "-m addrtype --src-type LOCAL -m ipvs --vproto 6 --vaddr 203.0.113.50 --vport 80 -j DROP",
    )


def test_zero_source_range_allows_everyone() -> None:
    """newBaseServiceInfo: a zero-length range is the same as no range at all."""
    svc = frontend(
        WEB,
        type="LoadBalancer",
        load_balancer_ips=(ip("203.0.113.50"),),
        load_balancer_source_ranges=(net("0.0.0.0/0"), net("198.51.100.0/24")),
    )
    sets = nonempty(run([svc]))
    assert "KUBE-LOAD-BALANCER-FW" not in sets
    assert "KUBE-LOAD-BALANCER-SOURCE-CIDR" not in sets


def test_affinity_on_every_frontend() -> None:
    """TestSessionAffinity: persistence with the Service's timeout on every virtual server."""
    svc = frontend(
        dataclasses.replace(WEB, affinity_timeout=600),
        type="LoadBalancer",
        node_ports=(30080,),
        external_ips=(ip("203.0.113.1"),),
        load_balancer_ips=(ip("203.0.113.50"),),
    )
    state = run([svc])
    assert len(state.virtual_servers) == 5
    for server in state.virtual_servers.values():
        assert (server.flags, server.timeout) == (IPVS_FLAG_PERSISTENT, 600), server


def test_dual_stack_frontends_each_family_its_own_sets() -> None:
    """Dual-stack: the IPv6 proxier's sets are KUBE-6-*; addresses never cross families."""
    base = service("dual", "10.96.0.20", "fd00::20")
    svc = frontend(
        base,
        type="LoadBalancer",
        node_ports=(30080,),
        external_ips=(ip("203.0.113.1"), ip("2001:db8:1::1")),
        load_balancer_ips=(ip("2001:db8::50"),),
        load_balancer_source_ranges=(net("2001:db8:9::/48"),),
        external_traffic_local=True,
    )
    state = run([svc], node_ips=("192.168.1.10", "2001:db8::10"))
    assert set(servers(state)) == {
        "TCP 10.96.0.20:80",
        "TCP fd00::20:80",
        "TCP 203.0.113.1:80",
        "TCP 2001:db8:1::1:80",
        "TCP 2001:db8::50:80",
        "TCP 10.0.0.5:30080",
        "TCP 192.168.1.10:30080",
        "TCP 2001:db8::10:30080",
    }
    sets = nonempty(state)
    assert sets["KUBE-6-NODE-PORT-LOCAL-TCP"] == {"30080"}
    assert sets["KUBE-NODE-PORT-LOCAL-TCP"] == {"30080"}
    assert sets["KUBE-6-EXTERNAL-IP-LOCAL"] == {"2001:db8:1::1,tcp:80"}
    assert sets["KUBE-EXTERNAL-IP-LOCAL"] == {"203.0.113.1,tcp:80"}
    assert sets["KUBE-6-LOAD-BALANCER-LOCAL"] == {"2001:db8::50,tcp:80"}
    assert sets["KUBE-6-LOAD-BALANCER-SOURCE-CID"] == {"2001:db8::50,tcp:80,2001:db8:9::/48"}
    assert "KUBE-LOAD-BALANCER" not in sets  # no IPv4 ingress
    assert sets["KUBE-6-IPVS-IPS"] == {"fd00::20"}
    assert sets["KUBE-6-IPVS-STEERED"] == {"2001:db8:1::1,tcp:80", "2001:db8::50,tcp:80"}
    assert sets["KUBE-IPVS-STEERED"] == {"203.0.113.1,tcp:80"}
    assert state.steering == {(IPFamily.V4, 0x2000), (IPFamily.V6, 0x2000)}
    out6 = state.iptables[IPFamily.V6].tables["filter"]["KUBE-IPVS-OUT-FILTER"]
    assert out6 == (
        "-m addrtype --src-type LOCAL -m ipvs --vproto 6 --vaddr 2001:db8::50 --vport 80 -j DROP",
    )
    assert state.iptables[IPFamily.V4].tables["filter"]["KUBE-IPVS-OUT-FILTER"] == ()


def test_shared_external_ip_is_one_address() -> None:
    """Two Services on one external IP (different ports): one steered entry each."""
    a = frontend(WEB, type="ClusterIP", external_ips=(ip("203.0.113.1"),))
    b = frontend(
        service("api", "10.96.0.11", ports=(("h", "TCP", 443),)),
        type="ClusterIP",
        external_ips=(ip("203.0.113.1"),),
    )
    state = run([a, b])
    assert state.addresses == {ip("10.96.0.10"), ip("10.96.0.11")}
    assert state.ipsets["KUBE-EXTERNAL-IP"] == {"203.0.113.1,tcp:80", "203.0.113.1,tcp:443"}
    assert state.ipsets["KUBE-IPVS-STEERED"] == {"203.0.113.1,tcp:80", "203.0.113.1,tcp:443"}


def test_node_port_only_for_ports_that_have_one() -> None:
    """allocateLoadBalancerNodePorts false: ports without a nodePort get no NodePort."""
    svc = service("mixed", "10.96.0.12", ports=(("a", "TCP", 80), ("b", "TCP", 81)))
    svc = dataclasses.replace(
        svc,
        type="LoadBalancer",
        ports=(svc.ports[0], ServicePort("b", svc.ports[1].protocol, 81, node_port=30081)),
    )
    state = run([svc])
    assert {k.port for k in state.virtual_servers} == {80, 81, 30081}


def test_fake_kernel_node_addresses_like_the_real_adapter() -> None:
    """The fake answers node_addresses as LinkTool does (tests/kernel/test_links_kernel.py)."""
    from ipvsproxy.dataplane.fake import FakeKernel

    kernel = FakeKernel()
    kernel.links = {
        "lo": {ip("127.0.0.1"), ip("::1")},
        "eth0": {ip("192.168.7.7"), ip("2001:db8:7::7"), ip("fe80::7")},
        "kube-ipvs0": {ip("10.96.0.1")},
    }
    assert kernel.node_addresses("kube-ipvs0") == {ip("192.168.7.7"), ip("2001:db8:7::7")}
