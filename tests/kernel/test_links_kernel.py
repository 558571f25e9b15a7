"""LinkTool against the real kernel: kube-ipvs0 and its addresses, read back with `ip`.

Each test runs in a fresh network namespace of the sandbox kernel, so there is no
kube-ipvs0 at the start.
"""

from __future__ import annotations

import errno
import ipaddress
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from agentproc import tool

from ipvsproxy.core.model import IPAddress
from ipvsproxy.core.operations import BindAddress, UnbindAddress
from ipvsproxy.dataplane.links import LinkTool

pytestmark = pytest.mark.kernel

DEV = "kube-ipvs0"
V4: list[IPAddress] = [ipaddress.IPv4Address(0x0A600000 + i) for i in range(1000)]  # 10.96.0.0 ...
V6: list[IPAddress] = [
    ipaddress.IPv6Address((0xFD00_0010_0096 << 80) + i) for i in range(1000)
]  # fd00:10:96::
ip = ipaddress.ip_address


@dataclass(frozen=True)
class Shown:
    """One line of `ip -o addr show`."""

    address: IPAddress
    prefixlen: int
    words: frozenset[str]  # scope and flags: "global", "nodad", "tentative", ...


def ip_addr(dev: str = DEV) -> dict[IPAddress, Shown]:
    out = subprocess.run(
        ["ip", "-o", "addr", "show", "dev", dev], capture_output=True, text=True, check=True
    ).stdout
    shown: dict[IPAddress, Shown] = {}
    for line in out.splitlines():
        fields = line.split("\\")[0].split()
        address, prefixlen = fields[3].split("/")
        parsed = ip(address)
        shown[parsed] = Shown(parsed, int(prefixlen), frozenset(fields[4:]))
    return shown


def link_flags(dev: str = DEV) -> tuple[set[str], str]:
    """The link's flags and its operational state, from `ip -o link show`."""
    out = subprocess.run(
        ["ip", "-o", "link", "show", "dev", dev], capture_output=True, text=True, check=True
    ).stdout
    flags = set(out.split("<", 1)[1].split(">", 1)[0].split(","))
    return flags, out.split(" state ", 1)[1].split()[0]


@pytest.fixture
def links() -> Iterator[LinkTool]:
    with LinkTool() as adapter:
        yield adapter


def test_interface_lifecycle(links: LinkTool) -> None:
    assert not links.interface_exists(DEV)
    assert links.addresses(DEV) == frozenset()
    failures = links.bind(DEV, [V4[0], V6[0]])
    assert [(f.operation, f.errno) for f in failures] == [
        (BindAddress(V4[0]), errno.ENODEV),
        (BindAddress(V6[0]), errno.ENODEV),
    ]
    assert links.unbind(DEV, [V4[0]])[0].errno == errno.ENODEV
    assert links.writes == 0
    links.ensure_interface(DEV)
    links.ensure_interface(DEV)
    assert links.writes == 1
    assert links.interface_exists(DEV)
    details = subprocess.run(
        ["ip", "-d", "-o", "link", "show", "dev", DEV], capture_output=True, text=True
    ).stdout
    assert " dummy " in details
    flags, state = link_flags()
    assert "UP" not in flags and state == "DOWN"  # left down, as kube-proxy leaves it
    links.delete_interface(DEV)
    links.delete_interface(DEV)
    assert links.writes == 2
    assert not links.interface_exists(DEV)


