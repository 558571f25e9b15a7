"""The traffic counters in an IPVS service dump (pure: bytes in, values out).

Every message of an IPVS_CMD_GET_SERVICE dump carries, nested in IPVS_CMD_ATTR_SERVICE,
the service's counters twice (net/netfilter/ipvs/ip_vs_ctl.c, ip_vs_genl_fill_service)::

    IPVS_SVC_ATTR_STATS (10)      nested, ip_vs_genl_fill_stats:
        CONNS (1), INPKTS (2), OUTPKTS (3)      u32 (truncated)
        INBYTES (4), OUTBYTES (5)               u64
        CPS (6) .. OUTBPS (10)                  u32 rates (not read: Prometheus derives them)
    IPVS_SVC_ATTR_STATS64 (12)    nested, ip_vs_genl_fill_stats64 (Linux 4.1+):
        the same attributes, every one u64

A u64 is put with nla_put_u64_64bit, which may insert an empty IPVS_STATS_ATTR_PAD (11)
attribute first to align the value; it is skipped like any unknown attribute. STATS64 is
preferred; STATS is the fallback for older kernels, its values read by their length.
"""

from __future__ import annotations

import struct
from typing import Final

from ipvsproxy.core.model import IpvsStats, VirtualServerKey
from ipvsproxy.dataplane.ipvs_codec import IPVS_CMD_ATTR_SERVICE
from ipvsproxy.dataplane.ipvs_decode import (
    SkippedEntry,
    genl_command,
    parse_service,
)
from ipvsproxy.dataplane.netlink_codec import NetlinkDecodeError, attribute_spans

__all__ = [
    "IPVS_SVC_ATTR_STATS",
    "IPVS_SVC_ATTR_STATS64",
    "encode_stats",
    "parse_service_stats",
]

IPVS_SVC_ATTR_STATS: Final = 10
IPVS_SVC_ATTR_STATS64: Final = 12

IPVS_STATS_ATTR_CONNS: Final = 1
IPVS_STATS_ATTR_INPKTS: Final = 2
IPVS_STATS_ATTR_OUTPKTS: Final = 3
IPVS_STATS_ATTR_INBYTES: Final = 4
IPVS_STATS_ATTR_OUTBYTES: Final = 5
IPVS_STATS_ATTR_PAD: Final = 11

_COUNTERS: Final = (
    IPVS_STATS_ATTR_CONNS,
    IPVS_STATS_ATTR_INPKTS,
    IPVS_STATS_ATTR_OUTPKTS,
    IPVS_STATS_ATTR_INBYTES,
    IPVS_STATS_ATTR_OUTBYTES,
)
_U32: Final = struct.Struct("=I")
_U64: Final = struct.Struct("=Q")
_NLA: Final = struct.Struct("=HH")


def _counter(payload: bytes, span: tuple[int, int] | None) -> int:
    if span is None:
        return 0
    offset, length = span
    if length >= 8:
        value: int = _U64.unpack_from(payload, offset)[0]
    elif length >= 4:
        value = _U32.unpack_from(payload, offset)[0]
    else:
        raise NetlinkDecodeError(f"IPVS counter of {length} bytes")
    return value


def parse_service_stats(payload: bytes) -> tuple[VirtualServerKey, IpvsStats] | SkippedEntry:
    """A service's key and counters from the payload (genl header onwards) of a
    GET_SERVICE dump message; services the proxy does not manage are SkippedEntry.

    A message without counters (no kernel sends one) reads as all zero.
    """
    service = parse_service(payload)
    if isinstance(service, SkippedEntry):
        return service
    _cmd, top = genl_command(payload)
    offset, length = top[IPVS_CMD_ATTR_SERVICE]  # parse_service has checked it is there
    nested = attribute_spans(payload, offset, offset + length)
    span = nested.get(IPVS_SVC_ATTR_STATS64) or nested.get(IPVS_SVC_ATTR_STATS)
    if span is None:
        return service.key, IpvsStats()
    counters = attribute_spans(payload, span[0], span[0] + span[1])
    values = [_counter(payload, counters.get(kind)) for kind in _COUNTERS]
    return service.key, IpvsStats(*values)


def encode_stats(stats: IpvsStats, *, wide: bool = True, pad: bool = False) -> bytes:
    """The nested counters attribute as the kernel writes it: IPVS_SVC_ATTR_STATS64 with
    u64 values (``wide``), else IPVS_SVC_ATTR_STATS with u32 connection and packet counts.
    ``pad`` puts an empty PAD attribute before each u64, as kernels on architectures
    without efficient unaligned access do. For tests and fakes that build dump replies."""
    values = (
        stats.connections,
        stats.packets_in,
        stats.packets_out,
        stats.bytes_in,
        stats.bytes_out,
    )
    parts: list[bytes] = []
    for index, (kind, value) in enumerate(zip(_COUNTERS, values, strict=True)):
        if wide or index >= 3:  # bytes are u64 in both
            if pad:
                parts.append(_NLA.pack(4, IPVS_STATS_ATTR_PAD))
            parts.append(_NLA.pack(12, kind) + _U64.pack(value))
        else:
            parts.append(_NLA.pack(8, kind) + _U32.pack(value & 0xFFFFFFFF))
    body = b"".join(parts)
    kind = IPVS_SVC_ATTR_STATS64 if wide else IPVS_SVC_ATTR_STATS
    return _NLA.pack(4 + len(body), kind) + body
