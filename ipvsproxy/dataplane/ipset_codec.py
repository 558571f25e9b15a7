"""The ipset netlink protocol (nfnetlink subsystem 6), read side: pure, bytes in and text out.

One IPSET_CMD_SAVE dump lists every set of the namespace; each reply message names its set
(IPSET_ATTR_SETNAME) and carries either the set's header or an IPSET_ATTR_ADT nest of entries,
one IPSET_ATTR_DATA nest per entry. Entries are printed exactly as `ipset save` (ipset 7)
prints them, so the rest of the proxy compares the same strings whichever reader ran:

    hash:ip,port        10.96.0.1,tcp:443          hash:net      10.0.0.0/8, 10.0.0.1
    hash:ip,port,ip     10.0.0.5,tcp:80,10.0.0.5   bitmap:port   30080
    hash:ip,port,net    10.0.0.5,tcp:80,10.1.0.0/16

then the extensions in ipset's order: timeout, nomatch, packets, bytes, comment, skbmark,
skbprio, skbqueue. Layouts: include/uapi/linux/netfilter/ipset/ip_set.h and
nfnetlink.h; the kernel sends addresses, ports and numbers in network byte order.

Anything this decoder does not know (a protocol without ports such as icmp, an interface
or MAC element, an unknown attribute) raises UnsupportedIPSet: the caller then reads with
`ipset save` instead, which knows every set type, rather than guess a string.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Collection, Iterable
from typing import Final

from ipvsproxy.dataplane.netlink_codec import (
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSGHDR,
    NetlinkDecodeError,
    attribute_spans,
)

NETLINK_NETFILTER: Final = 12
NFNL_SUBSYS_IPSET: Final = 6
IPSET_PROTOCOL: Final = 7
IPSET_CMD_LIST: Final = 7
IPSET_CMD_SAVE: Final = 8

# Command-level attributes.
ATTR_PROTOCOL: Final = 1
ATTR_SETNAME: Final = 2
ATTR_FLAGS: Final = 6
ATTR_DATA: Final = 7
ATTR_ADT: Final = 8
# Entry attributes (CADT and ADT).
ATTR_IP: Final = 1
ATTR_CIDR: Final = 3
ATTR_PORT: Final = 4
ATTR_TIMEOUT: Final = 6
ATTR_PROTO: Final = 7
ATTR_CADT_FLAGS: Final = 8
ATTR_IP2: Final = 20
ATTR_CIDR2: Final = 21
ATTR_BYTES: Final = 24
ATTR_PACKETS: Final = 25
ATTR_COMMENT: Final = 26
ATTR_SKBMARK: Final = 27
ATTR_SKBPRIO: Final = 28
ATTR_SKBQUEUE: Final = 29
ATTR_PAD: Final = 30
ATTR_IPADDR_IPV4: Final = 1
ATTR_IPADDR_IPV6: Final = 2
FLAG_NOMATCH: Final = 1 << 2
FLAG_LIST_SETNAME: Final = 1 << 1
_KNOWN: Final = frozenset(
    {
        ATTR_IP,
        ATTR_CIDR,
        ATTR_PORT,
        ATTR_TIMEOUT,
        ATTR_PROTO,
        ATTR_CADT_FLAGS,
        ATTR_IP2,
        ATTR_CIDR2,
        ATTR_BYTES,
        ATTR_PACKETS,
        ATTR_COMMENT,
        ATTR_SKBMARK,
        ATTR_SKBPRIO,
        ATTR_SKBQUEUE,
        ATTR_PAD,
    }
)
# Protocols whose entries carry a port, by number, as ipset names them.
_PORT_PROTOCOLS: Final = {6: "tcp", 17: "udp", 132: "sctp", 136: "udplite"}

_NFGENMSG: Final = struct.Struct("=BBH")
_NLA: Final = struct.Struct("=HH")
_BE16: Final = struct.Struct(">H")
_BE32: Final = struct.Struct(">I")
_BE64: Final = struct.Struct(">Q")


class UnsupportedIPSet(NetlinkDecodeError):
    """The dump holds something this decoder cannot print exactly as `ipset save` does."""


def message_type(command: int) -> int:
    return (NFNL_SUBSYS_IPSET << 8) | command


def _dump_request(command: int, seq: int, attributes: bytes = b"") -> bytes:
    protocol = _NLA.pack(5, ATTR_PROTOCOL) + bytes([IPSET_PROTOCOL]) + b"\0\0\0"
    payload = _NFGENMSG.pack(socket.AF_INET, 0, 0) + protocol + attributes
    header = NLMSGHDR.pack(
        16 + len(payload), message_type(command), NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + payload


def encode_save_request(seq: int) -> bytes:
    """The dump request `ipset save` sends: IPSET_CMD_SAVE, every set, protocol 7."""
    return _dump_request(IPSET_CMD_SAVE, seq)


def encode_names_request(seq: int) -> bytes:
    """A dump of the set names alone (`ipset list -n`), in the kernel's index order."""
    flags = _NLA.pack(8, ATTR_FLAGS | 0x4000) + _BE32.pack(FLAG_LIST_SETNAME)
    return _dump_request(IPSET_CMD_LIST, seq, flags)


