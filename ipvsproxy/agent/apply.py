"""Apply a plan through the kernel adapters, collecting failures instead of stopping.

Consecutive operations of one subsystem go to its adapter as one batch (one netlink write
per few hundred IPVS messages, one ipset restore or one `nft -f` of set elements). If the
interface cannot be created or the fixed rules cannot be written (iptables-restore, or an
nftables table), removals are skipped, as kube-proxy aborts its sync then: the next
sync retries with everything still in place.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast, get_args

from ipvsproxy.core import ipsets
from ipvsproxy.core.full_plan import Plan
from ipvsproxy.core.model import DUMMY_INTERFACE, IPAddress, IPFamily, VirtualServerKey
from ipvsproxy.core.operations import (
    AddIPSetEntry,
    AddRealServer,
    AddVirtualServer,
    BindAddress,
    DeleteIPSetEntry,
    DeleteRealServer,
    DeleteVirtualServer,
    EnsureDummyInterface,
    EnsureSteering,
    IPSetOperation,
    IpvsOperation,
    Operation,
    OperationFailure,
    ReplaceNftTable,
    RestoreChains,
    UnbindAddress,
    UpdateRealServer,
    UpdateVirtualServer,
)
from ipvsproxy.core.ownership import record_entries
from ipvsproxy.dataplane.interfaces import Dataplanes
from ipvsproxy.errors import KernelError

_IPVS = get_args(IpvsOperation)
_IPSET = get_args(IPSetOperation)
_RULES = (RestoreChains, ReplaceNftTable)
_STEERED_SETS = frozenset(ipsets.STEERED.name_for(family) for family in IPFamily)
_REMOVALS = (DeleteRealServer, DeleteVirtualServer, UnbindAddress, DeleteIPSetEntry)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What happened to a plan."""

    applied: int
    failures: tuple[OperationFailure, ...]
    removals_skipped: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures and not self.removals_skipped


def _subsystem(op: Operation) -> str:
    if isinstance(op, _IPVS):
        return "ipvs"
    if isinstance(op, _IPSET):
        return "ipset"
    if isinstance(op, BindAddress | UnbindAddress):
        return "address"
    if isinstance(op, RestoreChains | ReplaceNftTable):
        return "rules"
    if isinstance(op, EnsureSteering):
        return "steering"
    return "interface"


# (subsystem, removal) by operation class: a cold start batches one operation per real
# server, and the isinstance chain of _subsystem was a fifth of applying them.
_KINDS: dict[type, tuple[str, bool]] = {}


def _kind(op: Operation) -> tuple[str, bool]:
    kind = _KINDS[type(op)] = (_subsystem(op), isinstance(op, _REMOVALS))
    return kind


def _batches(ops: Sequence[Operation]) -> list[tuple[str, bool, list[Operation]]]:
    """Runs of operations of one subsystem, removals apart from the rest."""
    batches: list[tuple[str, bool, list[Operation]]] = []
    kinds = _KINDS
    last: tuple[str, bool] | None = None
    run: list[Operation] = []
    for op in ops:
        kind = kinds.get(type(op)) or _kind(op)
        # iptables-restore runs per family (one family's failure must not hold the
        # other's); nftables tables drifted together are written in one transaction.
        if kind == last and (kind[0] != "rules" or isinstance(op, ReplaceNftTable)):
            run.append(op)
        else:
            run = [op]
            batches.append((kind[0], kind[1], run))
            last = kind
    return batches


def _run_batch(kind: str, ops: list[Operation], dp: Dataplanes) -> list[OperationFailure]:
    # _batches put only operations of this kind in the batch.
    if kind == "ipvs":
        return dp.ipvs.execute(cast(list[IpvsOperation], ops))
    if kind == "ipset":
        return dp.rules.apply_sets(cast(list[IPSetOperation], ops))
    if kind == "address":
        binds = [op.address for op in ops if isinstance(op, BindAddress)]
        unbinds = [op.address for op in ops if isinstance(op, UnbindAddress)]
        return dp.links.bind(DUMMY_INTERFACE, binds) + dp.links.unbind(DUMMY_INTERFACE, unbinds)
    if kind == "rules":
        return dp.rules.write_rules([op for op in ops if isinstance(op, _RULES)])
    if kind == "steering":
        return [
            failure
            for op in ops
            if isinstance(op, EnsureSteering)
            and (failure := dp.links.ensure_steering(op)) is not None
        ]
    op = ops[0]
    assert isinstance(op, EnsureDummyInterface)
    try:
        dp.links.ensure_interface(op.name)
    except KernelError as exc:
        return [OperationFailure(op, exc.errno, str(exc))]
    return []


