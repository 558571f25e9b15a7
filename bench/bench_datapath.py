"""The data path: kube-proxy's iptables mode against ipvsproxy's IPVS tables, side by side.

    python -m bench.bench_datapath [--sizes 100 1000 5000] [--endpoints 3] [--connects 200]
                                   [--changes 5] [--nftables 1] [--guest qemu] [--quick]

Boots the user-mode-linux kernel once. For each size (a number of Services, from
gen_cluster.py) it builds two nodes, each a fresh network namespace with a client pod and
real backend pods for the first and the last Service (pods.py):

- iptables mode, as kube-proxy's iptables proxier writes it (generated here from the same
  cluster): one KUBE-SERVICES rule per Service port jumping to a KUBE-SVC chain, in it one
  `-m statistic --mode random --probability 1/(n-i)` rule per endpoint, each jumping to a
  KUBE-SEP chain that marks hairpin traffic and DNATs;
- IPVS mode, programmed by ipvsproxy (`sync`): virtual servers, kube-ipvs0, ipsets and the
  fixed chains;
- with --nftables 1, a third node: the same IPVS mode with the nftables rules backend (sets
  in one table per family and a fixed set of chains, core/nft_rules.py) in place of ipsets
  and iptables. It needs nftables nat chains, which the user-mode-linux kernel lacks: run
  it with --guest qemu.

It then measures, interleaved within each node, the latency of new TCP connections from
the client pod to the first and to the last Service (connect, read the backend's reply,
close: one request each), the rules a connection's first packet traverses, and the time to
change one endpoint: iptables-restore of the whole nat table (every full sync), the
minimal restore kube-proxy >= 1.28 writes (KUBE-SERVICES plus the changed chains), and
our IPVS operations (delete one real server, add one). Medians. The guest kernel is slow
and the host shared: only ratios mean anything. Replies are checked: every connection must
reach one of the Service's backends, through either mode.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from bench.lib import kernel_bench
from bench.lib.gen_cluster import POD_NET, build

CLUSTER_CIDR = str(POD_NET)
CLIENT_IP = str(POD_NET[-3])
PORT = 80  # every generated Service has TCP port 80 ("http") -> 8080
TARGET_PORT = 8080


# Figures per size, written as JSON for the host (kernel_bench.finish_in_guest).
RESULTS: dict[str, dict[str, Any]] = {}


# --- kube-proxy's iptables mode, generated from the cluster -------------------------------


def _hash(text: str) -> str:
    """kube-proxy's chain-name hash: base32(sha256(text))[:16]."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


@dataclass
class SvcPort:
    name: str  # namespace/name:port
    cluster_ip: str
    protocol: str
    port: int
    endpoints: list[str]  # "ip:port"

    @property
    def svc_chain(self) -> str:
        return "KUBE-SVC-" + _hash(self.name + self.protocol.lower())

    def sep_chain(self, endpoint: str) -> str:
        return "KUBE-SEP-" + _hash(self.name + self.protocol.lower() + endpoint)


def service_ports(state: Any, services: Any) -> list[SvcPort]:
    """The IPv4 Service ports and their endpoints, in the cluster's order."""
    by_key = {}
    for key, servers in state.real_servers.items():
        by_key[(str(key.address), key.protocol.value, key.port)] = [
            f"{real.address}:{real.port}" for real in servers
        ]
    ports = []
    for service in services:
        for address in service.cluster_ips:
            if address.version != 4:
                continue
            for port in service.ports:
                ports.append(
                    SvcPort(
                        f"{service.namespace}/{service.name}:{port.name}",
                        str(address),
                        port.protocol.value,
                        port.port,
                        by_key.get((str(address), port.protocol.value, port.port), []),
                    )
                )
    return ports


