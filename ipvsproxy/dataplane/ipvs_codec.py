"""Generic-netlink IPVS messages, packed and parsed with precompiled ``struct`` layouts.

Pure: no sockets, no I/O. ``ipvs.py`` owns the socket; this module turns the project's value
types into bytes, ``ipvs_decode.py`` bytes back into value types. It is on the hot path (one message
per real server: a 100k-endpoint cluster means 100k+ messages), so every change message is
one ``Struct.pack`` call whose constant parts (netlink attribute headers, address family
attributes) are prebuilt byte chunks.

Wire format (include/uapi/linux/netlink.h, genetlink.h, ip_vs.h). Integers are in host
byte order except where marked BE. Every attribute (nla) starts on a 4-byte boundary: its
``nla_len`` counts header + payload but not the padding that follows (NLA_ALIGN)::

    0        4        6        8        12       16
    +--------+--------+--------+--------+--------+
    |nlmsg_len| type  | flags  |  seq   |  pid   |   struct nlmsghdr (16 bytes)
    +--------+--+--+--+--------+--------+--------+   type = IPVS family id (resolved at run time)
    |cmd|ver| 0 |                                    struct genlmsghdr (4 bytes), ver = 1
    +---+---+---+
    | len | IPVS_CMD_ATTR_SERVICE (1) |              nested attribute, then its members:
    |   | 6 | AF (1)         | u16 AF_INET/AF_INET6 | pad 2 |
    |   | 6 | PROTOCOL (2)   | u16 IPPROTO_*        | pad 2 |
    |   |20 | ADDR (3)       | 16 bytes union nf_inet_addr (IPv4: 4 bytes + 12 zero) |
    |   | 6 | PORT (4)       | BE u16               | pad 2 |
    |   |   -- full entry only (NEW/SET_SERVICE) --
    |   |4+n| SCHED_NAME (6) | "rr\\0", n <= 16     | pad to 4 |
    |   |12 | FLAGS (7)      | u32 flags | u32 mask |   struct ip_vs_flags
    |   | 8 | TIMEOUT (8)    | u32 seconds          |
    |   | 8 | NETMASK (9)    | u32: IPv4 BE mask; IPv6 prefix length in host order |
    | len | IPVS_CMD_ATTR_DEST (2) |                  dest commands only:
    |   |20 | ADDR (1)       | 16 bytes             |
    |   | 6 | PORT (2)       | BE u16               | pad 2 |
    |   |   -- full entry only (NEW/SET_DEST) --
    |   | 8 | FWD_METHOD (3) | u32 IP_VS_CONN_F_*   |
    |   | 8 | WEIGHT (4)     | u32                  |
    |   | 8 | U_THRESH (5)   | u32 (0: no limit)    |
    |   | 8 | L_THRESH (6)   | u32                  |
    |   | 6 | ADDR_FAMILY(11)| u16                  | pad 2 |

What the kernel requires (net/netfilter/ipvs/ip_vs_ctl.c): ip_vs_genl_parse_service wants
AF and (PROTOCOL, ADDR, PORT) or FWMARK on every command, and SCHED_NAME, FLAGS, TIMEOUT
and NETMASK as well for NEW/SET_SERVICE, else EINVAL. ip_vs_genl_parse_dest wants ADDR and
PORT, plus FWD_METHOD, WEIGHT, U_THRESH and L_THRESH for NEW/SET_DEST; without ADDR_FAMILY
the dest takes the service's family. NETMASK is read with nla_get_be32, but
ip_vs_add_service checks an IPv6 prefix length with a plain cast, so an IPv6 netmask is the
number 128 in host byte order while an IPv4 one is a network-order mask.

Replies: an ack is an NLMSG_ERROR message whose payload is ``s32 -errno`` (0 for success)
followed by the request's nlmsghdr; a dump is a run of NLM_F_MULTI messages of the family's
type ended by NLMSG_DONE (payload ``s32`` status).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from typing import Final, NamedTuple

from ipvsproxy.core.model import (
    IPVS_FLAG_HASHED,
    IPAddress,
    Protocol,
    RealServer,
    RealServerKey,
    VirtualServer,
    VirtualServerKey,
    address_number,
    host_port,
)
from ipvsproxy.core.operations import (
    AddRealServer,
    AddVirtualServer,
    DeleteRealServer,
    DeleteVirtualServer,
    IpvsOperation,
    UpdateRealServer,
    UpdateVirtualServer,
)
from ipvsproxy.dataplane.netlink_codec import NLM_F_DUMP, NLM_F_REQUEST, REQUEST_ACK, EncodeError

__all__ = [
    "IPVS_CMD_DEL_DEST",
    "IPVS_CMD_DEL_SERVICE",
    "IPVS_CMD_GET_DEST",
    "IPVS_CMD_GET_SERVICE",
    "IPVS_CMD_NEW_DEST",
    "IPVS_CMD_NEW_SERVICE",
    "IPVS_CMD_SET_DEST",
    "IPVS_CMD_SET_SERVICE",
    "IPVS_GENL_NAME",
    "IPVS_GENL_VERSION",
    "describe_operation",
    "describe_real",
    "describe_virtual",
    "encode_get_config",
    "encode_get_dests",
    "encode_get_services",
    "encode_operation",
    "encode_set_config",
]

# --- constants ----------------------------------------------------------------------------

IPVS_GENL_NAME: Final = "IPVS"
IPVS_GENL_VERSION: Final = 1

# include/uapi/linux/ip_vs.h: commands
IPVS_CMD_NEW_SERVICE: Final = 1
IPVS_CMD_SET_SERVICE: Final = 2
IPVS_CMD_DEL_SERVICE: Final = 3
IPVS_CMD_GET_SERVICE: Final = 4
IPVS_CMD_NEW_DEST: Final = 5
IPVS_CMD_SET_DEST: Final = 6
IPVS_CMD_DEL_DEST: Final = 7
IPVS_CMD_GET_DEST: Final = 8
IPVS_CMD_SET_CONFIG: Final = 12
IPVS_CMD_GET_CONFIG: Final = 13

# attributes of a command
IPVS_CMD_ATTR_SERVICE: Final = 1
IPVS_CMD_ATTR_DEST: Final = 2
IPVS_CMD_ATTR_TIMEOUT_TCP: Final = 4  # u32 seconds; these three are what `ipvsadm --set` sets
IPVS_CMD_ATTR_TIMEOUT_TCP_FIN: Final = 5
IPVS_CMD_ATTR_TIMEOUT_UDP: Final = 6

# attributes nested in IPVS_CMD_ATTR_SERVICE
IPVS_SVC_ATTR_AF: Final = 1
IPVS_SVC_ATTR_PROTOCOL: Final = 2
IPVS_SVC_ATTR_ADDR: Final = 3
IPVS_SVC_ATTR_PORT: Final = 4
IPVS_SVC_ATTR_FWMARK: Final = 5
IPVS_SVC_ATTR_SCHED_NAME: Final = 6
IPVS_SVC_ATTR_FLAGS: Final = 7
IPVS_SVC_ATTR_TIMEOUT: Final = 8
IPVS_SVC_ATTR_NETMASK: Final = 9

# attributes nested in IPVS_CMD_ATTR_DEST
IPVS_DEST_ATTR_ADDR: Final = 1
IPVS_DEST_ATTR_PORT: Final = 2
IPVS_DEST_ATTR_FWD_METHOD: Final = 3
IPVS_DEST_ATTR_WEIGHT: Final = 4
IPVS_DEST_ATTR_U_THRESH: Final = 5
IPVS_DEST_ATTR_L_THRESH: Final = 6
IPVS_DEST_ATTR_ACTIVE_CONNS: Final = 7
IPVS_DEST_ATTR_INACT_CONNS: Final = 8
IPVS_DEST_ATTR_ADDR_FAMILY: Final = 11

IP_VS_SCHEDNAME_MAXLEN: Final = 16  # including the NUL
IP_VS_CONN_F_FWD_MASK: Final = 0x7
IPV4_DEFAULT_NETMASK: Final = 0xFFFFFFFF
IPV6_DEFAULT_NETMASK: Final = 128
_AF_INET: Final = socket.AF_INET.value
_AF_INET6: Final = socket.AF_INET6.value


# --- encoding -----------------------------------------------------------------------------

_HDR = "=IHHIIBBH"  # nlmsghdr (len, type, flags, seq, pid) + genlmsghdr (cmd, version, 0)
_HDR_SIZE: Final = 20


def _nla(length: int, kind: int) -> bytes:
    return struct.pack("=HH", length, kind)


def _u16_attr(kind: int, value: int) -> bytes:
    return struct.pack("=HHH2x", 6, kind, value)


# The service key: AF, PROTOCOL, ADDR, PORT. Byte chunks ("Ns") are prebuilt constants,
# the other fields values. After the AF attribute: "4s" PROTOCOL header, "H2x" protocol,
# "4s" ADDR header, "16s" address (IPv4 zero-padded by struct), "4s" PORT header, "H2x"
# port (already in network order: socket.htons, so one native-order Struct does it all).
_SVC_ID_FMT: Final = "4sH2x4s16s4sH2x"
_SVC_KEY_SIZE: Final = 48  # IPVS_CMD_ATTR_SERVICE header 4 + AF 8 + 36
_AF_ATTR: Final = {
    4: _u16_attr(IPVS_SVC_ATTR_AF, _AF_INET),
    6: _u16_attr(IPVS_SVC_ATTR_AF, _AF_INET6),
}
_PROTO_HDR: Final = _nla(6, IPVS_SVC_ATTR_PROTOCOL)
_ADDR_HDR: Final = _nla(20, IPVS_SVC_ATTR_ADDR)
_PORT_HDR: Final = _nla(6, IPVS_SVC_ATTR_PORT)
# Key-only service attribute: nested header + AF attribute, one 12-byte chunk per family.
_SVC_KEY_HEAD: Final = {
    version: _nla(_SVC_KEY_SIZE, IPVS_CMD_ATTR_SERVICE) + attr for version, attr in _AF_ATTR.items()
}
_SVC_KEY_FMT: Final = "12s" + _SVC_ID_FMT

# The rest of a full service: SCHED_NAME (its own Struct per padded name length), then
# FLAGS, TIMEOUT, NETMASK: "4sII" "4sI" "4sI".
_SVC_TAIL_FMT: Final = "4sII4sI4sI"
_FLAGS_HDR: Final = _nla(12, IPVS_SVC_ATTR_FLAGS)
_TIMEOUT_HDR: Final = _nla(8, IPVS_SVC_ATTR_TIMEOUT)
_NETMASK_HDR: Final = _nla(8, IPVS_SVC_ATTR_NETMASK)
_FLAGS_MASK: Final = 0xFFFFFFFF  # replace every flag, as ipvsadm does

# A dest: "4s" IPVS_CMD_ATTR_DEST header + ADDR header (8 bytes), "16s" addr,
# "4sH2x" PORT; full entry: "4sI" FWD_METHOD, "4sI" WEIGHT, then the constant tail
# U_THRESH=0, L_THRESH=0, ADDR_FAMILY ("24s"). Key only: ADDR_FAMILY ("8s").
_DEST_FULL_FMT: Final = "8s16s4sH2x4sI4sI24s"
_DEST_KEY_FMT: Final = "8s16s4sH2x8s"
_DEST_FULL_SIZE: Final = 72
_DEST_KEY_SIZE: Final = 40
_DEST_FULL_HEAD: Final = _nla(_DEST_FULL_SIZE, IPVS_CMD_ATTR_DEST) + _nla(20, IPVS_DEST_ATTR_ADDR)
_DEST_KEY_HEAD: Final = _nla(_DEST_KEY_SIZE, IPVS_CMD_ATTR_DEST) + _nla(20, IPVS_DEST_ATTR_ADDR)
_DEST_PORT_HDR: Final = _nla(6, IPVS_DEST_ATTR_PORT)
_FWD_HDR: Final = _nla(8, IPVS_DEST_ATTR_FWD_METHOD)
_WEIGHT_HDR: Final = _nla(8, IPVS_DEST_ATTR_WEIGHT)
_DEST_AF_ATTR: Final = {
    4: _u16_attr(IPVS_DEST_ATTR_ADDR_FAMILY, _AF_INET),
    6: _u16_attr(IPVS_DEST_ATTR_ADDR_FAMILY, _AF_INET6),
}
_THRESHOLDS: Final = struct.pack(
    "=HHIHHI", 8, IPVS_DEST_ATTR_U_THRESH, 0, 8, IPVS_DEST_ATTR_L_THRESH, 0
)
_DEST_FULL_TAIL: Final = {v: _THRESHOLDS + attr for v, attr in _DEST_AF_ATTR.items()}

_DEST_FULL: Final = struct.Struct(_HDR + _SVC_KEY_FMT + _DEST_FULL_FMT)
_DEST_KEY: Final = struct.Struct(_HDR + _SVC_KEY_FMT + _DEST_KEY_FMT)
_SVC_KEY: Final = struct.Struct(_HDR + _SVC_KEY_FMT)
_GENL_ONLY: Final = struct.Struct(_HDR)
assert _DEST_FULL.size == _HDR_SIZE + _SVC_KEY_SIZE + _DEST_FULL_SIZE
assert _DEST_KEY.size == _HDR_SIZE + _SVC_KEY_SIZE + _DEST_KEY_SIZE
assert _SVC_KEY.size == _HDR_SIZE + _SVC_KEY_SIZE

_htons = socket.htons
_htonl = socket.htonl


_number: Final = address_number
# Per address class rather than per `.version`, a Python property: (bytes, IP version).
_ADDRESS_KINDS: Final[dict[type, tuple[int, int]]] = {
    ipaddress.IPv4Address: (4, 4),
    ipaddress.IPv6Address: (16, 6),
}
_PROTOCOL_NUMBERS: Final = {protocol: protocol.number for protocol in Protocol}


def _packed(address: IPAddress) -> bytes:
    """address.packed, in a third of its time."""
    kind = _ADDRESS_KINDS.get(type(address))
    if kind is None:  # a subclass: the exact classes are what parsing builds
        return address.packed
    return _number(address).to_bytes(kind[0], "big")


def _version(address: IPAddress) -> int:
    kind = _ADDRESS_KINDS.get(type(address))
    return address.version if kind is None else kind[1]


class _SchedLayout(NamedTuple):
    """Everything a full service message with one scheduler name needs."""

    struct: struct.Struct
    service_nla: bytes  # IPVS_CMD_ATTR_SERVICE header (its length depends on the name)
    sched_attr: bytes  # the whole SCHED_NAME attribute, padded


_SCHED_LAYOUTS: dict[str, _SchedLayout] = {}
_SCHED_CACHE_LIMIT: Final = 64


def _sched_layout(name: str) -> _SchedLayout:
    layout = _SCHED_LAYOUTS.get(name)
    if layout is not None:
        return layout
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        raise EncodeError(f"scheduler name {name!r} is not ASCII") from None
    # NLA_NUL_STRING with .len = IP_VS_SCHEDNAME_MAXLEN - 1 in ip_vs_svc_policy
    if not raw or len(raw) >= IP_VS_SCHEDNAME_MAXLEN or b"\0" in raw:
        raise EncodeError(
            f"scheduler name {name!r} must be 1 to {IP_VS_SCHEDNAME_MAXLEN - 1} characters"
        )
    attr_len = 4 + len(raw) + 1
    padded = (attr_len + 3) & ~3
    sched_attr = _nla(attr_len, IPVS_SVC_ATTR_SCHED_NAME) + raw.ljust(padded - 4, b"\0")
    svc_len = _SVC_KEY_SIZE + padded + 28  # FLAGS 12 + TIMEOUT 8 + NETMASK 8
    layout = _SchedLayout(
        struct=struct.Struct(f"{_HDR}4s8s{_SVC_ID_FMT}{padded}s{_SVC_TAIL_FMT}"),
        service_nla=_nla(svc_len, IPVS_CMD_ATTR_SERVICE),
        sched_attr=sched_attr,
    )
    assert layout.struct.size == _HDR_SIZE + svc_len
    if len(_SCHED_LAYOUTS) < _SCHED_CACHE_LIMIT:
        _SCHED_LAYOUTS[name] = layout
    return layout


def _netmask(server: VirtualServer, version: int) -> int:
    """The NETMASK value as the kernel wants it, ready for a host-order u32 field."""
    netmask = server.netmask
    if version == 4:
        # 0 means the default (all ones); a network-order mask otherwise
        return IPV4_DEFAULT_NETMASK if netmask == 0 else _htonl(netmask)
    return IPV6_DEFAULT_NETMASK if netmask == 0 else netmask


def _full_service(cmd: int, server: VirtualServer, family_id: int, seq: int, flags: int) -> bytes:
    layout = _sched_layout(server.scheduler)
    address = server.address
    version = _version(address)
    try:
        return layout.struct.pack(
            layout.struct.size, family_id, flags, seq, 0, cmd, IPVS_GENL_VERSION, 0,
            layout.service_nla,
            _AF_ATTR[version],
            _PROTO_HDR, _PROTOCOL_NUMBERS[server.protocol],
            _ADDR_HDR, _packed(address),
            _PORT_HDR, _htons(server.port),
            layout.sched_attr,
            _FLAGS_HDR, server.flags & ~IPVS_FLAG_HASHED, _FLAGS_MASK,
            _TIMEOUT_HDR, server.timeout,
            _NETMASK_HDR, _netmask(server, version),
        )  # fmt: skip
    except (struct.error, OverflowError) as exc:
        raise EncodeError(f"virtual server {describe_virtual(server.key)}: {exc}") from None


def _service_key(cmd: int, key: VirtualServerKey, family_id: int, seq: int, flags: int) -> bytes:
    address = key.address
    try:
        return _SVC_KEY.pack(
            _SVC_KEY.size, family_id, flags, seq, 0, cmd, IPVS_GENL_VERSION, 0,
            _SVC_KEY_HEAD[_version(address)],
            _PROTO_HDR, _PROTOCOL_NUMBERS[key.protocol],
            _ADDR_HDR, _packed(address),
            _PORT_HDR, _htons(key.port),
        )  # fmt: skip
    except (struct.error, OverflowError) as exc:
        raise EncodeError(f"virtual server {describe_virtual(key)}: {exc}") from None


def encode_get_dests(key: VirtualServerKey, *, family_id: int, seq: int) -> bytes:
    """IPVS_CMD_GET_DEST dump of one service (an empty dump if the service is missing)."""
    return _service_key(IPVS_CMD_GET_DEST, key, family_id, seq, NLM_F_REQUEST | NLM_F_DUMP)


def encode_get_services(*, family_id: int, seq: int) -> bytes:
    """IPVS_CMD_GET_SERVICE dump of every service in the network namespace."""
    return _GENL_ONLY.pack(
        _HDR_SIZE,
        family_id,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        0,
        IPVS_CMD_GET_SERVICE,
        IPVS_GENL_VERSION,
        0,
    )


TIMEOUT_ATTRS: Final = (
    IPVS_CMD_ATTR_TIMEOUT_TCP,
    IPVS_CMD_ATTR_TIMEOUT_TCP_FIN,
    IPVS_CMD_ATTR_TIMEOUT_UDP,
)
_TIMEOUT_ATTR: Final = struct.Struct("=HHI")


def encode_get_config(*, family_id: int, seq: int) -> bytes:
    """IPVS_CMD_GET_CONFIG: the connection timeouts (tcp, tcpfin, udp), answered once."""
    return _GENL_ONLY.pack(
        _HDR_SIZE, family_id, REQUEST_ACK, seq, 0, IPVS_CMD_GET_CONFIG, IPVS_GENL_VERSION, 0
    )


def encode_set_config(
    timeouts: tuple[int, int, int], *, family_id: int, seq: int, flags: int = REQUEST_ACK
) -> bytes:
    """IPVS_CMD_SET_CONFIG: set the tcp, tcpfin and udp timeouts in seconds.

    The kernel (ip_vs_set_timeout) keeps a timeout whose value is 0, as `ipvsadm --set` does.
    """
    try:
        attrs = b"".join(
            _TIMEOUT_ATTR.pack(8, kind, value)
            for kind, value in zip(TIMEOUT_ATTRS, timeouts, strict=True)
        )
    except (struct.error, ValueError) as exc:
        raise EncodeError(f"IPVS timeouts {timeouts}: {exc}") from None
    header = _GENL_ONLY.pack(
        _HDR_SIZE + len(attrs), family_id, flags, seq, 0, IPVS_CMD_SET_CONFIG, IPVS_GENL_VERSION, 0
    )
    return header + attrs


def _full_dest(
    cmd: int,
    virtual: VirtualServerKey,
    server: RealServer,
    family_id: int,
    seq: int,
    flags: int,
) -> bytes:
    vaddr = virtual.address
    address = server.address
    try:
        return _DEST_FULL.pack(
            _DEST_FULL.size, family_id, flags, seq, 0, cmd, IPVS_GENL_VERSION, 0,
            _SVC_KEY_HEAD[_version(vaddr)],
            _PROTO_HDR, _PROTOCOL_NUMBERS[virtual.protocol],
            _ADDR_HDR, _packed(vaddr),
            _PORT_HDR, _htons(virtual.port),
            _DEST_FULL_HEAD, _packed(address),
            _DEST_PORT_HDR, _htons(server.port),
            _FWD_HDR, server.forward,
            _WEIGHT_HDR, server.weight,
            _DEST_FULL_TAIL[_version(address)],
        )  # fmt: skip
    except (struct.error, OverflowError) as exc:
        raise EncodeError(
            f"real server {describe_real(server.key)} of {describe_virtual(virtual)}: {exc}"
        ) from None


def _dest_key(
    virtual: VirtualServerKey, key: RealServerKey, family_id: int, seq: int, flags: int
) -> bytes:
    vaddr = virtual.address
    address = key.address
    try:
        return _DEST_KEY.pack(
            _DEST_KEY.size, family_id, flags, seq, 0, IPVS_CMD_DEL_DEST, IPVS_GENL_VERSION, 0,
            _SVC_KEY_HEAD[_version(vaddr)],
            _PROTO_HDR, _PROTOCOL_NUMBERS[virtual.protocol],
            _ADDR_HDR, _packed(vaddr),
            _PORT_HDR, _htons(virtual.port),
            _DEST_KEY_HEAD, _packed(address),
            _DEST_PORT_HDR, _htons(key.port),
            _DEST_AF_ATTR[_version(address)],
        )  # fmt: skip
    except (struct.error, OverflowError) as exc:
        raise EncodeError(
            f"real server {describe_real(key)} of {describe_virtual(virtual)}: {exc}"
        ) from None


# One function per operation type; positional (op, family_id, seq) to keep the call cheap.
def _op_add_vs(op: AddVirtualServer, family_id: int, seq: int) -> bytes:
    # IPVS_CMD_NEW_SERVICE with a full service entry.
    return _full_service(IPVS_CMD_NEW_SERVICE, op.server, family_id, seq, REQUEST_ACK)


def _op_update_vs(op: UpdateVirtualServer, family_id: int, seq: int) -> bytes:
    # IPVS_CMD_SET_SERVICE with a full entry (scheduler, flags, timeout, netmask).
    return _full_service(IPVS_CMD_SET_SERVICE, op.server, family_id, seq, REQUEST_ACK)


def _op_delete_vs(op: DeleteVirtualServer, family_id: int, seq: int) -> bytes:
    # The kernel answers ESRCH when there is no such service.
    return _service_key(IPVS_CMD_DEL_SERVICE, op.key, family_id, seq, REQUEST_ACK)


def _op_add_rs(op: AddRealServer, family_id: int, seq: int) -> bytes:
    # EEXIST if the real server is already there.
    return _full_dest(IPVS_CMD_NEW_DEST, op.virtual, op.server, family_id, seq, REQUEST_ACK)


def _op_update_rs(op: UpdateRealServer, family_id: int, seq: int) -> bytes:
    # A real server's weight or forwarding; ENOENT if it is missing.
    return _full_dest(IPVS_CMD_SET_DEST, op.virtual, op.server, family_id, seq, REQUEST_ACK)


def _op_delete_rs(op: DeleteRealServer, family_id: int, seq: int) -> bytes:
    # ENOENT if the real server is missing, ESRCH if its service is.
    return _dest_key(op.virtual, op.key, family_id, seq, REQUEST_ACK)


_OP_ENCODERS: Final[dict[type, Callable[..., bytes]]] = {
    AddVirtualServer: _op_add_vs,
    UpdateVirtualServer: _op_update_vs,
    DeleteVirtualServer: _op_delete_vs,
    AddRealServer: _op_add_rs,
    UpdateRealServer: _op_update_rs,
    DeleteRealServer: _op_delete_rs,
}


def encode_operation(op: IpvsOperation, *, family_id: int, seq: int) -> bytes:
    """One request message (NLM_F_REQUEST | NLM_F_ACK) that performs ``op``.

    Raises EncodeError when a value does not fit the wire format.
    """
    try:
        encoder = _OP_ENCODERS[type(op)]
    except KeyError:
        raise EncodeError(f"not an IPVS operation: {op!r}") from None
    return encoder(op, family_id, seq)


# --- human-readable names, for failures and logs ------------------------------------------


def describe_virtual(key: VirtualServerKey) -> str:
    """``TCP 10.96.0.1:80`` / ``UDP [fd00::1]:53``, as ipvsadm -Ln prints a service."""
    return f"{key.protocol.value} {host_port(key.address, key.port)}"


def describe_real(key: RealServerKey) -> str:
    return host_port(key.address, key.port)


def describe_operation(op: IpvsOperation) -> str:
    """What an operation does, e.g. ``add real server 10.0.0.1:80 to TCP 10.96.0.1:80``."""
    match op:
        case AddVirtualServer(server=server):
            return f"add virtual server {describe_virtual(server.key)}"
        case UpdateVirtualServer(server=server):
            return f"update virtual server {describe_virtual(server.key)}"
        case DeleteVirtualServer(key=key):
            return f"delete virtual server {describe_virtual(key)}"
        case AddRealServer(virtual=virtual, server=server):
            return f"add real server {describe_real(server.key)} to {describe_virtual(virtual)}"
        case UpdateRealServer(virtual=virtual, server=server):
            return f"update real server {describe_real(server.key)} of {describe_virtual(virtual)}"
        case DeleteRealServer(virtual=virtual, key=key):
            return f"delete real server {describe_real(key)} from {describe_virtual(virtual)}"
    raise EncodeError(f"not an IPVS operation: {op!r}")  # pragma: no cover
