"""The IPVS generic-netlink codec, checked against pyroute2's independent IPVS schema.

Our bytes must decode with pyroute2's ``ipvsmsg`` to the same values, messages that pyroute2
encodes must decode with ours, and our encode -> decode must round-trip. Decoding garbage
must raise NetlinkDecodeError and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import random
import socket
import struct
from dataclasses import dataclass
from typing import Any

import pytest
from pyroute2 import IPVSDest, IPVSService
from pyroute2.netlink.generic.ipvs import ipvsmsg

from ipvsproxy.core.model import (
    IPVS_FLAG_HASHED,
    IPVS_FLAG_PERSISTENT,
    ForwardMethod,
    IPAddress,
    Protocol,
    RealServer,
    RealServerKey,
    VirtualServer,
    VirtualServerKey,
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
from ipvsproxy.dataplane import ipvs_codec as codec
from ipvsproxy.dataplane import ipvs_decode as decode
from ipvsproxy.dataplane import netlink_codec as nl
from ipvsproxy.dataplane.ipvs import EncodeOnlySink

FAMILY_ID = 0x2A
ip = ipaddress.ip_address


def _encode(op: IpvsOperation, *, seq: int) -> bytes:
    """Encoded as the IPVS socket encodes every change it sends."""
    return codec.encode_operation(op, family_id=FAMILY_ID, seq=seq)


@dataclass(frozen=True)
class Case:
    """One service with one real server."""

    name: str
    virtual: VirtualServer
    real: RealServer


def _cases() -> list[Case]:
    addresses = {
        4: (ip("10.96.0.10"), ip("10.244.1.7")),
        6: (ip("fd00:10:96::a"), ip("fd00:10:244:1::7")),
    }
    schedulers = ["rr", "wrr", "sh", "lc", "wlc", "mh", "lblcr"]
    cases: list[Case] = []
    n = 0
    for version, (vip, rip) in addresses.items():
        for protocol in Protocol:
            for persistent in (False, True):
                scheduler = schedulers[n % len(schedulers)]
                weight = (0, 1, 7, 65535, 2**31 - 1)[n % 5]
                port = (1, 53, 80, 443, 65535)[n % 5]
                cases.append(
                    Case(
                        name=f"ipv{version}-{protocol.value}-{'persist' if persistent else 'plain'}"
                        f"-{scheduler}-w{weight}",
                        virtual=VirtualServer(
                            address=vip,
                            protocol=protocol,
                            port=port,
                            scheduler=scheduler,
                            flags=IPVS_FLAG_PERSISTENT if persistent else 0,
                            timeout=10800 if persistent else 0,
                        ),
                        real=RealServer(
                            address=rip,
                            port=(8080, 53, 1, 65535, 9376)[n % 5],
                            weight=weight,
                            forward=ForwardMethod.MASQ if n % 3 else ForwardMethod.ROUTE,
                        ),
                    )
                )
                n += 1
    # netmasks other than the default (persistence granularity)
    cases.append(
        Case(
            name="ipv4-netmask-24",
            virtual=VirtualServer(
                ip("192.0.2.1"), Protocol.TCP, 80, flags=1, timeout=60, netmask=0xFFFFFF00
            ),
            real=RealServer(ip("198.51.100.2"), 80, forward=ForwardMethod.TUNNEL),
        )
    )
    cases.append(
        Case(
            name="ipv6-netmask-64",
            virtual=VirtualServer(ip("2001:db8::1"), Protocol.UDP, 53, flags=1, netmask=64),
            real=RealServer(ip("2001:db8::2"), 53, forward=ForwardMethod.LOCAL),
        )
    )
    return cases


CASES = _cases()
IDS = [case.name for case in CASES]


def _af(address: IPAddress) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def _kernel_netmask(server: VirtualServer) -> str:
    """The NETMASK attribute as pyroute2's ip4addr type prints it (IPv6: a host-order u32)."""
    if server.address.version == 4:
        mask = server.netmask or 0xFFFFFFFF
        return socket.inet_ntoa(mask.to_bytes(4, "big"))
    return socket.inet_ntoa(struct.pack("=I", server.netmask or 128))