def decode_names(payloads: Iterable[bytes]) -> list[str]:
    """The set names of a names dump, in the order the kernel sent them."""
    names: list[str] = []
    for payload in payloads:
        name, _ = set_name(payload)
        if not names or names[-1] != name:
            names.append(name)
    return names


def _address(buffer: bytes, offset: int, length: int) -> tuple[str, int]:
    """The text of a nested IPSET_ATTR_IPADDR_* attribute and its full prefix length."""
    spans = attribute_spans(buffer, offset, offset + length)
    span = spans.get(ATTR_IPADDR_IPV4)
    if span is not None and span[1] == 4:
        return socket.inet_ntop(socket.AF_INET, buffer[span[0] : span[0] + 4]), 32
    span = spans.get(ATTR_IPADDR_IPV6)
    if span is not None and span[1] == 16:
        # inet_ntop, as ipset prints: "::ffff:1.2.3.4" where Python would print hex.
        return socket.inet_ntop(socket.AF_INET6, buffer[span[0] : span[0] + 16]), 128
    raise NetlinkDecodeError(f"an ipset address attribute of {length} bytes holds no address")


def _u8(buffer: bytes, span: tuple[int, int]) -> int:
    if span[1] < 1:
        raise NetlinkDecodeError("an empty ipset u8 attribute")
    return buffer[span[0]]


def _be(buffer: bytes, span: tuple[int, int], unpack: struct.Struct) -> int:
    if span[1] < unpack.size:
        raise NetlinkDecodeError(f"an ipset attribute of {span[1]} bytes, {unpack.size} expected")
    value: int = unpack.unpack_from(buffer, span[0])[0]
    return value


def _with_cidr(text: str, cidr: int | None, full: int) -> str:
    return text if cidr is None or cidr == full else f"{text}/{cidr}"


