"""The nftables rules backend, as text for `nft -f`: sets, and a fixed set of chains.

The same desired state the iptables backend is built from (the entries of the 17 ipsets
per family, core/ipsets.py, and the masquerade settings, core/rules.py) is rendered as one
nftables table per family, `table ip ipvsproxy` and `table ip6 ipvsproxy`, rather than one
`inet` table: a typed set holds addresses of one family only (`ipv4_addr` or `ipv6_addr`),
so an `inet` table would need every set twice anyway, and IPVS, its virtual servers and the
steering policy rule are per family too. Each table holds:

- one named set per ipset, of nftables' own types: `addr . inet_proto . inet_service`
  concatenations for hash:ip,port, with one more address for hash:ip,port,ip, an interval
  set for hash:ip,port,net and `inet_service` for bitmap:port. Only the sets grow with
  Services;
- a fixed list of chains and rules (NAT_CHAINS, FILTER_CHAINS, MANGLE_CHAINS below) whose
  number never depends on Services: nftables accepts rules on empty sets, so unlike the
  iptables backend no rule waits for its set to fill.

Differences from the iptables chains, and why:

- no `-m ipvs`: node-originated traffic to a load balancer whose source ranges leave the
  node out is dropped in a filter chain on `output` at mangle priority, which runs before
  IPVS schedules the packet (NF_IP_PRI_NAT_DST + 2), where the destination is still the
  virtual address; one fixed rule, rather than one rule per such Service port;
- no ACCEPT in nat against other tables' DNAT (kubernetes#61938): an nftables verdict ends
  the processing of one base chain only, so it cannot shield a Service address from
  another table's rules; the table's nat chains therefore only mark for masquerade;
- the steering mark (core/steering.py) is set in a `filter` chain on `prerouting` at
  mangle priority and cleared on `input` at mangle priority, as mangle PREROUTING and
  INPUT do it in iptables; the policy rule and route are the same for both backends.

Pure: no I/O. The adapter (dataplane/nftables.py) writes the text with `nft -f -`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from ipvsproxy.core import ipsets
from ipvsproxy.core.ipsets import IPSetSpec
from ipvsproxy.core.model import IPFamily
from ipvsproxy.core.rules import MasqueradeSettings
from ipvsproxy.core.steering import steer_mark

TABLE = "ipvsproxy"

NAT_CHAINS = ("nat-prerouting", "nat-output", "nat-postrouting")
FILTER_CHAINS = ("filter-input", "filter-forward", "filter-output")
MANGLE_CHAINS = ("steer", "unmark")
REGULAR_CHAINS = (
    "services",
    "node-ports",
    "load-balancer",
    "mark-masq",
    "postrouting",
    "firewall",
    "source-ranges",
    "forward",
    "health-check",
    "ipvs-filter",
)

# Base chains: (chain, type, hook, priority).
BASE_CHAINS: tuple[tuple[str, str, str, str], ...] = (
    ("nat-prerouting", "nat", "prerouting", "dstnat"),
    ("nat-output", "nat", "output", "-100"),
    ("nat-postrouting", "nat", "postrouting", "srcnat"),
    ("filter-input", "filter", "input", "filter"),
    ("filter-forward", "filter", "forward", "filter"),
    # Before IPVS schedules node-originated packets (NF_IP_PRI_NAT_DST + 2).
    ("filter-output", "filter", "output", "mangle"),
    ("steer", "filter", "prerouting", "mangle"),
    ("unmark", "filter", "input", "mangle"),
)


@dataclass(frozen=True, slots=True)
class NftSet:
    """One ipset's nftables counterpart: its name in the table and its element type."""

    spec: IPSetSpec
    kind: str  # "ip,port", "ip,port,ip", "ip,port,net", "port", "ip"

    @property
    def name(self) -> str:
        return self.spec.name.removeprefix("KUBE-").lower().replace("-", "_")

    def type_for(self, family: IPFamily) -> str:
        addr = "ipv4_addr" if family is IPFamily.V4 else "ipv6_addr"
        return {
            "ip,port": f"{addr} . inet_proto . inet_service",
            "ip,port,ip": f"{addr} . inet_proto . inet_service . {addr}",
            "ip,port,net": f"{addr} . inet_proto . inet_service . {addr}",
            "port": "inet_service",
            "ip": addr,
        }[self.kind]

    @property
    def interval(self) -> bool:
        return self.kind == "ip,port,net"


