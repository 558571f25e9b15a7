"""Sysctls against a fake /proc/sys (and /sys) tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipvsproxy.config.settings import ConntrackSettings
from ipvsproxy.dataplane.sysctl import (
    CONNTRACK_HASHSIZE,
    CONNTRACK_MAX,
    REQUIRED,
    STRICT_ARP,
    ensure_conntrack,
    ensure_sysctls,
)


def tree(root: Path, entries: tuple[tuple[str, str, str], ...], value: str) -> None:
    for path, _, _ in entries:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(value + "\n")


@pytest.mark.parametrize("strict_arp", [False, True])
def test_values_are_set(tmp_path: Path, strict_arp: bool) -> None:
    tree(tmp_path, REQUIRED + STRICT_ARP, "0")
    assert ensure_sysctls(strict_arp=strict_arp, root=str(tmp_path)) == []
    for path, value, _ in REQUIRED:
        assert (tmp_path / path).read_text() == value
    arp = (tmp_path / STRICT_ARP[0][0]).read_text().strip()
    assert arp == ("1" if strict_arp else "0")


def test_missing_entry_is_reported_not_raised(tmp_path: Path) -> None:
    tree(tmp_path, REQUIRED[1:], "1")
    failures = ensure_sysctls(root=str(tmp_path))
    assert [f.path for f in failures] == [REQUIRED[0][0]]


def conntrack_tree(root: Path, *, max_: int, hashsize: int) -> tuple[Path, Path]:
    """A fake /proc/sys and /sys holding the conntrack entries, with the kernel's defaults
    for the timeouts; returns (proc, sys)."""
    proc, sys = root / "proc", root / "sys"
    netfilter = proc / "net/netfilter"
    netfilter.mkdir(parents=True)
    for name, value in (
        ("nf_conntrack_max", max_),
        ("nf_conntrack_tcp_timeout_established", 432000),
        ("nf_conntrack_tcp_timeout_close_wait", 60),
        ("nf_conntrack_tcp_be_liberal", 0),
        ("nf_conntrack_udp_timeout", 30),
        ("nf_conntrack_udp_timeout_stream", 120),
    ):
        (netfilter / name).write_text(f"{value}\n")
    (sys / CONNTRACK_HASHSIZE).parent.mkdir(parents=True)
    (sys / CONNTRACK_HASHSIZE).write_text(f"{hashsize}\n")
    return proc, sys


def read(root: Path, path: str) -> int:
    return int((root / path).read_text())


def test_conntrack_raised_as_kube_proxy_does(tmp_path: Path) -> None:
    proc, sys = conntrack_tree(tmp_path, max_=8192, hashsize=8192)
    failures = ensure_conntrack(ConntrackSettings(), cpus=8, proc_root=str(proc), sys_root=str(sys))
    assert failures == []
    assert read(proc, CONNTRACK_MAX) == 262144  # 32768 per core
    assert read(sys, CONNTRACK_HASHSIZE) == 65536  # a quarter of it
    assert read(proc, "net/netfilter/nf_conntrack_tcp_timeout_established") == 86400
    assert read(proc, "net/netfilter/nf_conntrack_tcp_timeout_close_wait") == 3600
    assert read(proc, "net/netfilter/nf_conntrack_udp_timeout") == 30  # 0: left alone


def test_conntrack_never_lowered_and_equal_values_not_rewritten(tmp_path: Path) -> None:
    proc, sys = conntrack_tree(tmp_path, max_=1 << 20, hashsize=1 << 18)
    established = proc / "net/netfilter/nf_conntrack_tcp_timeout_established"
    established.write_text("86400\n")  # a write would leave no newline
    settings = ConntrackSettings(tcp_close_wait_timeout=0)
    assert ensure_conntrack(settings, cpus=2, proc_root=str(proc), sys_root=str(sys)) == []
    assert read(proc, CONNTRACK_MAX) == 1 << 20  # larger than 131072: kept
    assert read(sys, CONNTRACK_HASHSIZE) == 1 << 18
    assert established.read_text() == "86400\n"
    assert read(proc, "net/netfilter/nf_conntrack_tcp_timeout_close_wait") == 60  # 0: off


def test_conntrack_off_and_failures_reported(tmp_path: Path) -> None:
    proc, sys = conntrack_tree(tmp_path, max_=8192, hashsize=8192)
    off = ConntrackSettings(max_per_core=0)
    assert ensure_conntrack(off, cpus=4, proc_root=str(proc), sys_root=str(sys)) == []
    assert (read(proc, CONNTRACK_MAX), read(sys, CONNTRACK_HASHSIZE)) == (8192, 8192)

    # No nf_conntrack module: nothing to set, each entry reported, none raised.
    (sys / CONNTRACK_HASHSIZE).unlink()
    (proc / "net/netfilter/nf_conntrack_tcp_timeout_close_wait").unlink()
    failures = ensure_conntrack(ConntrackSettings(), cpus=1, proc_root=str(proc), sys_root=str(sys))
    assert [f.path for f in failures] == [
        CONNTRACK_HASHSIZE,
        "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    ]
    assert read(proc, CONNTRACK_MAX) == 131072  # the rest still set
    assert read(proc, "net/netfilter/nf_conntrack_tcp_timeout_established") == 86400
