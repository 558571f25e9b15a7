"""Network namespaces for code running inside the guest (any Linux box, as root).

IPVS services, ipsets, iptables-legacy tables, links, routes and net sysctls all belong to a
network namespace, so a fresh namespace is a fresh kernel as far as a proxy test can tell.

``setns(2)`` moves only the calling thread; processes it starts afterwards inherit the
namespace, so ipvsadm, ipset and iptables run from inside ``enter_netns`` act on it. Sockets
keep the namespace they were created in. Not covered: /sys (sysfs shows the namespace that
mounted it; use ``ip`` or /proc/sys instead).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from ipvsproxy.errors import SandboxError

__all__ = [
    "NETNS_RUN_DIR",
    "enter_netns",
    "ip",
    "netns_path",
    "switch_netns",
]

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000  # <linux/sched.h>; Python 3.11 has no os.setns

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"setns(CLONE_NEWNET) failed: {os.strerror(err)}")


def netns_path(name: str) -> str:
    """Where ``ip netns`` keeps the handle of the namespace ``name``."""
    return os.path.join(NETNS_RUN_DIR, name)


def ip(*args: str) -> str:
    """Run ``ip ARGS...`` and return its stdout; SandboxError with its stderr on failure."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SandboxError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


@contextmanager
def switch_netns(name: str) -> Iterator[None]:
    """Move the calling thread into the existing namespace ``name``; move it back on exit."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SandboxError(f"no network namespace {name!r}: {exc}") from exc
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(original)


@contextmanager
def enter_netns(name: str) -> Iterator[str]:
    """Create namespace ``name``, run the block inside it with lo up, then delete it.

    Yields the name. Processes still running in the namespace keep it alive after the
    name is deleted; kill them first if the test needs the kernel objects gone.
    """
    ip("netns", "add", name)
    try:
        with switch_netns(name):
            ip("link", "set", "lo", "up")
            yield name
    finally:
        ip("netns", "delete", name)