def _pyroute2_decode(data: bytes) -> Any:
    message = ipvsmsg(data)
    message.decode()
    return message


def _nested(message: Any, name: str) -> dict[str, Any]:
    return dict(message.get_attr(name)["attrs"])


def _service_key_attrs(key: VirtualServerKey) -> dict[str, Any]:
    return {
        "IPVS_SVC_ATTR_AF": _af(key.address),
        "IPVS_SVC_ATTR_PROTOCOL": key.protocol.number,
        "IPVS_SVC_ATTR_ADDR": str(key.address),
        "IPVS_SVC_ATTR_PORT": key.port,
    }


def _service_full_attrs(server: VirtualServer) -> dict[str, Any]:
    return {
        **_service_key_attrs(server.key),
        "IPVS_SVC_ATTR_SCHED_NAME": server.scheduler,
        "IPVS_SVC_ATTR_FLAGS": {"flags": server.flags, "mask": 0xFFFFFFFF},
        "IPVS_SVC_ATTR_TIMEOUT": server.timeout,
        "IPVS_SVC_ATTR_NETMASK": _kernel_netmask(server),
    }


def _check_header(message: Any, data: bytes, *, cmd: int, seq: int, flags: int) -> None:
    header = message["header"]
    assert header["length"] == len(data)
    assert len(data) % 4 == 0
    assert header["type"] == FAMILY_ID
    assert header["flags"] == flags
    assert header["sequence_number"] == seq
    assert message["cmd"] == cmd
    assert message["version"] == codec.IPVS_GENL_VERSION


# --- ours -> pyroute2 ---------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize(
    ("operation", "cmd"),
    [(AddVirtualServer, 1), (UpdateVirtualServer, 2)],
    ids=["new", "set"],
)
def test_full_service_decodes_with_pyroute2(case: Case, operation: Any, cmd: int) -> None:
    data = _encode(operation(case.virtual), seq=77)
    message = _pyroute2_decode(data)
    _check_header(message, data, cmd=cmd, seq=77, flags=nl.REQUEST_ACK)
    assert [name for name, _ in message["attrs"]] == ["IPVS_CMD_ATTR_SERVICE"]
    assert _nested(message, "IPVS_CMD_ATTR_SERVICE") == _service_full_attrs(case.virtual)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_del_service_and_dest_dump_decode_with_pyroute2(case: Case) -> None:
    key = case.virtual.key
    for data, cmd, flags in (
        (_encode(DeleteVirtualServer(key), seq=5), 3, nl.REQUEST_ACK),
        (
            codec.encode_get_dests(key, family_id=FAMILY_ID, seq=5),
            8,
            nl.NLM_F_REQUEST | nl.NLM_F_DUMP,
        ),
    ):
        message = _pyroute2_decode(data)
        _check_header(message, data, cmd=cmd, seq=5, flags=flags)
        assert _nested(message, "IPVS_CMD_ATTR_SERVICE") == _service_key_attrs(key)
        assert message.get_attr("IPVS_CMD_ATTR_DEST") is None


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize(
    ("operation", "cmd"),
    [(AddRealServer, 5), (UpdateRealServer, 6)],
    ids=["new", "set"],
)
def test_full_dest_decodes_with_pyroute2(case: Case, operation: Any, cmd: int) -> None:
    data = _encode(operation(case.virtual.key, case.real), seq=2**32 - 1)
    message = _pyroute2_decode(data)
    _check_header(message, data, cmd=cmd, seq=2**32 - 1, flags=nl.REQUEST_ACK)
    assert _nested(message, "IPVS_CMD_ATTR_SERVICE") == _service_key_attrs(case.virtual.key)
    assert _nested(message, "IPVS_CMD_ATTR_DEST") == {
        "IPVS_DEST_ATTR_ADDR": str(case.real.address),
        "IPVS_DEST_ATTR_PORT": case.real.port,
        "IPVS_DEST_ATTR_FWD_METHOD": int(case.real.forward),
        "IPVS_DEST_ATTR_WEIGHT": case.real.weight,
        "IPVS_DEST_ATTR_U_THRESH": 0,
        "IPVS_DEST_ATTR_L_THRESH": 0,
        "IPVS_DEST_ATTR_ADDR_FAMILY": _af(case.real.address),
    }


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_del_dest_decodes_with_pyroute2(case: Case) -> None:
    data = _encode(DeleteRealServer(case.virtual.key, case.real.key), seq=9)
    message = _pyroute2_decode(data)
    _check_header(message, data, cmd=7, seq=9, flags=nl.REQUEST_ACK)
    assert _nested(message, "IPVS_CMD_ATTR_SERVICE") == _service_key_attrs(case.virtual.key)
    assert _nested(message, "IPVS_CMD_ATTR_DEST") == {
        "IPVS_DEST_ATTR_ADDR": str(case.real.address),
        "IPVS_DEST_ATTR_PORT": case.real.port,
        "IPVS_DEST_ATTR_ADDR_FAMILY": _af(case.real.address),
    }


