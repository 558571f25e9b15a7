"""The rtnetlink address and link codec, checked against pyroute2's independent schemas.

Our RTM_NEWADDR / RTM_DELADDR / RTM_GETADDR and link requests must decode with pyroute2's
``ifaddrmsg`` / ``ifinfmsg`` to the values we meant; dump replies that pyroute2 encodes (laid
out as Linux 6.1 sends them) must decode with ours; our encode -> decode must round-trip.
Decoding garbage must raise NetlinkDecodeError and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import random
import socket
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from ipvsproxy.core.model import IPAddress
from ipvsproxy.core.operations import BindAddress, OperationFailure, UnbindAddress
from ipvsproxy.dataplane import links
from ipvsproxy.dataplane.netlink import NetlinkDecodeError, Outcome
from ipvsproxy.dataplane.netlink_codec import split_messages

ip = ipaddress.ip_address
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
CACHEINFO = {"ifa_preferred": 0xFFFFFFFF, "ifa_valid": 0xFFFFFFFF, "cstamp": 748, "tstamp": 748}
ADDRESSES = [
    ip("10.96.0.1"),
    ip("0.0.0.1"),
    ip("255.255.255.255"),
    ip("fd00:10:96::a"),
    ip("2001:db8::"),
    ip("::ffff:10.0.0.1"),
]


def _ifaddr(data: bytes) -> Any:
    message = ifaddrmsg(data)
    message.decode()
    return message


def _attrs(message: Any) -> list[tuple[str, Any]]:
    """pyroute2's attributes as plain (name, value) pairs, in wire order."""
    return [(attr[0], attr[1]) for attr in message["attrs"]]


def _ifinfo(data: bytes) -> Any:
    message = ifinfmsg(data)
    message.decode()
    return message


def _pyroute2_reply(
    *, family: int, prefixlen: int, flags: int, index: int, attrs: list[tuple[str, Any]]
) -> bytes:
    """An RTM_NEWADDR dump reply as pyroute2 encodes it."""
    message = ifaddrmsg()
    message["family"] = family
    message["prefixlen"] = prefixlen
    message["flags"] = flags
    message["index"] = index
    message["attrs"] = attrs
    message["header"]["type"] = links.RTM_NEWADDR
    message["header"]["flags"] = 0x2  # NLM_F_MULTI
    message["header"]["sequence_number"] = 9
    message.encode()
    return bytes(message.data)


# --- addresses: our requests, decoded by pyroute2 -----------------------------------------


@pytest.mark.parametrize("address", ADDRESSES, ids=str)
@pytest.mark.parametrize("command", [links.RTM_NEWADDR, links.RTM_DELADDR], ids=["new", "del"])
def test_address_request_decodes_with_pyroute2(command: int, address: IPAddress) -> None:
    data = links.encode_address(command=command, index=7, address=address, seq=0xFFFFFFFF)
    message = _ifaddr(data)
    v6 = address.version == 6
    flags = NLM_F_REQUEST | NLM_F_ACK
    if command == links.RTM_NEWADDR:
        flags |= NLM_F_CREATE | NLM_F_EXCL
    assert message["header"]["length"] == len(data) == (72 if v6 else 40)
    assert message["header"]["type"] == command
    assert message["header"]["flags"] == flags
    assert message["header"]["sequence_number"] == 0xFFFFFFFF
    assert message["header"]["pid"] == 0
    assert message["family"] == (socket.AF_INET6 if v6 else socket.AF_INET)
    assert message["prefixlen"] == (128 if v6 else 32)
    assert message["flags"] == (links.IFA_F_NODAD if v6 else 0)
    assert message["scope"] == 0
    assert message["index"] == 7
    expected: list[tuple[str, Any]] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
    if v6:
        expected.append(("IFA_FLAGS", links.IFA_F_NODAD))
    # pyroute2 prints addresses its own way (::ffff:10.0.0.1); compare them as values
    decoded = [(k, ip(v) if k in ("IFA_LOCAL", "IFA_ADDRESS") else v) for k, v in _attrs(message)]
    assert decoded == expected


def test_address_dump_request_decodes_with_pyroute2() -> None:
    data = links.encode_get_addresses(index=3, seq=11)
    message = _ifaddr(data)
    assert message["header"]["length"] == len(data) == 24
    assert message["header"]["type"] == links.RTM_GETADDR
    assert message["header"]["flags"] == NLM_F_REQUEST | NLM_F_DUMP
    assert message["header"]["sequence_number"] == 11
    # NETLINK_GET_STRICT_CHK: everything but family and index must be zero
    fields = [message[k] for k in ("family", "prefixlen", "flags", "scope", "index")]
    assert fields == [0, 0, 0, 0, 3]
    assert _attrs(message) == []


