"""The kernel as kube-proxy's IPVS mode leaves it, built from Services and EndpointSlices.

For the switch-over and rollback tests: `desired_state` computes, from the same API objects
the test API server serves, what kube-proxy (`--proxy-mode=ipvs`, dual-stack proxier,
iptables backend `legacy`) programs at a sync, and `program` writes it the way kube-proxy's
sync does, into whatever the kernel holds (an empty kernel: what kube-proxy leaves when it
stops; a kernel another proxy programmed: what kube-proxy's first sync makes of it). The
facts follow kube-proxy's proxier (pkg/proxy/ipvs), written here independently:

- `kube-ipvs0`, a dummy link left down, holding every cluster IP, and every external and
  load-balancer ingress IP that is not already a node address, as /32 (/128);
- one virtual server per frontend (cluster IP, external IP, ingress IP, each node address
  for a NodePort), scheduler `rr`, persistence with sessionAffinity ClientIP; real servers
  weight 1, masquerading; external frontends with externalTrafficPolicy Local take the
  node's endpoints, or every endpoint when the node has none;
- the 17 ipsets per family (`ipsetInfo`), created as kube-proxy creates them, with
  kube-proxy's entry strings; `KUBE-IPVS-IPS` holds what is bound to kube-ipvs0;
- the jump rules of `iptablesJumpChain`, each inserted at the top of its built-in chain,
  and `writeIptablesRules`' payload, given to `iptables-restore --noflush --counters`
  (rules matching an empty set left out, as kube-proxy leaves them out).

Left out, as the tests need none of them: loadBalancerSourceRanges (KUBE-LOAD-BALANCER-FW
and its source sets stay empty; a Service that has them is refused), topology hints,
SCTP, nodePortAddresses (every node address given is a NodePort address).
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

DUMMY: Final = "kube-ipvs0"
MARK: Final = "0x00004000"  # kube-proxy writes the masquerade bit as %#08x

# ipsetInfo: (name, type); a family's name is KUBE-6-... for IPv6, cut to 31 characters.
IPSETS: Final = (
    ("KUBE-LOOP-BACK", "hash:ip,port,ip"),
    ("KUBE-CLUSTER-IP", "hash:ip,port"),
    ("KUBE-EXTERNAL-IP", "hash:ip,port"),
    ("KUBE-EXTERNAL-IP-LOCAL", "hash:ip,port"),
    ("KUBE-LOAD-BALANCER", "hash:ip,port"),
    ("KUBE-LOAD-BALANCER-FW", "hash:ip,port"),
    ("KUBE-LOAD-BALANCER-LOCAL", "hash:ip,port"),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "hash:ip,port,ip"),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "hash:ip,port,net"),
    ("KUBE-NODE-PORT-TCP", "bitmap:port"),
    ("KUBE-NODE-PORT-LOCAL-TCP", "bitmap:port"),
    ("KUBE-NODE-PORT-UDP", "bitmap:port"),
    ("KUBE-NODE-PORT-LOCAL-UDP", "bitmap:port"),
    ("KUBE-NODE-PORT-SCTP-HASH", "hash:ip,port"),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "hash:ip,port"),
    ("KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port"),
    ("KUBE-IPVS-IPS", "hash:ip"),
)
# iptablesJumpChain, in order; each is prepended, so the last one ends up first.
JUMPS: Final = (
    ("nat", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals"),
    ("nat", "PREROUTING", "KUBE-SERVICES", "kubernetes service portals"),
    ("nat", "POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules"),
    ("filter", "FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules"),
    ("filter", "INPUT", "KUBE-NODE-PORT", "kubernetes health check rules"),
    ("filter", "INPUT", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
    ("filter", "FORWARD", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
    ("filter", "INPUT", "KUBE-IPVS-FILTER", "kubernetes ipvs access filter"),
    ("filter", "OUTPUT", "KUBE-IPVS-OUT-FILTER", "kubernetes ipvs access filter"),
)
NAT_CHAINS: Final = (
    "KUBE-SERVICES",
    "KUBE-POSTROUTING",
    "KUBE-NODE-PORT",
    "KUBE-LOAD-BALANCER",
    "KUBE-MARK-MASQ",
)
FILTER_CHAINS: Final = (
    "KUBE-FORWARD",
    "KUBE-NODE-PORT",
    "KUBE-PROXY-FIREWALL",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
)


SYSCTLS: Final = {
    "net/ipv4/vs/conntrack": "1",
    "net/ipv4/vs/expire_nodest_conn": "1",
    "net/ipv4/vs/expire_quiescent_template": "1",
    "net/ipv4/ip_forward": "1",
}


def set_name(name: str, version: int) -> str:
    return name if version == 4 else ("KUBE-6-" + name.removeprefix("KUBE-"))[:31]


def create_line(name: str, kind: str, version: int) -> str:
    """An `ipset restore` create line, with the arguments kube-proxy creates the set with."""
    if kind.startswith("bitmap:"):
        return f"create {set_name(name, version)} {kind} range 0-65535"
    inet = "inet" if version == 4 else "inet6"
    return f"create {set_name(name, version)} {kind} family {inet} hashsize 1024 maxelem 65536"


@dataclass(frozen=True, slots=True, order=True)
class VirtualServer:
    protocol: str  # tcp, udp
    address: str
    port: int
    persistence: int = 0  # seconds; 0: none

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version

    @property
    def target(self) -> str:
        """ipvsadm's service address: -t 10.96.0.10:80, -u [fd00::1]:53."""
        host = self.address if self.version == 4 else f"[{self.address}]"
        return f"{'-t' if self.protocol == 'tcp' else '-u'} {host}:{self.port}"


