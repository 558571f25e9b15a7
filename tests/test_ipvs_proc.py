"""parse_proc_ip_vs against text laid out as ip_vs_info_seq_show (Linux 6.1) prints it."""

from __future__ import annotations

import ipaddress

import pytest

from ipvsproxy.core.model import ForwardMethod, Protocol, RealServer, VirtualServerKey
from ipvsproxy.dataplane.ipvs_proc import parse_proc_ip_vs
from ipvsproxy.dataplane.netlink_codec import NetlinkDecodeError

ip = ipaddress.ip_address

HEADER = (
    "IP Virtual Server version 1.2.1 (size=4096)\n"
    "Prot LocalAddress:Port Scheduler Flags\n"
    "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
)
# The kernel's format strings: "%s  %08X:%04X %s %s " then "persistent %d %08X\n" or "\n";
# "  -> %08X:%04X      %-7s %-6d %-10d %-10d\n"; IPv6 as [%pI6].
LISTING = HEADER + (
    "TCP  0A60000A:0050 rr  \n"
    "  -> 0A800002:1F90      Masq    1      3          7         \n"
    "  -> 0A800003:1F90      Route   0      0          0         \n"
    "UDP  0A60000B:0035 wrr  persistent 1080000 FFFFFFFF\n"
    "SCTP  0A60000C:0F1C sh  \n"
    "  -> 0A800004:0F1C      Tunnel  5      0          1         \n"
    "  -> 0A800005:0F1C      Local   2      0          0         \n"
    "FWM  00000001 rr \n"
    "  -> 0A800009:0000      Masq    1      0          0         \n"
    "TCP  [fd00:96::a]:01BB rr \n"
    "  -> [fd00:128::2]:20FB      Masq    1      0          0         \n"
    "AH  0A60000D:0000 rr  \n"
    "  -> 0A80000A:0000      Masq    1      0          0         \n"
)


def key(address: str, protocol: str, port: int) -> VirtualServerKey:
    return VirtualServerKey(ip(address), Protocol(protocol), port)


def test_every_tcp_udp_sctp_service_with_its_real_servers() -> None:
    listed = parse_proc_ip_vs(LISTING)
    assert listed == {
        key("10.96.0.10", "TCP", 80): [
            RealServer(ip("10.128.0.2"), 8080, weight=1),
            RealServer(ip("10.128.0.3"), 8080, weight=0, forward=ForwardMethod.ROUTE),
        ],
        key("10.96.0.11", "UDP", 53): [],
        key("10.96.0.12", "SCTP", 3868): [
            RealServer(ip("10.128.0.4"), 3868, weight=5, forward=ForwardMethod.TUNNEL),
            RealServer(ip("10.128.0.5"), 3868, weight=2, forward=ForwardMethod.LOCAL),
        ],
        key("fd00:96::a", "TCP", 443): [RealServer(ip("fd00:128::2"), 8443)],
    }


def test_connection_counters_are_read() -> None:
    first = parse_proc_ip_vs(LISTING)[key("10.96.0.10", "TCP", 80)][0]
    assert (first.active_connections, first.inactive_connections) == (3, 7)


def test_firewall_mark_and_other_protocols_are_skipped_with_their_real_servers() -> None:
    listed = parse_proc_ip_vs(LISTING)
    addresses = {real.address for reals in listed.values() for real in reals}
    assert ip("10.128.0.9") not in addresses  # under FWM
    assert ip("10.128.0.10") not in addresses  # under AH


def test_an_empty_table_is_empty() -> None:
    assert parse_proc_ip_vs(HEADER) == {}


@pytest.mark.parametrize(
    "line",
    [
        "TCP  0A60000A rr\n",  # no port
        "TCP  ZZ60000A:0050 rr\n",  # not hex
        "TCP  0A60000A:0050 rr\n  -> 0A800002:1F90 Masq 1\n",  # short real server line
        "TCP  0A60000A:0050 rr\n  -> 0A800002:1F90 Masq x 0 0\n",  # bad weight
    ],
)
def test_malformed_lines_raise(line: str) -> None:
    with pytest.raises(NetlinkDecodeError):
        parse_proc_ip_vs(HEADER + line)
