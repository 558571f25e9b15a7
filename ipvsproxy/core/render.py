"""Kernel state as the real tools print it: ipvsadm -Ln, ipset save, iptables-restore input."""

from __future__ import annotations

from collections.abc import Mapping

from ipvsproxy.core import nft_rules
from ipvsproxy.core.ipsets import all_set_names
from ipvsproxy.core.model import (
    IPVS_FLAG_PERSISTENT,
    ForwardMethod,
    IPFamily,
    IptablesRuleset,
    KernelState,
    RealServer,
    VirtualServer,
    address_sort_key,
    host_port,
)
from ipvsproxy.core.rules import CHAINS, JUMP_RULES, restore_payload

SECTIONS = ("ipvs", "ipsets", "iptables", "nftables", "addresses")
# The sections of the rules backend the state does not use are left out (empty).
_IPTABLES_ONLY = ("ipsets", "iptables")

_IPVSADM_HEADER = (
    "IP Virtual Server version 1.2.1 (size=4096)\n"
    "Prot LocalAddress:Port Scheduler Flags\n"
    "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
)
_FORWARD_NAMES = {
    ForwardMethod.MASQ: "Masq",
    ForwardMethod.LOCAL: "Local",
    ForwardMethod.TUNNEL: "Tunnel",
    ForwardMethod.ROUTE: "Route",
    ForwardMethod.BYPASS: "Bypass",
}
# ipvsadm's names for the scheduler flags, by scheduler.
_SCHED_FLAGS = {
    "sh": ((0x08, "sh-fallback"), (0x10, "sh-port")),
    "mh": ((0x08, "mh-fallback"), (0x10, "mh-port")),
}


def ipvsadm_service_line(server: VirtualServer) -> str:
    line = f"{server.protocol.value:<4} {host_port(server.address, server.port)} {server.scheduler}"
    if server.flags & IPVS_FLAG_PERSISTENT:
        line += f" persistent {server.timeout}"
    names = [name for bit, name in _SCHED_FLAGS.get(server.scheduler, ()) if server.flags & bit]
    if names:
        line += " " + ",".join(names)  # ipvsadm joins scheduler flags with commas
    return line


def ipvsadm_dest_line(server: RealServer) -> str:
    return (
        f"  -> {host_port(server.address, server.port):<28} "
        f"{_FORWARD_NAMES[server.forward]:<7} {server.weight:<6} "
        f"{server.active_connections:<10} {server.inactive_connections:<10}"
    )


def render_ipvs(state: KernelState) -> str:
    """As `ipvsadm -Ln` prints it, services sorted by address, protocol and port."""
    lines = [_IPVSADM_HEADER.rstrip("\n")]
    for key in sorted(state.virtual_servers, key=lambda k: k.sort_key()):
        lines.append(ipvsadm_service_line(state.virtual_servers[key]))
        servers = state.real_servers.get(key, {})
        for rs_key in sorted(servers, key=lambda k: k.sort_key()):
            lines.append(ipvsadm_dest_line(servers[rs_key]))
    return "\n".join(lines) + "\n"


def render_ipsets(ipsets: Mapping[str, frozenset[str]]) -> str:
    """As `ipset save` prints the proxy's sets (without kernel-chosen bucketsize/initval)."""
    specs = all_set_names()
    lines: list[str] = []
    for name in sorted(ipsets, key=lambda n: (n.startswith("KUBE-6-"), n)):
        spec, family = specs[name]
        lines.append(f"create {name} {spec.create_args(family)}")
        lines += [f"add {name} {entry}" for entry in sorted(ipsets[name])]
    return "\n".join(lines) + ("\n" if lines else "")


def render_iptables(rulesets: Mapping[IPFamily, IptablesRuleset]) -> str:
    """iptables-restore input per family: the proxy's chains, then its jump rules as inserts.

    A ruleset read back from the kernel is cut down to the proxy's chains and the jump
    rules actually present; a desired ruleset gets every jump rule.
    """
    parts = []
    for family, ruleset in rulesets.items():
        tables = ruleset.tables
        ours = {
            table: {
                chain: tables[table][chain] for chain in chains if chain in tables.get(table, {})
            }
            for table, chains in CHAINS.items()
        }
        jumps = [
            jump
            for jump in JUMP_RULES
            if jump.chain not in tables.get(jump.table, {})
            or jump.rule in tables[jump.table][jump.chain]
        ]
        label = "iptables-restore (IPv4)" if family is IPFamily.V4 else "ip6tables-restore (IPv6)"
        payload = restore_payload(IptablesRuleset(family=family, tables=ours), jumps)
        parts.append(f"# {label}\n{payload}")
    return "".join(parts)


def render_nftables(state: KernelState, *, listing: bool = False) -> str:
    """The nftables backend's tables: as `nft -f` takes them in a full sync (each table
    declared, deleted and written again in one transaction), or with `listing` as
    `nft list table` prints them."""
    parts = []
    for family, chains in state.nftables.items():
        if listing:
            parts.append(nft_rules.render_chains(family, state.ipsets, chains))
        else:
            parts.append(nft_rules.table_payload(family, state.ipsets, chains))
    return "".join(parts)


def render_addresses(state: KernelState) -> str:
    ordered = sorted(state.addresses, key=address_sort_key)
    return "".join(f"{address}\n" for address in ordered)


def render(state: KernelState, section: str | None, *, listing: bool = False) -> str:
    """One section, or all of them under "# <section>" headers; the sections of the
    rules backend the state does not use are empty (and left out of "all")."""
    nft = bool(state.nftables) and not state.iptables
    renderers = {
        "ipvs": lambda: render_ipvs(state),
        "ipsets": lambda: "" if nft else render_ipsets(state.ipsets),
        "iptables": lambda: render_iptables(state.iptables),
        "nftables": lambda: render_nftables(state, listing=listing),
        "addresses": lambda: render_addresses(state),
    }
    if section is not None:
        return renderers[section]()
    shown = [
        name
        for name in SECTIONS
        if not (nft and name in _IPTABLES_ONLY) and not (not nft and name == "nftables")
    ]
    return "".join(f"# {name}\n{renderers[name]()}" for name in shown)
