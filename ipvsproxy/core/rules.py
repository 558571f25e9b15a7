"""The fixed iptables chains of IPVS mode, as data, written in iptables-save's own syntax.

The number of rules is bounded by these tables: it never grows with Services or endpoints.
Rules are spelled exactly as iptables-save prints them (matches on addresses first, marks
as 0x4000/0x4000, MARK targets as --set-xmark), so that the chains read back from the
kernel compare equal to the desired ones and an unchanged sync runs no iptables-restore.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from ipvsproxy.core import ipsets
from ipvsproxy.core.ipsets import IPSetSpec
from ipvsproxy.core.model import IPFamily, IPNetwork, IptablesRuleset, Protocol
from ipvsproxy.core.steering import steer_mark

NAT_CHAINS = (
    "KUBE-SERVICES",
    "KUBE-POSTROUTING",
    "KUBE-NODE-PORT",
    "KUBE-LOAD-BALANCER",
    "KUBE-MARK-MASQ",
)
FILTER_CHAINS = (
    "KUBE-FORWARD",
    "KUBE-NODE-PORT",
    "KUBE-PROXY-FIREWALL",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
)
# Not kube-proxy's: marks Service ports of unbound external and LB IPs (steering.py).
MANGLE_CHAINS = ("KUBE-IPVS-STEER", "KUBE-IPVS-UNMARK")
CHAINS: dict[str, tuple[str, ...]] = {
    "nat": NAT_CHAINS,
    "filter": FILTER_CHAINS,
    "mangle": MANGLE_CHAINS,
}


@dataclass(frozen=True, slots=True)
class JumpRule:
    """A rule in a built-in chain that sends packets into one of the proxy's chains."""

    table: str
    chain: str
    target: str
    comment: str

    @property
    def rule(self) -> str:
        return f"-m comment --comment {quote(self.comment)} -j {self.target}"


