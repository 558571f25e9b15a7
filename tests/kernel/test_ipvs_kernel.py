"""IpvsSocket against a real IPVS, read back with the real ipvsadm and with our own dump.

Runs inside the user-mode-linux guest, each test in a fresh network namespace (an empty
IPVS table). The guest is slow: timings printed here only mean something side by side.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import subprocess
from collections.abc import Iterator

import pytest
from ipvsproxy_testkit.sandbox.netns import enter_netns

from ipvsproxy.core.model import (
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
from ipvsproxy.dataplane import ipvs as ipvs_module
from ipvsproxy.dataplane.interfaces import IpvsSnapshot
from ipvsproxy.dataplane.ipvs import IpvsSocket

pytestmark = pytest.mark.kernel

ip = ipaddress.ip_address


def vs(
    address: str,
    protocol: str,
    port: int,
    *,
    scheduler: str = "rr",
    flags: int = 0,
    timeout: int = 0,
    netmask: int = 0,
) -> VirtualServer:
    return VirtualServer(
        ip(address),
        Protocol(protocol),
        port,
        scheduler=scheduler,
        flags=flags,
        timeout=timeout,
        netmask=netmask,
    )


def rs(
    address: str, port: int, weight: int = 1, forward: ForwardMethod = ForwardMethod.MASQ
) -> RealServer:
    return RealServer(ip(address), port, weight=weight, forward=forward)


# Every family and protocol, persistence, a non-default netmask, several schedulers,
# weights (0 = drained) and forwarding methods.
SCENARIO: list[tuple[VirtualServer, list[RealServer]]] = [
    (vs("10.96.0.1", "TCP", 80), [rs("10.244.1.1", 8080), rs("10.244.2.1", 8080)]),
    (
        vs("10.96.0.10", "UDP", 53, scheduler="wrr"),
        [rs("10.244.1.2", 53, 1), rs("10.244.1.3", 53, 3), rs("10.244.1.4", 53, 0)],
    ),
    (
        vs("10.96.0.20", "SCTP", 3868, scheduler="sh", flags=IPVS_FLAG_PERSISTENT, timeout=10800),
        [rs("10.244.3.1", 3868)],
    ),
    (
        vs("10.96.0.30", "TCP", 443, flags=IPVS_FLAG_PERSISTENT, timeout=60, netmask=0xFFFFFF00),
        [rs("10.244.4.1", 8443, 2, ForwardMethod.ROUTE)],
    ),
    (vs("10.96.0.40", "TCP", 8080), []),
    (
        vs("fd00:96::1", "TCP", 443, scheduler="sh"),
        [rs("fd00:244:1::1", 8443), rs("fd00:244:2::1", 8443, 5)],
    ),
    (
        vs("fd00:96::a", "UDP", 53, flags=IPVS_FLAG_PERSISTENT, timeout=300, netmask=64),
        [rs("fd00:244:1::2", 5353, 1, ForwardMethod.TUNNEL)],
    ),
    (vs("fd00:96::14", "SCTP", 9000, scheduler="wrr"), [rs("fd00:244:3::1", 9000, 10)]),
]


def _state(entries: list[tuple[VirtualServer, list[RealServer]]]) -> IpvsSnapshot:
    return {v.key: (v, {r.key: r for r in reals}) for v, reals in entries}


def _add_ops(entries: list[tuple[VirtualServer, list[RealServer]]]) -> list[IpvsOperation]:
    ops: list[IpvsOperation] = []
    for virtual, reals in entries:
        ops.append(AddVirtualServer(virtual))
        ops.extend(AddRealServer(virtual.key, real) for real in reals)
    return ops


# --- ipvsadm: the independent reader and the -R baseline ----------------------------------

_FORWARD_NAMES = {
    "Masq": ForwardMethod.MASQ,
    "Local": ForwardMethod.LOCAL,
    "Tunnel": ForwardMethod.TUNNEL,
    "Route": ForwardMethod.ROUTE,
}


def _hostport(text: str) -> tuple[IPAddress, int]:
    host, _, port = text.rpartition(":")
    return ip(host.strip("[]")), int(port)


def ipvsadm_state() -> IpvsSnapshot:
    """``ipvsadm -Ln`` parsed into the same shape as IpvsSocket.snapshot()."""
    out = subprocess.run(["ipvsadm", "-Ln"], capture_output=True, text=True, check=True).stdout
    state: IpvsSnapshot = {}
    current: VirtualServerKey | None = None
    for line in out.splitlines()[3:]:  # version line and two column headers
        fields = line.split()
        if fields[0] == "->":
            address, port = _hostport(fields[1])
            real = RealServer(
                address,
                port,
                weight=int(fields[3]),
                forward=_FORWARD_NAMES[fields[2]],
                active_connections=int(fields[4]),
                inactive_connections=int(fields[5]),
            )
            assert current is not None
            state[current][1][real.key] = real
            continue
        address, port = _hostport(fields[1])
        flags = timeout = netmask = 0
        rest = fields[3:]
        for index, word in enumerate(rest):
            if word == "persistent":
                flags |= IPVS_FLAG_PERSISTENT
                timeout = int(rest[index + 1])
            elif word == "mask":
                mask = rest[index + 1]
                netmask = int(ipaddress.IPv4Address(mask)) if "." in mask else int(mask)
        server = VirtualServer(
            address,
            Protocol(fields[0]),
            port,
            scheduler=fields[2],
            flags=flags,
            timeout=timeout,
            netmask=netmask,
        )
        current = server.key
        state[current] = (server, {})
    return state


def _ipvsadm_service(key: VirtualServerKey) -> str:
    option = {Protocol.TCP: "-t", Protocol.UDP: "-u", Protocol.SCTP: "--sctp-service"}
    host = f"[{key.address}]" if key.address.version == 6 else str(key.address)
    return f"{option[key.protocol]} {host}:{key.port}"


def ipvsadm_rules(entries: list[tuple[VirtualServer, list[RealServer]]]) -> str:
    """The same content as _add_ops(entries), in ``ipvsadm -R`` syntax (rr, masq only)."""
    lines: list[str] = []
    for virtual, reals in entries:
        service = _ipvsadm_service(virtual.key)
        lines.append(f"-A {service} -s {virtual.scheduler}")
        for real in reals:
            host = f"[{real.address}]" if real.address.version == 6 else str(real.address)
            lines.append(f"-a {service} -r {host}:{real.port} -m -w {real.weight}")
    return "\n".join(lines) + "\n"


def ipvsadm(*args: str, stdin: str | None = None) -> None:
    subprocess.run(["ipvsadm", *args], input=stdin, text=True, check=True, capture_output=True)


@pytest.fixture
def ipvs() -> Iterator[IpvsSocket]:
    with IpvsSocket() as sock:
        yield sock


def assert_kernel_holds(sock: IpvsSocket, expected: IpvsSnapshot) -> None:
    """Both our dump and ipvsadm's see exactly ``expected``."""
    assert sock.snapshot() == expected
    assert ipvsadm_state() == expected


