"""`ipvsproxy cleanup` (kube-proxy's `--cleanup`, upstream ipvs/cleanup.go): remove
everything the proxy created, and nothing it did not."""

from __future__ import annotations

from ipvsproxy.core.ipsets import all_set_names
from ipvsproxy.core.model import DUMMY_INTERFACE, IPFamily
from ipvsproxy.core.operations import DeleteVirtualServer
from ipvsproxy.dataplane.interfaces import Dataplanes
from ipvsproxy.errors import KernelError


def cleanup(dataplanes: Dataplanes) -> list[str]:
    """Remove everything the proxy created: its virtual servers, chains, ipsets, kube-ipvs0.

    Like `kube-proxy --cleanup`, except that virtual servers on addresses not bound to
    kube-ipvs0 belong to someone else and stay. Every step runs even if an earlier one
    failed; the reasons are returned. kube-ipvs0 is kept while a virtual server on its
    addresses could not be deleted, so a later cleanup still knows that server is ours.
    """
    problems: list[str] = []
    try:
        owned = dataplanes.links.addresses(DUMMY_INTERFACE)
        stale = [key for key in dataplanes.ipvs.snapshot() if key.address in owned]
        failures = dataplanes.ipvs.execute([DeleteVirtualServer(key) for key in stale])
        problems += [failure.message for failure in failures]
        virtual_servers_left = bool(failures)
    except KernelError as exc:
        problems.append(f"deleting virtual servers: {exc}")
        virtual_servers_left = True
    for family in IPFamily:
        # Rules first: the kernel refuses to destroy a set a rule still matches.
        try:
            dataplanes.iptables.remove(family)
        except KernelError as exc:
            problems.append(f"removing IPv{family.value} iptables chains: {exc}")
    try:
        problems += [f.message for f in dataplanes.ipsets.destroy(all_set_names())]
    except KernelError as exc:
        problems.append(f"destroying ipsets: {exc}")
    if virtual_servers_left:
        problems.append(f"{DUMMY_INTERFACE} kept: virtual servers on its addresses remain")
        return problems
    try:
        dataplanes.links.delete_interface(DUMMY_INTERFACE)
    except KernelError as exc:
        problems.append(f"deleting {DUMMY_INTERFACE}: {exc}")
    return problems