@dataclass
class KubeProxyState:
    """What one kube-proxy sync programs (see the module docstring)."""

    cluster_cidr: str
    bound: set[str] = field(default_factory=set)  # kube-ipvs0's addresses
    servers: dict[VirtualServer, list[str]] = field(default_factory=dict)  # -> "ip:port"
    entries: dict[str, set[str]] = field(default_factory=dict)  # set name -> entries

    def add(self, name: str, entry: str, version: int) -> None:
        self.entries.setdefault(set_name(name, version), set()).add(entry)

    def nonempty(self, name: str, version: int) -> bool:
        return bool(self.entries.get(set_name(name, version)))

    # -- what program() writes

    def ipset_restore(self) -> str:
        lines = []
        for version in (4, 6):
            for name, kind in IPSETS:
                lines.append(create_line(name, kind, version) + " -exist")
                full = set_name(name, version)
                lines += [
                    f"add {full} {entry} -exist" for entry in sorted(self.entries.get(full, ()))
                ]
        return "\n".join(lines) + "\n"

    def restore_payload(self, version: int) -> str:
        """writeIptablesRules' payload for one family, in kube-proxy's order."""

        def has(name: str) -> bool:
            return self.nonempty(name, version)

        def n(name: str) -> str:
            return set_name(name, version)

        def comment(text: str) -> str:
            return f'-m comment --comment "{text}"'

        nat: list[str] = ["*nat", *[f":{c} - [0:0]" for c in NAT_CHAINS]]
        loopback = "127.0.0.0/8" if version == 4 else "::1/128"
        nat.append(f"-A KUBE-SERVICES -s {loopback} -j RETURN")
        hairpin = "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"
        set_rules = (
            ("KUBE-LOOP-BACK", "KUBE-POSTROUTING", "", hairpin, "dst,dst,src", "MASQUERADE"),
            (
                "KUBE-LOAD-BALANCER",
                "KUBE-SERVICES",
                "",
                "Kubernetes service lb portal",
                "dst,dst",
                "KUBE-LOAD-BALANCER",
            ),
            (
                "KUBE-LOAD-BALANCER-LOCAL",
                "KUBE-LOAD-BALANCER",
                "",
                "Kubernetes service load balancer ip + port with externalTrafficPolicy=local",
                "dst,dst",
                "RETURN",
            ),
            *(
                rule
                for proto in ("tcp", "udp")
                for rule in (
                    (
                        f"KUBE-NODE-PORT-LOCAL-{proto.upper()}",
                        "KUBE-NODE-PORT",
                        f"-p {proto} ",
                        f"Kubernetes nodeport {proto.upper()} port with "
                        "externalTrafficPolicy=local",
                        "dst",
                        "RETURN",
                    ),
                    (
                        f"KUBE-NODE-PORT-{proto.upper()}",
                        "KUBE-NODE-PORT",
                        f"-p {proto} ",
                        f"Kubernetes nodeport {proto.upper()} port for masquerade purpose",
                        "dst",
                        "KUBE-MARK-MASQ",
                    ),
                )
            ),
        )
        for name, chain, proto, text, match, target in set_rules:
            if has(name):
                nat.append(
                    f"-A {chain} {proto}{comment(text)} -m set --match-set {n(name)} {match} "
                    f"-j {target}"
                )
        if has("KUBE-CLUSTER-IP"):
            cluster = comment("Kubernetes service cluster ip + port for masquerade purpose")
            cidr = ipaddress.ip_network(self.cluster_cidr)
            match = f"-m set --match-set {n('KUBE-CLUSTER-IP')}"
            if cidr.version == version:  # the ClusterCIDR local detector
                nat.append(
                    f"-A KUBE-SERVICES {cluster} {match} dst,dst ! -s {cidr} -j KUBE-MARK-MASQ"
                )
            else:  # no detector for this family
                nat.append(f"-A KUBE-SERVICES {cluster} {match} src,dst -j KUBE-MARK-MASQ")
        external = comment(
            "Kubernetes service external ip + port for masquerade and filter purpose"
        )
        accept_external = (
            "-m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT",
            "-m addrtype --dst-type LOCAL -j ACCEPT",
        )
        if has("KUBE-EXTERNAL-IP"):
            match = (
                f"-A KUBE-SERVICES {external} -m set --match-set {n('KUBE-EXTERNAL-IP')} dst,dst"
            )
            nat.append(f"{match} -j KUBE-MARK-MASQ")
            nat += [f"{match} {accept}" for accept in accept_external]
        if has("KUBE-EXTERNAL-IP-LOCAL"):
            local = comment(
                "Kubernetes service external ip + port with externalTrafficPolicy=local"
            )
            match = (
                f"-A KUBE-SERVICES {local} -m set --match-set {n('KUBE-EXTERNAL-IP-LOCAL')} dst,dst"
            )
            nat += [f"{match} {accept}" for accept in accept_external]
        nat.append("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT")
        nat.append("-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ")
        for name in ("KUBE-CLUSTER-IP", "KUBE-LOAD-BALANCER"):
            if has(name):
                nat.append(f"-A KUBE-SERVICES -m set --match-set {n(name)} dst,dst -j ACCEPT")
        nat += [
            f"-A KUBE-POSTROUTING -m mark ! --mark {MARK}/{MARK} -j RETURN",
            f"-A KUBE-POSTROUTING -j MARK --xor-mark {MARK}",
            f"-A KUBE-POSTROUTING {comment('kubernetes service traffic requiring SNAT')} "
            "-j MASQUERADE --random-fully",
            f"-A KUBE-MARK-MASQ -j MARK --or-mark {MARK}",
            "COMMIT",
        ]
        filt = ["*filter", *[f":{c} - [0:0]" for c in FILTER_CHAINS]]
        filt += [
            "-A KUBE-SOURCE-RANGES-FIREWALL -j DROP",
            f"-A KUBE-FORWARD {comment('kubernetes forwarding rules')} "
            f"-m mark --mark {MARK}/{MARK} -j ACCEPT",
            f"-A KUBE-FORWARD {comment('kubernetes forwarding conntrack rule')} "
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            f"-A KUBE-NODE-PORT {comment('Kubernetes health check node port')} "
            f"-m set --match-set {n('KUBE-HEALTH-CHECK-NODE-PORT')} dst -j ACCEPT",
            *(
                f"-A KUBE-IPVS-FILTER -m set --match-set {n(name)} dst,dst -j RETURN"
                for name in (
                    "KUBE-LOAD-BALANCER",
                    "KUBE-CLUSTER-IP",
                    "KUBE-EXTERNAL-IP",
                    "KUBE-EXTERNAL-IP-LOCAL",
                )
            ),
            f"-A KUBE-IPVS-FILTER -m set --match-set {n('KUBE-HEALTH-CHECK-NODE-PORT')} dst "
            "-j RETURN",
            "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW "
            f"-m set --match-set {n('KUBE-IPVS-IPS')} dst -j REJECT",
            "COMMIT",
        ]
        return "\n".join(nat + filt) + "\n"