# Inserted at the top of their built-in chain, in this order (kube-proxy's iptablesJumpChain).
JUMP_RULES: tuple[JumpRule, ...] = (
    JumpRule("nat", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals"),
    JumpRule("nat", "PREROUTING", "KUBE-SERVICES", "kubernetes service portals"),
    JumpRule("nat", "POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules"),
    JumpRule("filter", "FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules"),
    JumpRule("filter", "INPUT", "KUBE-NODE-PORT", "kubernetes health check rules"),
    JumpRule("filter", "INPUT", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
    JumpRule("filter", "FORWARD", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
    JumpRule("filter", "INPUT", "KUBE-IPVS-FILTER", "kubernetes ipvs access filter"),
    JumpRule("filter", "OUTPUT", "KUBE-IPVS-OUT-FILTER", "kubernetes ipvs access filter"),
    JumpRule("mangle", "PREROUTING", "KUBE-IPVS-STEER", "kubernetes service ports to ipvs"),
    JumpRule("mangle", "INPUT", "KUBE-IPVS-UNMARK", "kubernetes service ports to ipvs"),
)


def _matches_every_local_address(rule: str) -> bool:
    """Whether a rule matches `-m addrtype --dst-type LOCAL` (not negated): the hostPort
    (CNI portmap) and Docker entry rules. In IPVS mode every Service address is local."""
    tokens = rule.split()
    for index, token in enumerate(tokens[:-1]):
        if token == "--dst-type" and (index == 0 or tokens[index - 1] != "!"):
            return "LOCAL" in tokens[index + 1].split(",")
    return False


def jump_out_of_place(jump: JumpRule, rules: Sequence[str]) -> bool:
    """Whether the jump sits in `rules` (its built-in chain, in order) behind a rule that
    catches every local destination.

    Only the nat KUBE-SERVICES jumps are checked. A CNI's hostPort rule
    (`-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT`) ahead of them DNATs a Service
    address on the hostPort's port to the hostPort pod (kubernetes#61938, #66103), since
    KUBE-SERVICES' ACCEPT is never reached. Other rules may stay ahead (Calico and others
    insert theirs first and re-check that they are): moving ahead of those would gain
    nothing and make two agents take turns at the top of the chain.
    """
    if jump.table != "nat" or jump.target != "KUBE-SERVICES" or jump.rule not in rules:
        return False
    ours = {other.rule for other in JUMP_RULES}
    ahead = rules[: rules.index(jump.rule)]
    return any(_matches_every_local_address(rule) for rule in ahead if rule not in ours)


def without_misplaced_jumps(
    tables: Mapping[str, Mapping[str, tuple[str, ...]]],
) -> dict[str, dict[str, tuple[str, ...]]]:
    """tables as read from the kernel, less the jump rules that are out of place: the
    planner then finds them missing and inserts them first (deleting the misplaced copy,
    see restore_payload)."""
    result = {table: dict(chains) for table, chains in tables.items()}
    for jump in JUMP_RULES:
        rules = result.get(jump.table, {}).get(jump.chain)
        if rules is not None and jump_out_of_place(jump, rules):
            result[jump.table][jump.chain] = tuple(rule for rule in rules if rule != jump.rule)
    return result


@dataclass(frozen=True, slots=True)
class SetRule:
    """A rule matching one ipset, written only while that set has entries."""

    spec: IPSetSpec
    table: str
    chain: str
    target: str
    match: str  # ipset match direction: "dst", "dst,dst", "dst,dst,src"
    protocol: str = ""


# kube-proxy's ipsetWithIptablesChain, in order.
SET_RULES: tuple[SetRule, ...] = (
    SetRule(ipsets.LOOP_BACK, "nat", "KUBE-POSTROUTING", "MASQUERADE", "dst,dst,src"),
    SetRule(ipsets.LOAD_BALANCER, "nat", "KUBE-SERVICES", "KUBE-LOAD-BALANCER", "dst,dst"),
    SetRule(ipsets.LOAD_BALANCER_LOCAL, "nat", "KUBE-LOAD-BALANCER", "RETURN", "dst,dst"),
    SetRule(ipsets.NODE_PORT_LOCAL_TCP, "nat", "KUBE-NODE-PORT", "RETURN", "dst", "tcp"),
    SetRule(ipsets.NODE_PORT_TCP, "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst", "tcp"),
    SetRule(ipsets.NODE_PORT_LOCAL_UDP, "nat", "KUBE-NODE-PORT", "RETURN", "dst", "udp"),
    SetRule(ipsets.NODE_PORT_UDP, "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst", "udp"),
    SetRule(ipsets.NODE_PORT_LOCAL_SCTP, "nat", "KUBE-NODE-PORT", "RETURN", "dst,dst", "sctp"),
    SetRule(ipsets.NODE_PORT_SCTP, "nat", "KUBE-NODE-PORT", "KUBE-MARK-MASQ", "dst,dst", "sctp"),
)


@dataclass(frozen=True, slots=True)
class MasqueradeSettings:
    """What decides which ClusterIP traffic is masqueraded: kube-proxy's local traffic
    detector (detectLocalMode) tells pod traffic, which is not, from the rest, which is.

    - cluster_cidrs: pod networks, at most one per family (ClusterCIDR, and NodeCIDR once
      the Node's spec.podCIDRs are filled in: see desired.settings_for_node);
    - local_interface: pods' traffic arrives on this interface, an iptables `-i` argument
      ("cbr0" for BridgeInterface, "veth+" for InterfaceNamePrefix "veth"); both families;
    - node_cidrs: NodeCIDR mode, cluster_cidrs come from the Node object.
    Without a detector only node-originated traffic from a service VIP is masqueraded.
    """

    mark: int = 0x4000
    masquerade_all: bool = False
    cluster_cidrs: tuple[IPNetwork, ...] = ()
    local_interface: str = ""
    node_cidrs: bool = False


_UNQUOTED = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def quote(text: str) -> str:
    """Quote a string as iptables-save does (xtables_save_string): bare when made only of
    letters, digits, '-' and '_'; else in double quotes with \\, \" and \' escaped."""
    if text and all(c in _UNQUOTED for c in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    return f'"{escaped}"'


def _set_rule_text(rule: SetRule, family: IPFamily) -> str:
    protocol = f"-p {rule.protocol} " if rule.protocol else ""
    return (
        f"{protocol}-m comment --comment {quote(rule.spec.comment)} "
        f"-m set --match-set {rule.spec.name_for(family)} {rule.match} -j {rule.target}"
    )


def no_node_access_rule(entry: str, family: IPFamily) -> str:
    """A KUBE-IPVS-OUT-FILTER rule dropping node-originated traffic to one load-balancer
    "ip,proto:port" (a KUBE-LOAD-BALANCER-FW entry), as iptables-save prints it.

    Such traffic never crosses INPUT or FORWARD, where KUBE-PROXY-FIREWALL filters: IPVS
    schedules it in LOCAL_OUT, before filter OUTPUT, so only the ipvs match still sees the
    virtual address (kubernetes#119656). The node's packets are told from those IPVS
    forwards for clients by their local source: a node address for a steered VIP (not
    local, see steering.py), the VIP itself for a bound one.
    """
    address, proto_port = entry.split(",")
    protocol, port = proto_port.split(":")
    number = Protocol(protocol.upper()).number
    return (
        "-m addrtype --src-type LOCAL "
        f"-m ipvs --vproto {number} --vaddr {address} --vport {port} -j DROP"
    )


def build_ruleset(
    family: IPFamily,
    *,
    masquerade: MasqueradeSettings,
    nonempty_sets: Collection[str],
    no_node_access: Sequence[str] = (),
) -> IptablesRuleset:
    """The proxy's chains for one family, given which of its ipsets hold entries.

    no_node_access: the KUBE-LOAD-BALANCER-FW entries whose source ranges leave out this
    node; the only rules whose number depends on Services, as in kube-proxy.
    """

    def has(spec: IPSetSpec) -> bool:
        return spec.name_for(family) in nonempty_sets

    def name(spec: IPSetSpec) -> str:
        return spec.name_for(family)

    def comment(spec: IPSetSpec) -> str:
        return f"-m comment --comment {quote(spec.comment)}"

    chains: dict[str, dict[str, list[str]]] = {
        table: {chain: [] for chain in names} for table, names in CHAINS.items()
    }
    nat, filt = chains["nat"], chains["filter"]
    mark = f"{masquerade.mark:#x}"
    loopback = "127.0.0.0/8" if family is IPFamily.V4 else "::1/128"

    nat["KUBE-SERVICES"].append(f"-s {loopback} -j RETURN")
    for rule in SET_RULES:
        if has(rule.spec):
            chains[rule.table][rule.chain].append(_set_rule_text(rule, family))

    cluster_ip = ipsets.CLUSTER_IP
    if has(cluster_ip):
        match = f"{comment(cluster_ip)} -m set --match-set {name(cluster_ip)}"
        own_cidrs = [c for c in masquerade.cluster_cidrs if IPFamily.of(c) is family]
        if masquerade.masquerade_all:
            nat["KUBE-SERVICES"].append(f"{match} dst,dst -j KUBE-MARK-MASQ")
        elif masquerade.local_interface:
            # kube-proxy's interface detectors; iptables-save prints "! -i" before matches.
            nat["KUBE-SERVICES"].append(
                f"! -i {masquerade.local_interface} {match} dst,dst -j KUBE-MARK-MASQ"
            )
        elif own_cidrs:
            # kube-proxy's CIDR detectors (one CIDR per family): traffic not from a pod is
            # masqueraded.
            nat["KUBE-SERVICES"].append(f"! -s {own_cidrs[0]} {match} dst,dst -j KUBE-MARK-MASQ")
        else:
            # Without a detector only node-originated traffic from a VIP source is marked.
            nat["KUBE-SERVICES"].append(f"{match} src,dst -j KUBE-MARK-MASQ")

    external = ipsets.EXTERNAL_IP
    if has(external):
        match = f"{comment(external)} -m set --match-set {name(external)} dst,dst"
        nat["KUBE-SERVICES"] += [
            f"{match} -j KUBE-MARK-MASQ",
            f"{match} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT",
            f"{match} -m addrtype --dst-type LOCAL -j ACCEPT",
        ]
    external_local = ipsets.EXTERNAL_IP_LOCAL
    if has(external_local):
        match = f"{comment(external_local)} -m set --match-set {name(external_local)} dst,dst"
        nat["KUBE-SERVICES"] += [
            f"{match} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT",
            f"{match} -m addrtype --dst-type LOCAL -j ACCEPT",
        ]

    nat["KUBE-SERVICES"].append("-m addrtype --dst-type LOCAL -j KUBE-NODE-PORT")
    nat["KUBE-LOAD-BALANCER"].append("-j KUBE-MARK-MASQ")
    # Accept VIP traffic in nat so that later rules (e.g. CNI hostport DNAT) cannot hijack it.
    for spec in (cluster_ip, ipsets.LOAD_BALANCER):
        if has(spec):
            nat["KUBE-SERVICES"].append(f"-m set --match-set {name(spec)} dst,dst -j ACCEPT")

    nat["KUBE-POSTROUTING"] += [
        f"-m mark ! --mark {mark}/{mark} -j RETURN",
        # --xor-mark, as iptables-save spells it: clear the bit so it does not leak on.
        f"-j MARK --set-xmark {mark}/0x0",
        "-m comment --comment "
        + quote("kubernetes service traffic requiring SNAT")
        + " -j MASQUERADE --random-fully",
    ]
    nat["KUBE-MARK-MASQ"].append(f"-j MARK --set-xmark {mark}/{mark}")

    steered = ipsets.STEERED
    if has(steered):
        steer = f"{steer_mark(masquerade.mark):#x}"
        chains["mangle"]["KUBE-IPVS-STEER"].append(
            f"{comment(steered)} -m set --match-set {name(steered)} dst,dst "
            f"-j MARK --set-xmark {steer}/{steer}"
        )
        # The mark has done its work once the packet is routed in: cleared before IPVS
        # forwards it, or nf_nat's reroute after IPVS's DNAT would route it locally again.
        chains["mangle"]["KUBE-IPVS-UNMARK"].append(
            f"-m mark --mark {steer}/{steer} -j MARK --set-xmark 0x0/{steer}"
        )

    fw = ipsets.LOAD_BALANCER_FW
    if has(fw):
        filt["KUBE-PROXY-FIREWALL"].append(
            f"{comment(fw)} -m set --match-set {name(fw)} dst,dst -j KUBE-SOURCE-RANGES-FIREWALL"
        )
    for spec in (ipsets.LOAD_BALANCER_SOURCE_CIDR, ipsets.LOAD_BALANCER_SOURCE_IP):
        if has(spec):
            filt["KUBE-SOURCE-RANGES-FIREWALL"].append(
                f"{comment(spec)} -m set --match-set {name(spec)} dst,dst,src -j RETURN"
            )
    filt["KUBE-SOURCE-RANGES-FIREWALL"].append("-j DROP")
    filt["KUBE-IPVS-OUT-FILTER"] += [no_node_access_rule(e, family) for e in no_node_access]

    filt["KUBE-FORWARD"] += [
        f"-m comment --comment {quote('kubernetes forwarding rules')} "
        f"-m mark --mark {mark}/{mark} -j ACCEPT",
        f"-m comment --comment {quote('kubernetes forwarding conntrack rule')} "
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    health = ipsets.HEALTH_CHECK_NODE_PORT
    filt["KUBE-NODE-PORT"].append(
        f"{comment(health)} -m set --match-set {name(health)} dst -j ACCEPT"
    )

    # Host services listening on 0.0.0.0 must not answer on VIPs (kubernetes#72236).
    ipvs_filter = filt["KUBE-IPVS-FILTER"]
    for spec in (ipsets.LOAD_BALANCER, cluster_ip, external, external_local):
        ipvs_filter.append(f"-m set --match-set {name(spec)} dst,dst -j RETURN")
    ipvs_filter.append(f"-m set --match-set {name(health)} dst -j RETURN")
    reject_with = "icmp-port-unreachable" if family is IPFamily.V4 else "icmp6-port-unreachable"
    ipvs_filter.append(
        f"-m conntrack --ctstate NEW -m set --match-set {name(ipsets.IPVS_IPS)} dst "
        f"-j REJECT --reject-with {reject_with}"
    )

    return IptablesRuleset(
        family=family,
        tables={
            table: {chain: tuple(rules) for chain, rules in table_chains.items()}
            for table, table_chains in chains.items()
        },
    )


def restore_payload(
    ruleset: IptablesRuleset,
    missing_jumps: Sequence[JumpRule] = (),
    stray_jumps: Sequence[JumpRule] = (),
) -> str:
    """iptables-restore --noflush input replacing the proxy's chains, adding missing jumps.

    Declaring a chain (":NAME - [0:0]") flushes it, and --noflush leaves every other chain
    of the table alone, so one restore swaps the whole ruleset atomically per table.
    stray_jumps: copies present in the kernel but out of place, deleted (one line each
    copy) before the missing ones are inserted at the top, in the same transaction.
    """
    lines: list[str] = []
    for table, chains in ruleset.tables.items():
        lines.append(f"*{table}")
        lines += [f":{chain} - [0:0]" for chain in chains]
        for chain, rules in chains.items():
            lines += [f"-A {chain} {rule}" for rule in rules]
        lines += [f"-D {jump.chain} {jump.rule}" for jump in stray_jumps if jump.table == table]
        lines += [f"-I {jump.chain} 1 {jump.rule}" for jump in missing_jumps if jump.table == table]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_ruleset(ruleset: IptablesRuleset) -> str:
    """The ruleset as iptables-restore input including every jump rule (for `plan`)."""
    return restore_payload(ruleset, JUMP_RULES)
