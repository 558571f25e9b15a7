"""The policy rule and local route that deliver marked packets to IPVS (core/steering.py).

Per family, two kernel objects the proxy owns, over the rtnetlink socket of links.py
(``LinkTool`` inherits ``PolicyRouting``): the rule `fwmark MARK/MARK lookup STEER_TABLE`
at priority STEER_PRIORITY, and the route `local default dev lo` in table STEER_TABLE.
`ensure_steering` is idempotent (one rule dump, then only what is missing is written; the
route is created or replaced); `steering` reports a family only when both are there.

Wire layout (include/uapi/linux/fib_rules.h, rtnetlink.h); integers in host byte order::

    nlmsghdr      len u32 | type u16 | flags u16 | seq u32 | pid u32
    fib_rule_hdr  family u8 | dst_len u8 | src_len u8 | tos u8 | table u8 | res1 u8
                  | res2 u8 | action u8 | flags u32                 (RTM_*RULE)
    rtmsg         family u8 | dst_len u8 | src_len u8 | tos u8 | table u8 | protocol u8
                  | scope u8 | type u8 | flags u32                   (RTM_*ROUTE)
    then u32 attributes: FRA_PRIORITY, FRA_FWMARK, FRA_FWMASK, FRA_TABLE / RTA_TABLE, RTA_OIF
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Final

from ipvsproxy.core.model import IPFamily
from ipvsproxy.core.operations import EnsureSteering, OperationFailure
from ipvsproxy.core.steering import STEER_PRIORITY, STEER_TABLE
from ipvsproxy.dataplane.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NetlinkDecodeError,
    NetlinkSocket,
    attributes,
)
from ipvsproxy.errors import KernelError

__all__ = [
    "PolicyRouting",
    "encode_route",
    "encode_rule",
    "parse_local_default",
    "parse_rule",
]

RTM_NEWROUTE: Final = 24
RTM_DELROUTE: Final = 25
RTM_GETROUTE: Final = 26
RTM_NEWRULE: Final = 32
RTM_DELRULE: Final = 33
RTM_GETRULE: Final = 34
FRA_PRIORITY: Final = 6
FRA_FWMARK: Final = 10
FRA_TABLE: Final = 15
FRA_FWMASK: Final = 16
RTA_OIF: Final = 4
RTA_TABLE: Final = 15
FR_ACT_TO_TBL: Final = 1
RTN_LOCAL: Final = 2
RT_SCOPE_HOST: Final = 254
RTPROT_STATIC: Final = 4
NLM_F_REPLACE: Final = 0x100

_HDR: Final = struct.Struct("=IHHII")
_BODY: Final = struct.Struct("=BBBBBBBBI")  # fib_rule_hdr and rtmsg have one shape
_U32_ATTR: Final = struct.Struct("=HHI")
_U32: Final = struct.Struct("=I")


def _message(
    kind: int, flags: int, seq: int, body: bytes, attrs: Iterable[tuple[int, int]]
) -> bytes:
    payload = body + b"".join(_U32_ATTR.pack(8, t, v) for t, v in attrs)
    return _HDR.pack(_HDR.size + len(payload), kind, flags, seq, 0) + payload


def encode_rule(kind: int, *, family: IPFamily, mark: int, seq: int) -> bytes:
    """RTM_NEWRULE (with NLM_F_EXCL: EEXIST when present) or RTM_DELRULE of the rule."""
    flags = NLM_F_REQUEST | NLM_F_ACK
    if kind == RTM_NEWRULE:
        flags |= NLM_F_CREATE | NLM_F_EXCL
    body = _BODY.pack(family.af, 0, 0, 0, 0, 0, 0, FR_ACT_TO_TBL, 0)
    attrs = ((FRA_PRIORITY, STEER_PRIORITY), (FRA_FWMARK, mark), (FRA_FWMASK, mark))
    return _message(kind, flags, seq, body, (*attrs, (FRA_TABLE, STEER_TABLE)))


def encode_route(kind: int, *, family: IPFamily, loopback: int, seq: int) -> bytes:
    """RTM_NEWROUTE (create or replace) or RTM_DELROUTE of `local default dev lo` in
    STEER_TABLE; ``loopback`` is lo's interface index."""
    flags = NLM_F_REQUEST | NLM_F_ACK
    if kind == RTM_NEWROUTE:
        flags |= NLM_F_CREATE | NLM_F_REPLACE
    body = _BODY.pack(family.af, 0, 0, 0, 0, RTPROT_STATIC, RT_SCOPE_HOST, RTN_LOCAL, 0)
    return _message(kind, flags, seq, body, ((RTA_TABLE, STEER_TABLE), (RTA_OIF, loopback)))


def _dump_request(kind: int, family: IPFamily, seq: int, table: bool) -> bytes:
    # Strict checking (links.py opens the socket so) wants every header field zero but the
    # family; a route dump takes the table as a filter attribute.
    body = _BODY.pack(family.af, 0, 0, 0, 0, 0, 0, 0, 0)
    attrs = ((RTA_TABLE, STEER_TABLE),) if table else ()
    return _message(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, body, attrs)


