"""Encode cost of IPVS netlink messages: our struct codec against pyroute2's IPVS objects.

    python -m bench.bench_ipvs_codec [--services 2000] [--dests 10] [--repeat 5] [--min-rate 50000]

Builds one NEW_SERVICE per service and --dests NEW_DEST per service (defaults: 2,000 +
20,000 messages; a quarter of the services IPv6, protocols TCP/UDP/SCTP, some with
persistence), then encodes the same messages --repeat times with
``ipvs_codec.encode_operation`` and with pyroute2's ``IPVSService``/``IPVSDest`` +
``ipvsmsg.encode()`` (what ``pyroute2.IPVS.service/dest`` build before sending). Prints the
median messages per second of each and their ratio. Nothing is sent to a kernel.

It checks its own result and exits 1 when it is wrong: every message we encoded must decode
(with our decoder) to the operation it came from, a sample must decode with pyroute2's
schema to the same attributes, and pyroute2's messages must decode with ours to the same
values. It also exits 1 when our median rate is below --min-rate (0 disables that).
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from pyroute2 import IPVSDest, IPVSService
from pyroute2.netlink.generic.ipvs import ipvsmsg

from ipvsproxy.core.model import (
    IPVS_FLAG_PERSISTENT,
    Protocol,
    RealServer,
    VirtualServer,
)
from ipvsproxy.core.operations import AddRealServer, AddVirtualServer
from ipvsproxy.dataplane.ipvs_codec import (
    IPVS_CMD_NEW_DEST,
    IPVS_CMD_NEW_SERVICE,
    encode_operation,
)
from ipvsproxy.dataplane.ipvs_decode import (
    parse_dest,
    parse_service,
)
from ipvsproxy.dataplane.netlink_codec import REQUEST_ACK, split_messages

FAMILY_ID = 0x25  # any generic netlink family id; nothing is sent
Op = AddVirtualServer | AddRealServer


def build_operations(services: int, dests: int) -> list[Op]:
    """One AddVirtualServer followed by its AddRealServers, per service."""
    rng = random.Random(7)
    protocols = list(Protocol)
    ops: list[Op] = []
    for index in range(services):
        v6 = index % 4 == 3
        address: Any = (
            ipaddress.IPv6Address((0xFD00_0096 << 96) + index)
            if v6
            else ipaddress.IPv4Address(0x0A60_0000 + index)
        )
        persistent = index % 5 == 0
        virtual = VirtualServer(
            address=address,
            protocol=protocols[index % 3],
            port=rng.choice((53, 80, 443, 8080, 9000)),
            scheduler=("rr", "wrr", "sh", "lc")[index % 4],
            flags=IPVS_FLAG_PERSISTENT if persistent else 0,
            timeout=10800 if persistent else 0,
        )
        ops.append(AddVirtualServer(virtual))
        for d in range(dests):
            base = index * dests + d
            real_address: Any = (
                ipaddress.IPv6Address((0xFD00_0244 << 96) + base)
                if v6
                else ipaddress.IPv4Address(0x0AF4_0000 + base)
            )
            ops.append(
                AddRealServer(
                    virtual.key,
                    RealServer(real_address, rng.randrange(1024, 65536), weight=rng.randrange(4)),
                )
            )
    return ops


# --- the two encoders ---------------------------------------------------------------------


def encode_ours(ops: Sequence[Op]) -> list[bytes]:
    encode = encode_operation
    return [encode(op, family_id=FAMILY_ID, seq=seq) for seq, op in enumerate(ops, start=1)]


def _pyroute2_message(cmd: int, attrs: list[tuple[str, Any]], seq: int) -> bytes:
    message = ipvsmsg()
    message["cmd"] = cmd
    message["version"] = 1
    message["attrs"] = attrs
    message["header"]["type"] = FAMILY_ID
    message["header"]["flags"] = REQUEST_ACK
    message["header"]["sequence_number"] = seq
    message.encode()
    return bytes(message.data)


# pyroute2 fills in NETMASK for IPv4 only; without it the kernel refuses an IPv6 service
# (EINVAL). Its NETMASK type is an IPv4 address, so pass the host-order 128 the kernel wants.
_IPV6_NETMASK = socket.inet_ntoa(struct.pack("=I", 128))


def _pyroute2_service(virtual: VirtualServer) -> Any:
    extra = {"netmask": _IPV6_NETMASK} if virtual.address.version == 6 else {}
    return IPVSService(
        addr=str(virtual.address),
        port=virtual.port,
        protocol=virtual.protocol.number,
        sched_name=virtual.scheduler,
        flags={"flags": virtual.flags, "mask": 0xFFFFFFFF},
        timeout=virtual.timeout,
        **extra,
    )


def encode_pyroute2(ops: Sequence[Op]) -> list[bytes]:
    """The messages pyroute2.IPVS.service("add") / dest("add") would send."""
    out: list[bytes] = []
    for seq, op in enumerate(ops, start=1):
        if isinstance(op, AddVirtualServer):
            service = _pyroute2_service(op.server)
            attrs = [("IPVS_CMD_ATTR_SERVICE", service.dump_nla())]
            out.append(_pyroute2_message(IPVS_CMD_NEW_SERVICE, attrs, seq))
        else:
            key = op.virtual
            service = IPVSService(
                addr=str(key.address), port=key.port, protocol=key.protocol.number
            )
            dest = IPVSDest(
                addr=str(op.server.address),
                port=op.server.port,
                weight=op.server.weight,
                fwd_method=int(op.server.forward),
            )
            attrs = [
                ("IPVS_CMD_ATTR_SERVICE", service.dump_key()),
                ("IPVS_CMD_ATTR_DEST", dest.dump_nla()),
            ]
            out.append(_pyroute2_message(IPVS_CMD_NEW_DEST, attrs, seq))
    return out


# --- self-checks --------------------------------------------------------------------------


def _af(op: Op) -> int:
    key = op.server.key if isinstance(op, AddVirtualServer) else op.virtual
    return socket.AF_INET if key.address.version == 4 else socket.AF_INET6


def check_decodes_to_input(ops: Sequence[Op], encoded: Sequence[bytes], who: str) -> list[str]:
    """Decode every message with our decoder and compare it with the operation."""
    problems: list[str] = []
    for seq, (op, data) in enumerate(zip(ops, encoded, strict=True), start=1):
        (message,) = split_messages(data)
        if (message.type, message.seq) != (FAMILY_ID, seq):
            problems.append(f"{who} #{seq}: header type/seq {message.type}/{message.seq}")
            continue
        if isinstance(op, AddVirtualServer):
            got: Any = parse_service(message.payload)
            want: Any = op.server
        else:
            got = parse_dest(message.payload, service_af=_af(op))
            want = op.server
        if got != want:
            problems.append(f"{who} #{seq}: decoded {got!r}, encoded {want!r}")
    return problems


def _pyroute2_view(data: bytes) -> dict[str, Any]:
    """Attributes as pyroute2's schema reads them, normalised where the encoders may
    legitimately differ (attribute order, the flags mask, pyroute2's tunnel defaults)."""
    message = ipvsmsg(data)
    message.decode()
    view: dict[str, Any] = {"cmd": message["cmd"], "seq": message["header"]["sequence_number"]}
    for name, value in message["attrs"]:
        attrs = dict(value["attrs"])
        attrs.pop("IPVS_SVC_ATTR_FLAGS", None)
        for tunnel in (
            "IPVS_DEST_ATTR_TUN_TYPE",
            "IPVS_DEST_ATTR_TUN_PORT",
            "IPVS_DEST_ATTR_TUN_FLAGS",
        ):
            attrs.pop(tunnel, None)
        view[name] = attrs
    return view


def check_against_pyroute2(
    ops: Sequence[Op], ours: Sequence[bytes], theirs: Sequence[bytes], sample: int
) -> list[str]:
    problems = check_decodes_to_input(ops, theirs, "pyroute2")
    # the first services cover every family and protocol; the rest a random sample
    head = min(len(ops), 64)
    rest = random.Random(11).sample(range(head, len(ops)), min(sample, len(ops) - head))
    for index in [*range(head), *rest]:
        mine, other = _pyroute2_view(ours[index]), _pyroute2_view(theirs[index])
        if mine != other:
            problems.append(f"message #{index + 1}: ours {mine} != pyroute2 {other}")
    return problems


# --- timing -------------------------------------------------------------------------------


def median_rate(
    encode: Callable[[Sequence[Op]], list[bytes]], ops: Sequence[Op], repeat: int
) -> tuple[float, list[bytes]]:
    rates: list[float] = []
    result: list[bytes] = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = encode(ops)
        rates.append(len(ops) / (time.perf_counter() - started))
    return statistics.median(rates), result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--dests", type=int, default=10, help="real servers per service")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sample", type=int, default=1000, help="messages cross-decoded")
    parser.add_argument("--min-rate", type=float, default=50_000.0)
    args = parser.parse_args(argv)

    ops = build_operations(args.services, args.dests)
    n_services = sum(isinstance(op, AddVirtualServer) for op in ops)
    print(
        f"{len(ops):,} messages: {n_services:,} NEW_SERVICE + {len(ops) - n_services:,} "
        f"NEW_DEST; median of {args.repeat} runs"
    )
    ours_rate, ours = median_rate(encode_ours, ops, args.repeat)
    print(f"  ipvs_codec (struct):      {ours_rate:>12,.0f} msg/s")
    theirs_rate, theirs = median_rate(encode_pyroute2, ops, args.repeat)
    print(f"  pyroute2 IPVS objects:    {theirs_rate:>12,.0f} msg/s")
    print(f"  ratio:                    {ours_rate / theirs_rate:>12,.1f}x")

    problems = check_decodes_to_input(ops, ours, "ours")
    problems += check_against_pyroute2(ops, ours, theirs, args.sample)
    if problems:
        print(f"WRONG: {len(problems)} problems; first ones:", file=sys.stderr)
        for problem in problems[:10]:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"  checked: all {len(ops):,} of ours and of pyroute2's decode to their input")
    if ours_rate < args.min_rate:
        print(
            f"TOO SLOW: {ours_rate:,.0f} msg/s < --min-rate {args.min_rate:,.0f}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