# --- tests --------------------------------------------------------------------------------


def test_program_and_read_back(ipvs: IpvsSocket) -> None:
    ops = _add_ops(SCENARIO)
    assert ipvs.execute(ops) == []
    assert ipvs.writes == len(ops)
    assert ipvs.socket_writes == 1
    assert_kernel_holds(ipvs, _state(SCENARIO))
    assert sorted(v.key.sort_key() for v in ipvs.virtual_servers()) == sorted(
        v.key.sort_key() for v, _ in SCENARIO
    )
    for virtual, reals in SCENARIO:
        assert sorted(r.key.sort_key() for r in ipvs.real_servers(virtual.key)) == sorted(
            r.key.sort_key() for r in reals
        )


def test_no_op_writes_nothing(ipvs: IpvsSocket) -> None:
    assert ipvs.execute(_add_ops(SCENARIO)) == []
    before = ipvs.writes, ipvs.socket_writes
    ipvs.snapshot()
    assert ipvs.execute([]) == []
    assert (ipvs.writes, ipvs.socket_writes) == before


def test_update(ipvs: IpvsSocket) -> None:
    assert ipvs.execute(_add_ops(SCENARIO)) == []
    v4 = SCENARIO[0][0]
    v6 = SCENARIO[5][0]
    new_v4 = vs("10.96.0.1", "TCP", 80, scheduler="wrr", flags=IPVS_FLAG_PERSISTENT, timeout=30)
    new_v6 = vs("fd00:96::1", "TCP", 443)  # sh -> rr
    new_real = rs("10.244.1.1", 8080, weight=0)  # drained
    new_real6 = rs("fd00:244:2::1", 8443, weight=9, forward=ForwardMethod.ROUTE)
    failures = ipvs.execute(
        [
            UpdateVirtualServer(new_v4),
            UpdateVirtualServer(new_v6),
            UpdateRealServer(v4.key, new_real),
            UpdateRealServer(v6.key, new_real6),
        ]
    )
    assert failures == []
    expected = _state(SCENARIO)
    expected[v4.key] = (new_v4, {**expected[v4.key][1], new_real.key: new_real})
    expected[v6.key] = (new_v6, {**expected[v6.key][1], new_real6.key: new_real6})
    assert_kernel_holds(ipvs, expected)
    # and back again, dropping persistence
    assert ipvs.execute([UpdateVirtualServer(v4)]) == []
    expected[v4.key] = (v4, expected[v4.key][1])
    assert_kernel_holds(ipvs, expected)