def test_service_dump_request_decodes_with_pyroute2() -> None:
    data = codec.encode_get_services(family_id=FAMILY_ID, seq=3)
    message = _pyroute2_decode(data)
    _check_header(message, data, cmd=4, seq=3, flags=nl.NLM_F_REQUEST | nl.NLM_F_DUMP)
    assert message["attrs"] == []


# --- pyroute2 -> ours ---------------------------------------------------------------------


def _pyroute2_encode(cmd: int, attrs: list[tuple[str, Any]], *, seq: int = 1) -> bytes:
    message = ipvsmsg()
    message["cmd"] = cmd
    message["version"] = 1
    message["attrs"] = attrs
    message["header"]["type"] = FAMILY_ID
    message["header"]["flags"] = nl.NLM_F_MULTI
    message["header"]["sequence_number"] = seq
    message.encode()
    return bytes(message.data)


def _only_payload(data: bytes) -> bytes:
    (message,) = nl.split_messages(data)
    assert message.type == FAMILY_ID
    return message.payload


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pyroute2_service_decodes_with_ours(case: Case) -> None:
    """A message shaped like the kernel's GET_SERVICE reply (it marks HASHED)."""
    attrs = _service_full_attrs(case.virtual)
    attrs["IPVS_SVC_ATTR_FLAGS"] = {
        "flags": case.virtual.flags | IPVS_FLAG_HASHED,
        "mask": 0xFFFFFFFF,
    }
    data = _pyroute2_encode(1, [("IPVS_CMD_ATTR_SERVICE", {"attrs": list(attrs.items())})])
    assert decode.parse_service(_only_payload(data)) == case.virtual


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pyroute2_dest_decodes_with_ours(case: Case) -> None:
    attrs = [
        ("IPVS_DEST_ATTR_ADDR", str(case.real.address)),
        ("IPVS_DEST_ATTR_PORT", case.real.port),
        ("IPVS_DEST_ATTR_FWD_METHOD", int(case.real.forward)),
        ("IPVS_DEST_ATTR_WEIGHT", case.real.weight),
        ("IPVS_DEST_ATTR_U_THRESH", 0),
        ("IPVS_DEST_ATTR_L_THRESH", 0),
        ("IPVS_DEST_ATTR_ACTIVE_CONNS", 12),
        ("IPVS_DEST_ATTR_INACT_CONNS", 345),
        ("IPVS_DEST_ATTR_PERSIST_CONNS", 6),
        ("IPVS_DEST_ATTR_ADDR_FAMILY", _af(case.real.address)),
    ]
    data = _pyroute2_encode(5, [("IPVS_CMD_ATTR_DEST", {"attrs": attrs})])
    real = decode.parse_dest(_only_payload(data), service_af=_af(case.virtual.address))
    assert real == case.real
    assert isinstance(real, RealServer)
    assert (real.active_connections, real.inactive_connections) == (12, 345)


