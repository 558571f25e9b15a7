"""The ipset netlink codec: a dump captured from Linux with the `ipset save` of the same sets.

tests/data/ipset_save_dump.bin holds the datagrams a Linux 6.1 kernel sent for an
IPSET_CMD_SAVE dump; tests/data/ipset_save.txt is what `ipset save` (7.17) printed for the
same sets: the proxy's types (hash:ip,port / hash:ip,port,ip / hash:ip,port,net /
bitmap:port, IPv4 and IPv6) and a foreign hash:net set with counters, comments, skbinfo
and nomatch. The decoder must print every entry exactly as ipset does.
"""

from __future__ import annotations

import stat
import struct
from pathlib import Path

import pytest
from loguru import logger
from pyroute2.netlink.nfnetlink.ipset import ipset_msg

from ipvsproxy.dataplane import ipset_codec as codec
from ipvsproxy.dataplane.ipset import IPSetTool, parse_save
from ipvsproxy.dataplane.netlink_codec import NetlinkDecodeError, split_messages
from ipvsproxy.errors import KernelError

DATA = Path(__file__).parent / "data"
DUMP = (DATA / "ipset_save_dump.bin").read_bytes()
SAVE = (DATA / "ipset_save.txt").read_text()
NAMES = [line.split()[1] for line in SAVE.splitlines() if line.startswith("create ")]
LIST_REPLY = codec.message_type(codec.IPSET_CMD_LIST)


def payloads() -> list[bytes]:
    return [m.payload for m in split_messages(DUMP) if m.type == LIST_REPLY]


def test_captured_dump_decodes_as_ipset_save_prints_it() -> None:
    decoded = codec.decode_save(payloads(), NAMES)
    assert decoded == parse_save(SAVE, NAMES)
    assert len(decoded) == 8  # an empty set is present, with no entries
    assert decoded["OTHER-EMPTY"] == frozenset()
    assert "::ffff:10.1.2.3,udp:53" in decoded["KUBE-6-CLUSTER-IP"]
    assert "10.4.0.0/16 nomatch packets 0 bytes 0" in decoded["OTHER-NETS"]


def test_save_request_decodes_with_pyroute2() -> None:
    request = codec.encode_save_request(7)
    message = ipset_msg(request)
    message.decode()
    assert message["header"]["type"] == (6 << 8) | 8  # NFNL_SUBSYS_IPSET, IPSET_CMD_SAVE
    assert message["header"]["flags"] == 0x301  # NLM_F_REQUEST | NLM_F_DUMP
    assert message["header"]["sequence_number"] == 7
    assert message.get_attr("IPSET_ATTR_PROTOCOL") == codec.IPSET_PROTOCOL
    assert len(request) == message["header"]["length"]


def _with_entry(entry: bytes, name: bytes = b"S") -> bytes:
    """A list reply holding one entry whose attributes are ``entry``."""

    def nla(kind: int, value: bytes) -> bytes:
        return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)

    data = nla(codec.ATTR_DATA | 0x8000, entry)
    return (
        struct.pack("=BBH", 2, 0, 0)
        + nla(codec.ATTR_SETNAME, name + b"\0")
        + nla(codec.ATTR_ADT | 0x8000, data)
    )


def _ip(address: bytes) -> bytes:
    return struct.pack("=HH", 8, codec.ATTR_IPADDR_IPV4 | 0x4000) + address


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def test_built_entry_prints_as_ipset_does() -> None:
    entry = (
        _attr(codec.ATTR_IP | 0x8000, _ip(bytes([10, 0, 0, 1])))
        + _attr(codec.ATTR_PORT | 0x4000, struct.pack(">H", 8080))
        + _attr(codec.ATTR_PROTO, bytes([17]))
        + _attr(codec.ATTR_IP2 | 0x8000, _ip(bytes([192, 0, 2, 0])))
        + _attr(codec.ATTR_CIDR2, bytes([24]))
        + _attr(codec.ATTR_TIMEOUT | 0x4000, struct.pack(">I", 30))
    )
    assert codec.decode_save([_with_entry(entry)], ["S"]) == {
        "S": frozenset({"10.0.0.1,udp:8080,192.0.2.0/24 timeout 30"})
    }


ICMP_ENTRY = (
    _attr(codec.ATTR_IP | 0x8000, _ip(bytes(4)))
    + _attr(codec.ATTR_PORT, b"\x08\x00")
    + _attr(codec.ATTR_PROTO, bytes([1]))
)


