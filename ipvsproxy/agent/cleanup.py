"""`ipvsproxy cleanup` (kube-proxy's `--cleanup`, upstream ipvs/cleanup.go): remove
everything the proxy created, and nothing it did not."""

from __future__ import annotations

from ipvsproxy.core.model import DUMMY_INTERFACE, IPFamily
from ipvsproxy.core.operations import DeleteVirtualServer
from ipvsproxy.core.ownership import owned
from ipvsproxy.dataplane.interfaces import Dataplanes
from ipvsproxy.errors import KernelError


def cleanup(dataplanes: Dataplanes) -> list[str]:
    """Remove everything the proxy created: its virtual servers, chains and ipsets or
    nftables tables (both backends'), steering rules and routes, kube-ipvs0.

    Like `kube-proxy --cleanup`, except that only virtual servers the kernel records as the
    proxy's go (core/ownership.py: on kube-ipvs0's addresses, or recorded in its ipsets,
    like NodePorts); other tools' stay. Every step runs even if an earlier one failed; the
    reasons are returned. kube-ipvs0 and the ipsets are kept while a virtual server they
    vouch for could not be deleted, so a later cleanup still knows that server is ours.
    """
    problems: list[str] = []
    try:
        bound = dataplanes.links.addresses(DUMMY_INTERFACE)
        sets = dataplanes.rules.read(()).sets
        stale = [key for key in dataplanes.ipvs.snapshot() if owned(key, bound, sets)]
        failures = dataplanes.ipvs.execute([DeleteVirtualServer(key) for key in stale])
        problems += [failure.message for failure in failures]
        virtual_servers_left = bool(failures)
    except KernelError as exc:
        problems.append(f"deleting virtual servers: {exc}")
        virtual_servers_left = True
    for family in IPFamily:
        try:
            dataplanes.links.remove_steering(family)
        except KernelError as exc:
            problems.append(f"removing IPv{family.value} steering rule and route: {exc}")
    # Rules first, then the sets (the kernel refuses to destroy a set a rule still
    # matches); the sets stay while a virtual server they record remains.
    try:
        problems += dataplanes.rules.remove(tuple(IPFamily), keep_sets=virtual_servers_left)
    except KernelError as exc:
        problems.append(f"removing the rules and sets: {exc}")
    # After a switch of rules backend the other one's objects may be there too.
    try:
        problems += dataplanes.rules.remove_other_backend()
    except KernelError as exc:
        problems.append(f"removing the other rules backend's objects: {exc}")
    if virtual_servers_left:
        problems.append(
            f"{DUMMY_INTERFACE} and the ipsets kept (or nftables sets): virtual servers they "
            "record remain"
        )
        return problems
    try:
        dataplanes.links.delete_interface(DUMMY_INTERFACE)
    except KernelError as exc:
        problems.append(f"deleting {DUMMY_INTERFACE}: {exc}")
    return problems
