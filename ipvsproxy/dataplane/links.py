"""The kube-ipvs0 dummy interface and its addresses, over our own batched rtnetlink socket.

The interface is left DOWN, as kube-proxy leaves it: the kernel still adds local routes for
addresses on a down dummy link, so traffic to them is delivered locally where IPVS takes it.

Addresses change in batches like IPVS (``netlink.NetlinkSocket``): hundreds of RTM_NEWADDR
or RTM_DELADDR per socket write, acks read back in bulk. pyroute2's ``IPRoute.addr`` sends
one request and waits for its ack, which made binding the addresses of a cluster cost as
much as programming all of its IPVS. The three link requests (look up, create, delete) go
over the same socket: one socket and one error path instead of a second pyroute2 socket,
and a failed lookup is told apart from a missing interface (pyroute2's link_lookup
answers "not found" for every error).

Wire layout of an address request (include/uapi/linux/if_addr.h); integers in host byte
order, addresses in network byte order::

    nlmsghdr   len u32 | type u16 (RTM_NEWADDR/RTM_DELADDR) | flags u16 | seq u32 | pid u32
    ifaddrmsg  family u8 | prefixlen u8 | flags u8 | scope u8 | index u32
    IFA_LOCAL    len u16 | type u16 | address (4 or 16 bytes)
    IFA_ADDRESS  len u16 | type u16 | address
    IFA_FLAGS    len u16 | type u16 | u32 IFA_F_NODAD          (IPv6 only)
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from ipvsproxy.core.model import IPAddress
from ipvsproxy.core.operations import BindAddress, OperationFailure, UnbindAddress
from ipvsproxy.dataplane.netlink import (
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NetlinkDecodeError,
    Outcome,
    attributes,
)
from ipvsproxy.dataplane.steering import PolicyRouting
from ipvsproxy.errors import KernelError

__all__ = [
    "LinkTool",
    "encode_address",
    "encode_del_link",
    "encode_get_addresses",
    "encode_get_link",
    "encode_new_dummy",
    "is_node_address",
    "parse_address",
    "parse_link_index",
]

# include/uapi/linux/rtnetlink.h, if_addr.h, if_link.h
RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
RTM_GETLINK: Final = 18
RTM_NEWADDR: Final = 20
RTM_DELADDR: Final = 21
RTM_GETADDR: Final = 22
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2
IFA_FLAGS: Final = 8
IFA_F_NODAD: Final = 0x02  # no duplicate address detection: an IPv6 VIP is usable at once
IFLA_IFNAME: Final = 3
IFLA_LINKINFO: Final = 18
IFLA_INFO_KIND: Final = 1
NLA_F_NESTED: Final = 0x8000
RT_SCOPE_UNIVERSE: Final = 0

_AF_INET: Final = socket.AF_INET.value
_AF_INET6: Final = socket.AF_INET6.value
_CHANGE: Final = NLM_F_REQUEST | NLM_F_ACK
_CREATE: Final = _CHANGE | NLM_F_CREATE | NLM_F_EXCL

# nlmsghdr + ifaddrmsg + IFA_LOCAL + IFA_ADDRESS (+ IFA_FLAGS)
_ADDR4: Final = struct.Struct("=IHHIIBBBBIHH4sHH4s")
_ADDR6: Final = struct.Struct("=IHHIIBBBBIHH16sHH16sHHI")
_IFADDRMSG: Final = struct.Struct("=BBBBI")
_IFINFOMSG: Final = struct.Struct("=BxHiII")
_NLMSG_IFINFO: Final = struct.Struct("=IHHIIBxHiII")  # nlmsghdr + ifinfomsg
_NLA_HDR: Final = struct.Struct("=HH")


# --- codec (pure) -------------------------------------------------------------------------


def encode_address(*, command: int, index: int, address: IPAddress, seq: int) -> bytes:
    """One RTM_NEWADDR or RTM_DELADDR of ``address`` as a host address (/32, /128).

    NEWADDR carries NLM_F_CREATE | NLM_F_EXCL, so a bound address is answered with EEXIST
    (as by `ip addr add`); IPv6 carries IFA_F_NODAD, or the address would stay tentative
    (unusable) until duplicate address detection ran, which it never does on a DOWN link.
    """
    flags = _CREATE if command == RTM_NEWADDR else _CHANGE
    packed = address.packed
    if isinstance(address, IPv4Address):
        return _ADDR4.pack(
            _ADDR4.size, command, flags, seq, 0,
            _AF_INET, 32, 0, RT_SCOPE_UNIVERSE, index,
            8, IFA_LOCAL, packed,
            8, IFA_ADDRESS, packed,
        )  # fmt: skip
    return _ADDR6.pack(
        _ADDR6.size, command, flags, seq, 0,
        _AF_INET6, 128, IFA_F_NODAD, RT_SCOPE_UNIVERSE, index,
        20, IFA_LOCAL, packed,
        20, IFA_ADDRESS, packed,
        8, IFA_FLAGS, IFA_F_NODAD,
    )  # fmt: skip


def encode_get_addresses(*, index: int, seq: int) -> bytes:
    """An RTM_GETADDR dump of both families' addresses on interface ``index``.

    The kernel honours the index only on a socket with NETLINK_GET_STRICT_CHK (Linux 4.20;
    prefixlen, flags and scope must then be 0); before that it dumps every interface.
    """
    return struct.pack(
        "=IHHIIBBBBI", 24, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0, 0, 0, 0, 0, index
    )


def parse_address(payload: bytes) -> tuple[int, IPAddress] | None:
    """(interface index, address) of one RTM_NEWADDR in a dump; None for other families
    or a message without an address.

    IFA_LOCAL is the interface's own address; IFA_ADDRESS is the same, or the peer of a
    point-to-point address (IPv6 dumps leave IFA_LOCAL out unless there is a peer), so
    IFA_LOCAL wins when both are present, as in iproute2.
    """
    if len(payload) < _IFADDRMSG.size:
        raise NetlinkDecodeError(f"truncated ifaddrmsg ({len(payload)} bytes)")
    family, _prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(payload)
    attrs = attributes(payload, _IFADDRMSG.size)
    value = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if value is None:
        return None
    if family == _AF_INET and len(value) == 4:
        return index, IPv4Address(value)
    if family == _AF_INET6 and len(value) == 16:
        return index, IPv6Address(value)
    return None


def is_node_address(address: IPAddress) -> bool:
    """Whether a host address counts as a node address: not loopback, not IPv6 link-local
    (kube-proxy's isValidForSet; a link-local address needs a zone no VIP can carry)."""
    if address.is_loopback:
        return False
    return not (isinstance(address, IPv6Address) and address.is_link_local)


def _ifname(name: str) -> bytes:
    raw = name.encode() + b"\0"
    return _NLA_HDR.pack(4 + len(raw), IFLA_IFNAME) + raw + b"\0" * (-len(raw) % 4)


def _link_message(kind: int, flags: int, seq: int, index: int, attrs: bytes) -> bytes:
    size = _NLMSG_IFINFO.size + len(attrs)
    return _NLMSG_IFINFO.pack(size, kind, flags, seq, 0, 0, 0, index, 0, 0) + attrs


def encode_get_link(name: str, *, seq: int) -> bytes:
    """RTM_GETLINK of one interface by name: answered by one RTM_NEWLINK, or ENODEV."""
    return _link_message(RTM_GETLINK, _CHANGE, seq, 0, _ifname(name))


def encode_new_dummy(name: str, *, seq: int) -> bytes:
    """RTM_NEWLINK of a dummy interface (`ip link add NAME type dummy`), left DOWN."""
    kind = b"dummy\0"
    info_kind = _NLA_HDR.pack(4 + len(kind), IFLA_INFO_KIND) + kind + b"\0" * (-len(kind) % 4)
    linkinfo = _NLA_HDR.pack(4 + len(info_kind), IFLA_LINKINFO | NLA_F_NESTED) + info_kind
    return _link_message(RTM_NEWLINK, _CREATE, seq, 0, _ifname(name) + linkinfo)


def encode_del_link(index: int, *, seq: int) -> bytes:
    return _link_message(RTM_DELLINK, _CHANGE, seq, index, b"")


def parse_link_index(payload: bytes) -> int:
    """The interface index of an RTM_NEWLINK reply."""
    if len(payload) < _IFINFOMSG.size:
        raise NetlinkDecodeError(f"truncated ifinfomsg ({len(payload)} bytes)")
    index: int = _IFINFOMSG.unpack_from(payload)[2]
    return index


# --- the adapter --------------------------------------------------------------------------


def _reason(outcome: Outcome) -> str:
    if not outcome.sent:
        return outcome.text
    return os.strerror(outcome.code) + (f" ({outcome.text})" if outcome.text else "")


class LinkTool(PolicyRouting):
    """The dummy interface and its addresses, and the steering rule and route
    (steering.py), over one rtnetlink socket.

    ``writes`` counts the change messages sent (addresses and links); lookups and dumps are
    not counted. Raises KernelError when the socket cannot be opened.
    """

    def __init__(self, *, timeout: float = 10.0, batch_messages: int = 256) -> None:
        """timeout: seconds to wait for any reply; batch_messages: address changes per
        socket write at most (lowered if the receive buffer cannot hold their acks)."""
        super().__init__(
            protocol=NETLINK_ROUTE,
            name="rtnetlink",
            timeout=timeout,
            batch_messages=batch_messages,
            strict=True,
        )

    def _index(self, name: str) -> int | None:
        replies, err, text = self._request(lambda seq: encode_get_link(name, seq=seq))
        if err == errno.ENODEV:
            return None
        if err:
            raise KernelError(
                f"cannot look up interface {name}: {_reason(Outcome(err, text))}", errno=err
            )
        for message in replies:
            if message.type == RTM_NEWLINK:
                return parse_link_index(message.payload)
        raise KernelError(f"looking up interface {name}: the kernel acked without a reply")

    def interface_exists(self, name: str) -> bool:
        return self._index(name) is not None

    def ensure_interface(self, name: str) -> None:
        if self._index(name) is not None:
            return
        [outcome] = self._transact([name], lambda n, seq: encode_new_dummy(n, seq=seq))
        if outcome.code and outcome.code != errno.EEXIST:
            raise KernelError(
                f"cannot create dummy interface {name}: {_reason(outcome)} "
                "(is the dummy link driver available?)",
                errno=outcome.code,
            )

    def delete_interface(self, name: str) -> None:
        index = self._index(name)
        if index is None:
            return
        [outcome] = self._transact([index], lambda i, seq: encode_del_link(i, seq=seq))
        if outcome.code and outcome.code != errno.ENODEV:
            raise KernelError(
                f"cannot delete interface {name}: {_reason(outcome)}", errno=outcome.code
            )

    def addresses(self, name: str) -> frozenset[IPAddress]:
        """The host addresses (/32, /128) on ``name`` (empty if it does not exist): one
        RTM_GETADDR dump.

        Only host addresses are what the proxy binds; an address someone added with a
        shorter prefix is not reported, so it is neither taken for a service address nor
        "unbound" as /32 again and again (the kernel would answer EADDRNOTAVAIL).
        """
        index = self._index(name)
        if index is None:
            return frozenset()
        try:
            payloads = self._dump(
                lambda seq: encode_get_addresses(index=index, seq=seq), reply_type=RTM_NEWADDR
            )
        except KernelError as exc:
            if exc.errno == errno.ENODEV:  # deleted since the lookup
                return frozenset()
            raise
        found: set[IPAddress] = set()
        for payload in payloads:
            parsed = parse_address(payload)
            # filtered here too: kernels before 4.20 dump every interface's addresses
            if parsed is None or parsed[0] != index:
                continue
            prefix_length = payload[1]  # struct ifaddrmsg: family, prefixlen, ...
            if prefix_length == (32 if parsed[1].version == 4 else 128):
                found.add(parsed[1])
        return frozenset(found)

    def node_addresses(self, exclude: str) -> frozenset[IPAddress]:
        """Every address on the host's interfaces except those on ``exclude`` (kube-ipvs0),
        loopback and IPv6 link-local ones: one RTM_GETADDR dump of all interfaces, as
        kube-proxy's GetAllLocalAddressesExcept."""
        excluded = self._index(exclude)
        payloads = self._dump(
            lambda seq: encode_get_addresses(index=0, seq=seq), reply_type=RTM_NEWADDR
        )
        found: set[IPAddress] = set()
        for payload in payloads:
            parsed = parse_address(payload)
            if parsed is None or parsed[0] == excluded:
                continue
            if is_node_address(parsed[1]):
                found.add(parsed[1])
        return frozenset(found)

    def bind(self, name: str, addresses: Sequence[IPAddress]) -> list[OperationFailure]:
        return self._change(RTM_NEWADDR, name, addresses)

    def unbind(self, name: str, addresses: Sequence[IPAddress]) -> list[OperationFailure]:
        return self._change(RTM_DELADDR, name, addresses)

    def _change(
        self, command: int, name: str, addresses: Sequence[IPAddress]
    ) -> list[OperationFailure]:
        """Add or delete addresses in batches; one failure per refused address, the others
        still applied."""
        if not addresses:
            return []
        adding = command == RTM_NEWADDR
        index = self._index(name)
        if index is None:
            return [
                OperationFailure(_operation(adding, a), errno.ENODEV, f"{name} does not exist")
                for a in addresses
            ]
        outcomes = self._transact(
            addresses,
            lambda address, seq: encode_address(
                command=command, index=index, address=address, seq=seq
            ),
        )
        # Adding a bound address (EEXIST) or removing an absent one (inet_rtm_deladdr and
        # inet6_addr_del: EADDRNOTAVAIL) leaves the wanted state.
        done = (errno.EEXIST,) if adding else (errno.EADDRNOTAVAIL, errno.ENOENT)
        verb = "bind" if adding else "unbind"
        return [
            OperationFailure(
                _operation(adding, address),
                outcome.code,
                f"{verb} {address} on {name}: {_reason(outcome)}",
            )
            for address, outcome in zip(addresses, outcomes, strict=True)
            if outcome.code and not (outcome.sent and outcome.code in done)
        ]


def _operation(adding: bool, address: IPAddress) -> BindAddress | UnbindAddress:
    return BindAddress(address) if adding else UnbindAddress(address)