def svc_rules(svc: SvcPort) -> list[str]:
    """The KUBE-SVC chain's rules and its endpoints' KUBE-SEP chains (no chain lines)."""
    proto = svc.protocol.lower()
    comment = f'"{svc.name} cluster IP"'
    lines = [
        f"-A {svc.svc_chain} ! -s {CLUSTER_CIDR} -d {svc.cluster_ip}/32 -p {proto} "
        f"-m comment --comment {comment} -m {proto} --dport {svc.port} -j KUBE-MARK-MASQ"
    ]
    count = len(svc.endpoints)
    for index, endpoint in enumerate(svc.endpoints):
        statistic = (
            f"-m statistic --mode random --probability {1 / (count - index):.11f} "
            if index < count - 1
            else ""
        )
        lines.append(
            f'-A {svc.svc_chain} -m comment --comment "{svc.name} -> {endpoint}" '
            f"{statistic}-j {svc.sep_chain(endpoint)}"
        )
    for endpoint in svc.endpoints:
        host = endpoint.rsplit(":", 1)[0]
        sep = svc.sep_chain(endpoint)
        lines.append(f'-A {sep} -s {host}/32 -m comment --comment "{svc.name}" -j KUBE-MARK-MASQ')
        lines.append(
            f'-A {sep} -p {proto} -m comment --comment "{svc.name}" -m {proto} '
            f"-j DNAT --to-destination {endpoint}"
        )
    return lines


def services_rules(ports: list[SvcPort]) -> list[str]:
    """KUBE-SERVICES: one rule per Service port with endpoints, in order."""
    lines = []
    for svc in ports:
        if not svc.endpoints:
            continue
        proto = svc.protocol.lower()
        lines.append(
            f"-A KUBE-SERVICES -d {svc.cluster_ip}/32 -p {proto} "
            f'-m comment --comment "{svc.name} cluster IP" -m {proto} --dport {svc.port} '
            f"-j {svc.svc_chain}"
        )
    lines.append(
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must '
        'be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
    )
    return lines


def chain_lines(ports: list[SvcPort]) -> list[str]:
    lines = []
    for svc in ports:
        if svc.endpoints:
            lines.append(f":{svc.svc_chain} - [0:0]")
            lines += [f":{svc.sep_chain(e)} - [0:0]" for e in svc.endpoints]
    return lines


def full_nat_table(ports: list[SvcPort]) -> str:
    """The whole nat table as kube-proxy's iptables mode writes it on a full sync."""
    lines = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-NODEPORTS - [0:0]",
        ":KUBE-POSTROUTING - [0:0]",
        ":KUBE-MARK-MASQ - [0:0]",
        *chain_lines(ports),
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE",
        *services_rules(ports),
    ]
    for svc in ports:
        if svc.endpoints:
            lines += svc_rules(svc)
    lines.append("COMMIT")
    return "\n".join(lines + FILTER_TABLE) + "\n"


# kube-proxy's iptables mode also hooks the filter table; with every Service having
# endpoints, its chains hold these fixed rules (the nfacct match of KUBE-FORWARD left out).
FILTER_TABLE = [
    "*filter",
    ":INPUT ACCEPT [0:0]",
    ":FORWARD ACCEPT [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    ":KUBE-EXTERNAL-SERVICES - [0:0]",
    ":KUBE-FORWARD - [0:0]",
    ":KUBE-NODEPORTS - [0:0]",
    ":KUBE-PROXY-FIREWALL - [0:0]",
    ":KUBE-SERVICES - [0:0]",
    '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer '
    'firewall" -j KUBE-PROXY-FIREWALL',
    '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
    '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible '
    'service portals" -j KUBE-EXTERNAL-SERVICES',
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer '
    'firewall" -j KUBE-PROXY-FIREWALL',
    '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" '
    "-j KUBE-SERVICES",
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible '
    'service portals" -j KUBE-EXTERNAL-SERVICES',
    "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
    '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark '
    "0x4000/0x4000 -j ACCEPT",
    '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack '
    "--ctstate RELATED,ESTABLISHED -j ACCEPT",
    "COMMIT",
]