def test_only_the_named_sets_are_decoded() -> None:
    # An entry this decoder cannot print, in a set not asked for, is never looked at.
    replies = [*payloads(), _with_entry(ICMP_ENTRY, b"FOREIGN")]
    wanted = ["KUBE-CLUSTER-IP", "KUBE-NO-SUCH-SET"]
    assert codec.decode_save(replies, wanted) == parse_save(SAVE, wanted)
    assert codec.decode_save(replies, wanted).keys() == {"KUBE-CLUSTER-IP"}
    with pytest.raises(codec.UnsupportedIPSet):
        codec.decode_save(replies, ["FOREIGN"])


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        # icmp: ipset prints type names ("icmp:echo-request"); not guessed here
        (ICMP_ENTRY, "protocol 1"),
        # hash:net,iface's interface: an attribute this decoder does not know
        (_attr(codec.ATTR_IP | 0x8000, _ip(bytes(4))) + _attr(23, b"eth0\0"), r"\[23\]"),
        (_attr(codec.ATTR_COMMENT, b"x\0"), "without an address or a port"),
    ],
)
def test_what_cannot_be_printed_exactly_is_refused(entry: bytes, error: str) -> None:
    with pytest.raises(codec.UnsupportedIPSet, match=error):
        codec.decode_save([_with_entry(entry)], ["S"])


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\x02\x00", "truncated ipset message"),
        (struct.pack("=BBH", 2, 0, 0) + _attr(codec.ATTR_PROTOCOL, b"\x07"), "without a set name"),
        (_with_entry(b"")[:-3], "overruns"),
        (_with_entry(_attr(codec.ATTR_IP | 0x8000, _attr(9, b"\0\0"))), "holds no address"),
        (_with_entry(_attr(codec.ATTR_PORT, b"\x01")), "1 bytes, 2 expected"),
    ],
)
def test_malformed_replies_raise_a_decode_error(payload: bytes, error: str) -> None:
    with pytest.raises(NetlinkDecodeError, match=error):
        codec.decode_save([payload], ["S"])


def test_every_truncation_of_the_capture_is_an_error_or_a_subset() -> None:
    """No cut of a real reply crashes with anything but a decode error."""
    full = codec.decode_save(payloads(), NAMES)
    for payload in payloads():
        for cut in range(0, len(payload), 3):
            try:
                got = codec.decode_save([payload[:cut]], NAMES)
            except NetlinkDecodeError:
                continue
            for name, entries in got.items():
                assert entries <= full[name]


def _fake_ipset(tmp_path: Path) -> str:
    script = tmp_path / "ipset"
    script.write_text(f"#!/bin/sh\ncat {DATA / 'ipset_save.txt'}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_tool_falls_back_to_ipset_save_once_with_one_log_line(tmp_path: Path) -> None:
    calls = []

    def failing(names: object) -> dict[str, frozenset[str]]:
        calls.append(names)
        raise codec.UnsupportedIPSet("ipset entry attribute(s) [23] not understood")

    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING", format="{message}")
    try:
        tool = IPSetTool(_fake_ipset(tmp_path), netlink=failing)
        first = tool.read(["KUBE-CLUSTER-IP"])
        second = tool.read(["KUBE-CLUSTER-IP"])
    finally:
        logger.remove(sink)
    assert first == second == parse_save(SAVE, ["KUBE-CLUSTER-IP"])
    assert len(calls) == 1
    assert len(lines) == 1 and "ipset save" in lines[0]


def test_tool_reads_over_netlink_when_it_works(tmp_path: Path) -> None:
    def reader(names: object) -> dict[str, frozenset[str]]:
        return {"S": frozenset({"10.0.0.1,tcp:80"})}

    tool = IPSetTool(str(tmp_path / "no-such-ipset"), netlink=reader)
    assert tool.read(["S"]) == {"S": frozenset({"10.0.0.1,tcp:80"})}
    with pytest.raises(KernelError):
        IPSetTool(str(tmp_path / "no-such-ipset"), netlink=None).read(["S"])


def test_names_request_and_reply() -> None:
    message = ipset_msg(codec.encode_names_request(3))
    message.decode()
    assert message["header"]["type"] == (6 << 8) | codec.IPSET_CMD_LIST
    assert message.get_attr("IPSET_ATTR_FLAGS") == codec.FLAG_LIST_SETNAME
    # a set's name repeats in each of its messages; the kernel's index order is kept
    assert codec.decode_names(payloads()) == NAMES
