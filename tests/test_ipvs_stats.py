"""IPVS traffic counters: parsing dump replies, the fake kernel's counters, and the
traffic collector reading the fake kernel."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pyroute2.netlink.generic.ipvs import ipvsmsg

from ipvsproxy.core.desired import DesiredSettings, NodeInfo, service_state
from ipvsproxy.core.model import (
    IpvsStats,
    Protocol,
    RealServer,
    Service,
    ServicePort,
    VirtualServer,
    VirtualServerKey,
)
from ipvsproxy.core.operations import AddRealServer, AddVirtualServer, DeleteVirtualServer
from ipvsproxy.dataplane import ipvs_codec as codec
from ipvsproxy.dataplane import ipvs_decode as decode
from ipvsproxy.dataplane import netlink_codec as nl
from ipvsproxy.dataplane.fake import FakeKernel
from ipvsproxy.dataplane.ipvs import EncodeOnlySink
from ipvsproxy.dataplane.ipvs_stats import encode_stats, parse_service_stats
from ipvsproxy.serve.metrics import IpvsTrafficCollector, ServicePortLabels, service_port_labels

FAMILY_ID = 0x2A
ip = ipaddress.ip_address
WEB = VirtualServer(ip("10.96.0.10"), Protocol.TCP, 80)
WEB6 = VirtualServer(ip("fd00::10"), Protocol.TCP, 80, scheduler="wrr")
BIG = IpvsStats(
    connections=5_000_000_000,  # past 32 bits: only STATS64 holds it
    packets_in=2**40 + 3,
    packets_out=7,
    bytes_in=2**50 + 11,
    bytes_out=123_456_789_012,
)


def dump_reply(server: VirtualServer, *stats_attrs: bytes) -> bytes:
    """The payload of a GET_SERVICE dump message: the codec's own service entry with the
    counters attributes appended inside IPVS_CMD_ATTR_SERVICE, where the kernel puts them."""
    payload = codec.encode_operation(AddVirtualServer(server), family_id=FAMILY_ID, seq=1)[16:]
    extra = b"".join(stats_attrs)
    length, kind = struct.unpack_from("=HH", payload, 4)
    assert kind == codec.IPVS_CMD_ATTR_SERVICE and 4 + length == len(payload)
    return payload[:4] + struct.pack("=HH", length + len(extra), kind) + payload[8:] + extra


@pytest.mark.parametrize("server", [WEB, WEB6], ids=["ipv4", "ipv6"])
def test_stats64_is_read_and_preferred_over_stats(server: VirtualServer) -> None:
    narrow = encode_stats(IpvsStats(1, 2, 3, 4, 5), wide=False)
    for attrs in ((encode_stats(BIG),), (narrow, encode_stats(BIG)), (encode_stats(BIG), narrow)):
        assert parse_service_stats(dump_reply(server, *attrs)) == (server.key, BIG)


def test_32_bit_stats_with_padding_for_older_kernels() -> None:
    counters = IpvsStats(40, 400, 380, 24_000, 2**33)
    reply = dump_reply(WEB, encode_stats(counters, wide=False, pad=True))
    assert parse_service_stats(reply) == (WEB.key, counters)
    padded64 = dump_reply(WEB, encode_stats(BIG, pad=True))
    assert parse_service_stats(padded64) == (WEB.key, BIG)


def test_no_counters_read_as_zero_and_foreign_services_are_skipped() -> None:
    assert parse_service_stats(dump_reply(WEB)) == (WEB.key, IpvsStats())
    fwmark = _pyroute2_service(
        [("IPVS_SVC_ATTR_AF", 2), ("IPVS_SVC_ATTR_FWMARK", 7), ("IPVS_SVC_ATTR_PROTOCOL", 6)]
    )
    assert isinstance(parse_service_stats(fwmark), decode.SkippedEntry)


def test_truncated_counters_raise_decode_error() -> None:
    reply = dump_reply(WEB, encode_stats(BIG))
    with pytest.raises(nl.NetlinkDecodeError):
        parse_service_stats(reply[:-4])
    short = struct.pack("=HH", 8, 12) + struct.pack("=HH", 4, 1)  # STATS64 { CONNS: empty }
    with pytest.raises(nl.NetlinkDecodeError, match="counter of 0 bytes"):
        parse_service_stats(dump_reply(WEB, short))


def _pyroute2_service(attrs: list[tuple[str, Any]]) -> bytes:
    message = ipvsmsg()
    message["cmd"] = codec.IPVS_CMD_NEW_SERVICE
    message["version"] = 1
    message["attrs"] = [("IPVS_CMD_ATTR_SERVICE", {"attrs": attrs})]
    message["header"]["type"] = FAMILY_ID
    message["header"]["flags"] = nl.NLM_F_MULTI
    message.encode()
    (reply,) = nl.split_messages(bytes(message.data))
    return reply.payload


def test_pyroute2_counters_decode_with_ours_and_ours_with_pyroute2() -> None:
    """pyroute2's independent schema of the same attributes, both directions."""
    stats64 = {
        "attrs": [
            ("IPVS_STATS_ATTR_CONNS", BIG.connections),
            ("IPVS_STATS_ATTR_INPKTS", BIG.packets_in),
            ("IPVS_STATS_ATTR_OUTPKTS", BIG.packets_out),
            ("IPVS_STATS_ATTR_INBYTES", BIG.bytes_in),
            ("IPVS_STATS_ATTR_OUTBYTES", BIG.bytes_out),
            ("IPVS_STATS_ATTR_CPS", 9),
        ]
    }
    theirs = _pyroute2_service(
        [
            ("IPVS_SVC_ATTR_AF", 2),
            ("IPVS_SVC_ATTR_PROTOCOL", 6),
            ("IPVS_SVC_ATTR_ADDR", "10.96.0.10"),
            ("IPVS_SVC_ATTR_PORT", 80),
            ("IPVS_SVC_ATTR_SCHED_NAME", "rr"),
            ("IPVS_SVC_ATTR_FLAGS", {"flags": 2, "mask": 0xFFFFFFFF}),
            ("IPVS_SVC_ATTR_TIMEOUT", 0),
            ("IPVS_SVC_ATTR_NETMASK", "255.255.255.255"),
            ("IPVS_SVC_ATTR_STATS64", stats64),
        ]
    )
    assert parse_service_stats(theirs) == (WEB.key, BIG)

    ours = dump_reply(WEB, encode_stats(IpvsStats(1, 2, 3, 4, 5), wide=False), encode_stats(BIG))
    header = struct.pack("=IHHII", 16 + len(ours), FAMILY_ID, nl.NLM_F_MULTI, 1, 0)
    message = ipvsmsg(header + ours)
    message.decode()
    service = message.get_attr("IPVS_CMD_ATTR_SERVICE")
    wide = dict(service.get_attr("IPVS_SVC_ATTR_STATS64")["attrs"])
    narrow = dict(service.get_attr("IPVS_SVC_ATTR_STATS")["attrs"])
    assert wide["IPVS_STATS_ATTR_CONNS"] == BIG.connections
    assert wide["IPVS_STATS_ATTR_OUTBYTES"] == BIG.bytes_out
    assert (narrow["IPVS_STATS_ATTR_OUTPKTS"], narrow["IPVS_STATS_ATTR_INBYTES"]) == (3, 4)