def test_delete(ipvs: IpvsSocket) -> None:
    assert ipvs.execute(_add_ops(SCENARIO)) == []
    udp, udp_reals = SCENARIO[1]
    sctp6, _ = SCENARIO[7]
    failures = ipvs.execute(
        [DeleteRealServer(udp.key, udp_reals[0].key), DeleteVirtualServer(sctp6.key)]
    )
    assert failures == []
    expected = _state(SCENARIO)
    del expected[udp.key][1][udp_reals[0].key]
    del expected[sctp6.key]
    assert_kernel_holds(ipvs, expected)
    assert ipvs.execute([DeleteVirtualServer(v.key) for v in list(ipvs.virtual_servers())]) == []
    assert_kernel_holds(ipvs, {})


def test_idempotent_deletes_and_adds(ipvs: IpvsSocket) -> None:
    assert ipvs.execute(_add_ops(SCENARIO)) == []
    tcp, tcp_reals = SCENARIO[0]
    missing = VirtualServerKey(ip("10.96.9.9"), Protocol.TCP, 80)
    # deleting what is not there: ESRCH / ENOENT from the kernel, success for us
    assert (
        ipvs.execute(
            [
                DeleteVirtualServer(missing),
                DeleteRealServer(tcp.key, RealServerKey(ip("10.244.9.9"), 80)),
                DeleteRealServer(missing, RealServerKey(ip("10.244.9.9"), 80)),
            ]
        )
        == []
    )
    # adding what exists, with other settings: EEXIST, sent again as a Set
    changed = vs("10.96.0.1", "TCP", 80, scheduler="lc")
    reweighted = rs(str(tcp_reals[1].address), tcp_reals[1].port, weight=4)
    writes = ipvs.writes
    assert ipvs.execute([*_add_ops(SCENARIO), AddVirtualServer(changed)]) == []
    assert ipvs.execute([AddRealServer(tcp.key, reweighted)]) == []
    n_adds = len(_add_ops(SCENARIO)) + 2
    assert ipvs.writes - writes == 2 * n_adds  # every one refused once, then set
    expected = _state(SCENARIO)
    expected[tcp.key] = (changed, {**expected[tcp.key][1], reweighted.key: reweighted})
    assert_kernel_holds(ipvs, expected)


def test_updating_or_adding_into_missing_objects_fails(ipvs: IpvsSocket) -> None:
    assert ipvs.execute(_add_ops(SCENARIO[:1])) == []
    tcp, _ = SCENARIO[0]
    ghost = vs("10.96.9.9", "TCP", 80)
    ops: list[IpvsOperation] = [
        UpdateVirtualServer(ghost),
        UpdateRealServer(tcp.key, rs("10.244.9.9", 80)),
        AddRealServer(ghost.key, rs("10.244.9.9", 80)),
    ]
    failures = ipvs.execute(ops)
    assert [(f.operation, f.errno) for f in failures] == [
        (ops[0], errno.ESRCH),
        (ops[1], errno.ENOENT),
        (ops[2], errno.ESRCH),
    ]
    assert failures[2].message == (
        "add real server 10.244.9.9:80 to TCP 10.96.9.9:80: No such process"
    )
    assert_kernel_holds(ipvs, _state(SCENARIO[:1]))


