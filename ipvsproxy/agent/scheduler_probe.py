"""Whether the kernel can use an IPVS scheduler, asked before anything is programmed."""

from __future__ import annotations

import errno
import ipaddress

from ipvsproxy.core.model import Protocol, VirtualServer
from ipvsproxy.core.operations import AddVirtualServer, DeleteVirtualServer
from ipvsproxy.dataplane.interfaces import IpvsDataplane

# kube-proxy's probe (CanUseIPVSProxier): a documentation address (RFC 5737), never bound
# to kube-ipvs0, so the probe is never mistaken for one of the proxy's virtual servers.
PROBE_ADDRESS = ipaddress.IPv4Address("198.51.100.0")
PROBE_PORT = 20000


def probe_scheduler(ipvs: IpvsDataplane, scheduler: str) -> str | None:
    """Whether the kernel can use `scheduler`: None if so, else why not.

    Like kube-proxy at start: unless a virtual server already uses the scheduler, create a
    throw-away one with it and delete it again. The kernel loads ip_vs_<scheduler> on
    demand and answers ENOENT when it has no such module.
    """
    if any(server.scheduler == scheduler for server, _ in ipvs.snapshot().values()):
        return None
    probe = VirtualServer(PROBE_ADDRESS, Protocol.TCP, PROBE_PORT, scheduler=scheduler)
    failures = ipvs.execute([AddVirtualServer(probe)])
    ipvs.execute([DeleteVirtualServer(probe.key)])
    if not failures:
        return None
    if failures[0].errno == errno.ENOENT:
        return (
            f"IPVS scheduler {scheduler!r} is not available: the kernel has no module "
            f"ip_vs_{scheduler} (try `modprobe ip_vs_{scheduler}`; kernel schedulers are "
            "rr wrr lc wlc lblc lblcr dh sh sed nq mh fo ovf twos)"
        )
    return f"IPVS scheduler {scheduler!r} cannot be used: {failures[0].message}"
