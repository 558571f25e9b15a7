"""The kernel settings IPVS mode needs, written under /proc/sys like kube-proxy does."""

from __future__ import annotations

import os
import re
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


CONN_REUSE_MODE = "net/ipv4/vs/conn_reuse_mode"


def kernel_version(release: str) -> tuple[int, int] | None:
    """(major, minor) of a kernel release string ("6.1.0-18-amd64", "4.18.0-513.el8"),
    or None when it does not start with one."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match[1]), int(match[2])) if match else None


def conn_reuse_mode(release: str) -> str | None:
    """The value net.ipv4.vs.conn_reuse_mode should have on this kernel, or None to leave
    it alone.

    - before 4.1 the setting does not exist;
    - 4.1 to 5.8: 0. With 1 (the default) and vs/conntrack=1, the kernel drops the SYN of a
      connection that reuses the source port of one in TIME_WAIT, so such clients stall
      for the 1 s SYN retransmit (kubernetes#70747); 0 trades that for #81775 below.
    - 5.9 and later: 1, the kernel's default. The kernel no longer drops that SYN (Linux
      f0a5e4d7a594, "ipvs: allow connection reuse for unconfirmed conntrack"), and with 0
      a reused port goes to the server of its previous connection instead of being
      scheduled afresh: a client reusing ports is never rebalanced, and kernels without
      the later fix for weight-0 servers keep it on a removed one (kubernetes#81775).
      kube-proxy leaves the value as it finds it here; we write 1 so that a 0 left by an
      older proxy on this node does not outlive it.
    A release we cannot read is left alone.
    """
    version = kernel_version(release)
    if version is None or version < (4, 1):
        return None
    return "0" if version < (5, 9) else "1"


@dataclass(frozen=True, slots=True)
class SysctlFailure:
    path: str
    message: str


def ensure_sysctls(
    *, strict_arp: bool = False, root: str = "/proc/sys", kernel_release: str | None = None
) -> list[SysctlFailure]:
    """Set each required value that differs; report (not raise) what cannot be set.
    kernel_release (default: the running kernel's) decides conn_reuse_mode."""
    release = os.uname().release if kernel_release is None else kernel_release
    wanted = list(REQUIRED + (STRICT_ARP if strict_arp else ()))
    reuse = conn_reuse_mode(release)
    if reuse is None:
        logger.info("conn_reuse_mode left as it is", kernel=release)
    else:
        wanted.insert(1, (CONN_REUSE_MODE, reuse, f"port reuse on kernel {release}"))
    failures: list[SysctlFailure] = []
    for path, value, why in wanted:
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
