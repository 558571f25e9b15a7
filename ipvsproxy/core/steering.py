"""External and load-balancer IPs are steered to IPVS by port, not bound to kube-ipvs0.

Why: kube-proxy binds every external IP and load-balancer ingress IP to kube-ipvs0, which
puts a `local` route for the whole address in table `local` on every node. When that
address is some host's own (a neighbour on the node's subnet, a master's IP), every node
then delivers all of that host's traffic to itself: the Service's ports go to IPVS, every
other port and ICMP is rejected by KUBE-IPVS-FILTER, and the node is cut off from the host
(kubernetes#75290, #93175, #104679, #127410). The iptables and nftables proxies only ever
intercept the Service's (address, protocol, port), so they have no such problem.

What the kernel allows: IPVS schedules IPv4/IPv6 requests only at LOCAL_IN and LOCAL_OUT
(net/netfilter/ipvs/ip_vs_core.c); in FORWARD it handles replies only. A packet from a pod
or an outside client must therefore be routed as local to reach IPVS, but only for the
Service's ports. So:

- the (address, protocol, port) of every external IP and load-balancer IP that is not a
  node address go to the ipset KUBE-IPVS-STEERED (hash:ip,port) instead of kube-ipvs0;
- one fixed rule in mangle (chain KUBE-IPVS-STEER, jumped to from PREROUTING) marks
  packets matching the set with STEER_MARK; mangle runs before the routing decision.
  Another (chain KUBE-IPVS-UNMARK, from mangle INPUT, before IPVS) clears the mark once
  the packet is routed in: after IPVS rewrote the destination to a pod, nf_nat's LOCAL_OUT
  hook routes the packet again (ip_route_me_harder, with the skb's mark), and a marked
  packet would be routed locally again instead of to the pod (seen in the sandbox kernel:
  the SYN went to the node's own TCP, which answered with a reset);
- one policy rule per family, `fwmark STEER_MARK/STEER_MARK lookup STEER_TABLE` at
  STEER_PRIORITY (before `main`), and one route in that table, `local default dev lo`,
  make marked packets local: they reach LOCAL_IN, where IPVS takes them as the ordinary
  (address, port) virtual server, the destination being unchanged. This is the LVS
  "VIP-less director" kube-router uses for DSR external IPs (with an fwmark service there).

Every other packet to the address is routed as before, to its real owner. Node-originated
packets need no mark: IPVS takes them at LOCAL_OUT whatever their route, so they leave
from a node address (the VIP is not local). Marking them in mangle OUTPUT would, for the
same reason as above, send them back to the node after IPVS's DNAT. The number of
iptables rules, policy rules and routes stays fixed whatever the number of Services.
Reverse-path filtering is unaffected: it checks the source, which is routed as usual.

Which addresses: every external IP and load-balancer IP except the node's own addresses
(those are local already and stay as they are), as iptables mode intercepts them all by
port. Deciding per address (only those on a connected subnet, say) would leave nodes on
other subnets cut off from the same host, and make one Service behave differently from
node to node. Cluster IPs stay bound to kube-ipvs0: they belong to no host.

What operators see differ from kube-proxy: external and load-balancer IPs are not on
kube-ipvs0 nor in KUBE-IPVS-IPS, and the node no longer answers ARP for them (it did,
without strictARP, which is what strictARP exists to stop); they must reach the nodes by
routing, BGP or a load balancer that announces them, as in iptables mode.
"""

from __future__ import annotations

from typing import Final

__all__ = ["STEER_PRIORITY", "STEER_TABLE", "steer_mark"]

# A routing table and rule priority of the proxy's own: before `main` (32766), apart from
# kube-router's DSR rule (32764).
STEER_TABLE: Final = 19280
STEER_PRIORITY: Final = 32760

# Bit 13: clear of kube-proxy's masquerade bit 14 (0x4000) and kubelet's drop bit 15
# (0x8000), of Calico's 0xffff0000 and of Cilium's 0x0f00.
_STEER_MARK: Final = 0x2000
_FALLBACK_MARK: Final = 0x1000


def steer_mark(masquerade_mark: int) -> int:
    """The fwmark bit that steers packets to IPVS, never the masquerade bit."""
    return _FALLBACK_MARK if masquerade_mark & _STEER_MARK else _STEER_MARK
