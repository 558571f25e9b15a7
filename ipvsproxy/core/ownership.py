"""Which virtual servers in the kernel are the proxy's, from the kernel alone.

kube-proxy deletes every virtual server of its family that it does not want (except in
excludeCIDRs). The proxy shares IPVS with other tools (keepalived, a second director),
so it claims only what the kernel itself records as its own, with no state file, in a way
that stays true whatever point a SIGKILL interrupts a sync at:

- a virtual server on an address bound to kube-ipvs0: an address is bound before its
  virtual servers are created and unbound only after they are deleted;
- a virtual server on a host address (a NodePort; an external or load-balancer IP that
  is already the node's, so not bound again): the proxy's ipsets record it. A NodePort's
  (protocol, port) is in the NodePort sets of its family (for SCTP its exact
  address,port), an external or load-balancer IP's address,port in KUBE-EXTERNAL-IP(-LOCAL)
  or KUBE-LOAD-BALANCER, a steered port's in KUBE-IPVS-STEERED. Every plan adds a set
  entry before the virtual servers it records and deletes it only after them, and a
  failed delete keeps the entry (agent/apply.py), so a virtual server whose Service went
  while no agent ran (a restart, the switch-over from kube-proxy, which fills the same
  sets) is still known as ours.

A NodePort is the cluster's on every node address, so another tool's virtual server on a
port that is also one of the cluster's NodePorts is taken for the proxy's; any other
virtual server of another tool on a host address is never touched.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

from ipvsproxy.core import ipsets
from ipvsproxy.core.model import IPAddress, IPFamily, Protocol, VirtualServerKey

# The sets every NodePort is in (externalTrafficPolicy Local ones are in the LOCAL set too).
_NODE_PORT_SETS: Mapping[Protocol, tuple[ipsets.IPSetSpec, ipsets.IPSetSpec]] = {
    Protocol.TCP: (ipsets.NODE_PORT_TCP, ipsets.NODE_PORT_LOCAL_TCP),
    Protocol.UDP: (ipsets.NODE_PORT_UDP, ipsets.NODE_PORT_LOCAL_UDP),
    Protocol.SCTP: (ipsets.NODE_PORT_SCTP, ipsets.NODE_PORT_LOCAL_SCTP),
}


# KUBE-IPVS-STEERED: external and load-balancer ports steered to IPVS by policy routing,
# on addresses not bound to kube-ipvs0 (steering.py).
_ADDRESS_SETS = (
    ipsets.EXTERNAL_IP,
    ipsets.EXTERNAL_IP_LOCAL,
    ipsets.LOAD_BALANCER,
    ipsets.STEERED,
)


def record_entries(key: VirtualServerKey) -> Iterator[tuple[str, str]]:
    """The (set, entry) pairs any one of which records `key` as the proxy's."""
    family = IPFamily.of(key.address)
    address_port = ipsets.ip_port_entry(key.address, key.protocol, key.port)
    node_port = address_port if key.protocol is Protocol.SCTP else str(key.port)
    for spec in _NODE_PORT_SETS[key.protocol]:
        yield spec.name_for(family), node_port
    for spec in _ADDRESS_SETS:
        yield spec.name_for(family), address_port


def recorded(key: VirtualServerKey, sets: Mapping[str, Collection[str]]) -> bool:
    """Whether the proxy's sets, as read from the kernel, record `key`."""
    return any(entry in sets.get(name, ()) for name, entry in record_entries(key))


def owned(
    key: VirtualServerKey,
    bound: Collection[IPAddress],
    sets: Mapping[str, Collection[str]],
) -> bool:
    """Whether the virtual server `key` is the proxy's (module docstring).

    bound: the addresses on kube-ipvs0; sets: the proxy's ipsets as read from the kernel.
    """
    return key.address in bound or recorded(key, sets)