def _attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def _raw_dest_payload(*attrs: bytes) -> bytes:
    """A GET_DEST reply payload built by hand (pyroute2 needs ADDR_FAMILY to pack ADDR)."""
    return b"\5\1\0\0" + _attr(codec.IPVS_CMD_ATTR_DEST, b"".join(attrs))


def test_dest_without_address_family_takes_the_services() -> None:
    payload = _raw_dest_payload(
        _attr(codec.IPVS_DEST_ATTR_ADDR, ip("fd00::9").packed),
        _attr(codec.IPVS_DEST_ATTR_PORT, struct.pack(">H", 80)),
    )
    real = decode.parse_dest(payload, service_af=socket.AF_INET6)
    assert real == RealServer(ip("fd00::9"), 80, weight=0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pyroute2_object_api_messages_decode_with_ours(case: Case) -> None:
    """What pyroute2.IPVS.service("add") / dest("add") send, built from its IPVSService and
    IPVSDest objects. pyroute2 adds NETMASK for IPv4 only (the kernel refuses an IPv6
    service without it), so the test passes it for IPv6."""
    virtual, real = case.virtual, case.real
    extra = {"netmask": _kernel_netmask(virtual)} if virtual.address.version == 6 else {}
    service = IPVSService(
        addr=str(virtual.address),
        port=virtual.port,
        protocol=virtual.protocol.number,
        sched_name=virtual.scheduler,
        flags={"flags": virtual.flags, "mask": 0xFFFFFFFF},
        timeout=virtual.timeout,
        **extra,
    )
    if virtual.netmask and virtual.address.version == 4:
        service["netmask"] = _kernel_netmask(virtual)
    dest = IPVSDest(
        addr=str(real.address), port=real.port, weight=real.weight, fwd_method=int(real.forward)
    )
    data = _pyroute2_encode(1, [("IPVS_CMD_ATTR_SERVICE", service.dump_nla())])
    assert decode.parse_service(_only_payload(data)) == virtual
    data = _pyroute2_encode(
        5,
        [
            ("IPVS_CMD_ATTR_SERVICE", service.dump_key()),
            ("IPVS_CMD_ATTR_DEST", dest.dump_nla()),
        ],
    )
    assert decode.parse_dest(_only_payload(data), service_af=_af(virtual.address)) == real


# --- ours -> ours -------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_round_trip(case: Case) -> None:
    service = _encode(AddVirtualServer(case.virtual), seq=1)
    dest = _encode(AddRealServer(case.virtual.key, case.real), seq=2)
    messages = nl.split_messages(service + dest)
    assert [(m.type, m.flags, m.seq) for m in messages] == [
        (FAMILY_ID, nl.REQUEST_ACK, 1),
        (FAMILY_ID, nl.REQUEST_ACK, 2),
    ]
    assert decode.parse_service(messages[0].payload) == case.virtual
    assert decode.parse_dest(messages[1].payload, service_af=_af(case.virtual.address)) == case.real


def test_packed_and_version_read_the_address_as_ipaddress_does() -> None:
    class Subclass(ipaddress.IPv4Address):
        pass

    for address in (
        ipaddress.IPv4Address("10.1.2.3"),
        ipaddress.IPv6Address("fd00::1:2"),
        ipaddress.IPv6Address("::ffff:10.0.0.1"),
        Subclass("192.0.2.9"),
    ):
        assert codec._packed(address) == address.packed
        assert codec._version(address) == address.version


def test_hashed_flag_is_never_sent() -> None:
    """ip_vs_svc_hash refuses a service already marked HASHED: it would never be hashed."""
    server = VirtualServer(ip("10.0.0.1"), Protocol.TCP, 80, flags=IPVS_FLAG_HASHED | 1)
    data = _encode(AddVirtualServer(server), seq=1)
    flags = _nested(_pyroute2_decode(data), "IPVS_CMD_ATTR_SERVICE")["IPVS_SVC_ATTR_FLAGS"]
    assert flags == {"flags": 1, "mask": 0xFFFFFFFF}


def test_scheduler_padding() -> None:
    """Names of every length up to 15 characters stay 4-byte aligned and NUL-terminated."""
    for length in range(1, 16):
        name = "x" * length
        server = VirtualServer(ip("10.0.0.1"), Protocol.TCP, 80, scheduler=name)
        data = _encode(UpdateVirtualServer(server), seq=length)
        assert len(data) % 4 == 0
        (message,) = nl.split_messages(data)
        parsed = decode.parse_service(message.payload)
        assert isinstance(parsed, VirtualServer)
        assert parsed.scheduler == name


def _ops(case: Case) -> list[Any]:
    """Every kind of operation on the case's servers, with the IPVS command it is sent as."""
    v, r = case.virtual, case.real
    return [
        (AddVirtualServer(v), codec.IPVS_CMD_NEW_SERVICE),
        (UpdateVirtualServer(v), codec.IPVS_CMD_SET_SERVICE),
        (DeleteVirtualServer(v.key), codec.IPVS_CMD_DEL_SERVICE),
        (AddRealServer(v.key, r), codec.IPVS_CMD_NEW_DEST),
        (UpdateRealServer(v.key, r), codec.IPVS_CMD_SET_DEST),
        (DeleteRealServer(v.key, r.key), codec.IPVS_CMD_DEL_DEST),
    ]


@pytest.mark.parametrize("case", CASES[:4], ids=IDS[:4])
def test_every_operation_is_one_acked_request_of_its_command(case: Case) -> None:
    for op, cmd in _ops(case):
        (message,) = nl.split_messages(_encode(op, seq=4))
        assert (message.type, message.flags, message.seq) == (FAMILY_ID, nl.REQUEST_ACK, 4)
        assert message.payload[:2] == bytes([cmd, codec.IPVS_GENL_VERSION])


# --- describing ---------------------------------------------------------------------------


def test_describe_operation() -> None:
    v4 = VirtualServer(ip("10.96.0.1"), Protocol.TCP, 80)
    v6 = VirtualServerKey(ip("fd00::1"), Protocol.UDP, 53)
    real = RealServer(ip("10.0.0.1"), 80)
    assert codec.describe_operation(AddRealServer(v4.key, real)) == (
        "add real server 10.0.0.1:80 to TCP 10.96.0.1:80"
    )
    assert codec.describe_operation(DeleteRealServer(v6, RealServerKey(ip("fd01::2"), 53))) == (
        "delete real server [fd01::2]:53 from UDP [fd00::1]:53"
    )
    assert codec.describe_operation(AddVirtualServer(v4)) == "add virtual server TCP 10.96.0.1:80"
    assert codec.describe_operation(DeleteVirtualServer(v6)) == (
        "delete virtual server UDP [fd00::1]:53"
    )


# --- encode errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op",
    [
        AddVirtualServer(VirtualServer(ip("10.0.0.1"), Protocol.TCP, 65536)),
        AddVirtualServer(VirtualServer(ip("10.0.0.1"), Protocol.TCP, 80, scheduler="")),
        AddVirtualServer(VirtualServer(ip("10.0.0.1"), Protocol.TCP, 80, scheduler="s" * 16)),
        AddVirtualServer(VirtualServer(ip("10.0.0.1"), Protocol.TCP, 80, scheduler="rr\0")),
        UpdateVirtualServer(VirtualServer(ip("10.0.0.1"), Protocol.TCP, 80, scheduler="rré")),
        UpdateVirtualServer(VirtualServer(ip("10.0.0.1"), Protocol.TCP, 80, timeout=-1)),
        DeleteVirtualServer(VirtualServerKey(ip("10.0.0.1"), Protocol.TCP, -1)),
        AddRealServer(
            VirtualServerKey(ip("10.0.0.1"), Protocol.TCP, 80),
            RealServer(ip("10.1.0.1"), 80, weight=2**32),
        ),
        UpdateRealServer(
            VirtualServerKey(ip("10.0.0.1"), Protocol.TCP, 80),
            RealServer(ip("10.1.0.1"), 70000),
        ),
        DeleteRealServer(
            VirtualServerKey(ip("10.0.0.1"), Protocol.TCP, 80), RealServerKey(ip("10.1.0.1"), -5)
        ),
    ],
    ids=lambda op: type(op).__name__,
)
def test_unencodable_values_raise_encode_error(op: Any) -> None:
    with pytest.raises(nl.EncodeError):
        codec.encode_operation(op, family_id=FAMILY_ID, seq=1)