# --- addresses: dump replies --------------------------------------------------------------


@pytest.mark.parametrize("address", ADDRESSES, ids=str)
def test_round_trip(address: IPAddress) -> None:
    """Our request bytes, read as a dump reply (same layout), give back what we sent."""
    data = links.encode_address(command=links.RTM_NEWADDR, index=4242, address=address, seq=1)
    [message] = split_messages(data)
    assert links.parse_address(message.payload) == (4242, address)


def test_pyroute2_dump_replies_decode_with_ours() -> None:
    """Replies shaped as Linux 6.1 sends them: IPv4 with IFA_ADDRESS, IFA_LOCAL, IFA_LABEL,
    IFA_FLAGS and IFA_CACHEINFO; IPv6 with IFA_ADDRESS only (no IFA_LOCAL without a peer)."""
    v4 = _pyroute2_reply(
        family=socket.AF_INET,
        prefixlen=32,
        flags=0x80,  # IFA_F_PERMANENT
        index=2,
        attrs=[
            ("IFA_ADDRESS", "10.96.0.10"),
            ("IFA_LOCAL", "10.96.0.10"),
            ("IFA_LABEL", "kube-ipvs0"),
            ("IFA_FLAGS", 0x80),
            ("IFA_CACHEINFO", CACHEINFO),
        ],
    )
    v6 = _pyroute2_reply(
        family=socket.AF_INET6,
        prefixlen=128,
        flags=0x82,
        index=2,
        attrs=[
            ("IFA_ADDRESS", "fd00:10:96::a"),
            ("IFA_CACHEINFO", CACHEINFO),
            ("IFA_FLAGS", 0x82),
        ],
    )
    # one recv() of a dump carries several messages back to back
    parsed = [links.parse_address(m.payload) for m in split_messages(v4 + v6)]
    assert parsed == [(2, ip("10.96.0.10")), (2, ip("fd00:10:96::a"))]


def test_point_to_point_reply_takes_the_local_address() -> None:
    """IFA_ADDRESS is the peer of a point-to-point address; IFA_LOCAL is ours."""
    for family, local, peer in (
        (socket.AF_INET, "192.0.2.1", "192.0.2.2"),
        (socket.AF_INET6, "2001:db8::1", "2001:db8::2"),
    ):
        reply = _pyroute2_reply(
            family=family,
            prefixlen=32 if family == socket.AF_INET else 128,
            flags=0,
            index=5,
            attrs=[("IFA_ADDRESS", peer), ("IFA_LOCAL", local)],
        )
        [message] = split_messages(reply)
        assert links.parse_address(message.payload) == (5, ip(local))


def test_replies_without_a_usable_address_are_skipped() -> None:
    no_address = _pyroute2_reply(
        family=socket.AF_INET, prefixlen=32, flags=0, index=2, attrs=[("IFA_LABEL", "x")]
    )
    assert links.parse_address(split_messages(no_address)[0].payload) is None
    # a family we do not manage, and an address whose size does not match its family
    other = bytes([socket.AF_PACKET, 0, 0, 0]) + (2).to_bytes(4, "little") + b"\x08\x00\x01\x00"
    assert links.parse_address(other + b"\x01\x02\x03\x04") is None
    wrong_size = bytes([socket.AF_INET, 32, 0, 0]) + (2).to_bytes(4, "little")
    assert links.parse_address(wrong_size + b"\x14\x00\x02\x00" + bytes(16)) is None


def test_truncated_or_garbage_replies_raise_decode_error() -> None:
    good = links.encode_address(command=links.RTM_NEWADDR, index=1, address=ip("fd00::1"), seq=1)
    payload = split_messages(good)[0].payload
    with pytest.raises(NetlinkDecodeError):
        links.parse_address(payload[:7])
    with pytest.raises(NetlinkDecodeError):
        links.parse_address(payload[:12])  # attribute header says 20 bytes; 4 are left
    with pytest.raises(NetlinkDecodeError):
        links.parse_link_index(b"\0" * 15)
    rng = random.Random(7)
    for _ in range(2000):
        mutable = bytearray(payload)
        for _ in range(rng.randrange(1, 6)):
            mutable[rng.randrange(len(mutable))] = rng.randrange(256)
        with contextlib.suppress(NetlinkDecodeError):
            links.parse_address(bytes(mutable[: rng.randrange(len(mutable) + 1)]))


# --- links --------------------------------------------------------------------------------


