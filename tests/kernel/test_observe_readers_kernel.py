"""The observe step's readers against the real tools reading the same kernel state.

ipsets: the netlink dump must give exactly what `ipset save` prints, for every set type the
proxy uses, IPv4 and IPv6, sets large enough to span many reply messages, and foreign sets
with extensions. iptables: one iptables-legacy-save per family must give the same nat and
filter tables as the per-table reads, also when the kernel holds tables the proxy does not
own.
"""

from __future__ import annotations

import socket
import subprocess

import pytest
from loguru import logger

from ipvsproxy.core import ipsets
from ipvsproxy.core.model import IPFamily
from ipvsproxy.core.operations import CreateIPSet
from ipvsproxy.dataplane.ipset import IPSetTool, parse_save
from ipvsproxy.dataplane.ipset_netlink import read_sets
from ipvsproxy.dataplane.iptables import IptablesTool
from ipvsproxy.dataplane.iptables import parse_save as parse_iptables

pytestmark = pytest.mark.kernel

RESTORE = """\
create A hash:ip,port family inet hashsize 1024 maxelem 65536
add A 10.96.0.1,tcp:443
add A 10.96.0.10,udp:53
add A 10.96.0.11,sctp:9000
add A 10.96.0.12,udplite:1
create B hash:ip,port,ip family inet hashsize 1024 maxelem 65536
add B 10.244.1.5,tcp:8080,10.244.1.5
create C hash:ip,port,net family inet hashsize 1024 maxelem 65536
add C 203.0.113.7,tcp:443,10.0.0.0/8
add C 203.0.113.7,tcp:443,192.0.2.1/32
create D bitmap:port range 0-65535
add D 0
add D 30080
add D 65535
create E hash:net family inet hashsize 1024 maxelem 65536
add E 10.2.0.0/24
add E 10.3.0.1/32
add E 10.4.0.0/16 nomatch
create F hash:ip,port family inet6 hashsize 1024 maxelem 65536
add F fd00:10:96::1,tcp:443
add F ::ffff:10.1.2.3,udp:53
add F ::10.1.2.4,udp:53
add F 1:0:1:0:0:1:0:1,tcp:3
create G hash:ip,port,ip family inet6 hashsize 1024 maxelem 65536
add G fd00:244::5,tcp:8080,fd00:244::5
create H hash:net family inet6 hashsize 1024 maxelem 65536
add H fd00::/64
add H fd01::1/128
create I hash:ip family inet hashsize 1024 maxelem 65536 comment counters skbinfo
add I 10.9.0.1 comment "kept by someone else" packets 3 bytes 4
add I 10.9.0.2 skbmark 0x10/0xff skbprio 1:2 skbqueue 3
create J hash:ip family inet6 hashsize 1024 maxelem 65536
"""
NAMES = [line.split()[1] for line in RESTORE.splitlines() if line.startswith("create ")]


def ipset(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["ipset", *args], input=stdin, capture_output=True, text=True, check=True
    ).stdout


def test_netlink_read_matches_ipset_save_for_every_type() -> None:
    ipset("restore", stdin=RESTORE)
    expected = parse_save(ipset("save"), NAMES)
    assert expected.keys() == set(NAMES)  # J: present, empty
    assert read_sets(NAMES) == expected


def test_large_sets_span_many_messages_and_lose_nothing() -> None:
    v4 = [
        f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1},tcp:{i % 30000 + 1}" for i in range(6000)
    ]
    v6 = [f"fd00::{i:x},udp:53,fd00::1:{i:x}" for i in range(1, 3001)]
    lines = [
        "create BIG hash:ip,port family inet hashsize 1024 maxelem 65536",
        *(f"add BIG {e}" for e in v4),
        "create BIG6 hash:ip,port,ip family inet6 hashsize 1024 maxelem 65536",
        *(f"add BIG6 {e}" for e in v6),
    ]
    ipset("restore", stdin="\n".join(lines) + "\n")
    got = read_sets(["BIG", "BIG6"])
    assert got == parse_save(ipset("save"), ["BIG", "BIG6"])
    assert got == {"BIG": frozenset(v4), "BIG6": frozenset(v6)}


def test_tool_reads_over_netlink_and_falls_back_on_an_entry_it_cannot_print() -> None:
    ipset("restore", stdin=RESTORE)
    tool = IPSetTool()
    assert tool.read(NAMES) == IPSetTool(netlink=None).read(NAMES)
    # icmp entries are printed by type name, which the decoder does not guess
    ipset("create", "K", "hash:ip,port")
    ipset("add", "K", "10.0.0.1,icmp:echo-request")
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING", format="{message}")
    try:
        assert tool.read(["K", "A"]) == parse_save(ipset("save"), ["K", "A"])
    finally:
        logger.remove(sink)
    assert len(lines) == 1 and "reading with ipset save from now on" in lines[0]
    assert tool.read(["K"]) == {"K": frozenset({"10.0.0.1,icmp:echo-request"})}