def test_not_an_operation() -> None:
    with pytest.raises(nl.EncodeError):
        codec.encode_operation("nope", family_id=FAMILY_ID, seq=1)  # type: ignore[arg-type]


# --- replies: acks, done, skipped entries -------------------------------------------------


def _message(kind: int, flags: int, seq: int, payload: bytes) -> bytes:
    length = 16 + len(payload)
    return struct.pack("=IHHII", length, kind, flags, seq, 0) + payload + b"\0" * (-length % 4)


def test_acks_and_done() -> None:
    request_header = struct.pack("=IHHII", 64, FAMILY_ID, 5, 11, 0)
    ok = _message(nl.NLMSG_ERROR, nl.NLM_F_CAPPED, 11, struct.pack("=i", 0) + request_header)
    extack = struct.pack("=HH", 4 + 20, nl.NLMSGERR_ATTR_MSG) + b"Attribute failed pol\0"
    refused = _message(
        nl.NLMSG_ERROR,
        nl.NLM_F_CAPPED | nl.NLM_F_ACK_TLVS,
        12,
        struct.pack("=i", -errno.EINVAL) + request_header + extack,
    )
    # without NETLINK_CAP_ACK the request's payload is echoed before the attributes
    echoed = struct.pack("=IHHII", 24, FAMILY_ID, 5, 13, 0) + b"\1\1\0\0" + b"\xaa" * 4
    uncapped = _message(
        nl.NLMSG_ERROR,
        nl.NLM_F_ACK_TLVS,
        13,
        struct.pack("=i", -errno.EEXIST) + echoed + struct.pack("=HH", 7, 1) + b"hi\0\0",
    )
    done = _message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 14, struct.pack("=i", 0))
    messages = nl.split_messages(ok + refused + uncapped + done)
    assert [m.seq for m in messages] == [11, 12, 13, 14]
    assert nl.parse_ack(messages[0].payload, messages[0].flags) == (0, "")
    assert nl.parse_ack(messages[1].payload, messages[1].flags) == (
        errno.EINVAL,
        "Attribute failed pol",
    )
    assert nl.parse_ack(messages[2].payload, messages[2].flags) == (errno.EEXIST, "hi")
    assert nl.parse_error(messages[1].payload) == errno.EINVAL
    assert nl.parse_done(messages[3].payload) == 0
    assert nl.parse_done(b"") == 0


