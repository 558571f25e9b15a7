"""Netlink framing shared by every protocol the proxy speaks: pure, bytes in and values out.

Wire layout (include/uapi/linux/netlink.h), host byte order, every part 4-byte aligned::

    nlmsghdr    u32 length | u16 type | u16 flags | u32 seq | u32 pid   then the payload
    attribute   u16 length | u16 type | value (padded to 4 bytes)
    NLMSG_ERROR s32 -errno | the request's nlmsghdr [| its payload] [| extended-ack attributes]

Protocol codecs (``ipvs_codec`` / ``ipvs_decode`` for generic-netlink IPVS, ``links`` for rtnetlink
addresses) build on this; ``netlink.NetlinkSocket`` moves the bytes.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from ipvsproxy.errors import IpvsProxyError, KernelError

__all__ = [
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "NLM_F_ACK",
    "NLM_F_CREATE",
    "NLM_F_DUMP",
    "NLM_F_DUMP_INTR",
    "NLM_F_EXCL",
    "NLM_F_REQUEST",
    "REQUEST_ACK",
    "EncodeError",
    "NetlinkDecodeError",
    "NetlinkMessage",
    "attribute_spans",
    "attributes",
    "encode_get_family",
    "parse_ack",
    "parse_done",
    "parse_error",
    "parse_family_id",
    "rebuild",
    "split_messages",
]

NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4
NLM_F_REQUEST: Final = 0x01
NLM_F_MULTI: Final = 0x02
NLM_F_ACK: Final = 0x04
NLM_F_DUMP_INTR: Final = 0x10
NLM_F_DUMP: Final = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_CAPPED: Final = 0x100  # on NLMSG_ERROR: the request's payload was left out
NLM_F_ACK_TLVS: Final = 0x200  # on NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG: Final = 1
REQUEST_ACK: Final = NLM_F_REQUEST | NLM_F_ACK
NLA_TYPE_MASK: Final = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

NLM_F_EXCL: Final = 0x200  # new requests: fail with EEXIST if the object exists
NLM_F_CREATE: Final = 0x400  # new requests: create the object if it does not exist

NLMSGHDR: Final = struct.Struct("=IHHII")
_NLA_HDR: Final = struct.Struct("=HH")
_S32: Final = struct.Struct("=i")
_U32: Final = struct.Struct("=I")


class EncodeError(IpvsProxyError, ValueError):
    """A value cannot be represented in a netlink message (port out of range, bad scheduler).

    The sockets turn it into an OperationFailure (EINVAL) for that operation alone.
    """


class NetlinkDecodeError(KernelError):
    """Bytes from the kernel are not well-formed netlink (truncated or inconsistent)."""


class NetlinkMessage(NamedTuple):
    """One netlink message: header fields and the payload after the 16-byte header."""

    type: int
    flags: int
    seq: int
    pid: int
    payload: bytes


def rebuild(message: NetlinkMessage) -> bytes:
    """The raw bytes of a split message, for decoders that want the whole message."""
    header = NLMSGHDR.pack(
        16 + len(message.payload), message.type, message.flags, message.seq, message.pid
    )
    return header + message.payload


def split_messages(buffer: bytes) -> list[NetlinkMessage]:
    """Split what one recv() returned into netlink messages.

    Raises NetlinkDecodeError when a header is truncated or a length is inconsistent.
    """
    messages: list[NetlinkMessage] = []
    end = len(buffer)
    offset = 0
    unpack_from = NLMSGHDR.unpack_from
    while offset < end:
        if end - offset < 16:
            raise NetlinkDecodeError(
                f"truncated netlink header: {end - offset} bytes at offset {offset}"
            )
        length, kind, flags, seq, pid = unpack_from(buffer, offset)
        if length < 16 or offset + length > end:
            raise NetlinkDecodeError(
                f"netlink message length {length} at offset {offset} "
                f"does not fit the {end}-byte buffer"
            )
        messages.append(
            NetlinkMessage(kind, flags, seq, pid, buffer[offset + 16 : offset + length])
        )
        offset += (length + 3) & ~3
    return messages


def parse_error(payload: bytes) -> int:
    """The errno of an NLMSG_ERROR payload: 0 for an ack, a positive errno otherwise."""
    if len(payload) < 4:
        raise NetlinkDecodeError(f"truncated NLMSG_ERROR payload ({len(payload)} bytes)")
    error: int = _S32.unpack_from(payload)[0]
    return -error


def parse_ack(payload: bytes, flags: int) -> tuple[int, str]:
    """The errno of an NLMSG_ERROR message and the kernel's extended-ack text, if any.

    Layout: s32 -errno, the request's nlmsghdr, the request's payload unless the ack is
    NLM_F_CAPPED or a success, then (NLM_F_ACK_TLVS) attributes such as NLMSGERR_ATTR_MSG.
    """
    err = parse_error(payload)
    if not flags & NLM_F_ACK_TLVS:
        return err, ""
    start = 4 + 16
    if err and not flags & NLM_F_CAPPED:
        if len(payload) < 20:
            raise NetlinkDecodeError(f"truncated NLMSG_ERROR payload ({len(payload)} bytes)")
        request_length: int = _U32.unpack_from(payload, 4)[0]
        start = 4 + ((request_length + 3) & ~3)
    span = attribute_spans(payload, min(start, len(payload)), len(payload)).get(NLMSGERR_ATTR_MSG)
    if span is None:
        return err, ""
    text = payload[span[0] : span[0] + span[1]].split(b"\0", 1)[0]
    return err, text.decode("utf-8", "replace")


def parse_done(payload: bytes) -> int:
    """The errno carried by NLMSG_DONE (0 when the dump completed; the payload may be empty)."""
    if len(payload) < 4:
        return 0
    status: int = _S32.unpack_from(payload)[0]
    return -status


def attribute_spans(buffer: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type -> (payload offset, payload length) of the attributes in [start, end)."""
    found: dict[int, tuple[int, int]] = {}
    unpack_from = _NLA_HDR.unpack_from
    offset = start
    while end - offset >= 4:
        length, kind = unpack_from(buffer, offset)
        if length < 4 or offset + length > end:
            raise NetlinkDecodeError(
                f"attribute length {length} at offset {offset} overruns its container"
            )
        found[kind & NLA_TYPE_MASK] = (offset + 4, length - 4)
        offset += (length + 3) & ~3
    return found