def _endpoints(
    slices: Iterable[Mapping[str, Any]], port: Mapping[str, Any], version: int
) -> list[tuple[str, int, str]]:
    """(address, port, node) of the Service port's endpoints kube-proxy would use: the ready
    ones, else the serving and terminating ones."""
    found: list[tuple[str, int, str, bool, bool]] = []
    for piece in slices:
        if piece.get("addressType") != f"IPv{version}":
            continue
        numbers = [
            p["port"]
            for p in piece.get("ports") or ()
            if p.get("name", "") == port.get("name", "")
            and p.get("protocol", "TCP") == port.get("protocol", "TCP")
        ]
        if not numbers:
            continue
        for endpoint in piece.get("endpoints") or ():
            conditions = endpoint.get("conditions") or {}
            ready = conditions.get("ready", True) is not False
            serving = conditions.get("serving", ready) is not False
            terminating = conditions.get("terminating", False) is True
            found.append(
                (
                    endpoint["addresses"][0],
                    numbers[0],
                    endpoint.get("nodeName", ""),
                    ready,
                    serving and terminating,
                )
            )
    usable = [(a, p, node) for a, p, node, r, _ in found if r]
    return usable or [(a, p, node) for a, p, node, _, st in found if st]


def desired_state(
    services: Sequence[Mapping[str, Any]],
    slices: Sequence[Mapping[str, Any]],
    *,
    node_name: str,
    node_addresses: Sequence[str],
    cluster_cidr: str,
) -> KubeProxyState:
    """What kube-proxy programs for these objects on this node (module docstring).

    node_addresses: the node's addresses but loopback's and kube-ipvs0's, the NodePort
    addresses (kube-proxy's GetAllLocalAddressesExcept).
    """
    state = KubeProxyState(cluster_cidr)
    for svc in services:
        spec = svc["spec"]
        if spec.get("type") == "ExternalName" or spec.get("clusterIP") in (None, "", "None"):
            continue
        if spec.get("loadBalancerSourceRanges"):
            raise ValueError("loadBalancerSourceRanges are not built (module docstring)")
        name = (svc["metadata"]["namespace"], svc["metadata"]["name"])
        own = [
            s
            for s in slices
            if s["metadata"]["namespace"] == name[0]
            and s["metadata"].get("labels", {}).get("kubernetes.io/service-name") == name[1]
        ]
        local_policy = spec.get("externalTrafficPolicy") == "Local"
        affinity = 0
        if spec.get("sessionAffinity") == "ClientIP":
            config = spec.get("sessionAffinityConfig", {}).get("clientIP", {})
            affinity = int(config.get("timeoutSeconds", 10800))
        ingress = [
            i["ip"]
            for i in svc.get("status", {}).get("loadBalancer", {}).get("ingress") or ()
            if "ip" in i and i.get("ipMode", "VIP") == "VIP"
        ]
        for cluster_ip in spec.get("clusterIPs") or [spec["clusterIP"]]:
            version = ipaddress.ip_address(cluster_ip).version
            for port in spec["ports"]:
                protocol = port.get("protocol", "TCP").lower()
                if protocol == "sctp":
                    raise ValueError("SCTP is not built (module docstring)")
                number = port["port"]
                endpoints = _endpoints(own, port, version)
                everyone = [f"{a}:{p}" if version == 4 else f"[{a}]:{p}" for a, p, _ in endpoints]
                local = [
                    f"{a}:{p}" if version == 4 else f"[{a}]:{p}"
                    for a, p, node in endpoints
                    if node == node_name
                ]
                for address, port_number, node in endpoints:
                    if node == node_name:
                        state.add(
                            "KUBE-LOOP-BACK",
                            f"{address},{protocol}:{port_number},{address}",
                            version,
                        )
                external_reals = (local or everyone) if local_policy else everyone

                key = VirtualServer(protocol, cluster_ip, number, affinity)
                state.servers[key] = everyone
                state.bound.add(cluster_ip)
                state.add("KUBE-CLUSTER-IP", f"{cluster_ip},{protocol}:{number}", version)
                for address in [*spec.get("externalIPs", ()), *ingress]:
                    if ipaddress.ip_address(address).version != version:
                        continue
                    key = VirtualServer(protocol, address, number, affinity)
                    state.servers[key] = external_reals
                    if address not in node_addresses:
                        state.bound.add(address)
                    entry = f"{address},{protocol}:{number}"
                    if address in ingress:
                        state.add("KUBE-LOAD-BALANCER", entry, version)
                        if local_policy:
                            state.add("KUBE-LOAD-BALANCER-LOCAL", entry, version)
                    else:
                        kind = "KUBE-EXTERNAL-IP-LOCAL" if local_policy else "KUBE-EXTERNAL-IP"
                        state.add(kind, entry, version)
                node_port = port.get("nodePort")
                if node_port and spec.get("type") in ("NodePort", "LoadBalancer"):
                    for address in node_addresses:
                        if ipaddress.ip_address(address).version == version:
                            state.servers[VirtualServer(protocol, address, node_port, affinity)] = (
                                external_reals
                            )
                    suffix = protocol.upper()
                    state.add(f"KUBE-NODE-PORT-{suffix}", str(node_port), version)
                    if local_policy:
                        state.add(f"KUBE-NODE-PORT-LOCAL-{suffix}", str(node_port), version)
        health = spec.get("healthCheckNodePort")
        if health and local_policy and spec.get("type") == "LoadBalancer":
            for cluster_ip in spec.get("clusterIPs") or [spec["clusterIP"]]:
                state.add(
                    "KUBE-HEALTH-CHECK-NODE-PORT",
                    str(health),
                    ipaddress.ip_address(cluster_ip).version,
                )
    for address in state.bound:
        state.add("KUBE-IPVS-IPS", address, ipaddress.ip_address(address).version)
    return state