def _kind(spec: IPSetSpec) -> str:
    if spec.type == "bitmap:port":
        return "port"
    return spec.type.removeprefix("hash:")


SETS: tuple[NftSet, ...] = tuple(NftSet(spec, _kind(spec)) for spec in ipsets.IPSETS)
_BY_IPSET: dict[str, tuple[NftSet, IPFamily]] = {
    nft_set.spec.name_for(family): (nft_set, family) for family in IPFamily for nft_set in SETS
}


def nft_set_for(ipset_name: str) -> tuple[NftSet, IPFamily] | None:
    """The nftables set, and its table's family, that stands for one of the proxy's ipsets."""
    return _BY_IPSET.get(ipset_name)


def element(entry: str) -> str:
    """An ipset entry in nftables' element syntax: "10.0.0.1,tcp:80" -> "10.0.0.1 . tcp . 80",
    "10.0.0.1,tcp:80,10.244.0.0/16" -> "10.0.0.1 . tcp . 80 . 10.244.0.0/16", "30080" and
    addresses unchanged."""
    parts = entry.split(",")
    if len(parts) == 1:
        return entry
    protocol, port = parts[1].split(":")
    return " . ".join([parts[0], protocol, port, *parts[2:]])


def entry(nft_set: NftSet, element_text: str) -> str:
    """The inverse of element(): an element as `nft -j list` gives it back, in ipset syntax."""
    parts = [part.strip() for part in element_text.split(" . ")]
    if len(parts) == 1:
        return parts[0]
    return ",".join([parts[0], f"{parts[1]}:{parts[2]}", *parts[3:]])


def _family_words(family: IPFamily) -> tuple[str, str, str, str]:
    """(table family, address keyword, loopback network, reject statement), as `nft list`
    prints them: a bare reject is ICMP(v6) port unreachable, /128 a bare address."""
    if family is IPFamily.V4:
        return "ip", "ip", "127.0.0.0/8", "reject"
    return "ip6", "ip6", "::1", "reject"


def _interface(name: str) -> str:
    """An iptables interface argument ("veth+") in nftables' wildcard syntax ("veth*")."""
    return f'"{name[:-1]}*"' if name.endswith("+") else f'"{name}"'


