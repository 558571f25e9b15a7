"""Whether the kernel can use an IPVS scheduler: the node's, asked before anything is
programmed, and each Service's own (annotations), asked once per name."""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import replace

from loguru import logger

from ipvsproxy.core.model import Protocol, Service, VirtualServer
from ipvsproxy.core.operations import AddVirtualServer, DeleteVirtualServer
from ipvsproxy.dataplane.interfaces import IpvsDataplane
from ipvsproxy.errors import KernelError

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


class ServiceSchedulers:
    """The per-Service schedulers (annotations) the kernel can use, each probed once.

    The node's scheduler is checked at start (a missing one stops the proxy). A Service
    asking for one the kernel lacks (its module not built or not installable) gets the
    node's instead, with one warning naming the Service and the reason; without this its
    virtual servers would fail to be created at every sync.
    """

    def __init__(self, ipvs: IpvsDataplane, default: str) -> None:
        self._ipvs = ipvs
        self._problems: dict[str, str | None] = {default: None}
        self._warned: set[tuple[str, str]] = set()

    def usable(self, service: Service) -> Service:
        """service, or a copy using the node's scheduler when its own is unavailable."""
        name = service.scheduler
        if name is None:
            return service
        if name not in self._problems:
            try:
                self._problems[name] = probe_scheduler(self._ipvs, name)
            except KernelError as exc:  # not known either way: asked again next time
                logger.warning("cannot probe IPVS scheduler", scheduler=name, error=str(exc))
                return replace(service, scheduler=None, scheduler_flags=None)
        problem = self._problems[name]
        if problem is None:
            return service
        if (service.key, name) not in self._warned:
            self._warned.add((service.key, name))
            logger.warning(
                "Service {key}: its scheduler cannot be used; using the node's",
                key=service.key,
                reason=problem,
            )
        return replace(service, scheduler=None, scheduler_flags=None)