def _proxy_sets() -> None:
    sets = [
        CreateIPSet(spec.name_for(family), spec.create_args(family))
        for family in IPFamily
        for spec in ipsets.IPSETS
    ]
    assert IPSetTool().apply(sets) == []


@pytest.mark.parametrize("family", list(IPFamily))
def test_one_save_per_family_reads_what_the_per_table_saves_read(family: IPFamily) -> None:
    _proxy_sets()
    base = "iptables" if family is IPFamily.V4 else "ip6tables"
    for argv in (
        ["-t", "nat", "-N", "KUBE-SERVICES"],
        ["-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES"],
        ["-t", "nat", "-A", "KUBE-SERVICES", "-m", "comment", "--comment", "a b", "-j", "RETURN"],
        ["-t", "filter", "-N", "KUBE-FORWARD"],
        ["-t", "filter", "-A", "KUBE-FORWARD", "-m", "mark", "--mark", "0x4000/0x4000"],
        # mangle holds the steering chains (ipvsproxy/core/steering.py), and kubelet's
        ["-t", "mangle", "-N", "KUBE-IPTABLES-HINT"],
        # a table the proxy does not own must not show up in what it reads
        ["-t", "raw", "-A", "PREROUTING", "-j", "ACCEPT"],
    ):
        subprocess.run([f"{base}-legacy", *argv], check=True, capture_output=True)
    per_table = "".join(
        subprocess.run(
            [f"{base}-legacy-save", "-t", table], check=True, capture_output=True, text=True
        ).stdout
        for table in ("nat", "filter", "mangle")
    )
    read = IptablesTool("legacy").read(family)
    assert read.tables == parse_iptables(per_table)
    assert set(read.tables) == {"nat", "filter", "mangle"}
    assert read.tables["nat"]["KUBE-SERVICES"] == ('-m comment --comment "a b" -j RETURN',)


def _legacy(family: IPFamily, *argv: str) -> None:
    base = "iptables" if family is IPFamily.V4 else "ip6tables"
    subprocess.run([f"{base}-legacy", *argv], check=True, capture_output=True)


@pytest.mark.parametrize("family", list(IPFamily))
def test_unchanged_tables_are_not_saved_again_and_every_change_is_seen(
    family: IPFamily,
) -> None:
    ipset("create", "KUBE-A", "hash:ip", "family", "inet" if family is IPFamily.V4 else "inet6")
    ipset("create", "KUBE-B", "hash:ip", "family", "inet" if family is IPFamily.V4 else "inet6")
    _legacy(family, "-t", "nat", "-N", "KUBE-X")
    _legacy(family, "-t", "nat", "-A", "KUBE-X", "-m", "set", "--match-set", "KUBE-A", "src")
    _legacy(family, "-A", "OUTPUT", "-p", "udp", "-m", "comment", "--comment", "a")
    tool = IptablesTool("legacy")
    fresh = IptablesTool("legacy", fingerprint=False)
    first = tool.read(family)
    assert tool.saves == 1
    assert tool.read(family) == first and tool.saves == 1

    # traffic moves the rules' counters, not the rules
    loopback = "127.0.0.1" if family is IPFamily.V4 else "::1"
    with socket.socket(
        socket.AF_INET if family is IPFamily.V4 else socket.AF_INET6, socket.SOCK_DGRAM
    ) as udp:
        udp.sendto(b"x", (loopback, 9))
    assert tool.read(family) == first and tool.saves == 1

    changes = [
        # a rule of the same size with another comment
        ["-R", "OUTPUT", "1", "-p", "udp", "-m", "comment", "--comment", "b"],
        ["-t", "nat", "-A", "KUBE-X", "-j", "RETURN"],
        ["-t", "nat", "-N", "KUBE-Y"],
        ["-t", "nat", "-P", "OUTPUT", "ACCEPT"],  # unchanged policy: not a change
    ]
    for number, argv in enumerate(changes):
        _legacy(family, *argv)
        got = tool.read(family)
        assert got == fresh.read(family)
        assert tool.saves == (number + 2 if number < 3 else 4)
    # swap moves the contents; the rule keeps its index, still named KUBE-A
    ipset("swap", "KUBE-A", "KUBE-B")
    assert tool.read(family) == fresh.read(family) and tool.saves == 4
    # Linux 6.1 refuses to rename a set a rule refers to; kernels that allow it would change
    # the name printed for the rule's unchanged index, so every rename makes a new save.
    assert subprocess.run(["ipset", "rename", "KUBE-A", "KUBE-C"], check=False).returncode
    ipset("rename", "KUBE-B", "KUBE-C")
    assert tool.read(family) == fresh.read(family) and tool.saves == 5