def chain_rules(family: IPFamily, masquerade: MasqueradeSettings) -> dict[str, tuple[str, ...]]:
    """Every chain of the family's table and its rules, in order: fixed, whatever the sets hold."""
    _, ip, loopback, reject = _family_words(family)
    mark = f"{masquerade.mark:#010x}"
    unmask = f"{0xFFFFFFFF & ~masquerade.mark:#x}"
    steer = steer_mark(masquerade.mark)
    dst = f"{ip} daddr . meta l4proto . th dport"

    def in_set(spec: IPSetSpec) -> str:
        return f"@{NftSet(spec, _kind(spec)).name}"

    own_cidrs = [c for c in masquerade.cluster_cidrs if IPFamily.of(c) is family]
    cluster = in_set(ipsets.CLUSTER_IP)
    if masquerade.masquerade_all:
        cluster_masq = f"{dst} {cluster} jump mark-masq"
    elif masquerade.local_interface:
        cluster_masq = (
            f"iifname != {_interface(masquerade.local_interface)} {dst} {cluster} jump mark-masq"
        )
    elif own_cidrs:
        cluster_masq = f"{ip} saddr != {own_cidrs[0]} {dst} {cluster} jump mark-masq"
    else:
        # Without a detector only node-originated traffic from a VIP source is marked.
        cluster_masq = f"{ip} saddr . meta l4proto . th dport {cluster} jump mark-masq"

    chains: dict[str, tuple[str, ...]] = {
        "nat-prerouting": ("jump services",),
        "nat-output": ("jump services",),
        "nat-postrouting": ("jump postrouting",),
        "filter-input": ("jump health-check", "jump firewall", "jump ipvs-filter"),
        "filter-forward": ("jump forward", "jump firewall"),
        "filter-output": (
            # The node's own traffic to a firewalled load balancer that does not admit it
            # (admitted: an element "lb . proto . port . lb" in load_balancer_source_ip).
            f"{dst} {in_set(ipsets.LOAD_BALANCER_FW)} "
            f"{dst} . {ip} daddr != {in_set(ipsets.LOAD_BALANCER_SOURCE_IP)} drop",
        ),
        "steer": (f"{dst} {in_set(ipsets.STEERED)} meta mark set meta mark | {steer:#010x}",),
        "unmark": (
            f"meta mark & {steer:#010x} == {steer:#010x} "
            f"meta mark set meta mark & {0xFFFFFFFF & ~steer:#x}",
        ),
        "services": (
            f"{ip} saddr {loopback} return",
            f"{dst} {in_set(ipsets.LOAD_BALANCER)} jump load-balancer",
            cluster_masq,
            f"{dst} {in_set(ipsets.EXTERNAL_IP)} jump mark-masq",
            "fib daddr type local jump node-ports",
        ),
        "node-ports": (
            f"tcp dport {in_set(ipsets.NODE_PORT_LOCAL_TCP)} return",
            f"tcp dport {in_set(ipsets.NODE_PORT_TCP)} jump mark-masq",
            f"udp dport {in_set(ipsets.NODE_PORT_LOCAL_UDP)} return",
            f"udp dport {in_set(ipsets.NODE_PORT_UDP)} jump mark-masq",
            f"{dst} {in_set(ipsets.NODE_PORT_LOCAL_SCTP)} return",
            f"{dst} {in_set(ipsets.NODE_PORT_SCTP)} jump mark-masq",
        ),
        "load-balancer": (
            f"{dst} {in_set(ipsets.LOAD_BALANCER_LOCAL)} return",
            "jump mark-masq",
        ),
        "mark-masq": (f"meta mark set meta mark | {mark}",),
        "postrouting": (
            f"{dst} . {ip} saddr {in_set(ipsets.LOOP_BACK)} masquerade",
            f"meta mark & {mark} != {mark} return",
            f"meta mark set meta mark & {unmask}",
            "masquerade fully-random",
        ),
        "firewall": (f"{dst} {in_set(ipsets.LOAD_BALANCER_FW)} jump source-ranges",),
        "source-ranges": (
            f"{dst} . {ip} saddr {in_set(ipsets.LOAD_BALANCER_SOURCE_CIDR)} return",
            f"{dst} . {ip} saddr {in_set(ipsets.LOAD_BALANCER_SOURCE_IP)} return",
            "drop",
        ),
        "forward": (
            f"meta mark & {mark} == {mark} accept",
            "ct state established,related accept",
        ),
        "health-check": (f"tcp dport {in_set(ipsets.HEALTH_CHECK_NODE_PORT)} accept",),
        # Host services listening on 0.0.0.0 must not answer on VIPs (kubernetes#72236).
        "ipvs-filter": (
            f"{dst} {in_set(ipsets.LOAD_BALANCER)} return",
            f"{dst} {cluster} return",
            f"{dst} {in_set(ipsets.EXTERNAL_IP)} return",
            f"{dst} {in_set(ipsets.EXTERNAL_IP_LOCAL)} return",
            f"tcp dport {in_set(ipsets.HEALTH_CHECK_NODE_PORT)} return",
            f"ct state new {ip} daddr {in_set(ipsets.IPVS_IPS)} {reject}",
        ),
    }
    return chains


def _elements(entries: Iterable[str]) -> str:
    return ", ".join(element(e) for e in sorted(entries))


def render_table(
    family: IPFamily,
    sets: Mapping[str, Collection[str]],
    *,
    masquerade: MasqueradeSettings,
) -> str:
    """The family's whole table in `nft -f` syntax, as `nft list table` would show it.

    sets: ipset name -> entries in ipset syntax (KernelState.ipsets); only this family's
    sets are taken.
    """
    table_family = _family_words(family)[0]
    lines = [f"table {table_family} {TABLE} {{"]
    for nft_set in SETS:
        members = sets.get(nft_set.spec.name_for(family), ())
        lines.append(f"\tset {nft_set.name} {{")
        lines.append(f"\t\ttype {nft_set.type_for(family)}")
        if nft_set.interval:
            lines.append("\t\tflags interval")
        if members:
            lines.append(f"\t\telements = {{ {_elements(members)} }}")
        lines.append("\t}")
    base = {name: (kind, hook, priority) for name, kind, hook, priority in BASE_CHAINS}
    for name, rules in chain_rules(family, masquerade).items():
        lines.append(f"\tchain {name} {{")
        if name in base:
            kind, hook, priority = base[name]
            lines.append(f"\t\ttype {kind} hook {hook} priority {priority}; policy accept;")
        lines += [f"\t\t{rule}" for rule in rules]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def full_payload(
    families: Iterable[IPFamily],
    sets: Mapping[str, Collection[str]],
    *,
    masquerade: MasqueradeSettings,
) -> str:
    """One `nft -f` transaction replacing the families' tables whole: each is declared
    (so that deleting it cannot fail), deleted and written again; the kernel applies the
    batch atomically, so packets see either the old tables or the new ones."""
    parts: list[str] = []
    for family in families:
        table_family = _family_words(family)[0]
        parts.append(f"table {table_family} {TABLE}\ndelete table {table_family} {TABLE}\n")
        parts.append(render_table(family, sets, masquerade=masquerade))
    return "".join(parts)