def _service_address(op: Operation) -> IPAddress | None:
    """The service address an IPVS operation works on."""
    if isinstance(op, AddVirtualServer | UpdateVirtualServer):
        return op.server.address
    if isinstance(op, DeleteVirtualServer):
        return op.key.address
    if isinstance(op, AddRealServer | UpdateRealServer | DeleteRealServer):
        return op.virtual.address
    return None


def _steered_entry(op: Operation) -> tuple[str, str] | None:
    """The KUBE-IPVS-STEERED entry of the virtual server an IPVS operation works on."""
    if isinstance(op, AddVirtualServer | UpdateVirtualServer):
        return _key_entry(op.server.key)
    if isinstance(op, DeleteVirtualServer):
        return _key_entry(op.key)
    if isinstance(op, AddRealServer | UpdateRealServer | DeleteRealServer):
        return _key_entry(op.virtual)
    return None


def _key_entry(key: VirtualServerKey) -> tuple[str, str]:
    name = ipsets.STEERED.name_for(IPFamily.of(key.address))
    return name, ipsets.ip_port_entry(key.address, key.protocol, key.port)


def _set_entry(op: Operation) -> tuple[str, str] | None:
    if isinstance(op, AddIPSetEntry | DeleteIPSetEntry):
        return op.set_name, op.entry
    return None


def apply_plan(plan: Plan, dataplanes: Dataplanes) -> ApplyResult:
    """Apply every operation in order; failures are collected, never raised.

    Three rules keep ownership (core/ownership.py: a virtual server is ours while its
    address is on kube-ipvs0 or an ipset entry records it, KUBE-IPVS-STEERED's among them)
    true whatever fails: no virtual server is created on an address that could not be
    bound (a steered port whose entry could not be added), no address is unbound and no
    recording set entry deleted while a virtual server it vouches for could not be deleted.
    Beyond that, a failed interface, rules write or adapter call skips all removals.
    """
    applied = 0
    failures: list[OperationFailure] = []
    blocking = False
    skipped = False
    unbound: set[IPAddress] = set()  # bind failed: no virtual servers there
    undeleted: set[IPAddress] = set()  # a virtual server delete failed: keep the address
    records: set[tuple[str, str]] = set()  # ...and the set entries that record it
    unsteered: set[tuple[str, str]] = set()  # steered entry add failed: no virtual server
    for kind, removal, ops in _batches(plan.operations):
        if blocking and removal:
            skipped = True
            continue
        if kind == "ipvs" and not removal and unbound:
            held = [op for op in ops if _service_address(op) in unbound]
            failures += [
                OperationFailure(
                    op,
                    errno.EADDRNOTAVAIL,
                    f"not applied: {_service_address(op)} is not bound to {DUMMY_INTERFACE}",
                )
                for op in held
            ]
            ops = [op for op in ops if _service_address(op) not in unbound]
        if kind == "ipvs" and not removal and unsteered:
            held = [op for op in ops if _steered_entry(op) in unsteered]
            failures += [
                OperationFailure(op, errno.EADDRNOTAVAIL, "not applied: its port is not steered")
                for op in held
            ]
            ops = [op for op in ops if op not in held]
        if kind == "address" and removal and undeleted:
            kept = [op for op in ops if isinstance(op, UnbindAddress) and op.address in undeleted]
            skipped = skipped or bool(kept)
            ops = [op for op in ops if op not in kept]
        if kind == "ipset" and removal and records:
            left = [
                op
                for op in ops
                if not (isinstance(op, DeleteIPSetEntry) and (op.set_name, op.entry) in records)
            ]
            skipped = skipped or len(left) < len(ops)
            ops = left
        if not ops:
            continue
        try:
            batch_failures = _run_batch(kind, ops, dataplanes)
        except KernelError as exc:
            # The adapter lost contact with the kernel: nothing in the batch is known done.
            batch_failures = [OperationFailure(op, exc.errno, str(exc)) for op in ops]
            blocking = True
        failures += batch_failures
        applied += len(ops) - len(batch_failures)
        if batch_failures and kind in ("interface", "rules"):
            blocking = True
        for failure in batch_failures:
            failed = failure.operation
            if isinstance(failed, BindAddress):
                unbound.add(failed.address)
            elif isinstance(failed, DeleteVirtualServer):
                undeleted.add(failed.key.address)
                records.update(record_entries(failed.key))
            elif isinstance(failed, AddIPSetEntry) and failed.set_name in _STEERED_SETS:
                unsteered.add((failed.set_name, failed.entry))
    return ApplyResult(applied=applied, failures=tuple(failures), removals_skipped=skipped)