def run(argv: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
    """A program's output (stdin given as text); RuntimeError when it fails and `check`."""
    result = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result.stdout


def _current_servers() -> dict[VirtualServer, dict[str, int]]:
    """Every TCP/UDP virtual server in the kernel, with its real servers' weights."""
    found: dict[VirtualServer, dict[str, int]] = {}
    current: VirtualServer | None = None
    for line in run(["ipvsadm", "-Sn"]).splitlines():
        words = line.split()
        if words[:1] == ["-A"] and words[1] in ("-t", "-u"):
            host, _, port = words[2].rpartition(":")
            persistence = int(words[words.index("-p") + 1]) if "-p" in words else 0
            current = VirtualServer(
                "tcp" if words[1] == "-t" else "udp", host.strip("[]"), int(port), persistence
            )
            found[current] = {}
        elif words[:1] == ["-a"] and current is not None:
            found[current][words[4]] = int(words[words.index("-w") + 1])
        else:
            current = None
    return found


def program(state: KubeProxyState, *, backend: str = "legacy") -> None:
    """Write `state` as kube-proxy's sync would, over what the kernel holds: its chains and
    jumps, kube-ipvs0, its ipsets (entries it does not want deleted), its virtual and real
    servers (weights set back to 1), the restore payload; then what it does not want goes:
    virtual servers (every one of a family it runs, as cleanLegacyService does) and
    kube-ipvs0's addresses. What it does not know (other ipsets, chains, tables) it leaves.
    First the sysctls kube-proxy sets at start (IPVS's own conntrack, without which the
    masquerading rules see no IPVS connection; a 6.1 kernel's conn_reuse_mode left alone).
    """
    for name, value in SYSCTLS.items():
        Path("/proc/sys", name).write_text(value)
    for version in (4, 6):
        tool = f"{'iptables' if version == 4 else 'ip6tables'}-{backend}"
        for table, chains in (("nat", NAT_CHAINS), ("filter", FILTER_CHAINS)):
            existing = run([f"{tool}-save", "-t", table])
            for chain in chains:
                if f":{chain} " not in existing:
                    run([tool, "-w", "-t", table, "-N", chain])
        for table, chain, target, text in JUMPS:
            rule = ["-m", "comment", "--comment", text, "-j", target]
            if subprocess.run(
                [tool, "-w", "-t", table, "-C", chain, *rule], capture_output=True, check=False
            ).returncode:
                run([tool, "-w", "-t", table, "-I", chain, *rule])
    if run(["ip", "-o", "link", "show", DUMMY], check=False) == "":
        run(["ip", "link", "add", DUMMY, "type", "dummy"])
    run(["ipset", "restore"], state.ipset_restore())
    wanted = state.entries
    for version in (4, 6):
        for name, _ in IPSETS:
            full = set_name(name, version)
            for line in run(["ipset", "save", full]).splitlines():
                words = line.split()
                if words[0] == "add" and words[2] not in wanted.get(full, ()):
                    run(["ipset", "del", full, words[2]])
    current = _current_servers()
    commands = []
    for server, reals in sorted(state.servers.items()):
        persistence = f" -p {server.persistence}" if server.persistence else ""
        verb = "-E" if server in current else "-A"
        if server not in current:
            for other in current:  # same address, port, protocol: an update, not an add
                if (other.protocol, other.address, other.port) == (
                    server.protocol,
                    server.address,
                    server.port,
                ):
                    verb = "-E"
        commands.append(f"{verb} {server.target} -s rr{persistence}")
        present = next(
            (
                weights
                for other, weights in current.items()
                if (other.protocol, other.address, other.port)
                == (server.protocol, server.address, server.port)
            ),
            {},
        )
        for real in reals:
            verb = "-e" if real in present else "-a"
            commands.append(f"{verb} {server.target} -r {real} -m -w 1")
        for real in present:
            if real not in reals:
                commands.append(f"-d {server.target} -r {real}")
    run(["ipvsadm", "-R"], "\n".join(commands) + "\n")
    for version in (4, 6):
        restore = f"{'iptables' if version == 4 else 'ip6tables'}-{backend}-restore"
        run([restore, "-w", "5", "--noflush", "--counters"], state.restore_payload(version))
    have = {
        line.split()[3].split("/")[0]
        for line in run(["ip", "-o", "addr", "show", "dev", DUMMY]).splitlines()
    }
    for address in sorted(state.bound - have):
        prefix = 32 if ipaddress.ip_address(address).version == 4 else 128
        run(["ip", "addr", "add", f"{address}/{prefix}", "dev", DUMMY])
    keys = {(s.protocol, s.address, s.port) for s in state.servers}
    stale = [s for s in current if (s.protocol, s.address, s.port) not in keys]
    if stale:
        run(["ipvsadm", "-R"], "".join(f"-D {s.target}\n" for s in stale))
    for address in sorted(have - state.bound):
        prefix = 32 if ipaddress.ip_address(address).version == 4 else 128
        run(["ip", "addr", "del", f"{address}/{prefix}", "dev", DUMMY])


def node_addresses() -> list[str]:
    """The addresses kube-proxy makes NodePorts on: every interface's but loopback's,
    kube-ipvs0's and IPv6 link-local ones (GetAllLocalAddressesExcept, isValidForSet)."""
    found = []
    for line in run(["ip", "-o", "addr", "show"]).splitlines():
        words = line.split()
        if words[1] in ("lo", DUMMY) or words[2] not in ("inet", "inet6"):
            continue
        address = ipaddress.ip_address(words[3].split("/")[0])
        if not (address.is_loopback or (address.version == 6 and address.is_link_local)):
            found.append(str(address))
    return found
