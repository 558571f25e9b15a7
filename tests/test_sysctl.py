"""Sysctls against a fake /proc/sys (and /sys) tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipvsproxy.config.settings import ConntrackSettings
from ipvsproxy.dataplane.sysctl import (
    CONN_REUSE_MODE,
    CONNTRACK_HASHSIZE,
    CONNTRACK_MAX,
    REQUIRED,
    STRICT_ARP,
    conn_reuse_mode,
    ensure_conntrack,
    ensure_sysctls,
    kernel_version,
)

REUSE = ((CONN_REUSE_MODE, "", ""),)


def tree(root: Path, entries: tuple[tuple[str, str, str], ...], value: str) -> None:
    for path, _, _ in entries:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(value + "\n")


@pytest.mark.parametrize("strict_arp", [False, True])
def test_values_are_set(tmp_path: Path, strict_arp: bool) -> None:
    tree(tmp_path, REQUIRED + STRICT_ARP + REUSE, "0")
    assert (
        ensure_sysctls(strict_arp=strict_arp, root=str(tmp_path), kernel_release="6.1.0-18-amd64")
        == []
    )
    for path, value, _ in REQUIRED:
        assert (tmp_path / path).read_text() == value
    arp = (tmp_path / STRICT_ARP[0][0]).read_text().strip()
    assert arp == ("1" if strict_arp else "0")
    assert (tmp_path / CONN_REUSE_MODE).read_text() == "1"


def test_missing_entry_is_reported_not_raised(tmp_path: Path) -> None:
    tree(tmp_path, REQUIRED[1:] + REUSE, "1")
    failures = ensure_sysctls(root=str(tmp_path), kernel_release="6.1.0")
    assert [f.path for f in failures] == [REQUIRED[0][0]]


@pytest.mark.parametrize(
    ("release", "version", "mode"),
    [
        ("3.10.0-1160.el7.x86_64", (3, 10), None),  # no conn_reuse_mode yet: untouched
        ("4.0.9", (4, 0), None),
        ("4.1.0", (4, 1), "0"),
        ("4.18.0-513.5.1.el8_9.x86_64", (4, 18), "0"),
        ("5.4.0-150-generic", (5, 4), "0"),
        ("5.8.18-100.fc31.x86_64", (5, 8), "0"),
        ("5.9.0", (5, 9), "1"),  # the kernel stopped dropping the reused port's SYN
        ("5.10.0-28-amd64", (5, 10), "1"),
        ("6.1.0-18-amd64", (6, 1), "1"),
        ("10.0.0", (10, 0), "1"),
        ("unknown", None, None),
        ("", None, None),
    ],
)
def test_conn_reuse_mode_follows_the_kernel_release(
    release: str, version: tuple[int, int] | None, mode: str | None
) -> None:
    assert kernel_version(release) == version
    assert conn_reuse_mode(release) == mode


@pytest.mark.parametrize(("release", "was", "now"), [("5.4.0", "1", "0"), ("6.1.0", "0", "1")])
def test_conn_reuse_mode_is_written_when_it_differs(
    tmp_path: Path, release: str, was: str, now: str
) -> None:
    tree(tmp_path, REQUIRED + REUSE, was)
    assert ensure_sysctls(root=str(tmp_path), kernel_release=release) == []
    assert (tmp_path / CONN_REUSE_MODE).read_text() == now


def test_conn_reuse_mode_left_alone_on_old_kernels(tmp_path: Path) -> None:
    tree(tmp_path, REQUIRED, "0")  # a 3.x kernel has no conn_reuse_mode at all
    assert ensure_sysctls(root=str(tmp_path), kernel_release="3.10.0") == []
    assert not (tmp_path / CONN_REUSE_MODE).exists()


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