# --- the fake kernel and the collector ------------------------------------------------------


def test_fake_kernel_counts_per_virtual_server_and_forgets_deleted_ones() -> None:
    kernel = FakeKernel()
    kernel.execute(
        [AddVirtualServer(WEB), AddRealServer(WEB.key, RealServer(ip("10.244.1.1"), 80))]
    )
    assert kernel.stats() == {WEB.key: IpvsStats()}
    kernel.count_traffic(WEB.key, IpvsStats(1, 5, 4, 300, 900))
    kernel.count_traffic(WEB.key, IpvsStats(1, 5, 4, 300, 900))
    kernel.count_traffic(WEB6.key, IpvsStats(1, 1, 1, 1, 1))  # no such virtual server
    assert kernel.stats() == {WEB.key: IpvsStats(2, 10, 8, 600, 1800)}
    kernel.execute([DeleteVirtualServer(WEB.key), AddVirtualServer(WEB)])
    assert kernel.stats() == {WEB.key: IpvsStats()}
    assert kernel.stats_reads == 3
    assert EncodeOnlySink().stats() == {}


def test_collector_reads_the_fake_kernel_once_per_scrape_window() -> None:
    kernel = FakeKernel()
    external = VirtualServer(ip("192.0.2.10"), Protocol.TCP, 80)
    dns = VirtualServer(ip("10.96.0.53"), Protocol.UDP, 53)
    foreign = VirtualServer(ip("192.0.2.99"), Protocol.TCP, 443)
    kernel.execute([AddVirtualServer(s) for s in (WEB, WEB6, external, dns, foreign)])
    for server, n in ((WEB, 1), (WEB6, 10), (external, 100), (dns, 1000), (foreign, 5)):
        kernel.count_traffic(server.key, IpvsStats(n, 2 * n, 3 * n, 4 * n, 5 * n))
    owners = {
        WEB.key: ServicePortLabels("shop", "web", "http", "TCP"),
        WEB6.key: ServicePortLabels("shop", "web", "http", "TCP"),
        external.key: ("shop", "web", "http", "TCP"),  # a plain tuple is accepted too
        dns.key: ServicePortLabels("kube-system", "kube-dns", "dns", "UDP"),
    }

    def labels(key: VirtualServerKey) -> ServicePortLabels | tuple[str, str, str, str] | None:
        return owners.get(key)

    now = [0.0]
    collector = IpvsTrafficCollector(kernel.stats, labels, max_age=3, clock=lambda: now[0])
    registry = CollectorRegistry()
    registry.register(collector)
    scrapes = []
    for step in (0.0, 1.0, 2.9):
        now[0] = step
        scrapes.append(_samples(registry))
        kernel.count_traffic(dns.key, IpvsStats(1, 0, 0, 0, 0))  # not seen until re-read
    now[0] = 3.0
    again = _samples(registry)
    assert kernel.stats_reads == 2
    web = {"namespace": "shop", "service": "web", "port": "http", "protocol": "TCP"}
    dns_labels = {
        "namespace": "kube-system",
        "service": "kube-dns",
        "port": "dns",
        "protocol": "UDP",
    }
    assert scrapes[0] == {
        ("ipvsproxy_service_connections_total", frozenset(web.items())): 111,
        ("ipvsproxy_service_packets_in_total", frozenset(web.items())): 222,
        ("ipvsproxy_service_packets_out_total", frozenset(web.items())): 333,
        ("ipvsproxy_service_bytes_in_total", frozenset(web.items())): 444,
        ("ipvsproxy_service_bytes_out_total", frozenset(web.items())): 555,
        ("ipvsproxy_service_connections_total", frozenset(dns_labels.items())): 1000,
        ("ipvsproxy_service_packets_in_total", frozenset(dns_labels.items())): 2000,
        ("ipvsproxy_service_packets_out_total", frozenset(dns_labels.items())): 3000,
        ("ipvsproxy_service_bytes_in_total", frozenset(dns_labels.items())): 4000,
        ("ipvsproxy_service_bytes_out_total", frozenset(dns_labels.items())): 5000,
        ("ipvsproxy_service_stats_read_failures_total", frozenset()): 0,
    }
    assert scrapes[0] == scrapes[1] == scrapes[2]
    changed = {k: v for k, v in again.items() if scrapes[0][k] != v}
    assert changed == {("ipvsproxy_service_connections_total", frozenset(dns_labels.items())): 1003}


