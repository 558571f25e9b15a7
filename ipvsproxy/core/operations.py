"""Typed kernel operations: what a plan is made of and what the adapters execute."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ipvsproxy.core.model import (
    IPAddress,
    IPFamily,
    IptablesRuleset,
    RealServer,
    RealServerKey,
    VirtualServer,
    VirtualServerKey,
    _slot_setters,
)
from ipvsproxy.core.rules import JumpRule

# --- IPVS ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddVirtualServer:
    server: VirtualServer


@dataclass(frozen=True, slots=True)
class UpdateVirtualServer:
    server: VirtualServer


@dataclass(frozen=True, slots=True)
class DeleteVirtualServer:
    key: VirtualServerKey


@dataclass(frozen=True, slots=True)
class AddRealServer:
    virtual: VirtualServerKey
    server: RealServer


_ADD_REAL_SERVER_SLOTS = _slot_setters(AddRealServer, "virtual", "server")


def add_real_servers(
    virtual: VirtualServerKey, servers: Iterable[RealServer]
) -> list[AddRealServer]:
    """[AddRealServer(virtual, s) for s in servers], equal, in half the time: a cold start
    makes one per real server, and a frozen dataclass sets each field through
    object.__setattr__."""
    new = object.__new__
    set_virtual, set_server = _ADD_REAL_SERVER_SLOTS
    ops: list[AddRealServer] = []
    append = ops.append
    for server in servers:
        op = new(AddRealServer)
        set_virtual(op, virtual)
        set_server(op, server)
        append(op)
    return ops


@dataclass(frozen=True, slots=True)
class UpdateRealServer:
    virtual: VirtualServerKey
    server: RealServer


@dataclass(frozen=True, slots=True)
class DeleteRealServer:
    virtual: VirtualServerKey
    key: RealServerKey


IpvsOperation = (
    AddVirtualServer
    | UpdateVirtualServer
    | DeleteVirtualServer
    | AddRealServer
    | UpdateRealServer
    | DeleteRealServer
)

# --- kube-ipvs0 addresses -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnsureDummyInterface:
    name: str


@dataclass(frozen=True, slots=True)
class BindAddress:
    address: IPAddress


@dataclass(frozen=True, slots=True)
class UnbindAddress:
    address: IPAddress


# --- policy routing (steering.py) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnsureSteering:
    """Make packets of `family` carrying `mark` route locally, to IPVS: the policy rule
    (replacing one of the proxy's with another mark) and the local default route."""

    family: IPFamily
    mark: int


# --- ipsets -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateIPSet:
    name: str
    create_args: str  # the rest of ipset's "create" line: "hash:ip,port family inet ..."


@dataclass(frozen=True, slots=True)
class AddIPSetEntry:
    set_name: str
    entry: str


@dataclass(frozen=True, slots=True)
class DeleteIPSetEntry:
    set_name: str
    entry: str


IPSetOperation = CreateIPSet | AddIPSetEntry | DeleteIPSetEntry

# --- iptables -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestoreChains:
    """Replace the proxy's chains of one family in one iptables-restore --noflush,
    inserting the jump rules that the built-in chains lack."""

    ruleset: IptablesRuleset
    missing_jumps: tuple[JumpRule, ...] = ()


# --- nftables -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplaceNftTable:
    """Write one family's nftables table whole, in one `nft -f` transaction (declare,
    delete, write again: core/nft_rules.table_payload): its chains, and its sets with
    these entries (ipset names and syntax, as KernelState.ipsets)."""

    family: IPFamily
    sets: tuple[tuple[str, frozenset[str]], ...]
    chains: tuple[tuple[str, tuple[str, ...]], ...]


RulesOperation = RestoreChains | ReplaceNftTable

Operation = (
    IpvsOperation
    | EnsureDummyInterface
    | BindAddress
    | UnbindAddress
    | EnsureSteering
    | IPSetOperation
    | RestoreChains
    | ReplaceNftTable
)


@dataclass(frozen=True, slots=True)
class OperationFailure:
    """An operation the kernel refused; errno is 0 when no errno applies."""

    operation: Operation
    errno: int
    message: str
