"""The proxy's ipsets as a data table, with kube-proxy's names, types and entry formats.

Every set is created for each address family even while empty: the fixed iptables rules
refer to some of them unconditionally, and ipset refuses rules naming a missing set.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from ipvsproxy.core.model import IPAddress, IPFamily, Protocol, VirtualServerKey


@dataclass(frozen=True, slots=True)
class IPSetSpec:
    """One set: its IPv4 name, ipset type and the comment its iptables rule carries."""

    name: str
    type: str
    comment: str

    def name_for(self, family: IPFamily) -> str:
        """The set's name for a family; IPv6 sets are KUBE-6-..., cut to ipset's 31 chars."""
        if family is IPFamily.V4:
            return self.name
        return ("KUBE-6-" + self.name.removeprefix("KUBE-"))[:31]

    def create_args(self, family: IPFamily) -> str:
        """The rest of an ipset "create" line, as kube-proxy creates the set."""
        if self.type.startswith("bitmap:"):
            return f"{self.type} range 0-65535"
        inet = "inet" if family is IPFamily.V4 else "inet6"
        return f"{self.type} family {inet} hashsize 1024 maxelem 65536"


LOOP_BACK = IPSetSpec(
    "KUBE-LOOP-BACK",
    "hash:ip,port,ip",
    "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose",
)
CLUSTER_IP = IPSetSpec(
    "KUBE-CLUSTER-IP",
    "hash:ip,port",
    "Kubernetes service cluster ip + port for masquerade purpose",
)
EXTERNAL_IP = IPSetSpec(
    "KUBE-EXTERNAL-IP",
    "hash:ip,port",
    "Kubernetes service external ip + port for masquerade and filter purpose",
)
EXTERNAL_IP_LOCAL = IPSetSpec(
    "KUBE-EXTERNAL-IP-LOCAL",
    "hash:ip,port",
    "Kubernetes service external ip + port with externalTrafficPolicy=local",
)
LOAD_BALANCER = IPSetSpec("KUBE-LOAD-BALANCER", "hash:ip,port", "Kubernetes service lb portal")
LOAD_BALANCER_FW = IPSetSpec(
    "KUBE-LOAD-BALANCER-FW",
    "hash:ip,port",
    "Kubernetes service load balancer ip + port for load balancer with sourceRange",
)
LOAD_BALANCER_LOCAL = IPSetSpec(
    "KUBE-LOAD-BALANCER-LOCAL",
    "hash:ip,port",
    "Kubernetes service load balancer ip + port with externalTrafficPolicy=local",
)
LOAD_BALANCER_SOURCE_IP = IPSetSpec(
    "KUBE-LOAD-BALANCER-SOURCE-IP",
    "hash:ip,port,ip",
    "Kubernetes service load balancer ip + port + source IP for packet filter purpose",
)
LOAD_BALANCER_SOURCE_CIDR = IPSetSpec(
    "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    "hash:ip,port,net",
    "Kubernetes service load balancer ip + port + source cidr for packet filter purpose",
)
NODE_PORT_TCP = IPSetSpec(
    "KUBE-NODE-PORT-TCP", "bitmap:port", "Kubernetes nodeport TCP port for masquerade purpose"
)
NODE_PORT_LOCAL_TCP = IPSetSpec(
    "KUBE-NODE-PORT-LOCAL-TCP",
    "bitmap:port",
    "Kubernetes nodeport TCP port with externalTrafficPolicy=local",
)
NODE_PORT_UDP = IPSetSpec(
    "KUBE-NODE-PORT-UDP", "bitmap:port", "Kubernetes nodeport UDP port for masquerade purpose"
)
NODE_PORT_LOCAL_UDP = IPSetSpec(
    "KUBE-NODE-PORT-LOCAL-UDP",
    "bitmap:port",
    "Kubernetes nodeport UDP port with externalTrafficPolicy=local",
)
NODE_PORT_SCTP = IPSetSpec(
    "KUBE-NODE-PORT-SCTP-HASH",
    "hash:ip,port",
    "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'",
)
NODE_PORT_LOCAL_SCTP = IPSetSpec(
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "hash:ip,port",
    "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'",
)
HEALTH_CHECK_NODE_PORT = IPSetSpec(
    "KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port", "Kubernetes health check node port"
)
IPVS_IPS = IPSetSpec("KUBE-IPVS-IPS", "hash:ip", "Addresses on the ipvs interface")
# Not kube-proxy's: external and load-balancer ip + port left off kube-ipvs0, whose packets
# the mangle rules mark so that policy routing delivers them locally (see steering.py).
STEERED = IPSetSpec(
    "KUBE-IPVS-STEERED",
    "hash:ip,port",
    "Kubernetes service external or load balancer ip + port routed to ipvs by fwmark",
)

# kube-proxy's ipsetInfo order.
IPSETS: tuple[IPSetSpec, ...] = (
    LOOP_BACK,
    CLUSTER_IP,
    EXTERNAL_IP,
    EXTERNAL_IP_LOCAL,
    LOAD_BALANCER,
    LOAD_BALANCER_FW,
    LOAD_BALANCER_LOCAL,
    LOAD_BALANCER_SOURCE_IP,
    LOAD_BALANCER_SOURCE_CIDR,
    NODE_PORT_TCP,
    NODE_PORT_LOCAL_TCP,
    NODE_PORT_UDP,
    NODE_PORT_LOCAL_UDP,
    NODE_PORT_SCTP,
    NODE_PORT_LOCAL_SCTP,
    HEALTH_CHECK_NODE_PORT,
    IPVS_IPS,
    STEERED,
)


def all_set_names() -> dict[str, tuple[IPSetSpec, IPFamily]]:
    """Every set name the proxy owns, for both families."""
    return {spec.name_for(family): (spec, family) for family in IPFamily for spec in IPSETS}


def ip_port_entry(address: IPAddress, protocol: Protocol, port: int) -> str:
    """A hash:ip,port entry: "10.96.0.1,tcp:443"."""
    return f"{address},{protocol.lower}:{port}"


def ip_port_ip_entry(address: IPAddress, protocol: Protocol, port: int, other: IPAddress) -> str:
    """A hash:ip,port,ip entry: "10.244.1.5,tcp:8080,10.244.1.5"."""
    return f"{address},{protocol.lower}:{port},{other}"


def steered(sets: Mapping[str, Collection[str]], key: VirtualServerKey) -> bool:
    """Whether a virtual server's address and port are in KUBE-IPVS-STEERED (owned);
    sets: set name -> entries, as read from the kernel."""
    name = STEERED.name_for(IPFamily.of(key.address))
    return ip_port_entry(key.address, key.protocol, key.port) in sets.get(name, ())
