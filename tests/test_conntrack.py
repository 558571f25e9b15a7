"""Stale UDP conntrack entries: the pure choice, and the netlink codec."""

from __future__ import annotations

import dataclasses
import ipaddress

from builders import endpoint_slice, service

from ipvsproxy.core.desired import index_slices
from ipvsproxy.core.model import Protocol, ServicePort
from ipvsproxy.core.stale_udp import (
    ConntrackEntry,
    UdpFrontends,
    cleanup_needed,
    merge_frontends,
    stale_entries,
    udp_frontends,
)
from ipvsproxy.dataplane.netlink_codec import NLMSGHDR
from ipvsproxy.dataplane.stale_udp_conntrack import (
    CTA_TUPLE_IP,
    CTA_TUPLE_PROTO,
    CTA_TUPLE_REPLY,
    _attr,
    _nested,
    decode_entry,
    encode_delete,
)

DNS = dataclasses.replace(
    service("dns", "10.96.0.53"), ports=(ServicePort("dns", Protocol.UDP, 53, node_port=30053),)
)


def entry(
    dst: str, dport: int, reply_src: str, protocol: Protocol = Protocol.UDP
) -> ConntrackEntry:
    ip = ipaddress.ip_address
    return ConntrackEntry(
        protocol,
        ip("10.244.0.2"),
        ip(dst),
        40000,
        dport,
        ip(reply_src),
        ip("10.244.0.2"),
        53,
        40000,
    )


def test_entries_replying_from_a_non_serving_address_are_stale() -> None:
    slices = [endpoint_slice("dns", "10.244.2.1", ports=(("dns", "UDP", 53),))]
    frontends = udp_frontends([DNS], index_slices(slices))
    entries = [
        entry("10.96.0.53", 53, "10.244.1.1"),  # removed endpoint: stale
        entry("10.96.0.53", 53, "10.244.2.1"),  # live endpoint: kept
        entry("10.96.0.53", 53, "10.96.0.53"),  # made while there was no endpoint: stale
        entry("192.168.1.5", 30053, "10.244.1.1"),  # NodePort to a removed endpoint: stale
        entry("10.96.0.53", 54, "10.244.1.1"),  # another port: not the Service's
        entry("10.96.0.53", 53, "10.244.1.1", Protocol.TCP),  # TCP: never
    ]
    assert stale_entries(entries, frontends) == [entries[0], entries[2], entries[3]]


def test_service_without_serving_endpoints_keeps_its_entries() -> None:
    slices = [endpoint_slice("dns", ports=(("dns", "UDP", 53),))]
    frontends = udp_frontends([DNS], index_slices(slices))
    assert stale_entries([entry("10.96.0.53", 53, "10.244.1.1")], frontends) == []


def test_codec_round_trip() -> None:
    original = entry("10.96.0.53", 53, "10.244.1.1")
    request = encode_delete(original, seq=7)
    length, kind, _, seq, _ = NLMSGHDR.unpack_from(request)
    assert (length, kind, seq) == (len(request), 0x102, 7)
    # A dump reply carries the same tuple layout, plus the reply tuple.
    body = request[NLMSGHDR.size :]
    reply = _nested(
        CTA_TUPLE_REPLY,
        _nested(
            CTA_TUPLE_IP,
            _attr(1, original.reply_source.packed),
            _attr(2, original.reply_destination.packed),
        ),
        _nested(
            CTA_TUPLE_PROTO, _attr(1, bytes([17])), _attr(2, b"\x00\x35"), _attr(3, b"\x9c\x40")
        ),
    )
    assert decode_entry(body + reply) == original


def test_cleanup_needed_when_a_frontend_loses_an_endpoint_or_gets_its_first() -> None:
    ip = ipaddress.ip_address
    vip = (ip("10.96.0.53"), 53)
    a, b = ip("10.244.1.1"), ip("10.244.2.1")

    def fronts(serving: set[object], node_port: set[object] | None = None) -> UdpFrontends:
        addresses = {vip: frozenset(serving)} if serving else {}
        node_ports = {30053: frozenset(node_port)} if node_port else {}
        return UdpFrontends(addresses, node_ports)  # type: ignore[arg-type]

    assert cleanup_needed(None, fronts({a}))  # nothing known: check
    assert not cleanup_needed(None, fronts(set()))  # nothing to check
    assert not cleanup_needed(fronts({a}), fronts({a, b}))  # only gained one
    assert cleanup_needed(fronts({a, b}), fronts({b}))  # lost one
    assert cleanup_needed(fronts(set()), fronts({a}))  # its first
    assert not cleanup_needed(fronts({a}), fronts(set()))  # none left: nowhere to go
    assert cleanup_needed(fronts({a}, {a, b}), fronts({a}, {a}))  # a NodePort lost one
    merged = merge_frontends([fronts(set(), {a}), fronts({b}, {b})])
    assert merged.addresses == {vip: frozenset({b})}
    assert merged.node_ports == {30053: frozenset({a, b})}