def element_payload(added: Iterable[tuple[str, str]], removed: Iterable[tuple[str, str]]) -> str:
    """One `nft -f` transaction for a partial sync: only the set elements that changed.

    added, removed: (ipset name, entry in ipset syntax); names that are not the proxy's
    sets are ignored. Deletions come first, so an entry that is both removed and added
    (a moved element) ends up present.
    """
    lines: list[str] = []
    for verb, changes in (("delete", removed), ("add", added)):
        grouped: dict[tuple[IPFamily, str], list[str]] = {}
        for set_name, member in changes:
            found = nft_set_for(set_name)
            if found is None:
                continue
            nft_set, family = found
            grouped.setdefault((family, nft_set.name), []).append(member)
        for (family, name), members in grouped.items():
            table_family = _family_words(family)[0]
            lines.append(f"{verb} element {table_family} {TABLE} {name} {{ {_elements(members)} }}")
    return "\n".join(lines) + ("\n" if lines else "")


def delete_payload(families: Iterable[IPFamily]) -> str:
    """Removing the tables (cleanup, or switching back to iptables): declared first so
    that a missing table is no error."""
    return "".join(
        f"table {_family_words(f)[0]} {TABLE}\ndelete table {_family_words(f)[0]} {TABLE}\n"
        for f in families
    )


@dataclass(frozen=True, slots=True)
class NftTableState:
    """One family's table as read back: the sets' entries by ipset name, in ipset syntax
    (comparable with KernelState.ipsets), and each chain's rules as `nft list` prints them."""

    family: IPFamily
    sets: Mapping[str, frozenset[str]]
    chains: Mapping[str, tuple[str, ...]]


def parse_listing(family: IPFamily, text: str) -> NftTableState:
    """`nft list table <family> ipvsproxy` output (or render_table's) back into values.

    Base chain declarations ("type ... hook ...") are kept as the chain's first line, so
    that a chain whose hook or priority was changed counts as drift.
    """
    by_name = {nft_set.name: nft_set for nft_set in SETS}
    sets: dict[str, frozenset[str]] = {}
    chains: dict[str, tuple[str, ...]] = {}
    current_set: NftSet | None = None
    current_chain: list[str] | None = None
    chain_name = ""
    pending: list[str] = []  # element text of a set, across lines
    in_elements = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if in_elements:
            pending.append(line)
            if line.endswith("}"):
                in_elements = False
            continue
        if line.startswith("set ") and line.endswith("{"):
            current_set = by_name.get(line.split()[1])
            pending = []
            continue
        if line.startswith("chain ") and line.endswith("{"):
            current_chain, chain_name = [], line.split()[1]
            continue
        if line == "}":
            if current_set is not None:
                body = " ".join(pending).strip()
                body = body.removeprefix("elements = {").removesuffix("}")
                members = [m.strip() for m in body.split(",") if m.strip()]
                sets[current_set.spec.name_for(family)] = frozenset(
                    entry(current_set, m) for m in members
                )
                current_set = None
            elif current_chain is not None:
                chains[chain_name] = tuple(current_chain)
                current_chain = None
            continue
        if current_set is not None:
            if line.startswith("elements = {"):
                pending = [line]
                in_elements = not line.endswith("}")
            continue
        if current_chain is not None:
            current_chain.append(line)
    return NftTableState(family, sets, chains)


def desired_chains(family: IPFamily, masquerade: MasqueradeSettings) -> dict[str, tuple[str, ...]]:
    """The chains as parse_listing() returns them for a table render_table() wrote."""
    base = {name: (kind, hook, priority) for name, kind, hook, priority in BASE_CHAINS}
    result: dict[str, tuple[str, ...]] = {}
    for name, rules in chain_rules(family, masquerade).items():
        head: tuple[str, ...] = ()
        if name in base:
            kind, hook, priority = base[name]
            head = (f"type {kind} hook {hook} priority {priority}; policy accept;",)
        result[name] = head + rules
    return result