def test_bulk_bind_read_back_and_unbind(links: LinkTool) -> None:
    links.ensure_interface(DEV)
    wanted = [a for pair in zip(V4, V6, strict=True) for a in pair]  # families interleaved
    writes, socket_writes = links.writes, links.socket_writes
    assert links.bind(DEV, wanted) == []
    assert links.writes - writes == len(wanted)
    assert links.socket_writes - socket_writes == -(-len(wanted) // 256)

    shown = ip_addr()
    assert set(shown) == set(wanted)
    for entry in shown.values():
        if entry.address.version == 4:
            assert entry.prefixlen == 32
            assert "global" in entry.words
        else:
            assert entry.prefixlen == 128
            assert "nodad" in entry.words
            assert "tentative" not in entry.words  # usable at once
    assert links.addresses(DEV) == frozenset(shown)
    flags, state = link_flags()
    assert "UP" not in flags and state == "DOWN"
    # the kernel made them local: one local route per address, on the down link
    local4 = subprocess.run(
        ["ip", "-4", "route", "show", "table", "local", "dev", DEV], capture_output=True, text=True
    ).stdout
    local6 = subprocess.run(
        ["ip", "-6", "route", "show", "table", "local", "dev", DEV], capture_output=True, text=True
    ).stdout
    assert len(local4.splitlines()) == len(V4)
    assert len(local6.splitlines()) == len(V6)

    assert links.unbind(DEV, wanted[::2]) == []
    assert set(ip_addr()) == set(wanted[1::2])
    assert links.addresses(DEV) == frozenset(wanted[1::2])
    assert links.unbind(DEV, wanted[1::2]) == []
    assert ip_addr() == {}
    assert links.addresses(DEV) == frozenset()


def test_rebind_and_unbind_are_idempotent(links: LinkTool) -> None:
    links.ensure_interface(DEV)
    some = V4[:300] + V6[:300]
    assert links.bind(DEV, some) == []
    writes = links.writes
    assert links.bind(DEV, some) == []  # every one answered EEXIST
    assert links.writes - writes == len(some)
    assert set(ip_addr()) == set(some)
    # addresses never bound (EADDRNOTAVAIL) mixed with bound ones
    assert links.unbind(DEV, V4[200:400] + V6[200:400]) == []
    assert set(ip_addr()) == set(V4[:200] + V6[:200])
    assert links.unbind(DEV, V4[200:400] + V6[200:400]) == []
    assert links.bind(DEV, []) == [] and links.unbind(DEV, []) == []
    assert links.addresses(DEV) == frozenset(V4[:200] + V6[:200])


def test_refused_address_is_reported_alone(links: LinkTool) -> None:
    """The kernel refuses a loopback or multicast IPv6 address on a dummy link
    (ipv6_add_addr: EADDRNOTAVAIL); the addresses around them in the batch are bound."""
    links.ensure_interface(DEV)
    refused = [ip("::1"), ip("ff02::1")]
    batch = [*V4[:100], refused[0], *V6[:100], refused[1], *V4[100:200]]
    failures = links.bind(DEV, batch)
    assert [(f.operation, f.errno) for f in failures] == [
        (BindAddress(refused[0]), errno.EADDRNOTAVAIL),
        (BindAddress(refused[1]), errno.EADDRNOTAVAIL),
    ]
    assert failures[0].message == "bind ::1 on kube-ipvs0: Cannot assign requested address"
    assert set(ip_addr()) == set(V4[:200] + V6[:100])


def test_interface_gone_between_lookup_and_write(
    links: LinkTool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel refuses every address of a batch sent to a deleted interface index
    (ENODEV), each reported on its own; nothing raises."""
    links.ensure_interface(DEV)
    stale = links._index(DEV)
    tool("ip", "link", "del", DEV)
    monkeypatch.setattr(links, "_index", lambda name: stale)
    batch = [V4[0], V6[0], V4[1]]
    failures = links.bind(DEV, batch)
    assert [(f.operation, f.errno) for f in failures] == [
        (BindAddress(a), errno.ENODEV) for a in batch
    ]
    assert failures[1].message == f"bind {V6[0]} on kube-ipvs0: No such device"
    failures = links.unbind(DEV, batch)
    assert [(f.operation, f.errno) for f in failures] == [
        (UnbindAddress(a), errno.ENODEV) for a in batch
    ]
    # the address dump of a vanished index: empty, not an error
    assert links.addresses(DEV) == frozenset()


def test_addresses_match_ip_and_ignore_other_interfaces(links: LinkTool) -> None:
    """addresses() reads one interface's host addresses: what `ip` added there too,
    nothing from other interfaces, nothing with a shorter prefix."""
    links.ensure_interface(DEV)
    tool("ip", "link", "add", "other0", "type", "dummy")
    tool("ip", "addr", "add", "10.97.0.1/32", "dev", "other0")
    tool("ip", "addr", "add", "fd00:97::1/128", "dev", "other0", "nodad")
    tool("ip", "addr", "add", "10.96.5.1/24", "dev", DEV)
    tool("ip", "addr", "add", "fd00:96::5/64", "dev", DEV)  # left tentative: DAD never runs
    assert links.bind(DEV, V4[:10] + V6[:10]) == []
    expected = frozenset(V4[:10] + V6[:10])
    assert (
        links.addresses(DEV)
        == expected
        == frozenset(ip_addr())
        - {
            ip("10.96.5.1"),
            ip("fd00:96::5"),
        }
    )
    # A shorter-prefix address is not the proxy's: unbinding it as /32 would never succeed.
    assert {ip("10.96.5.1"), ip("fd00:96::5")} <= frozenset(ip_addr())
    assert links.addresses("other0") == frozenset(ip_addr("other0"))
    assert links.addresses("other0") == {ip("10.97.0.1"), ip("fd00:97::1")}
    host = {a for a, shown in ip_addr("lo").items() if shown.prefixlen in (32, 128)}
    assert links.addresses("lo") == host == {ip("::1")}  # 127.0.0.1 is a /8


def test_small_batches(links: LinkTool) -> None:
    links.ensure_interface(DEV)
    with LinkTool(batch_messages=7) as small:
        assert small.bind(DEV, V4[:100]) == []
        assert small.socket_writes == 15
        assert small.addresses(DEV) == frozenset(V4[:100])
        assert small.unbind(DEV, V4[:100]) == []
        assert small.socket_writes == 30
    assert links.addresses(DEV) == frozenset()


def test_bulk_against_one_request_per_address(links: LinkTool) -> None:
    """The same 2,000 addresses bound and unbound through LinkTool (256 per write) and
    through pyroute2's IPRoute.addr (one request and ack each) leave the same link; the
    adapter's dump reads them all back. Their speeds are bench/'s."""
    from pyroute2 import IPRoute

    links.ensure_interface(DEV)
    wanted = V4 + V6
    index = links._index(DEV)
    assert index is not None

    def batched() -> None:
        assert links.bind(DEV, wanted) == []
        assert links.unbind(DEV, wanted) == []

    def one_by_one() -> None:
        with IPRoute() as ipr:
            for address in wanted:
                extra = {"flags": 0x02} if address.version == 6 else {}
                prefixlen = 32 if address.version == 4 else 128
                ipr.addr("add", index=index, address=str(address), prefixlen=prefixlen, **extra)
            for address in wanted:
                prefixlen = 32 if address.version == 4 else 128
                ipr.addr("del", index=index, address=str(address), prefixlen=prefixlen)

    for variant in (batched, one_by_one):
        variant()
        assert ip_addr() == {}
    assert links.bind(DEV, wanted) == []
    assert links.addresses(DEV) == frozenset(wanted)
    with IPRoute() as ipr:
        assert len(list(ipr.get_addr(index=index))) == len(wanted)


def test_node_addresses_are_the_hosts_except_kube_ipvs0(links: LinkTool) -> None:
    """One dump of every interface: kube-ipvs0's, loopback and IPv6 link-local excluded,
    any prefix length kept; a change on the host shows at the next read."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    links.ensure_interface(DEV)
    assert links.bind(DEV, [ip("10.96.0.1"), ip("fd00::1")]) == []
    batch = [
        "link add eth-np type dummy",
        "link set eth-np up",
        "address add 192.168.7.7/24 dev eth-np",
        "address add 2001:db8:7::7/64 dev eth-np nodad",
        "address add fe80::7/64 dev eth-np nodad",
    ]
    subprocess.run(["ip", "-batch", "-"], input="\n".join(batch) + "\n", text=True, check=True)
    assert links.node_addresses(DEV) == {ip("192.168.7.7"), ip("2001:db8:7::7")}
    subprocess.run(["ip", "address", "add", "192.168.8.8/32", "dev", "eth-np"], check=True)
    assert ip("192.168.8.8") in links.node_addresses(DEV)
    # Without kube-ipvs0 nothing is excluded by interface.
    links.delete_interface(DEV)
    assert links.node_addresses(DEV) == {ip("192.168.7.7"), ip("192.168.8.8"), ip("2001:db8:7::7")}
