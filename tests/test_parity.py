"""`ipvsproxy plan` of a mixed cluster compared, as sets, with what kube-proxy's IPVS mode
programs for the same objects.

tests/data/mixed_cluster.yaml holds every Service type and policy. This node is node-1 in
zone-a (its Node object is in the file), with one interface address, 100.101.102.103 (plus
loopback and link-local ones, which never serve), which is also its --node-ip. Each
expectation names the case of kube-proxy's pkg/proxy/ipvs/proxier_test.go (or the code) it
is taken from; where we differ on purpose, the README's parity table says why.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from ipvsproxy.cli import EXIT_OK, main

CLUSTER = Path(__file__).resolve().parent / "data" / "mixed_cluster.yaml"
NODE_IP = "100.101.102.103"
ARGS = [
    "plan",
    "-f",
    str(CLUSTER),
    "--hostname-override",
    "node-1",
    "--node-ip",
    NODE_IP,
    *("--local-address", NODE_IP),
    *("--local-address", "2001:db8::1:1"),
    *("--local-address", "127.0.0.1"),
    *("--local-address", "fe80::1"),
]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def plan(section: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main([*ARGS, "--section", section]) == EXIT_OK
    return capsys.readouterr().out


def virtual_servers(text: str) -> dict[str, set[str]]:
    """`ipvsadm -Ln` text as {"TCP  ip:port rr[ persistent N]": {real server "ip:port"}}."""
    found: dict[str, set[str]] = {}
    current = ""
    for line in text.splitlines()[3:]:
        if line.startswith("  -> "):
            found[current].add(line.split()[1])
        else:
            current = " ".join(line.split())
            found[current] = set()
    return found


def both(n: int, port: int = 8080) -> set[str]:
    """Real servers of Service n: its endpoint on node-1 and its endpoint on node-2."""
    return {f"10.180.0.{n}:{port}", f"10.180.1.{n}:{port}"}


def local(n: int, port: int = 8080) -> set[str]:
    return {f"10.180.0.{n}:{port}"}


NP = NODE_IP

# Virtual servers and real servers.
EXPECTED_IPVS = {
    # TestClusterIP: one virtual server per cluster IP and port, every ready endpoint.
    "TCP 10.96.0.1:80 rr": both(1),
    # TestNodePortIPv4 "1 service with node port, has 2 endpoints" and the UDP case: one
    # virtual server per node address (never loopback, TestDismissLocalhostRuleExist).
    "TCP 10.96.0.2:80 rr": both(2),
    "UDP 10.96.0.2:53 rr": both(2, 5353),
    f"TCP {NP}:3001 rr": both(2),
    f"UDP {NP}:3002 rr": both(2, 5353),
    # TestNodePortIPv4 "1 SCTP service".
    "SCTP 10.96.0.3:5000 rr": both(3, 5000),
    f"SCTP {NP}:3003 rr": both(3, 5000),
    # TestExternalIPs.
    "TCP 10.96.0.4:80 rr": both(4),
    "TCP 50.60.70.81:80 rr": both(4),
    # TestOnlyLocalExternalIPs: the external IP only local endpoints, the cluster IP all.
    "TCP 10.96.0.5:80 rr": both(5),
    "TCP 50.60.70.82:80 rr": local(5),
    # TestLoadBalancer.
    "TCP 10.96.0.6:80 rr": both(6),
    "TCP 1.2.3.4:80 rr": both(6),
    f"TCP {NP}:3006 rr": both(6),
    # TestOnlyLocalLoadBalancing: ingress IP and node port only local endpoints.
    "TCP 10.96.0.7:80 rr": both(7),
    "TCP 1.2.3.5:80 rr": local(7),
    f"TCP {NP}:3007 rr": local(7),
    # TestLoadBalancerSourceRanges: source ranges filter, they do not change IPVS.
    "TCP 10.96.0.8:80 rr": both(8),
    "TCP 1.2.3.6:80 rr": both(8),
    f"TCP {NP}:3008 rr": both(8),
    "TCP 10.96.0.9:80 rr": both(9),
    "TCP 1.2.3.7:80 rr": both(9),
    f"TCP {NP}:3009 rr": both(9),
    # TestLoadBalancerIngressRouteTypeProxy: the ipMode Proxy ingress 1.2.3.8 is skipped.
    "TCP 10.96.0.10:80 rr": both(10),
    "TCP 1.2.3.9:80 rr": both(10),
    f"TCP {NP}:3010 rr": both(10),
    # TestSessionAffinity: persistence with the Service's timeout on every virtual server.
    "TCP 10.96.0.11:80 rr persistent 1000": both(11),
    f"TCP {NP}:3011 rr persistent 1000": both(11),
    # allocateLoadBalancerNodePorts false: no nodePort in the ports, so no NodePort.
    "TCP 10.96.0.12:80 rr": both(12),
    "TCP 1.2.3.10:80 rr": both(12),
    # Dual-stack (NewDualStackProxier): each family's proxier, its own node addresses.
    "TCP 10.96.0.13:80 rr": both(13),
    f"TCP {NP}:3013 rr": both(13),
    "TCP [fd00::13]:80 rr": {"[fd00:180::13]:8080", "[fd00:180:1::13]:8080"},
    "TCP [2001:db8::1:1]:3013 rr": {"[fd00:180::13]:8080", "[fd00:180:1::13]:8080"},
    # TestTestInternalTrafficPolicyE2E: internalTrafficPolicy Local, local endpoints only.
    "TCP 10.96.0.14:80 rr": local(14),
    # Test_EndpointSliceOnlyReadyAndTerminatingCluster: no ready endpoint, so the serving
    # and terminating ones; 10.180.2.20 (not serving) never.
    "TCP 10.96.0.20:80 rr": {"10.180.0.20:8080", "10.180.1.20:8080"},
    # Test_EndpointSliceOnlyReadyAndTerminatingLocal: externalTrafficPolicy Local, and no
    # ready local endpoint: the NodePort takes the local serving and terminating one,
    # the ClusterIP (Cluster view) the ready remote one.
    "TCP 10.96.0.21:80 rr": {"10.180.1.21:8080"},
    f"TCP {NP}:3021 rr": {"10.180.0.21:8080"},
    # pkg/proxy/topology_test.go TestCategorizeEndpoints ("hints enabled, hints annotation
    # == auto"; PreferClose since the field replaced it): every ready endpoint has zone
    # hints and one names node-1's zone, so only zone-a's.
    "TCP 10.96.0.22:80 rr": {"10.180.0.22:8080", "10.180.2.22:8080"},
    # TestClusterIPNoEndpoint: the virtual server, with no real server.
    "TCP 10.96.0.23:80 rr": set(),
    # Deliberate difference (README): internalTrafficPolicy Local with no local endpoint.
    # kube-proxy (syncProxyRules' clusterEndpoints fallback, UsesClusterEndpoints) gives
    # this ClusterIP the remote endpoint 10.180.1.24 because an external IP with policy
    # Cluster needs the Cluster view; we keep the ClusterIP local-only, as the policy says.
    "TCP 10.96.0.24:80 rr": set(),
    "TCP 50.60.70.84:80 rr": {"10.180.1.24:8080"},
    # Nothing for: headless (TestBuildServiceMapServiceHeadless), ExternalName
    # (...TypeExternalName), label service-proxy-name (the informers' label selector).
}


def test_virtual_and_real_servers(capsys: pytest.CaptureFixture[str]) -> None:
    assert virtual_servers(plan("ipvs", capsys)) == EXPECTED_IPVS


def _sets() -> set[str]:
    services = (1, 2, *range(4, 15), *range(20, 25))
    cluster = {f"KUBE-CLUSTER-IP 10.96.0.{n},tcp:80" for n in services}
    cluster |= {"KUBE-CLUSTER-IP 10.96.0.2,udp:53", "KUBE-CLUSTER-IP 10.96.0.3,sctp:5000"}
    # syncProxyRules' LOOP-BACK entries: every local endpoint (hairpin), whatever its
    # conditions (TestOnlyLocalNodePorts' kubeLoopBackIPSet; the loop over
    # endpointsMap skips only remote endpoints): 10.180.2.21 neither ready nor serving.
    loop = {
        f"KUBE-LOOP-BACK 10.180.0.{n},tcp:8080,10.180.0.{n}"
        for n in (1, 2, *range(4, 15), 20, 21, 22)
    }
    loop |= {
        "KUBE-LOOP-BACK 10.180.0.2,udp:5353,10.180.0.2",
        "KUBE-LOOP-BACK 10.180.0.3,sctp:5000,10.180.0.3",
        "KUBE-LOOP-BACK 10.180.2.21,tcp:8080,10.180.2.21",
    }
    bound = [f"10.96.0.{n}" for n in (*range(1, 15), *range(20, 25))]
    # Deliberate difference (README, ipvsproxy/core/steering.py): kube-proxy also binds
    # the external and ingress IPs; we steer their Service ports to IPVS instead, so that
    # a node still reaches a host that owns such an address.
    steered = ["50.60.70.81", "50.60.70.82", "50.60.70.84"]
    steered += [f"1.2.3.{n}" for n in (4, 5, 6, 7, 9, 10)]
    return (
        cluster
        | loop
        # KUBE-IPVS-IPS is activeBindAddrs: here the cluster IPs only.
        | {f"KUBE-IPVS-IPS {address}" for address in bound}
        | {f"KUBE-IPVS-STEERED {address},tcp:80" for address in steered}
        # TestNodePortIPv4: TCP/UDP node ports as bitmap:port, SCTP per node address.
        | {
            f"KUBE-NODE-PORT-TCP {p}"
            for p in (3001, 3006, 3007, 3008, 3009, 3010, 3011, 3013, 3021)
        }
        # TestOnlyLocalNodePorts: a NodePort with externalTrafficPolicy Local.
        | {"KUBE-NODE-PORT-LOCAL-TCP 3021"}
        | {"KUBE-NODE-PORT-UDP 3002", f"KUBE-NODE-PORT-SCTP-HASH {NP},sctp:3003"}
        # TestExternalIPs / TestOnlyLocalExternalIPs.
        | {"KUBE-EXTERNAL-IP 50.60.70.81,tcp:80", "KUBE-EXTERNAL-IP-LOCAL 50.60.70.82,tcp:80"}
        | {"KUBE-EXTERNAL-IP 50.60.70.84,tcp:80"}
        # TestLoadBalancer, TestOnlyLocalLoadBalancing, TestHealthCheckNodePort.
        | {f"KUBE-LOAD-BALANCER 1.2.3.{n},tcp:80" for n in (4, 5, 6, 7, 9, 10)}
        | {"KUBE-LOAD-BALANCER-LOCAL 1.2.3.5,tcp:80", "KUBE-NODE-PORT-LOCAL-TCP 3007"}
        | {"KUBE-HEALTH-CHECK-NODE-PORT 30000"}
        # TestLoadBalancerSourceRanges: FW entry, one CIDR entry per range, and the
        # SOURCE-IP entry only where a range holds the node's IP (lb-fw-node).
        | {"KUBE-LOAD-BALANCER-FW 1.2.3.6,tcp:80", "KUBE-LOAD-BALANCER-FW 1.2.3.7,tcp:80"}
        | {
            "KUBE-LOAD-BALANCER-SOURCE-CIDR 1.2.3.6,tcp:80,203.0.113.0/25",
            "KUBE-LOAD-BALANCER-SOURCE-CIDR 1.2.3.7,tcp:80,100.101.102.0/24",
            "KUBE-LOAD-BALANCER-SOURCE-CIDR 1.2.3.7,tcp:80,198.51.100.7",
            "KUBE-LOAD-BALANCER-SOURCE-IP 1.2.3.7,tcp:80,1.2.3.7",
        }
        # The IPv6 proxier's sets (NewIPSet: KUBE-6-...).
        | {
            "KUBE-6-CLUSTER-IP fd00::13,tcp:80",
            "KUBE-6-IPVS-IPS fd00::13",
            "KUBE-6-LOOP-BACK fd00:180::13,tcp:8080,fd00:180::13",
            "KUBE-6-NODE-PORT-TCP 3013",
        }
    )


def test_ipset_entries(capsys: pytest.CaptureFixture[str]) -> None:
    lines = plan("ipsets", capsys).splitlines()
    assert {line.removeprefix("add ") for line in lines if line.startswith("add ")} == _sets()
    # ipsetInfo and KUBE-IPVS-STEERED, both families
    assert sum(line.startswith("create ") for line in lines) == 36


def test_addresses(capsys: pytest.CaptureFixture[str]) -> None:
    """syncService(bindAddr): cluster IPs bound, node addresses never; external and ingress
    IPs not (deliberate difference: steered by port)."""
    expected = {entry.split()[1] for entry in _sets() if "IPVS-IPS" in entry}
    assert set(plan("addresses", capsys).split()) == expected


def test_service_dependent_rules(capsys: pytest.CaptureFixture[str]) -> None:
    """writeIptablesRules: the rules that depend on which sets hold entries, and the one
    KUBE-IPVS-OUT-FILTER rule for the load balancer whose ranges leave the node out."""
    v4 = plan("iptables", capsys).split("# ip6tables-restore (IPv6)\n")[0]
    rules = {line for line in v4.splitlines() if line.startswith("-A ")}
    chains_with_sets = {
        line.split()[1]
        + " "
        + line.split("--match-set ")[1].split()[0]
        + " -> "
        + line.split(" -j ")[1]
        for line in rules
        if "--match-set" in line
    }
    assert {
        "KUBE-SERVICES KUBE-LOAD-BALANCER -> KUBE-LOAD-BALANCER",
        "KUBE-LOAD-BALANCER KUBE-LOAD-BALANCER-LOCAL -> RETURN",
        "KUBE-NODE-PORT KUBE-NODE-PORT-LOCAL-TCP -> RETURN",
        "KUBE-NODE-PORT KUBE-NODE-PORT-TCP -> KUBE-MARK-MASQ",
        "KUBE-NODE-PORT KUBE-NODE-PORT-UDP -> KUBE-MARK-MASQ",
        "KUBE-NODE-PORT KUBE-NODE-PORT-SCTP-HASH -> KUBE-MARK-MASQ",
        "KUBE-SERVICES KUBE-EXTERNAL-IP -> KUBE-MARK-MASQ",
        "KUBE-SERVICES KUBE-EXTERNAL-IP -> ACCEPT",
        "KUBE-SERVICES KUBE-EXTERNAL-IP-LOCAL -> ACCEPT",
        "KUBE-PROXY-FIREWALL KUBE-LOAD-BALANCER-FW -> KUBE-SOURCE-RANGES-FIREWALL",
        "KUBE-SOURCE-RANGES-FIREWALL KUBE-LOAD-BALANCER-SOURCE-CIDR -> RETURN",
        "KUBE-SOURCE-RANGES-FIREWALL KUBE-LOAD-BALANCER-SOURCE-IP -> RETURN",
        "KUBE-NODE-PORT KUBE-HEALTH-CHECK-NODE-PORT -> ACCEPT",
        # Not kube-proxy's: marks the steered Service ports (core/steering.py).
        "KUBE-IPVS-STEER KUBE-IPVS-STEERED -> MARK --set-xmark 0x2000/0x2000",
    } <= chains_with_sets
    # No set for NODE-PORT-LOCAL-UDP/SCTP entries: no rule for them either.
    assert not any("LOCAL-UDP" in r or "LOCAL-SCTP" in r for r in rules)
    # TestLoadBalancerSourceRanges (PR #119791): only 1.2.3.6 refuses the node.
    # The node's packets are told by a local source, not by -s VIP: a steered VIP is not
    # local, so the node's packets leave from a node address.
    assert {r for r in rules if r.startswith("-A KUBE-IPVS-OUT-FILTER")} == {
        "-A KUBE-IPVS-OUT-FILTER -m addrtype --src-type LOCAL"
        " -m ipvs --vproto 6 --vaddr 1.2.3.6 --vport 80 -j DROP"
    }


def test_mh_scheduler_hashes_on_the_source_port_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """proxier.go syncProxyRules: with ipvs.scheduler mh every virtual server gets
    FlagSourceHash (ipvsadm's "mh-port"); kube-proxy has no per-Service scheduler and no
    flags for sh. Otherwise the same virtual and real servers."""
    config = tmp_path / "kpc.yaml"
    config.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
        "ipvs: {scheduler: mh}\n"
    )
    assert main([*ARGS, "--config", str(config), "--section", "ipvs"]) == EXIT_OK
    found = virtual_servers(capsys.readouterr().out)
    assert all(key.endswith(" mh-port") for key in found), sorted(found)
    as_rr = {
        key.removesuffix(" mh-port").replace(" mh", " rr", 1): servers
        for key, servers in found.items()
    }
    assert as_rr == EXPECTED_IPVS