def test_link_requests_decode_with_pyroute2() -> None:
    new = _ifinfo(links.encode_new_dummy("kube-ipvs0", seq=3))
    assert new["header"]["type"] == links.RTM_NEWLINK
    assert new["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    assert new["header"]["sequence_number"] == 3
    assert (new["family"], new["index"], new["flags"], new["change"]) == (0, 0, 0, 0)
    assert new.get_attr("IFLA_IFNAME") == "kube-ipvs0"
    assert new.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND") == "dummy"

    get = _ifinfo(links.encode_get_link("kube-ipvs0", seq=4))
    assert get["header"]["type"] == links.RTM_GETLINK
    assert get["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK
    # NETLINK_GET_STRICT_CHK: type, flags and change must be zero; IFLA_IFNAME is allowed
    assert (get["ifi_type"], get["index"], get["flags"], get["change"]) == (0, 0, 0, 0)
    assert _attrs(get) == [("IFLA_IFNAME", "kube-ipvs0")]

    delete = _ifinfo(links.encode_del_link(9, seq=5))
    assert delete["header"]["type"] == links.RTM_DELLINK
    assert delete["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK
    assert delete["index"] == 9
    assert _attrs(delete) == []


@pytest.mark.parametrize("name", ["a", "abc", "abcd", "kube-ipvs0", "fifteen-chars-x"])
def test_interface_name_is_nul_terminated_and_padded(name: str) -> None:
    data = links.encode_get_link(name, seq=1)
    assert len(data) % 4 == 0
    assert _ifinfo(data).get_attr("IFLA_IFNAME") == name


def test_link_index_of_a_pyroute2_reply() -> None:
    reply = ifinfmsg()
    reply["index"] = 4711
    reply["flags"] = 0x1082
    reply["attrs"] = [("IFLA_IFNAME", "kube-ipvs0"), ("IFLA_MTU", 1500)]
    reply["header"]["type"] = links.RTM_NEWLINK
    reply.encode()
    [message] = split_messages(bytes(reply.data))
    assert links.parse_link_index(message.payload) == 4711


# --- outcomes -> failures (no kernel: lookups and batches scripted) -----------------------


class _Scripted(links.LinkTool):
    """A LinkTool whose interface lookup and batches answer from a script."""

    def __init__(self, answers: list[Outcome], index: int | None = 5) -> None:
        super().__init__()
        self.answers = answers
        self.index = index
        self.sent: list[bytes] = []

    def _index(self, name: str) -> int | None:
        return self.index

    def _transact(self, items: Any, encode: Any) -> list[Outcome]:
        self.sent = [encode(item, seq) for seq, item in enumerate(items, 1)]
        return self.answers


LOST = Outcome(errno.ENOBUFS, "its acknowledgement was lost", sent=False)


@pytest.mark.parametrize(
    ("command", "answer", "fails"),
    [
        ("bind", Outcome(0), False),
        ("bind", Outcome(errno.EEXIST), False),
        ("bind", Outcome(errno.EADDRNOTAVAIL), True),
        ("bind", LOST, True),
        ("unbind", Outcome(errno.EADDRNOTAVAIL), False),
        ("unbind", Outcome(errno.ENOENT), False),
        ("unbind", Outcome(errno.EEXIST), True),
        ("unbind", LOST, True),
    ],
)
def test_idempotent_answers_and_refusals(command: str, answer: Outcome, fails: bool) -> None:
    address = ip("10.96.0.1")
    tool = _Scripted([Outcome(0), answer, Outcome(0)])
    try:
        change = tool.bind if command == "bind" else tool.unbind
        failures = change("kube-ipvs0", [ip("10.96.0.9"), address, ip("fd00::9")])
    finally:
        tool.close()
    assert len(tool.sent) == 3
    op = BindAddress(address) if command == "bind" else UnbindAddress(address)
    if not fails:
        assert failures == []
        return
    [failure] = failures
    assert (failure.operation, failure.errno) == (op, answer.code)
    reason = answer.text if not answer.sent else os.strerror(answer.code)
    assert failure.message == f"{command} 10.96.0.1 on kube-ipvs0: {reason}"


def test_missing_interface_fails_every_address_without_writing() -> None:
    tool = _Scripted([], index=None)
    try:
        failures = tool.bind("kube-ipvs0", [ip("10.96.0.1"), ip("fd00::1")])
        assert tool.unbind("kube-ipvs0", []) == []
    finally:
        tool.close()
    assert tool.sent == []
    assert failures == [
        OperationFailure(BindAddress(ip("10.96.0.1")), errno.ENODEV, "kube-ipvs0 does not exist"),
        OperationFailure(BindAddress(ip("fd00::1")), errno.ENODEV, "kube-ipvs0 does not exist"),
    ]