def _u32(attrs: dict[int, bytes], kind: int) -> int | None:
    value = attrs.get(kind)
    if value is None:
        return None
    if len(value) < 4:
        raise NetlinkDecodeError(f"attribute {kind}: {len(value)} bytes, not 4")
    return int(_U32.unpack_from(value)[0])


def parse_rule(payload: bytes) -> int | None:
    """The fwmark of one of the proxy's rules (its table and priority, a mask equal to the
    mark, lookup action) from an RTM_NEWRULE; None for any other rule."""
    if len(payload) < _BODY.size:
        raise NetlinkDecodeError(f"truncated fib_rule_hdr ({len(payload)} bytes)")
    action = payload[7]
    attrs = attributes(payload, _BODY.size)
    if action != FR_ACT_TO_TBL or _u32(attrs, FRA_TABLE) != STEER_TABLE:
        return None
    if _u32(attrs, FRA_PRIORITY) != STEER_PRIORITY:
        return None
    mark, mask = _u32(attrs, FRA_FWMARK), _u32(attrs, FRA_FWMASK)
    return mark if mark and mark == mask else None


def parse_local_default(payload: bytes, loopback: int) -> bool:
    """Whether an RTM_NEWROUTE is `local default dev lo` in STEER_TABLE."""
    if len(payload) < _BODY.size:
        raise NetlinkDecodeError(f"truncated rtmsg ({len(payload)} bytes)")
    _family, dst_len, _src, _tos, table, _proto, _scope, kind, _flags = _BODY.unpack_from(payload)
    attrs = attributes(payload, _BODY.size)
    return (
        dst_len == 0
        and kind == RTN_LOCAL
        and (_u32(attrs, RTA_TABLE) or table) == STEER_TABLE
        and _u32(attrs, RTA_OIF) == loopback
    )


class PolicyRouting(NetlinkSocket):
    """The steering rule and route of both families, on an rtnetlink socket opened with
    strict checking (links.LinkTool)."""

    def _loopback(self) -> int:
        try:
            return socket.if_nametoindex("lo")
        except OSError as exc:
            raise KernelError("no loopback interface lo", errno=exc.errno or 0) from exc

    def _marks(self, family: IPFamily) -> list[int]:
        payloads = self._dump(
            lambda seq: _dump_request(RTM_GETRULE, family, seq, table=False),
            reply_type=RTM_NEWRULE,
        )
        return [mark for payload in payloads if (mark := parse_rule(payload)) is not None]

    def _has_route(self, family: IPFamily, loopback: int) -> bool:
        try:
            payloads = self._dump(
                lambda seq: _dump_request(RTM_GETROUTE, family, seq, table=True),
                reply_type=RTM_NEWROUTE,
            )
        except KernelError as exc:
            if exc.errno == errno.ENOENT:  # the table does not exist (yet)
                return False
            raise
        return any(parse_local_default(payload, loopback) for payload in payloads)

    def steering(self, families: Iterable[IPFamily]) -> frozenset[tuple[IPFamily, int]]:
        """(family, mark) of each family whose rule and route are both in place."""
        loopback = self._loopback()
        found: set[tuple[IPFamily, int]] = set()
        for family in families:
            marks = self._marks(family)
            if len(marks) == 1 and self._has_route(family, loopback):
                found.add((family, marks[0]))
        return frozenset(found)

    def _write(self, request: Callable[[int], bytes], what: str, done: tuple[int, ...]) -> None:
        """One change request; errnos in ``done`` leave the wanted state."""
        _replies, err, text = self._request(request)
        if err and err not in done:
            reason = os.strerror(err) + (f" ({text})" if text else "")
            raise KernelError(f"{what}: {reason}", errno=err)

    def ensure_steering(self, op: EnsureSteering) -> OperationFailure | None:
        """Make the family's rule (with op.mark only) and route be there."""
        family, mark = op.family, op.mark
        try:
            loopback = self._loopback()
            for other in self._marks(family):
                if other != mark:
                    self._delete_rule(family, other)
            self._write(
                lambda seq: encode_rule(RTM_NEWRULE, family=family, mark=mark, seq=seq),
                f"add IPv{family.value} steering rule",
                (errno.EEXIST,),
            )
            self._write(
                lambda seq: encode_route(RTM_NEWROUTE, family=family, loopback=loopback, seq=seq),
                f"add IPv{family.value} steering route",
                (),
            )
        except KernelError as exc:
            return OperationFailure(op, exc.errno, str(exc))
        return None

    def _delete_rule(self, family: IPFamily, mark: int) -> None:
        self._write(
            lambda seq: encode_rule(RTM_DELRULE, family=family, mark=mark, seq=seq),
            f"delete IPv{family.value} steering rule",
            (errno.ENOENT,),
        )

    def remove_steering(self, family: IPFamily) -> None:
        """Delete the family's rules and route (cleanup); absent ones are no error."""
        for mark in self._marks(family):
            self._delete_rule(family, mark)
        loopback = self._loopback()
        self._write(
            lambda seq: encode_route(RTM_DELROUTE, family=family, loopback=loopback, seq=seq),
            f"delete IPv{family.value} steering route",
            (errno.ESRCH, errno.ENOENT),
        )
