"""The nf_tables netlink protocol (nfnetlink subsystem 10), set elements only: pure, bytes
in and text out.

A GETSETELEM dump names one set (NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET) in one
family (nfgenmsg); each reply carries NFTA_SET_ELEM_LIST_ELEMENTS, a nest of NFTA_LIST_ELEM
nests, each with the element's key (NFTA_SET_ELEM_KEY -> NFTA_DATA_VALUE) and, in an
interval set of concatenations, the end of its range (NFTA_SET_ELEM_KEY_END). A
concatenated key is its fields one after the other, each padded to the 4-byte registers.
Layouts: include/uapi/linux/netfilter/nf_tables.h and nfnetlink.h.

Elements come out exactly as core/nft_rules.parse_listing() gives them from `nft list`
(ipset syntax: "10.0.0.5,tcp:80,10.1.0.0/16"), so the drift comparison is the same
whichever reader ran. What this decoder cannot print exactly (an unknown protocol number,
a range that is no prefix, an element of an unexpected length) raises UnsupportedNftSet:
the caller then reads the set from `nft list` instead.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from collections.abc import Iterable
from typing import Final

from ipvsproxy.core.model import IPFamily
from ipvsproxy.core.nft_rules import NftSet
from ipvsproxy.dataplane.netlink_codec import (
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSGHDR,
    NetlinkDecodeError,
    attribute_spans,
)

NETLINK_NETFILTER: Final = 12
NFNL_SUBSYS_NFTABLES: Final = 10
NFT_MSG_NEWSETELEM: Final = 12  # the type of dump replies
NFT_MSG_GETSETELEM: Final = 13
NFPROTO_IPV4: Final = 2
NFPROTO_IPV6: Final = 10

NFTA_SET_ELEM_LIST_TABLE: Final = 1
NFTA_SET_ELEM_LIST_SET: Final = 2
NFTA_SET_ELEM_LIST_ELEMENTS: Final = 3
NFTA_LIST_ELEM: Final = 1
NFTA_SET_ELEM_KEY: Final = 1
NFTA_SET_ELEM_FLAGS: Final = 3
NFTA_SET_ELEM_KEY_END: Final = 10
NFTA_DATA_VALUE: Final = 1
NFT_SET_ELEM_INTERVAL_END: Final = 1

# Protocol numbers as nft prints them in the sets' inet_proto field.
_PROTOCOLS: Final = {6: "tcp", 17: "udp", 132: "sctp"}

_NFGENMSG: Final = struct.Struct("=BBH")
_NLA: Final = struct.Struct("=HH")
_NLA_F_NESTED: Final = 0x8000
_BE16: Final = struct.Struct(">H")
_BE32: Final = struct.Struct(">I")


class UnsupportedNftSet(NetlinkDecodeError):
    """A set element this decoder cannot print exactly as `nft list` does."""


def message_type(command: int) -> int:
    return (NFNL_SUBSYS_NFTABLES << 8) | command


def nfproto(family: IPFamily) -> int:
    return NFPROTO_IPV4 if family is IPFamily.V4 else NFPROTO_IPV6


def _string_attribute(kind: int, text: str) -> bytes:
    value = text.encode() + b"\0"
    padding = b"\0" * (-len(value) % 4)
    return _NLA.pack(4 + len(value), kind) + value + padding


def encode_elements_request(family: IPFamily, table: str, set_name: str, seq: int) -> bytes:
    """The dump request of one set's elements (what `nft list set` sends)."""
    payload = (
        _NFGENMSG.pack(nfproto(family), 0, 0)
        + _string_attribute(NFTA_SET_ELEM_LIST_TABLE, table)
        + _string_attribute(NFTA_SET_ELEM_LIST_SET, set_name)
    )
    header = NLMSGHDR.pack(
        16 + len(payload), message_type(NFT_MSG_GETSETELEM), NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + payload


def _fields(nft_set: NftSet, family: IPFamily) -> list[str]:
    """The key's field types, in order ("ipv4_addr", "inet_proto", ...)."""
    return [part.strip() for part in nft_set.type_for(family).split(" . ")]


_WIDTHS: Final = {"ipv4_addr": 4, "ipv6_addr": 16, "inet_proto": 1, "inet_service": 2}


def _address(value: bytes) -> str:
    # inet_ntop, as nft prints: "::ffff:1.2.3.4" for an IPv4-mapped address.
    return socket.inet_ntop(socket.AF_INET if len(value) == 4 else socket.AF_INET6, value)


def _field_text(kind: str, value: bytes) -> str:
    if kind == "inet_proto":
        name = _PROTOCOLS.get(value[0])
        if name is None:
            raise UnsupportedNftSet(f"protocol number {value[0]} in a set element")
        return name
    if kind == "inet_service":
        return str(_BE16.unpack(value)[0])
    return _address(value)


def _prefix(start: bytes, end: bytes) -> str:
    """An address range as nft prints it: the bare address, or a network/prefix."""
    bits = len(start) * 8
    first = int.from_bytes(start, "big")
    host = first ^ int.from_bytes(end, "big")
    if host & (host + 1) or first & host:
        raise UnsupportedNftSet(f"the range {_address(start)}-{_address(end)} is no prefix")
    if not host:
        return _address(start)
    return f"{_address(start)}/{bits - host.bit_length()}"


class _Layout:
    """One set type's key: where each field sits, and caches of the fields' text (a
    dump repeats the same addresses, protocols and ports many times)."""

    def __init__(self, kinds: list[str]) -> None:
        self.kinds = kinds
        self.fields: list[tuple[str, int, int]] = []  # (kind, offset, width)
        offset = 0
        for kind in kinds:
            width = _WIDTHS[kind]
            self.fields.append((kind, offset, width))
            # a concatenation pads every field to its 4-byte register; one field is bare
            offset += width if len(kinds) == 1 else (width + 3) & ~3
        self.size = offset
        self.texts: dict[tuple[str, bytes], str] = {}
        # The bytes before the key of an element that holds its key alone (the usual
        # case): NFTA_SET_ELEM_KEY's header, then NFTA_DATA_VALUE's.
        self.padded = (offset + 3) & ~3
        data = _NLA.pack(4 + offset, NFTA_DATA_VALUE)
        self.plain = frozenset(
            _NLA.pack(8 + self.padded, NFTA_SET_ELEM_KEY | nested) + data
            for nested in (0, _NLA_F_NESTED)  # kernels differ in flagging the nest
        )

    def entry(self, key: bytes) -> str:
        """A key's entry in ipset syntax (nft_rules.entry() of the element's nft text)."""
        texts = [
            self.text(kind, value) for kind, value in zip(self.kinds, self.split(key), strict=True)
        ]
        if len(texts) == 1:
            return texts[0]
        return ",".join([texts[0], f"{texts[1]}:{texts[2]}", *texts[3:]])

    def split(self, key: bytes) -> list[bytes]:
        if len(key) != self.size:
            kinds = " . ".join(self.kinds)
            raise UnsupportedNftSet(f"a {len(key)}-byte key in a set of {kinds}")
        return [key[offset : offset + width] for _, offset, width in self.fields]

    def text(self, kind: str, value: bytes) -> str:
        found = self.texts.get((kind, value))
        if found is None:
            found = self.texts[kind, value] = _field_text(kind, value)
        return found


def _value(buffer: bytes, offset: int, length: int) -> bytes:
    """The NFTA_DATA_VALUE inside an NFTA_SET_ELEM_KEY(_END) nest."""
    end = offset + length
    while end - offset >= 4:
        size, kind = _NLA.unpack_from(buffer, offset)
        if size < 4 or offset + size > end:
            raise NetlinkDecodeError(f"attribute length {size} overruns its key")
        if kind & 0x3FFF == NFTA_DATA_VALUE:
            return buffer[offset + 4 : offset + size]
        offset += (size + 3) & ~3
    raise NetlinkDecodeError("a set element key without NFTA_DATA_VALUE")


def _element(buffer: bytes, offset: int, length: int, layout: _Layout) -> str | None:
    """One NFTA_LIST_ELEM as an entry in ipset syntax; None for the end of an interval."""
    key: tuple[int, int] | None = None
    key_end: tuple[int, int] | None = None
    end = offset + length
    while end - offset >= 4:
        size, kind = _NLA.unpack_from(buffer, offset)
        if size < 4 or offset + size > end:
            raise NetlinkDecodeError(f"attribute length {size} overruns its set element")
        kind &= 0x3FFF
        if kind == NFTA_SET_ELEM_KEY:
            key = (offset + 4, size - 4)
        elif kind == NFTA_SET_ELEM_KEY_END:
            key_end = (offset + 4, size - 4)
        elif (
            kind == NFTA_SET_ELEM_FLAGS
            and size >= 8
            and _BE32.unpack_from(buffer, offset + 4)[0] & NFT_SET_ELEM_INTERVAL_END
        ):
            if len(layout.kinds) > 1:
                return None  # the closing element older kernels send after a concatenation
            raise UnsupportedNftSet("an interval set of single values")
        offset += (size + 3) & ~3
    if key is None:
        raise NetlinkDecodeError("a set element without NFTA_SET_ELEM_KEY")
    start = _value(buffer, *key)
    if key_end is None:
        return layout.entry(start)
    values, ends = layout.split(start), layout.split(_value(buffer, *key_end))
    kinds = layout.kinds
    if ends[:-1] != values[:-1] or not kinds[-1].endswith("_addr"):
        raise UnsupportedNftSet("a range in a field other than the last address")
    texts = [layout.text(kind, value) for kind, value in zip(kinds[:-1], values[:-1], strict=True)]
    texts.append(_prefix(values[-1], ends[-1]))
    # nft_rules.entry() of the element text: "a . tcp . 80 . b" -> "a,tcp:80,b"
    return ",".join([texts[0], f"{texts[1]}:{texts[2]}", *texts[3:]])


def decode_elements(payloads: Iterable[bytes], nft_set: NftSet, family: IPFamily) -> frozenset[str]:
    """The set's elements, in ipset syntax, as parse_listing() gives them."""
    layout = _Layout(_fields(nft_set, family))
    plain, plain_length, size = layout.plain, 12 + layout.padded, layout.size
    found: set[str] = set()
    for payload in payloads:
        lists = attribute_spans(payload, _NFGENMSG.size, len(payload))
        span = lists.get(NFTA_SET_ELEM_LIST_ELEMENTS)
        if span is None:
            continue
        offset, end = span[0], span[0] + span[1]
        while end - offset >= 4:
            length, kind = _NLA.unpack_from(payload, offset)
            if length < 4 or offset + length > end:
                raise NetlinkDecodeError(f"set element length {length} overruns its list")
            if kind & 0x3FFF != NFTA_LIST_ELEM:
                pass
            elif length == plain_length and payload[offset + 4 : offset + 12] in plain:
                found.add(layout.entry(payload[offset + 12 : offset + 12 + size]))
            else:
                text = _element(payload, offset + 4, length - 4, layout)
                if text is not None:
                    found.add(text)
            offset += (length + 3) & ~3
    return frozenset(found)


NFT_MSG_NEWCHAIN: Final = 3
NFT_MSG_GETCHAIN: Final = 4
NFT_MSG_NEWRULE: Final = 6
NFT_MSG_GETRULE: Final = 7
NFTA_CHAIN_TABLE: Final = 1
NFTA_RULE_TABLE: Final = 1


def encode_chains_request(family: IPFamily, seq: int) -> bytes:
    """A dump of every chain of the family (the kernel filters chain dumps by no table)."""
    payload = _NFGENMSG.pack(nfproto(family), 0, 0)
    header = NLMSGHDR.pack(
        16 + len(payload), message_type(NFT_MSG_GETCHAIN), NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + payload


def encode_rules_request(family: IPFamily, table: str, seq: int) -> bytes:
    """A dump of every rule of one table."""
    payload = _NFGENMSG.pack(nfproto(family), 0, 0) + _string_attribute(NFTA_RULE_TABLE, table)
    header = NLMSGHDR.pack(
        16 + len(payload), message_type(NFT_MSG_GETRULE), NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + payload


def chains_fingerprint(chains: Iterable[bytes], rules: Iterable[bytes], table: str) -> bytes:
    """A digest of the table's chains and rules as the kernel dumps them: equal digests,
    equal chains and rules (hooks, priorities, policies, every expression, the handles).
    The nfgenmsg header, whose resource id is the ruleset's generation (it moves with
    every element written), is left out; so are other tables' chains."""
    digest = hashlib.blake2b(digest_size=20)
    name = table.encode() + b"\0"
    for kind, payloads in ((NFTA_CHAIN_TABLE, chains), (NFTA_RULE_TABLE, rules)):
        digest.update(b"\xff" + bytes([kind]))
        for payload in payloads:
            span = attribute_spans(payload, _NFGENMSG.size, len(payload)).get(kind)
            if span is None or payload[span[0] : span[0] + span[1]].rstrip(b"\0") + b"\0" != name:
                continue
            body = payload[_NFGENMSG.size :]
            digest.update(_BE32.pack(len(body)) + body)
    return digest.digest()
