"""Conntrack entries over nf_conntrack_netlink: dump one family, delete by original tuple.

Wire layout (include/uapi/linux/netfilter/nfnetlink*.h), after the nlmsghdr whose type is
NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_{NEW,GET,DELETE}::

    nfgenmsg   u8 family | u8 version (0) | be16 res_id (0)
    CTA_TUPLE_ORIG / CTA_TUPLE_REPLY (nested)
        CTA_TUPLE_IP (nested): CTA_IP_V4_SRC/DST (4 bytes) or CTA_IP_V6_SRC/DST (16 bytes)
        CTA_TUPLE_PROTO (nested): CTA_PROTO_NUM u8, CTA_PROTO_SRC_PORT / DST_PORT be16

Encoding and decoding are pure functions; ConntrackSocket moves the bytes.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import struct
from collections.abc import Sequence
from typing import Final

from ipvsproxy.core.model import IPAddress, IPFamily, Protocol
from ipvsproxy.core.stale_udp import ConntrackEntry
from ipvsproxy.dataplane.netlink import NetlinkSocket
from ipvsproxy.dataplane.netlink_codec import (
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSGHDR,
    REQUEST_ACK,
    NetlinkDecodeError,
    attribute_spans,
)
from ipvsproxy.errors import KernelError

NETLINK_NETFILTER: Final = 12
NFNL_SUBSYS_CTNETLINK: Final = 1
IPCTNL_MSG_CT_NEW: Final = 0
IPCTNL_MSG_CT_GET: Final = 1
IPCTNL_MSG_CT_DELETE: Final = 2
CTA_TUPLE_ORIG: Final = 1
CTA_TUPLE_REPLY: Final = 2
CTA_TUPLE_IP: Final = 1
CTA_TUPLE_PROTO: Final = 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
NLA_F_NESTED: Final = 0x8000

_NFGENMSG: Final = struct.Struct("!BBH")
_NLA: Final = struct.Struct("=HH")
_MESSAGE_TYPE_NEW: Final = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW


def _attr(kind: int, value: bytes) -> bytes:
    padding = b"\0" * (-len(value) % 4)
    return _NLA.pack(4 + len(value), kind) + value + padding


def _nested(kind: int, *parts: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(parts))


def _message(kind: int, flags: int, seq: int, payload: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(payload), kind, flags, seq, 0) + payload


def encode_dump(family: IPFamily, seq: int) -> bytes:
    """A request for every conntrack entry of one family."""
    kind = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
    return _message(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, _NFGENMSG.pack(family.af, 0, 0))


def encode_delete(entry: ConntrackEntry, seq: int) -> bytes:
    """A request deleting the entry with this original tuple."""
    v4 = entry.family is IPFamily.V4
    tuple_attr = _nested(
        CTA_TUPLE_ORIG,
        _nested(
            CTA_TUPLE_IP,
            _attr(CTA_IP_V4_SRC if v4 else CTA_IP_V6_SRC, entry.source.packed),
            _attr(CTA_IP_V4_DST if v4 else CTA_IP_V6_DST, entry.destination.packed),
        ),
        _nested(
            CTA_TUPLE_PROTO,
            _attr(CTA_PROTO_NUM, bytes([entry.protocol.number])),
            _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", entry.source_port)),
            _attr(CTA_PROTO_DST_PORT, struct.pack("!H", entry.destination_port)),
        ),
    )
    kind = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
    return _message(kind, REQUEST_ACK, seq, _NFGENMSG.pack(entry.family.af, 0, 0) + tuple_attr)


def _tuple(buffer: bytes, start: int, end: int) -> tuple[IPAddress, IPAddress, int, int, int]:
    spans = attribute_spans(buffer, start, end)
    ip_at, ip_len = spans[CTA_TUPLE_IP]
    proto_at, proto_len = spans[CTA_TUPLE_PROTO]
    ips = attribute_spans(buffer, ip_at, ip_at + ip_len)
    protos = attribute_spans(buffer, proto_at, proto_at + proto_len)
    if CTA_IP_V4_SRC in ips:
        src_key, dst_key, size = CTA_IP_V4_SRC, CTA_IP_V4_DST, 4
    else:
        src_key, dst_key, size = CTA_IP_V6_SRC, CTA_IP_V6_DST, 16

    def address(key: int) -> IPAddress:
        at, length = ips[key]
        if length != size:
            raise NetlinkDecodeError(f"conntrack address of {length} bytes")
        return ipaddress.ip_address(buffer[at : at + size])

    def port(key: int) -> int:
        if key not in protos:
            return 0  # protocols without ports
        at, _ = protos[key]
        value: int = struct.unpack_from("!H", buffer, at)[0]
        return value

    number = buffer[protos[CTA_PROTO_NUM][0]]
    return (
        address(src_key),
        address(dst_key),
        port(CTA_PROTO_SRC_PORT),
        port(CTA_PROTO_DST_PORT),
        number,
    )


def decode_entry(payload: bytes) -> ConntrackEntry | None:
    """An entry of a dump reply; None for protocols other than TCP, UDP and SCTP."""
    try:
        spans = attribute_spans(payload, _NFGENMSG.size, len(payload))
        o_at, o_len = spans[CTA_TUPLE_ORIG]
        r_at, r_len = spans[CTA_TUPLE_REPLY]
        src, dst, sport, dport, number = _tuple(payload, o_at, o_at + o_len)
        rsrc, rdst, rsport, rdport, _ = _tuple(payload, r_at, r_at + r_len)
    except (KeyError, IndexError, ValueError, struct.error) as exc:
        raise NetlinkDecodeError(f"malformed conntrack entry: {exc!r}") from exc
    try:
        protocol = Protocol.from_number(number)
    except ValueError:
        return None
    return ConntrackEntry(protocol, src, dst, sport, dport, rsrc, rdst, rsport, rdport)


class ConntrackSocket(NetlinkSocket):
    """The conntrack table of the current network namespace."""

    def __init__(self, *, timeout: float = 10.0) -> None:
        super().__init__(protocol=NETLINK_NETFILTER, name="conntrack", timeout=timeout)

    def entries(self, family: IPFamily) -> list[ConntrackEntry]:
        payloads = self._dump(lambda seq: encode_dump(family, seq), reply_type=_MESSAGE_TYPE_NEW)
        return [entry for p in payloads if (entry := decode_entry(p)) is not None]

    def delete(self, entries: Sequence[ConntrackEntry]) -> int:
        """Delete these entries; returns how many the kernel deleted (an entry already gone
        is not an error). Raises KernelError on any other refusal."""
        outcomes = self._transact(entries, encode_delete)
        refused = [o for o in outcomes if o.code not in (0, errno.ENOENT)]
        if refused:
            first = refused[0]
            reason = first.text or os.strerror(first.code)
            raise KernelError(f"conntrack refused a delete: {reason}", errno=first.code)
        return sum(1 for o in outcomes if o.code == 0)