def _service_payload(attrs: list[tuple[str, Any]]) -> bytes:
    return _only_payload(_pyroute2_encode(1, [("IPVS_CMD_ATTR_SERVICE", {"attrs": attrs})]))


@pytest.mark.parametrize(
    ("attrs", "reason"),
    [
        (
            [("IPVS_SVC_ATTR_AF", 2), ("IPVS_SVC_ATTR_FWMARK", 0x4000)],
            "firewall-mark service 0x4000",
        ),
        (
            [
                ("IPVS_SVC_ATTR_AF", 2),
                ("IPVS_SVC_ATTR_PROTOCOL", 47),
                ("IPVS_SVC_ATTR_ADDR", "10.0.0.1"),
                ("IPVS_SVC_ATTR_PORT", 0),
            ],
            "service of IP protocol 47",
        ),
        ([("IPVS_SVC_ATTR_AF", 7)], "service of address family 7"),
    ],
    ids=["fwmark", "protocol", "family"],
)
def test_foreign_services_are_skipped(attrs: list[tuple[str, Any]], reason: str) -> None:
    assert decode.parse_service(_service_payload(attrs)) == decode.SkippedEntry(reason)


def test_unknown_forwarding_method_or_family_is_skipped() -> None:
    address = _attr(codec.IPVS_DEST_ATTR_ADDR, ip("10.0.0.2").packed.ljust(16, b"\0"))
    port = _attr(codec.IPVS_DEST_ATTR_PORT, struct.pack(">H", 80))
    payload = _raw_dest_payload(
        address, port, _attr(codec.IPVS_DEST_ATTR_FWD_METHOD, struct.pack("=I", 7))
    )
    assert decode.parse_dest(payload, service_af=socket.AF_INET) == decode.SkippedEntry(
        "real server 10.0.0.2:80 forwarding method 7"
    )
    payload = _raw_dest_payload(
        address, port, _attr(codec.IPVS_DEST_ATTR_ADDR_FAMILY, struct.pack("=H", 99))
    )
    assert decode.parse_dest(payload, service_af=socket.AF_INET) == decode.SkippedEntry(
        "real server of address family 99"
    )


