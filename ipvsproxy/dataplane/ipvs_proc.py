"""The real servers listed in /proc/net/ip_vs: pure, text in and values out.

One read of that file lists every service of the network namespace with its real servers
(ip_vs_info_seq_show in net/netfilter/ipvs/ip_vs_ctl.c), where netlink needs one GET_DEST
dump per service. The file is not a full substitute for netlink: a service line lacks the
scheduler flags (IP_VS_SVC_F_SCHED1..3, e.g. mh's port hashing), prints the persistence
timeout in jiffies and the netmask as a raw 32-bit word. So the adapter reads services
from netlink and only real servers from here; their lines carry everything a RealServer
holds (address, port, forwarding method, weight, active and inactive connections).

Layout (Linux 2.6 to 6.x)::

    IP Virtual Server version 1.2.1 (size=4096)
    Prot LocalAddress:Port Scheduler Flags
      -> RemoteAddress:Port Forward Weight ActiveConn InActConn
    TCP  0A60000A:0050 rr
      -> 0A800002:1F90      Masq    1      0          0
    UDP  [fd00:96::a]:0035 rr
      -> [fd00:128::2]:14E9      Masq    1      0          0
    FWM  00000001 rr
"""

from __future__ import annotations

import ipaddress

from ipvsproxy.core.model import (
    ForwardMethod,
    IPAddress,
    Protocol,
    RealServer,
    VirtualServerKey,
)
from ipvsproxy.dataplane.netlink_codec import NetlinkDecodeError

__all__ = ["parse_proc_ip_vs"]

# ip_vs_fwd_name(): anything else (BYPASS) prints as Masq.
_FORWARD = {
    "Masq": ForwardMethod.MASQ,
    "Local": ForwardMethod.LOCAL,
    "Tunnel": ForwardMethod.TUNNEL,
    "Route": ForwardMethod.ROUTE,
}
_PROTOCOLS = {"TCP": Protocol.TCP, "UDP": Protocol.UDP, "SCTP": Protocol.SCTP}
_HEADER_LINES = 3


def _endpoint(text: str) -> tuple[IPAddress, int]:
    """ "0A60000A:0050" (IPv4, hex) or "[fd00::a]:0050" (IPv6), port in hex."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise NetlinkDecodeError(f"/proc/net/ip_vs: no port in {text!r}")
    try:
        if host.startswith("["):
            address: IPAddress = ipaddress.IPv6Address(host[1:-1])
        else:
            address = ipaddress.IPv4Address(int(host, 16))
        return address, int(port, 16)
    except ValueError as exc:
        raise NetlinkDecodeError(f"/proc/net/ip_vs: bad address {text!r}") from exc


def parse_proc_ip_vs(text: str) -> dict[VirtualServerKey, list[RealServer]]:
    """The real servers of every TCP/UDP/SCTP service in /proc/net/ip_vs, by service key.

    Firewall-mark and other-protocol services (and their real servers) are skipped; a
    service without real servers maps to an empty list. Raises NetlinkDecodeError on a line
    that does not have the layout above.
    """
    result: dict[VirtualServerKey, list[RealServer]] = {}
    current: list[RealServer] | None = None
    for line in text.splitlines()[_HEADER_LINES:]:
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "->":
            if current is None:
                continue  # a real server of a skipped service
            if len(fields) < 6:
                raise NetlinkDecodeError(f"/proc/net/ip_vs: short real server line {line!r}")
            address, port = _endpoint(fields[1])
            try:
                current.append(
                    RealServer(
                        address=address,
                        port=port,
                        weight=int(fields[3]),
                        forward=_FORWARD.get(fields[2], ForwardMethod.MASQ),
                        active_connections=int(fields[4]),
                        inactive_connections=int(fields[5]),
                    )
                )
            except ValueError as exc:
                raise NetlinkDecodeError(f"/proc/net/ip_vs: bad counter in {line!r}") from exc
            continue
        protocol = _PROTOCOLS.get(fields[0])
        if protocol is None or len(fields) < 2:
            current = None  # FWM, AH, ESP, IP_n
            continue
        address, port = _endpoint(fields[1])
        current = result.setdefault(VirtualServerKey(address, protocol, port), [])
    return result