def attributes(buffer: bytes, start: int) -> dict[int, bytes]:
    """Attribute type -> value of the netlink attributes from ``start`` to the end.

    Raises NetlinkDecodeError when an attribute overruns the buffer.
    """
    return {
        kind: buffer[offset : offset + length]
        for kind, (offset, length) in attribute_spans(buffer, start, len(buffer)).items()
    }


# --- the generic netlink controller (include/uapi/linux/genetlink.h) ----------------------

GENL_ID_CTRL: Final = 0x10
CTRL_CMD_GETFAMILY: Final = 3
CTRL_ATTR_FAMILY_ID: Final = 1
CTRL_ATTR_FAMILY_NAME: Final = 2
_GENL_HDR: Final = struct.Struct("=BBH")  # cmd, version, reserved


def encode_get_family(name: str, *, seq: int) -> bytes:
    """CTRL_CMD_GETFAMILY for a generic netlink family by name (with NLM_F_ACK): the
    controller answers with a message of type GENL_ID_CTRL holding CTRL_ATTR_FAMILY_ID."""
    raw = name.encode("ascii") + b"\0"
    attr = _NLA_HDR.pack(4 + len(raw), CTRL_ATTR_FAMILY_NAME) + raw
    attr += b"\0" * (-len(attr) % 4)
    payload = _GENL_HDR.pack(CTRL_CMD_GETFAMILY, 1, 0) + attr
    return NLMSGHDR.pack(16 + len(payload), GENL_ID_CTRL, REQUEST_ACK, seq, 0) + payload


def parse_family_id(payload: bytes) -> int | None:
    """CTRL_ATTR_FAMILY_ID (u16) of a controller reply's payload, None when it has none.

    Raises NetlinkDecodeError when the payload is truncated."""
    if len(payload) < _GENL_HDR.size:
        raise NetlinkDecodeError(f"truncated generic netlink header ({len(payload)} bytes)")
    span = attribute_spans(payload, _GENL_HDR.size, len(payload)).get(CTRL_ATTR_FAMILY_ID)
    if span is None or span[1] < 2:
        return None
    family_id: int = struct.unpack_from("=H", payload, span[0])[0]
    return family_id