# --- garbage ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "buffer",
    [
        b"\x01",
        b"\x00" * 15,
        struct.pack("=IHHII", 15, 2, 0, 1, 0),  # length shorter than a header
        struct.pack("=IHHII", 40, 2, 0, 1, 0) + b"\0" * 8,  # longer than the buffer
        _message(nl.NLMSG_DONE, 0, 1, b"") + b"\x10\x00",  # a second, truncated header
    ],
    ids=["one-byte", "short-header", "length-too-small", "length-too-large", "trailing"],
)
def test_split_rejects_truncated_buffers(buffer: bytes) -> None:
    with pytest.raises(nl.NetlinkDecodeError):
        nl.split_messages(buffer)


def test_truncated_payloads_raise_decode_error() -> None:
    case = CASES[3]
    service = _encode(AddVirtualServer(case.virtual), seq=1)[16:]
    dest = _encode(AddRealServer(case.virtual.key, case.real), seq=1)[16:]
    for cut in range(len(service) - 1):
        with pytest.raises(nl.NetlinkDecodeError):
            decode.parse_service(service[:cut])
    for cut in range(len(dest) - 1):
        with pytest.raises(nl.NetlinkDecodeError):
            decode.parse_dest(dest[:cut], service_af=socket.AF_INET)
    with pytest.raises(nl.NetlinkDecodeError):
        nl.parse_error(b"\0\0")
    # a dest message is not a service message, and the other way round
    with pytest.raises(nl.NetlinkDecodeError):
        decode.parse_dest(service, service_af=socket.AF_INET)


def test_attribute_overrunning_its_container() -> None:
    payload = b"\1\1\0\0" + struct.pack("=HH", 200, codec.IPVS_CMD_ATTR_SERVICE) + b"\0" * 8
    with pytest.raises(nl.NetlinkDecodeError, match="overruns"):
        decode.parse_service(payload)


def test_random_garbage_never_escapes_as_another_error() -> None:
    """Mutated real messages and random bytes: a value, a SkippedEntry or NetlinkDecodeError."""
    rng = random.Random(20261126)
    seeds = [_encode(AddVirtualServer(case.virtual), seq=1)[16:] for case in CASES] + [
        _encode(AddRealServer(case.virtual.key, case.real), seq=1)[16:] for case in CASES
    ]
    for _ in range(3000):
        if rng.random() < 0.2:
            blob = rng.randbytes(rng.randrange(0, 160))
        else:
            mutable = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                mutable[rng.randrange(len(mutable))] = rng.randrange(256)
            blob = bytes(mutable[: rng.randrange(len(mutable) + 1)])
        for parse in (
            decode.parse_service,
            lambda b: decode.parse_dest(b, service_af=socket.AF_INET6),
            nl.split_messages,
        ):
            with contextlib.suppress(nl.NetlinkDecodeError):
                parse(blob)


