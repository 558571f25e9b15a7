"""The kernel settings IPVS mode needs, written under /proc/sys like kube-proxy does."""

from __future__ import annotations

import os
from dataclasses import dataclass

from loguru import logger

# (path under /proc/sys, value, why)
REQUIRED: tuple[tuple[str, str, str], ...] = (
    # Let iptables see IPVS connections, so KUBE-POSTROUTING can masquerade them.
    ("net/ipv4/vs/conntrack", "1", "conntrack for IPVS traffic"),
    # Drop connections to a deleted real server at once instead of blackholing them
    # (kubernetes#71514, UDP in particular).
    ("net/ipv4/vs/expire_nodest_conn", "1", "expire connections to deleted real servers"),
    # Persistence templates must not keep routing to weight-0 real servers (kubernetes#81587).
    ("net/ipv4/vs/expire_quiescent_template", "1", "expire templates of quiesced servers"),
    ("net/ipv4/ip_forward", "1", "route traffic to endpoints on other hosts"),
)
# With strictARP (for MetalLB and the like): answer ARP only for addresses on the asked
# interface, so kube-ipvs0's service addresses are not announced on the node's links.
STRICT_ARP: tuple[tuple[str, str, str], ...] = (
    ("net/ipv4/conf/all/arp_ignore", "1", "strictARP: no ARP replies for kube-ipvs0"),
    ("net/ipv4/conf/all/arp_announce", "2", "strictARP: best local source for ARP"),
)


@dataclass(frozen=True, slots=True)
class SysctlFailure:
    path: str
    message: str


def ensure_sysctls(*, strict_arp: bool = False, root: str = "/proc/sys") -> list[SysctlFailure]:
    """Set each required value that differs; report (not raise) what cannot be set."""
    failures: list[SysctlFailure] = []
    for path, value, why in REQUIRED + (STRICT_ARP if strict_arp else ()):
        full = os.path.join(root, path)
        try:
            with open(full) as current:
                if current.read().strip() == value:
                    continue
            with open(full, "w") as target:
                target.write(value)
            logger.debug("sysctl set", path=path, value=value)
        except OSError as exc:
            failures.append(SysctlFailure(path, f"{exc.strerror or exc} ({why})"))
    return failures