def test_one_bad_message_in_a_batch(ipvs: IpvsSocket) -> None:
    bad = AddVirtualServer(vs("10.96.0.99", "TCP", 80, scheduler="nosuch"))
    mixed_family = AddRealServer(SCENARIO[0][0].key, rs("fd00:244::1", 80))  # masq: EINVAL
    ops = _add_ops(SCENARIO)
    ops[len(ops) // 2 : len(ops) // 2] = [bad]
    ops.append(mixed_family)
    failures = ipvs.execute(ops)
    assert ipvs.socket_writes == 1
    assert [(f.operation, f.errno) for f in failures] == [
        (bad, errno.ENOENT),
        (mixed_family, errno.EINVAL),
    ]
    assert failures[0].message == (
        "add virtual server TCP 10.96.0.99:80: No such file or directory "
        "(is the scheduler 'nosuch' available?)"
    )
    assert failures[1].message == (
        "add real server [fd00:244::1]:80 to TCP 10.96.0.1:80: Invalid argument"
    )
    assert_kernel_holds(ipvs, _state(SCENARIO))


def test_unencodable_operation_fails_alone(ipvs: IpvsSocket) -> None:
    bad = AddVirtualServer(vs("10.96.0.98", "TCP", 80, scheduler="a-name-far-too-long"))
    failures = ipvs.execute([bad, *_add_ops(SCENARIO)])
    assert [(f.operation, f.errno) for f in failures] == [(bad, errno.EINVAL)]
    assert ipvs.writes == len(_add_ops(SCENARIO))
    assert_kernel_holds(ipvs, _state(SCENARIO))


def test_foreign_services_are_skipped_not_fatal(ipvs: IpvsSocket) -> None:
    assert ipvs.execute(_add_ops(SCENARIO[:2])) == []
    ipvsadm("-A", "-f", "42", "-s", "rr")
    ipvsadm("-a", "-f", "42", "-r", "10.244.7.7:0", "-m")
    assert ipvs.snapshot() == _state(SCENARIO[:2])
    assert ipvs.real_servers(VirtualServerKey(ip("10.96.9.9"), Protocol.UDP, 1)) == []


def _count_dumps(sock: IpvsSocket, monkeypatch: pytest.MonkeyPatch) -> list[VirtualServerKey]:
    """Records the per-service GET_DEST dumps the socket makes."""
    dumped: list[VirtualServerKey] = []
    real_servers = sock.real_servers

    def counted(key: VirtualServerKey) -> list[RealServer]:
        dumped.append(key)
        return real_servers(key)

    monkeypatch.setattr(sock, "real_servers", counted)
    return dumped


def test_snapshot_takes_real_servers_from_proc(
    ipvs: IpvsSocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every family, forwarding method and weight of SCENARIO, plus a firewall-mark service
    with a real server, read through /proc/net/ip_vs without one GET_DEST dump; without the
    file, the per-service dumps return the same."""
    assert ipvs.execute(_add_ops(SCENARIO)) == []
    ipvsadm("-A", "-f", "42", "-s", "rr")
    ipvsadm("-a", "-f", "42", "-r", "10.244.7.7:0", "-m")
    dumped = _count_dumps(ipvs, monkeypatch)
    assert ipvs.snapshot() == _state(SCENARIO)
    assert dumped == []
    monkeypatch.setattr(ipvs_module, "PROC_IP_VS", "/proc/thread-self/net/no_such_file")
    assert ipvs.snapshot() == _state(SCENARIO)
    assert len(dumped) == len(SCENARIO)


def test_snapshot_stays_in_the_sockets_namespace(
    ipvs: IpvsSocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket opened in one namespace, read from a thread now in another: /proc would
    list the other namespace's table, so the real servers come from netlink dumps."""
    assert ipvs.execute(_add_ops(SCENARIO[:2])) == []
    dumped = _count_dumps(ipvs, monkeypatch)
    with enter_netns(f"other-{os.getpid()}"):
        ipvsadm("-A", "-t", "10.96.0.1:80", "-s", "rr")
        ipvsadm("-a", "-t", "10.96.0.1:80", "-r", "10.1.1.1:1", "-m")
        assert ipvs.snapshot() == _state(SCENARIO[:2])
    assert len(dumped) == 2


def test_lost_acks_are_failures_and_the_socket_recovers() -> None:
    """A batch whose acks overrun the receive buffer: acks that fit are used, the others
    are reported as unknown (ENOBUFS), and the socket keeps working."""
    with IpvsSocket(buffer_bytes=16 * 1024) as sock:
        sock._batch_messages = 2000  # defeat the safety clamp on purpose
        many = [
            AddVirtualServer(VirtualServer(ipaddress.IPv4Address(0x0A600000 + i), Protocol.TCP, 80))
            for i in range(400)
        ]
        failures = sock.execute(many)
        assert failures, "expected the small receive buffer to overflow"
        assert {f.errno for f in failures} == {errno.ENOBUFS}
        assert len(sock.virtual_servers()) == len(many)  # the kernel did apply them all
        sock._batch_messages = 8
        assert sock.execute([DeleteVirtualServer(op.server.key) for op in many]) == []
        assert sock.virtual_servers() == []


def test_bulk_batch_against_ipvsadm_restore(ipvs: IpvsSocket) -> None:
    """A few thousand messages in one call, 256 per write; the same content through
    ipvsadm -R and through one message per write, each into an empty table, leave the same
    table. Their speeds are bench/'s."""
    entries = [
        (
            VirtualServer(ipaddress.IPv4Address(0x0A600000 + s), Protocol.TCP, 80),
            [RealServer(ipaddress.IPv4Address(0x0AF40000 + s * 16 + d), 8080) for d in range(14)],
        )
        for s in range(200)
    ]
    ops = _add_ops(entries)
    expected = _state(entries)
    rules = ipvsadm_rules(entries)

    def batched() -> None:
        writes = ipvs.socket_writes
        assert ipvs.execute(ops) == []
        assert ipvs.socket_writes - writes == -(-len(ops) // 256)

    def restore() -> None:
        ipvsadm("-R", stdin=rules)

    def one_by_one() -> None:
        with IpvsSocket(batch_messages=1) as single:
            assert single.execute(ops) == []
            assert single.socket_writes == len(ops)

    for run in (batched, restore, one_by_one):
        ipvsadm("-C")
        run()
        assert ipvs.snapshot() == expected
    assert ipvsadm_state() == expected