def test_decode_error_is_a_kernel_error() -> None:
    from ipvsproxy.errors import KernelError

    assert issubclass(nl.NetlinkDecodeError, KernelError)


# --- the encode-only sink -----------------------------------------------------------------


def test_encode_only_sink_counts_and_reports_unencodable() -> None:
    case = CASES[0]
    bad = AddVirtualServer(VirtualServer(ip("10.0.0.1"), Protocol.TCP, 80, scheduler="x" * 20))
    sink = EncodeOnlySink(family_id=FAMILY_ID, keep=True)
    failures = sink.execute([op for op, _ in _ops(case)] + [bad])
    assert sink.writes == 6
    assert sink.bytes == sum(map(len, sink.messages))
    assert [f.operation for f in failures] == [bad]
    assert failures[0].errno == errno.EINVAL
    assert failures[0].message.startswith("add virtual server TCP 10.0.0.1:80: scheduler name")
    seqs = [m.seq for data in sink.messages for m in nl.split_messages(data)]
    assert seqs == [1, 2, 3, 4, 5, 6]
    assert sink.execute([]) == []
    assert sink.writes == 6
    assert sink.snapshot() == {}


def test_config_timeouts_round_trip() -> None:
    message = codec.encode_set_config((600, 30, 0), family_id=0x25, seq=7)
    (parsed,) = nl.split_messages(message)
    assert (parsed.type, parsed.seq) == (0x25, 7)
    # A GET_CONFIG reply carries the same attributes after the genl header.
    assert decode.parse_config(parsed.payload) == (600, 30, 0)
    with pytest.raises(nl.EncodeError):
        codec.encode_set_config((-1, 0, 0), family_id=0x25, seq=8)


def test_family_request_is_what_pyroute2_encodes() -> None:
    from pyroute2.netlink import CTRL_CMD_GETFAMILY, GENL_ID_CTRL, ctrlmsg

    message = ctrlmsg()
    message["cmd"] = CTRL_CMD_GETFAMILY
    message["version"] = 1
    message["attrs"].append(["CTRL_ATTR_FAMILY_NAME", codec.IPVS_GENL_NAME])
    message["header"]["type"] = GENL_ID_CTRL
    message["header"]["flags"] = nl.NLM_F_REQUEST | nl.NLM_F_ACK
    message["header"]["sequence_number"] = 77
    message.encode()
    assert nl.encode_get_family(codec.IPVS_GENL_NAME, seq=77) == bytes(message.data)


def test_family_id_is_read_from_a_controller_reply() -> None:
    from pyroute2.netlink import CTRL_CMD_NEWFAMILY, GENL_ID_CTRL, ctrlmsg

    reply = ctrlmsg()
    reply["cmd"] = CTRL_CMD_NEWFAMILY
    reply["version"] = 2
    reply["attrs"] = [["CTRL_ATTR_FAMILY_NAME", "IPVS"], ["CTRL_ATTR_FAMILY_ID", 0x2A]]
    reply["header"]["type"] = GENL_ID_CTRL
    reply.encode()
    (message,) = nl.split_messages(bytes(reply.data))
    assert nl.parse_family_id(message.payload) == 0x2A
    without = ctrlmsg()
    without["cmd"] = CTRL_CMD_NEWFAMILY
    without["attrs"] = [["CTRL_ATTR_FAMILY_NAME", "IPVS"]]
    without["header"]["type"] = GENL_ID_CTRL
    without.encode()
    (message,) = nl.split_messages(bytes(without.data))
    assert nl.parse_family_id(message.payload) is None
    with pytest.raises(nl.NetlinkDecodeError):
        nl.parse_family_id(b"\x01")
