"""Drift between the kernel and the desired state, as a report a person can read.

`find_drift` asks `plan_sync` what a sync would change, so that `verify` and the proxy
agree on what counts (ownership through kube-ipvs0, excludeCIDRs, counters ignored,
virtual-server settings compared as kube-proxy does), and describes each difference
with the observed value beside the wanted one. Pure: no kernel access here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from ipvsproxy.core import nft_rules
from ipvsproxy.core.full_plan import plan_sync
from ipvsproxy.core.model import (
    IPAddress,
    IPNetwork,
    KernelState,
    RealServer,
    VirtualServer,
    VirtualServerKey,
    host_port,
)
from ipvsproxy.core.operations import (
    AddIPSetEntry,
    AddRealServer,
    AddVirtualServer,
    BindAddress,
    CreateIPSet,
    DeleteIPSetEntry,
    DeleteRealServer,
    DeleteVirtualServer,
    EnsureDummyInterface,
    EnsureSteering,
    Operation,
    ReplaceNftTable,
    RestoreChains,
    UnbindAddress,
    UpdateRealServer,
    UpdateVirtualServer,
)
from ipvsproxy.core.render import ipvsadm_dest_line, ipvsadm_service_line
from ipvsproxy.core.steering import STEER_TABLE

__all__ = ["Change", "Drift", "find_drift", "render_drift"]


class Change(Enum):
    MISSING = "missing"  # the kernel lacks something it should hold
    EXTRA = "extra"  # the kernel holds something of the proxy's it should not
    DIFFERS = "differs"  # both have it, with different settings


@dataclass(frozen=True, slots=True)
class Drift:
    """One difference: what kind of object, which one, and how it differs."""

    change: Change
    kind: str  # "virtual server", "real server", "address", "set entry", "chain", ...
    what: str  # the object, as the kernel tools name it
    detail: str = ""  # the observed and wanted values, when they differ
    lines: tuple[str, ...] = ()  # more to show below it (a chain's rules that differ)


def _service(key: VirtualServerKey) -> str:
    return f"{key.protocol.value} {host_port(key.address, key.port)}"


def _settings(server: VirtualServer) -> str:
    # ipvsadm's line without the address: scheduler, persistence, scheduler flags.
    words = ipvsadm_service_line(server).split()[2:]
    return " ".join(words)


def _destination(server: RealServer) -> str:
    words = ipvsadm_dest_line(server).split()
    return f"{words[2]} weight {words[3]}"  # forward method and weight


def _address(address: IPAddress) -> str:
    return str(address)


def _drifts(operation: Operation, observed: KernelState) -> Iterator[Drift]:
    match operation:
        case EnsureDummyInterface(name=name):
            yield Drift(Change.MISSING, "interface", name)
        case EnsureSteering(family=steer_family, mark=mark):
            yield Drift(
                Change.MISSING,
                "steering rule",
                f"IPv{steer_family.value} fwmark {mark:#x} lookup {STEER_TABLE} (and its route)",
            )
        case BindAddress(address=address):
            yield Drift(Change.MISSING, "address", _address(address))
        case UnbindAddress(address=address):
            yield Drift(Change.EXTRA, "address", _address(address))
        case CreateIPSet(name=name):
            yield Drift(Change.MISSING, "ipset", name)
        case AddIPSetEntry(set_name=name, entry=entry):
            yield Drift(Change.MISSING, "set entry", f"{name} {entry}")
        case DeleteIPSetEntry(set_name=name, entry=entry):
            yield Drift(Change.EXTRA, "set entry", f"{name} {entry}")
        case AddVirtualServer(server=server):
            yield Drift(Change.MISSING, "virtual server", _service(server.key), _settings(server))
        case DeleteVirtualServer(key=key):
            old = observed.virtual_servers.get(key)
            yield Drift(
                Change.EXTRA, "virtual server", _service(key), _settings(old) if old else ""
            )
        case UpdateVirtualServer(server=server):
            seen_server = observed.virtual_servers.get(server.key)
            seen = _settings(seen_server) if seen_server else "?"
            yield Drift(
                Change.DIFFERS,
                "virtual server",
                _service(server.key),
                f"{seen}, want {_settings(server)}",
            )
        case AddRealServer(virtual=virtual, server=server):
            yield Drift(
                Change.MISSING,
                "real server",
                f"{_service(virtual)} -> {host_port(server.address, server.port)}",
                _destination(server),
            )
        case UpdateRealServer(virtual=virtual, server=server):
            seen_real = observed.real_servers.get(virtual, {}).get(server.key)
            seen = _destination(seen_real) if seen_real else "?"
            yield Drift(
                Change.DIFFERS,
                "real server",
                f"{_service(virtual)} -> {host_port(server.address, server.port)}",
                f"{seen}, want {_destination(server)}",
            )
        case DeleteRealServer(virtual=virtual, key=key):
            yield Drift(
                Change.EXTRA,
                "real server",
                f"{_service(virtual)} -> {host_port(key.address, key.port)}",
            )
        case ReplaceNftTable(family=nft_family, sets=sets, chains=nft_chains):
            family = f"IPv{nft_family.value}"
            seen_chains = observed.nftables.get(nft_family)
            if seen_chains is None:
                yield Drift(Change.MISSING, "nftables table", f"{family} {nft_rules.TABLE}")
                return
            for name, _ in sets:
                if name not in observed.ipsets:
                    yield Drift(Change.MISSING, "set", f"{family} {name}")
            for chain, rules in nft_chains:
                seen_rules = seen_chains.get(chain)
                where = f"{family} {nft_rules.TABLE} {chain}"
                if seen_rules is None:
                    yield Drift(Change.MISSING, "chain", where)
                elif seen_rules != rules:
                    summary, lines = _rules_diff(seen_rules, rules)
                    yield Drift(Change.DIFFERS, "chain", where, summary, lines)
            wanted = {chain for chain, _ in nft_chains}
            for chain in seen_chains:
                if chain not in wanted:
                    yield Drift(Change.EXTRA, "chain", f"{family} {nft_rules.TABLE} {chain}")
        case RestoreChains(ruleset=ruleset, missing_jumps=jumps):
            family = f"IPv{ruleset.family.value}"
            read = observed.iptables.get(ruleset.family)
            seen_tables = read.tables if read is not None else {}
            for table, chains in ruleset.tables.items():
                for chain, rules in chains.items():
                    seen_rules = seen_tables.get(table, {}).get(chain)
                    where = f"{family} {table} {chain}"
                    if seen_rules is None:
                        yield Drift(Change.MISSING, "chain", where)
                    elif seen_rules != rules:
                        summary, lines = _rules_diff(seen_rules, rules)
                        yield Drift(Change.DIFFERS, "chain", where, summary, lines)
            for jump in jumps:
                yield Drift(
                    Change.MISSING,
                    "jump rule",
                    f"{family} {jump.table} {jump.chain} -j {jump.target}",
                )


def _rules_diff(have: Sequence[str], want: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """A summary, and the rules to add (+) or remove (-)."""
    missing = [f"+ {rule}" for rule in want if rule not in have]
    extra = [f"- {rule}" for rule in have if rule not in want]
    summary = f"{len(have)} rules, want {len(want)}"
    if not missing and not extra:
        summary += ": the same rules in another order"
    return summary, tuple(missing + extra)


def find_drift(
    desired: KernelState,
    observed: KernelState,
    *,
    exclude_cidrs: Sequence[IPNetwork] = (),
) -> list[Drift]:
    """Every difference a sync would repair, in the order a sync would repair them."""
    plan = plan_sync(desired, observed, exclude_cidrs=exclude_cidrs)
    return [drift for operation in plan.operations for drift in _drifts(operation, observed)]


_PLURALS: Mapping[str, str] = {"address": "addresses", "set entry": "set entries"}
_SIGNS: Mapping[Change, str] = {Change.MISSING: "+", Change.EXTRA: "-", Change.DIFFERS: "~"}


def render_drift(drifts: Sequence[Drift]) -> str:
    """One line per difference, grouped by kind, with a summary line first.

    `+` the kernel lacks it, `-` it should not be there, `~` it differs (seen, want).
    """
    if not drifts:
        return "in sync: the kernel holds what the Services and EndpointSlices ask for\n"
    counts: dict[Change, int] = {}
    for drift in drifts:
        counts[drift.change] = counts.get(drift.change, 0) + 1
    summary = ", ".join(f"{counts[c]} {c.value}" for c in Change if c in counts)
    lines = [f"drift: {len(drifts)} differences ({summary}); + missing, - extra, ~ differs"]
    kinds: dict[str, list[Drift]] = {}
    for drift in drifts:
        kinds.setdefault(drift.kind, []).append(drift)
    for kind, group in kinds.items():
        lines.append(f"{_PLURALS.get(kind, kind + 's')}:")
        for drift in group:
            detail = f"  ({drift.detail})" if drift.detail else ""
            lines.append(f"  {_SIGNS[drift.change]} {drift.what}{detail}")
            lines += [f"      {line}" for line in drift.lines]
    return "\n".join(lines) + "\n"