def _samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_service_port_labels_from_a_services_virtual_servers() -> None:
    web = Service(
        namespace="shop",
        name="web",
        type="NodePort",
        cluster_ips=(ip("10.96.0.10"), ip("fd00::10")),
        ports=(
            ServicePort("http", Protocol.TCP, 80, node_port=30080),
            ServicePort("dns", Protocol.UDP, 80),
        ),
    )
    state = service_state(web, [], node=NodeInfo(), settings=DesiredSettings())
    node_port = VirtualServerKey(ip("192.0.2.1"), Protocol.TCP, 30080)
    stray = VirtualServerKey(ip("10.96.0.10"), Protocol.SCTP, 80)
    labels = service_port_labels(web, [*state.virtual_servers, node_port, stray])
    http = ServicePortLabels("shop", "web", "http", "TCP")
    dns = ServicePortLabels("shop", "web", "dns", "UDP")
    assert labels == {
        VirtualServerKey(ip("10.96.0.10"), Protocol.TCP, 80): http,
        VirtualServerKey(ip("fd00::10"), Protocol.TCP, 80): http,
        VirtualServerKey(ip("10.96.0.10"), Protocol.UDP, 80): dns,
        VirtualServerKey(ip("fd00::10"), Protocol.UDP, 80): dns,
        node_port: http,
    }
