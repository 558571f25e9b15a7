"""The kernel settings IPVS mode needs, written under /proc/sys like kube-proxy does."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from ipvsproxy.config.settings import ConntrackSettings

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
        failures += _ensure(root, path, value, why, wanted=_equal_to(value))
    return failures


# Only the initial network namespace may change the table size and hash size: in another
# one nf_conntrack_max is read-only and a hashsize write fails with EOPNOTSUPP, so a proxy
# there (kind's nodes) wants `maxPerCore: 0`. The timeouts belong to each namespace.
CONNTRACK_MAX = "net/netfilter/nf_conntrack_max"
CONNTRACK_HASHSIZE = "module/nf_conntrack/parameters/hashsize"  # under /sys


def ensure_conntrack(
    settings: ConntrackSettings,
    *,
    cpus: int | None = None,
    proc_root: str = "/proc/sys",
    sys_root: str = "/sys",
) -> list[SysctlFailure]:
    """Apply kube-proxy's `conntrack` settings as kube-proxy does at start: raise (never
    lower) nf_conntrack_max to settings.table_size(online CPUs), raise the hash size to a
    quarter of it when smaller, set each non-zero timeout that differs. What cannot be set
    is reported, not raised, and does not stop the rest."""
    failures: list[SysctlFailure] = []
    size = settings.table_size(cpus or os.cpu_count() or 1)
    if size > 0:
        failures += _ensure(
            proc_root, CONNTRACK_MAX, str(size), "conntrack table size", wanted=_at_least(size)
        )
        failures += _ensure(
            sys_root,
            CONNTRACK_HASHSIZE,
            str(size // 4),
            "conntrack hash buckets",
            wanted=_at_least(size // 4),
        )
    for name, value in settings.netfilter_values():
        failures += _ensure(
            proc_root,
            f"net/netfilter/{name}",
            str(value),
            "conntrack setting",
            wanted=_equal_to(str(value)),
        )
    return failures


def _equal_to(value: str) -> Callable[[str], bool]:
    return lambda current: current == value


def _at_least(value: int) -> Callable[[str], bool]:
    return lambda current: current.isdigit() and int(current) >= value


def _ensure(
    root: str, path: str, value: str, why: str, *, wanted: Callable[[str], bool]
) -> list[SysctlFailure]:
    """Write `value` to root/path unless its current value is `wanted`; [] or the failure."""
    full = os.path.join(root, path)
    try:
        with open(full) as current:
            was = current.read().strip()
        if wanted(was):
            return []
        with open(full, "w") as target:
            target.write(value)
        logger.info("sysctl set", path=path, value=value, was=was)
    except OSError as exc:
        return [SysctlFailure(path, f"{exc.strerror or exc} ({why})")]
    return []