def entry_text(buffer: bytes, start: int, end: int) -> str:
    """One entry (the attributes of an IPSET_ATTR_DATA nest) as `ipset save` prints it."""
    spans = attribute_spans(buffer, start, end)
    unknown = spans.keys() - _KNOWN
    if unknown:
        raise UnsupportedIPSet(f"ipset entry attribute(s) {sorted(unknown)} not understood")
    parts: list[str] = []
    ip = spans.get(ATTR_IP)
    if ip is not None:
        text, full = _address(buffer, *ip)
        cidr = spans.get(ATTR_CIDR)
        parts.append(_with_cidr(text, None if cidr is None else _u8(buffer, cidr), full))
    port = spans.get(ATTR_PORT)
    if port is not None:
        number = _be(buffer, port, _BE16)
        proto = spans.get(ATTR_PROTO)
        if proto is None:
            parts.append(str(number))  # bitmap:port
        else:
            name = _PORT_PROTOCOLS.get(_u8(buffer, proto))
            if name is None:
                raise UnsupportedIPSet(f"ipset entry of protocol {_u8(buffer, proto)}")
            parts.append(f"{name}:{number}")
    ip2 = spans.get(ATTR_IP2)
    if ip2 is not None:
        text, full = _address(buffer, *ip2)
        cidr2 = spans.get(ATTR_CIDR2)
        parts.append(_with_cidr(text, None if cidr2 is None else _u8(buffer, cidr2), full))
    if not parts:
        raise UnsupportedIPSet("ipset entry without an address or a port")
    words = [",".join(parts)]
    if (span := spans.get(ATTR_TIMEOUT)) is not None:
        words.append(f"timeout {_be(buffer, span, _BE32)}")
    if (span := spans.get(ATTR_CADT_FLAGS)) is not None and _be(buffer, span, _BE32) & FLAG_NOMATCH:
        words.append("nomatch")
    if (span := spans.get(ATTR_PACKETS)) is not None:
        words.append(f"packets {_be(buffer, span, _BE64)}")
    if (span := spans.get(ATTR_BYTES)) is not None:
        words.append(f"bytes {_be(buffer, span, _BE64)}")
    if (span := spans.get(ATTR_COMMENT)) is not None:
        comment = buffer[span[0] : span[0] + span[1]].split(b"\0", 1)[0]
        words.append(f'comment "{comment.decode("utf-8", "replace")}"')
    if (span := spans.get(ATTR_SKBMARK)) is not None:
        both = _be(buffer, span, _BE64)
        mark, mask = both >> 32, both & 0xFFFFFFFF
        words.append(f"skbmark {mark:#x}" if mask == 0xFFFFFFFF else f"skbmark {mark:#x}/{mask:#x}")
    if (span := spans.get(ATTR_SKBPRIO)) is not None:
        prio = _be(buffer, span, _BE32)
        words.append(f"skbprio {prio >> 16:x}:{prio & 0xFFFF:x}")
    if (span := spans.get(ATTR_SKBQUEUE)) is not None:
        words.append(f"skbqueue {_be(buffer, span, _BE16)}")
    return " ".join(words)


def set_name(payload: bytes) -> tuple[str, dict[int, tuple[int, int]]]:
    """The set a reply message is about, and its command-level attribute spans."""
    if len(payload) < _NFGENMSG.size:
        raise NetlinkDecodeError(f"truncated ipset message ({len(payload)} bytes)")
    spans = attribute_spans(payload, _NFGENMSG.size, len(payload))
    span = spans.get(ATTR_SETNAME)
    if span is None:
        raise NetlinkDecodeError("an ipset reply without a set name")
    name = payload[span[0] : span[0] + span[1]].split(b"\0", 1)[0]
    return name.decode("ascii", "replace"), spans


def decode_save(payloads: Iterable[bytes], names: Collection[str]) -> dict[str, frozenset[str]]:
    """Entries of the named sets in the replies of one save dump; sets not present are
    absent. Entries of other sets are not decoded."""
    wanted = set(names)
    found: dict[str, list[str]] = {}
    for payload in payloads:
        name, spans = set_name(payload)
        if name not in wanted:
            continue
        entries = found.setdefault(name, [])
        adt = spans.get(ATTR_ADT)
        if adt is None:
            continue  # the set's header
        offset, end = adt[0], adt[0] + adt[1]
        for kind, (start, length) in _nested(payload, offset, end):
            if kind != ATTR_DATA:
                raise UnsupportedIPSet(f"ipset ADT nest holds attribute {kind}")
            entries.append(entry_text(payload, start, start + length))
    return {name: frozenset(entries) for name, entries in found.items()}


def _nested(buffer: bytes, start: int, end: int) -> list[tuple[int, tuple[int, int]]]:
    """(type, (offset, length)) of every attribute in [start, end), repeats kept in order
    (attribute_spans keeps one per type, and an ADT nest repeats IPSET_ATTR_DATA)."""
    found: list[tuple[int, tuple[int, int]]] = []
    offset = start
    unpack_from = _NLA.unpack_from
    while end - offset >= 4:
        length, kind = unpack_from(buffer, offset)
        if length < 4 or offset + length > end:
            raise NetlinkDecodeError(
                f"attribute length {length} at offset {offset} overruns its container"
            )
        found.append((kind & 0x3FFF, (offset + 4, length - 4)))
        offset += (length + 3) & ~3
    return found