def minimal_change(ports: list[SvcPort], changed: SvcPort, gone: str) -> str:
    """What kube-proxy >= 1.28 (MinimizeIPTablesRestore) writes for one endpoint change:
    KUBE-SERVICES in full, the changed KUBE-SVC chain and its KUBE-SEP chains, and the
    deletion of the stale KUBE-SEP chain, with --noflush."""
    lines = [
        "*nat",
        ":KUBE-SERVICES - [0:0]",
        f":{changed.svc_chain} - [0:0]",
        *[f":{changed.sep_chain(e)} - [0:0]" for e in changed.endpoints],
        f":{changed.sep_chain(gone)} - [0:0]",
        *services_rules(ports),
        *svc_rules(changed),
        f"-X {changed.sep_chain(gone)}",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def rules_to_first_dnat(ports: list[SvcPort], index: int) -> tuple[int, float]:
    """Rules a new connection's first packet evaluates in iptables mode before its DNAT:
    the PREROUTING jump, KUBE-SERVICES down to its Service's rule, the masquerade check,
    the statistic rules (on average, the chosen endpoint being uniform) and the KUBE-SEP
    chain's two rules. Returns (worst case, average)."""
    position = 1 + sum(1 for svc in ports[:index] if svc.endpoints)
    count = len(ports[index].endpoints)
    fixed = 1 + position + 1 + 2
    return fixed + count, fixed + (count + 1) / 2


# --- measuring ----------------------------------------------------------------------------


def restore(payload: str, *, noflush: bool) -> float:
    argv = ["iptables-legacy-restore", "-w", "5"] + (["--noflush"] if noflush else [])
    start = time.perf_counter()
    subprocess.run(argv, input=payload, text=True, check=True, capture_output=True)
    return time.perf_counter() - start


def request(address: str) -> tuple[float, str]:
    """One new TCP connection: connect, read the reply to EOF, close. (seconds, reply)"""
    start = time.perf_counter()
    with socket.create_connection((address, PORT), timeout=10) as conn:
        chunks = []
        while chunk := conn.recv(4096):
            chunks.append(chunk)
    return time.perf_counter() - start, b"".join(chunks).decode()


def latencies(
    targets: dict[str, tuple[str, str]], backends: dict[str, set[str]], connects: int
) -> tuple[dict[str, float], bool]:
    """Median latency per target (label -> (client namespace, address)), the targets taken
    in turn so that every one sees the same machine load; and whether every reply came
    from one of the target's backends."""
    from ipvsproxy_testkit.sandbox.netns import switch_netns

    times: dict[str, list[float]] = {label: [] for label in targets}
    ok = True
    for netns, address in targets.values():
        with switch_netns(netns):
            request(address)  # warm up: neighbours, routes, caches
    for _ in range(connects):
        for label, (netns, address) in targets.items():
            with switch_netns(netns):
                seconds, reply = request(address)
            times[label].append(seconds)
            ok = ok and reply in backends[label]
    return {label: statistics.median(values) for label, values in times.items()}, ok


def make_pods(ends: dict[str, SvcPort]) -> tuple[Any, dict[str, set[str]]]:
    """A client pod and one pod per endpoint of the measured Services, serving 8080."""
    from ipvsproxy_testkit.sandbox.pods import PodNetwork

    network = PodNetwork()
    network.add_pod("client", CLIENT_IP)
    backends: dict[str, set[str]] = {}
    made: dict[str, str] = {}
    for label, svc in ends.items():
        backends[label] = set()
        for endpoint in svc.endpoints:
            host = endpoint.rsplit(":", 1)[0]
            if host not in made:
                made[host] = f"b{len(made)}"
                network.add_pod(made[host], host)
            backends[label].add(made[host])
    network.serve(TARGET_PORT, list(made.values()))
    return network, backends


@contextlib.contextmanager
def nftables_node(
    name: str, state: Any, masquerade: Any, ends: dict[str, SvcPort]
) -> Iterator[Any]:
    """A third node: IPVS and kube-ipvs0 as ipvsproxy programs them, the rules in the
    nftables backend's tables (core/nft_rules.py) instead of ipsets and iptables. Yields
    (its pods, seconds to program it, whether programming succeeded); the calling thread
    stays in the node's namespace until the block ends, as enter_netns does."""
    from ipvsproxy_testkit.sandbox.netns import enter_netns

    from ipvsproxy.agent.full_sync import full_sync
    from ipvsproxy.dataplane.interfaces import Dataplanes
    from ipvsproxy.dataplane.ipset import IPSetTool
    from ipvsproxy.dataplane.iptables import IptablesTool
    from ipvsproxy.dataplane.ipvs import IpvsSocket
    from ipvsproxy.dataplane.links import LinkTool
    from ipvsproxy.dataplane.nftables import NftablesTool
    from ipvsproxy.dataplane.sysctl import ensure_sysctls
    from ipvsproxy.dataplane.xtables_rules import XtablesRules

    with enter_netns(name):
        ensure_sysctls()
        pods, _ = make_pods(ends)
        links = LinkTool()
        try:
            with IpvsSocket() as ipvs:
                # IPVS and the addresses through the one full-sync path, with no ipset or
                # chain wanted; then the nftables tables, in one nft -f transaction.
                rules_less = replace(state, ipsets={}, iptables={})
                dataplanes = Dataplanes(
                    ipvs=ipvs,
                    links=links,
                    rules=XtablesRules(IPSetTool(), IptablesTool("legacy")),
                )
                start = time.perf_counter()
                ok = full_sync(rules_less, dataplanes).result.ok
                families = list(state.iptables)
                written, error = NftablesTool().sync(families, state.ipsets, masquerade=masquerade)
                seconds = time.perf_counter() - start
                if error:
                    print(f"  nft -f refused the tables: {error[:500]}")
                yield pods, seconds, ok and error is None and written == families
        finally:
            links.close()
            pods.close()


def measure(path: str, connects: int, changes: int, nftables: bool = False) -> bool:
    from ipvsproxy_testkit.sandbox.netns import enter_netns, switch_netns

    from ipvsproxy.agent.full_sync import full_sync
    from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
    from ipvsproxy.core.model import IPFamily, Protocol, RealServer, VirtualServerKey
    from ipvsproxy.core.nft_rules import chain_rules
    from ipvsproxy.core.operations import AddRealServer, DeleteRealServer
    from ipvsproxy.dataplane.interfaces import Dataplanes
    from ipvsproxy.dataplane.ipset import IPSetTool
    from ipvsproxy.dataplane.iptables import IptablesTool
    from ipvsproxy.dataplane.ipvs import IpvsSocket
    from ipvsproxy.dataplane.links import LinkTool
    from ipvsproxy.dataplane.sysctl import ensure_sysctls
    from ipvsproxy.dataplane.xtables_rules import XtablesRules
    from ipvsproxy.k8s.files import read_cluster

    cluster = read_cluster([path])
    settings = DesiredSettings()
    state = desired_state(cluster.services, cluster.slices, node=NodeInfo(), settings=settings)
    ports = service_ports(state, cluster.services)
    with_endpoints = [i for i, svc in enumerate(ports) if svc.endpoints]
    first, last = with_endpoints[0], with_endpoints[-1]
    ends = {"first": ports[first], "last": ports[last]}
    targets_by_label = {label: svc.cluster_ip for label, svc in ends.items()}
    nat = full_nat_table(ports)
    nat_rules = nat.count("\n-A ")
    print(
        f"\n== {len(cluster.services)} Services, {len(ports)} IPv4 Service ports, "
        f"{sum(len(p.endpoints) for p in ports)} endpoints; {connects} connections per "
        f"target, {changes} endpoint changes; medians"
    )
    ok = True
    figures: dict[str, float] = {}
    ipt_node, ipvs_node = f"dp-ipt-{len(ports)}", f"dp-ipvs-{len(ports)}"
    nft_node = f"dp-nft-{len(ports)}"
    modes = ("ipt", "ipvs", "nft") if nftables else ("ipt", "ipvs")
    svc = ports[last]
    original = list(svc.endpoints)
    # The nodes live at once so that their connections and changes can be interleaved.
    with enter_netns(ipt_node):
        ipt_pods, backends = make_pods(ends)
        figures["ipt program"] = restore(nat, noflush=False)
        with enter_netns(ipvs_node), contextlib.ExitStack() as third:
            ensure_sysctls()
            ipvs_pods, _ = make_pods(ends)
            links = LinkTool()
            try:
                with IpvsSocket() as ipvs:
                    dataplanes = Dataplanes(
                        ipvs=ipvs,
                        links=links,
                        rules=XtablesRules(IPSetTool(), IptablesTool("legacy")),
                    )
                    start = time.perf_counter()
                    ok = full_sync(state, dataplanes).result.ok and ok
                    figures["ipvs program"] = time.perf_counter() - start
                    nodes = {"ipt": ipt_pods, "ipvs": ipvs_pods}
                    if nftables:
                        nodes["nft"], figures["nft program"], good = third.enter_context(
                            nftables_node(nft_node, state, settings.masquerade, ends)
                        )
                        ok = ok and good
                    targets = {
                        f"{mode} {label}": (pods.pods["client"].netns, address)
                        for mode, pods in nodes.items()
                        for label, address in targets_by_label.items()
                    }
                    both = {f"{m} {label}": b for m in modes for label, b in backends.items()}
                    lat, good = latencies(targets, both, connects)
                    ok = ok and good
                    figures.update(lat)

                    key = VirtualServerKey(
                        ipaddress_of(svc.cluster_ip), Protocol(svc.protocol), svc.port
                    )
                    old = next(iter(state.real_servers[key].values()))
                    full: list[float] = []
                    minimal: list[float] = []
                    ours: list[float] = []
                    for n in range(changes):
                        # one endpoint of the last Service is replaced, then put back
                        new_host = f"10.1.{n}.1"
                        with switch_netns(ipt_node):
                            gone = svc.endpoints[0]
                            svc.endpoints = [f"{new_host}:{TARGET_PORT}", *original[1:]]
                            minimal.append(restore(minimal_change(ports, svc, gone), noflush=True))
                            full.append(restore(full_nat_table(ports), noflush=False))
                            svc.endpoints = original
                            restore(full_nat_table(ports), noflush=False)
                        new = RealServer(ipaddress_of(new_host), old.port, weight=old.weight)
                        start = time.perf_counter()
                        failures = ipvs.execute(
                            [DeleteRealServer(key, old.key), AddRealServer(key, new)]
                        )
                        ours.append(time.perf_counter() - start)
                        failures += ipvs.execute(
                            [DeleteRealServer(key, new.key), AddRealServer(key, old)]
                        )
                        ok = ok and not failures
                    figures["ipt change full"] = statistics.median(full)
                    figures["ipt change minimal"] = statistics.median(minimal)
                    figures["ipvs change"] = statistics.median(ours)
                    # both still serve after the changes were undone
                    _, good = latencies(targets, both, 2)
                    ok = ok and good
                with switch_netns(ipvs_node):
                    saved = IptablesTool("legacy").save_text(IPFamily.V4)
            finally:
                links.close()
                ipvs_pods.close()
        ipt_pods.close()
    ipvs_rules = sum(1 for line in saved.splitlines() if line.startswith("-A ") and "KUBE-" in line)

    nft_rules = sum(
        len(rules)
        for family in state.iptables
        for rules in chain_rules(family, settings.masquerade).values()
    )
    worst_first, avg_first = rules_to_first_dnat(ports, first)
    worst_last, avg_last = rules_to_first_dnat(ports, last)
    RESULTS[str(len(cluster.services))] = {
        "services": len(cluster.services),
        "service_ports": len(ports),
        "nat_rules": nat_rules,
        "ipvs_kube_rules": ipvs_rules,
        **({"nft_rules": nft_rules} if nftables else {}),
        "rules_first": avg_first,
        "rules_last": avg_last,
        **figures,
    }
    print(
        f"  rules, iptables mode (nat and filter): {nat_rules}; "
        f"ipvsproxy's KUBE rules (all): {ipvs_rules}"
    )
    print(
        f"  rules on a new connection's path, iptables mode: first Service {avg_first:g} "
        f"(worst {worst_first}), last Service {avg_last:g} (worst {worst_last}); IPVS mode: "
        f"at most {ipvs_rules} rules whatever the Service, plus one IPVS hash lookup"
    )
    nft_head = f" {'IPVS, nft':>10} {'nft / IPVS':>11}" if nftables else ""
    print(f"  {'':34} {'iptables':>10} {'IPVS':>10} {'iptables / IPVS':>16}{nft_head}")
    for label, a, b in (
        ("new connection, first Service (ms)", "ipt first", "ipvs first"),
        ("new connection, last Service (ms)", "ipt last", "ipvs last"),
        ("change one endpoint, full (ms)", "ipt change full", "ipvs change"),
        ("change one endpoint, minimal (ms)", "ipt change minimal", "ipvs change"),
    ):
        x, y = figures[a] * 1000, figures[b] * 1000
        nft = b.replace("ipvs ", "nft ")
        extra = ""
        if nftables and nft in figures:
            z = figures[nft] * 1000
            extra = f" {z:10.2f} {z / y:11.2f}"
        print(f"  {label:34} {x:10.2f} {y:10.2f} {x / y:16.2f}{extra}")
    print(
        f"  programming from empty (ms): iptables-restore of the nat table "
        f"{figures['ipt program'] * 1000:.0f}; ipvsproxy's whole cold sync (IPVS, addresses, "
        f"ipsets, iptables, with reads) {figures['ipvs program'] * 1000:.0f}"
    )
    nft_ratio = ""
    if nftables:
        nft_ratio = f"; IPVS mode, nftables rules: {figures['nft last'] / figures['nft first']:.2f}"
        print(
            f"  programming from empty (ms), IPVS with nftables rules (IPVS, addresses, "
            f"one nft -f, with reads): {figures['nft program'] * 1000:.0f}; its rules: "
            f"{nft_rules}, whatever the Services"
        )
    print(
        "  last / first Service, iptables mode: "
        f"{figures['ipt last'] / figures['ipt first']:.2f}; IPVS mode: "
        f"{figures['ipvs last'] / figures['ipvs first']:.2f}{nft_ratio}"
    )
    return ok


def ipaddress_of(text: str) -> Any:
    import ipaddress

    return ipaddress.ip_address(text)


def main() -> int:
    return kernel_bench.main(
        __doc__,
        "bench.bench_datapath",
        sizes=[100, 1000, 5000],
        options={
            "connects": (200, "connections per target"),
            "changes": (5, None),
            "nftables": (
                0,
                "1: a third node, IPVS with the nftables rules backend (needs --guest qemu: "
                "the user-mode-linux kernel has no nftables nat chain)",
            ),
        },
        quick={"sizes": [100], "connects": 20, "changes": 2},
        quick_help="100 Services, fewer samples",
        cluster=build,
        measure=lambda files, args: all(
            [measure(path, args.connects, args.changes, bool(args.nftables)) for path in files]
        ),
        results=RESULTS,
    )


if __name__ == "__main__":
    sys.exit(main())
