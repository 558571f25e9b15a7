"""Generic-netlink IPVS messages parsed back into the project's value types.

Pure: no sockets, no I/O. The wire format, its constants and the encoders are in
``ipvs_codec.py``; this module reads what the kernel sends: dumped services and
destinations, and the IPVS timeouts. Entries the proxy does not manage (firewall-mark
services, other protocols or families) come back as ``SkippedEntry`` for callers to skip.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Final

from ipvsproxy.core.model import (
    IPVS_FLAG_HASHED,
    ForwardMethod,
    IPAddress,
    Protocol,
    RealServer,
    VirtualServer,
    host_port,
)
from ipvsproxy.dataplane.ipvs_codec import (
    IP_VS_CONN_F_FWD_MASK,
    IPV4_DEFAULT_NETMASK,
    IPV6_DEFAULT_NETMASK,
    IPVS_CMD_ATTR_DEST,
    IPVS_CMD_ATTR_SERVICE,
    IPVS_DEST_ATTR_ACTIVE_CONNS,
    IPVS_DEST_ATTR_ADDR,
    IPVS_DEST_ATTR_ADDR_FAMILY,
    IPVS_DEST_ATTR_FWD_METHOD,
    IPVS_DEST_ATTR_INACT_CONNS,
    IPVS_DEST_ATTR_PORT,
    IPVS_DEST_ATTR_WEIGHT,
    IPVS_SVC_ATTR_ADDR,
    IPVS_SVC_ATTR_AF,
    IPVS_SVC_ATTR_FLAGS,
    IPVS_SVC_ATTR_FWMARK,
    IPVS_SVC_ATTR_NETMASK,
    IPVS_SVC_ATTR_PORT,
    IPVS_SVC_ATTR_PROTOCOL,
    IPVS_SVC_ATTR_SCHED_NAME,
    IPVS_SVC_ATTR_TIMEOUT,
    TIMEOUT_ATTRS,
)
from ipvsproxy.dataplane.netlink_codec import NetlinkDecodeError, attribute_spans

__all__ = [
    "SkippedEntry",
    "address_af",
    "genl_command",
    "parse_config",
    "parse_dest",
    "parse_service",
]

# --- errors and result types --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SkippedEntry:
    """A dumped service or dest that the proxy does not manage and callers should skip.

    Examples: a firewall-mark service, a protocol other than TCP/UDP/SCTP, an unknown
    address family or forwarding method. They were made by someone else; leave them alone.
    """

    reason: str


_AF_INET: Final = socket.AF_INET.value
_AF_INET6: Final = socket.AF_INET6.value
_GENLHDR: Final = struct.Struct("=BBH")
_U16: Final = struct.Struct("=H")
_BE16: Final = struct.Struct(">H")
_U32: Final = struct.Struct("=I")
_BE32: Final = struct.Struct(">I")
_FLAGS: Final = struct.Struct("=II")


def genl_command(payload: bytes) -> tuple[int, dict[int, tuple[int, int]]]:
    """The command and top-level attributes of a generic-netlink payload."""
    if len(payload) < 4:
        raise NetlinkDecodeError(f"truncated generic netlink header ({len(payload)} bytes)")
    cmd = payload[0]
    return cmd, attribute_spans(payload, 4, len(payload))


def _u16(buffer: bytes, span: tuple[int, int], what: str) -> int:
    offset, length = span
    if length < 2:
        raise NetlinkDecodeError(f"{what}: {length} bytes, expected 2")
    value: int = _U16.unpack_from(buffer, offset)[0]
    return value


def _u32(buffer: bytes, span: tuple[int, int], what: str) -> int:
    offset, length = span
    if length < 4:
        raise NetlinkDecodeError(f"{what}: {length} bytes, expected 4")
    value: int = _U32.unpack_from(buffer, offset)[0]
    return value


def _be16(buffer: bytes, span: tuple[int, int], what: str) -> int:
    offset, length = span
    if length < 2:
        raise NetlinkDecodeError(f"{what}: {length} bytes, expected 2")
    value: int = _BE16.unpack_from(buffer, offset)[0]
    return value


def _address(buffer: bytes, span: tuple[int, int], af: int, what: str) -> IPAddress:
    offset, length = span
    if af == _AF_INET:
        if length < 4:
            raise NetlinkDecodeError(f"{what}: {length} bytes, too short for IPv4")
        return ipaddress.IPv4Address(buffer[offset : offset + 4])
    if length < 16:
        raise NetlinkDecodeError(f"{what}: {length} bytes, too short for IPv6")
    return ipaddress.IPv6Address(buffer[offset : offset + 16])


def _nested(
    payload: bytes, top: dict[int, tuple[int, int]], kind: int
) -> dict[int, tuple[int, int]]:
    span = top.get(kind)
    if span is None:
        name = "IPVS_CMD_ATTR_SERVICE" if kind == IPVS_CMD_ATTR_SERVICE else "IPVS_CMD_ATTR_DEST"
        raise NetlinkDecodeError(f"message has no {name} attribute")
    offset, length = span
    return attribute_spans(payload, offset, offset + length)


def _require(attrs: dict[int, tuple[int, int]], kind: int, what: str) -> tuple[int, int]:
    span = attrs.get(kind)
    if span is None:
        raise NetlinkDecodeError(f"missing {what}")
    return span


def parse_service(payload: bytes) -> VirtualServer | SkippedEntry:
    """A service from the payload (genl header onwards) of a GET_SERVICE dump message.

    Firewall-mark services, other protocols and families come back as SkippedEntry.
    """
    _cmd, top = genl_command(payload)
    attrs = _nested(payload, top, IPVS_CMD_ATTR_SERVICE)
    af = _u16(payload, _require(attrs, IPVS_SVC_ATTR_AF, "service AF"), "service AF")
    if af not in (_AF_INET, _AF_INET6):
        return SkippedEntry(f"service of address family {af}")
    fwmark_span = attrs.get(IPVS_SVC_ATTR_FWMARK)
    if fwmark_span is not None:
        fwmark = _u32(payload, fwmark_span, "service FWMARK")
        if fwmark:
            return SkippedEntry(f"firewall-mark service {fwmark:#x}")
    number = _u16(payload, _require(attrs, IPVS_SVC_ATTR_PROTOCOL, "service PROTOCOL"), "PROTOCOL")
    try:
        protocol = Protocol.from_number(number)
    except ValueError:
        return SkippedEntry(f"service of IP protocol {number}")
    address = _address(
        payload, _require(attrs, IPVS_SVC_ATTR_ADDR, "service ADDR"), af, "service ADDR"
    )
    port = _be16(payload, _require(attrs, IPVS_SVC_ATTR_PORT, "service PORT"), "service PORT")
    sched_span = _require(attrs, IPVS_SVC_ATTR_SCHED_NAME, "service SCHED_NAME")
    raw = payload[sched_span[0] : sched_span[0] + sched_span[1]].split(b"\0", 1)[0]
    scheduler = raw.decode("ascii", "replace")
    flags_offset, flags_length = _require(attrs, IPVS_SVC_ATTR_FLAGS, "service FLAGS")
    if flags_length < 4:
        raise NetlinkDecodeError(f"service FLAGS: {flags_length} bytes, expected 8")
    flags: int = _U32.unpack_from(payload, flags_offset)[0]
    timeout_span = attrs.get(IPVS_SVC_ATTR_TIMEOUT)
    timeout = 0 if timeout_span is None else _u32(payload, timeout_span, "service TIMEOUT")
    netmask = 0
    mask_span = attrs.get(IPVS_SVC_ATTR_NETMASK)
    if mask_span is not None:
        if mask_span[1] < 4:
            raise NetlinkDecodeError(f"service NETMASK: {mask_span[1]} bytes, expected 4")
        if af == _AF_INET:
            netmask = _BE32.unpack_from(payload, mask_span[0])[0]
            netmask = 0 if netmask == IPV4_DEFAULT_NETMASK else netmask
        else:
            netmask = _U32.unpack_from(payload, mask_span[0])[0]
            netmask = 0 if netmask == IPV6_DEFAULT_NETMASK else netmask
    return VirtualServer(
        address=address,
        protocol=protocol,
        port=port,
        scheduler=scheduler,
        flags=flags & ~IPVS_FLAG_HASHED,
        timeout=timeout,
        netmask=netmask,
    )


def parse_dest(payload: bytes, *, service_af: int) -> RealServer | SkippedEntry:
    """A real server from the payload of a GET_DEST dump message.

    ``service_af`` (AF_INET or AF_INET6) applies when the kernel sends no ADDR_FAMILY.
    """
    _cmd, top = genl_command(payload)
    attrs = _nested(payload, top, IPVS_CMD_ATTR_DEST)
    af_span = attrs.get(IPVS_DEST_ATTR_ADDR_FAMILY)
    af = service_af if af_span is None else _u16(payload, af_span, "dest ADDR_FAMILY")
    if af not in (_AF_INET, _AF_INET6):
        return SkippedEntry(f"real server of address family {af}")
    address = _address(payload, _require(attrs, IPVS_DEST_ATTR_ADDR, "dest ADDR"), af, "dest ADDR")
    port = _be16(payload, _require(attrs, IPVS_DEST_ATTR_PORT, "dest PORT"), "dest PORT")
    fwd_span = attrs.get(IPVS_DEST_ATTR_FWD_METHOD)
    fwd = 0 if fwd_span is None else _u32(payload, fwd_span, "dest FWD_METHOD")
    fwd &= IP_VS_CONN_F_FWD_MASK
    try:
        forward = ForwardMethod(fwd)
    except ValueError:
        return SkippedEntry(f"real server {host_port(address, port)} forwarding method {fwd}")
    weight_span = attrs.get(IPVS_DEST_ATTR_WEIGHT)
    active_span = attrs.get(IPVS_DEST_ATTR_ACTIVE_CONNS)
    inactive_span = attrs.get(IPVS_DEST_ATTR_INACT_CONNS)
    return RealServer(
        address=address,
        port=port,
        weight=0 if weight_span is None else _u32(payload, weight_span, "dest WEIGHT"),
        forward=forward,
        active_connections=(
            0 if active_span is None else _u32(payload, active_span, "dest ACTIVE_CONNS")
        ),
        inactive_connections=(
            0 if inactive_span is None else _u32(payload, inactive_span, "dest INACT_CONNS")
        ),
    )


def address_af(address: IPAddress) -> int:
    """AF_INET or AF_INET6 for an address (parse_dest wants its service's)."""
    return _AF_INET if address.version == 4 else _AF_INET6


def parse_config(payload: bytes) -> tuple[int, int, int]:
    """The (tcp, tcpfin, udp) timeouts of an IPVS_CMD_GET_CONFIG reply; 0 where absent."""
    _cmd, attrs = genl_command(payload)
    values = []
    for kind in TIMEOUT_ATTRS:
        span = attrs.get(kind)
        values.append(_u32(payload, span, "timeout") if span is not None else 0)
    return values[0], values[1], values[2]
