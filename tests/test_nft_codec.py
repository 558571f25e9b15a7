"""The nf_tables set element decoder (dataplane/nft_codec.py) on hand-built bytes."""

from __future__ import annotations

import socket
import struct

import pytest

from ipvsproxy.core import ipsets, nft_rules
from ipvsproxy.core.model import IPFamily
from ipvsproxy.dataplane import nft_codec as codec
from ipvsproxy.dataplane.netlink_codec import NLMSGHDR, NetlinkDecodeError

NESTED = 0x8000


def nla(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def data(value: bytes) -> bytes:
    return nla(codec.NFTA_DATA_VALUE, value)


def elem(key: bytes, *, key_end: bytes | None = None, flags: int | None = None) -> bytes:
    body = nla(codec.NFTA_SET_ELEM_KEY | NESTED, data(key))
    if key_end is not None:
        body += nla(codec.NFTA_SET_ELEM_KEY_END | NESTED, data(key_end))
    if flags is not None:
        body += nla(codec.NFTA_SET_ELEM_FLAGS, struct.pack(">I", flags))
    return nla(codec.NFTA_LIST_ELEM | NESTED, body)


def reply(*elements: bytes) -> bytes:
    return (
        struct.pack("=BBH", codec.NFPROTO_IPV4, 0, 0)
        + nla(codec.NFTA_SET_ELEM_LIST_TABLE, b"ipvsproxy\0")
        + nla(codec.NFTA_SET_ELEM_LIST_ELEMENTS | NESTED, b"".join(elements))
    )


def v4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


def v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def reg(value: bytes) -> bytes:
    """One field of a concatenation, padded to its 4-byte register."""
    return value + b"\0" * (-len(value) % 4)


def the_set(spec: ipsets.IPSetSpec) -> nft_rules.NftSet:
    return next(s for s in nft_rules.SETS if s.spec is spec)


def test_request_names_table_and_set() -> None:
    request = codec.encode_elements_request(IPFamily.V6, "ipvsproxy", "cluster_ip", 7)
    length, kind, flags, seq, _ = NLMSGHDR.unpack_from(request)
    assert length == len(request) and seq == 7
    assert kind == (10 << 8) | 13
    assert flags == 0x301  # NLM_F_REQUEST | NLM_F_DUMP
    assert request[16] == codec.NFPROTO_IPV6
    assert b"ipvsproxy\0" in request and b"cluster_ip\0" in request


def test_concatenation_of_address_protocol_port() -> None:
    key = reg(v4("10.96.0.1")) + reg(bytes([6])) + reg(struct.pack(">H", 443))
    key2 = reg(v4("10.96.0.2")) + reg(bytes([132])) + reg(struct.pack(">H", 5))
    found = codec.decode_elements(
        [reply(elem(key)), reply(elem(key2))], the_set(ipsets.CLUSTER_IP), IPFamily.V4
    )
    assert found == {"10.96.0.1,tcp:443", "10.96.0.2,sctp:5"}


def test_single_fields() -> None:
    port = codec.decode_elements(
        [reply(elem(struct.pack(">H", 30080)))], the_set(ipsets.NODE_PORT_TCP), IPFamily.V6
    )
    assert port == {"30080"}
    address = codec.decode_elements(
        [reply(elem(v6("::ffff:1.2.3.4")), elem(v6("fd00::1")))],
        the_set(ipsets.IPVS_IPS),
        IPFamily.V6,
    )
    assert address == {"::ffff:1.2.3.4", "fd00::1"}


def test_interval_concatenation_prints_prefixes() -> None:
    head = reg(v6("fd00::5")) + reg(bytes([17])) + reg(struct.pack(">H", 80))
    network = elem(head + v6("fd01::"), key_end=head + v6("fd01::ffff:ffff:ffff:ffff"))
    single = elem(head + v6("fd02::7"), key_end=head + v6("fd02::7"))
    closing = elem(head + v6("fd02::8"), flags=codec.NFT_SET_ELEM_INTERVAL_END)
    found = codec.decode_elements(
        [reply(network, single, closing)],
        the_set(ipsets.LOAD_BALANCER_SOURCE_CIDR),
        IPFamily.V6,
    )
    assert found == {"fd00::5,udp:80,fd01::/64", "fd00::5,udp:80,fd02::7"}


def test_empty_reply() -> None:
    empty = struct.pack("=BBH", codec.NFPROTO_IPV4, 0, 0)
    assert codec.decode_elements([empty], the_set(ipsets.CLUSTER_IP), IPFamily.V4) == frozenset()


@pytest.mark.parametrize(
    ("spec", "element"),
    [
        # protocol 1 (icmp): nft would print a name this decoder does not know
        (ipsets.CLUSTER_IP, elem(reg(v4("10.0.0.1")) + reg(b"\x01") + reg(b"\0\x50"))),
        # a 3-byte key in a set of ports
        (ipsets.NODE_PORT_TCP, elem(b"\0\0\x50")),
        # a range that is no prefix
        (
            ipsets.LOAD_BALANCER_SOURCE_CIDR,
            elem(
                reg(v4("10.0.0.1")) + reg(b"\x06") + reg(b"\0\x50") + v4("10.0.0.1"),
                key_end=reg(v4("10.0.0.1")) + reg(b"\x06") + reg(b"\0\x50") + v4("10.0.0.6"),
            ),
        ),
    ],
)
def test_what_it_cannot_print_exactly(spec: ipsets.IPSetSpec, element: bytes) -> None:
    with pytest.raises(codec.UnsupportedNftSet):
        codec.decode_elements([reply(element)], the_set(spec), IPFamily.V4)


def test_truncated_list() -> None:
    broken = reply(elem(struct.pack(">H", 1)))[:-2]
    with pytest.raises(NetlinkDecodeError):
        codec.decode_elements([broken], the_set(ipsets.NODE_PORT_TCP), IPFamily.V4)


def chain_message(table: str, name: str, generation: int) -> bytes:
    return (
        struct.pack("=BBH", codec.NFPROTO_IPV4, 0, generation)
        + nla(codec.NFTA_CHAIN_TABLE, table.encode() + b"\0")
        + nla(3, name.encode() + b"\0")
    )


def test_chains_fingerprint_ignores_generation_and_other_tables() -> None:
    ours = chain_message("ipvsproxy", "services", 1)
    base = codec.chains_fingerprint([ours], [], "ipvsproxy")
    moved = codec.chains_fingerprint(
        [chain_message("ipvsproxy", "services", 2), chain_message("other", "x", 2)],
        [],
        "ipvsproxy",
    )
    assert moved == base
    renamed = codec.chains_fingerprint([chain_message("ipvsproxy", "firewall", 1)], [], "ipvsproxy")
    assert renamed != base
    # a rule message counts apart from the chains
    assert codec.chains_fingerprint([], [ours], "ipvsproxy") != base
