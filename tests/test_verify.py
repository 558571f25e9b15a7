"""verify's pure core: each kind of drift, made in the fake kernel, found and reported."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest
from builders import endpoint_slice, service
from ipvsproxy_testkit.testapi import Store, TestAPIServer, resources

from ipvsproxy.agent.full_sync import full_sync, observe
from ipvsproxy.cli import main
from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
from ipvsproxy.core.drift import Change, Drift, find_drift, render_drift
from ipvsproxy.core.model import (
    IPFamily,
    IPNetwork,
    KernelState,
    Protocol,
    RealServer,
    VirtualServer,
    VirtualServerKey,
)
from ipvsproxy.core.operations import AddVirtualServer
from ipvsproxy.dataplane.fake import FakeKernel, fake_dataplanes
from ipvsproxy.k8s.client import ClientSettings, connect
from ipvsproxy.k8s.snapshot import list_once
from ipvsproxy.k8s.watch import ENDPOINT_SLICES, SERVICES

WEB = ipaddress.ip_address("10.96.0.10")
DNS = ipaddress.ip_address("10.96.0.53")


def desired() -> KernelState:
    services = [
        service("web", "10.96.0.10"),
        service("dns", "10.96.0.53", ports=(("dns", "UDP", 53), ("dns-tcp", "TCP", 53))),
    ]
    slices = [
        endpoint_slice("web", "10.244.1.1", "10.244.2.1"),
        endpoint_slice("dns", "10.244.3.1", ports=(("dns", "UDP", 5353), ("dns-tcp", "TCP", 5353))),
    ]
    return desired_state(
        services, slices, node=NodeInfo(name="n1"), settings=DesiredSettings(scheduler="rr")
    )


@pytest.fixture
def kernel() -> FakeKernel:
    """A fake kernel holding exactly the desired state."""
    fake = FakeKernel()
    dataplanes = fake_dataplanes(fake)
    assert full_sync(desired(), dataplanes).result.ok
    return fake


def drift_of(kernel: FakeKernel, exclude_cidrs: tuple[IPNetwork, ...] = ()) -> list[Drift]:
    dataplanes = fake_dataplanes(kernel)
    want = desired()
    observed = observe(dataplanes, tuple(want.iptables))
    return find_drift(want, observed, exclude_cidrs=exclude_cidrs)


def web_key() -> VirtualServerKey:
    return next(k for k in desired().virtual_servers if k.address == WEB)


def test_in_sync_has_no_drift(kernel: FakeKernel) -> None:
    assert drift_of(kernel) == []
    assert render_drift([]).startswith("in sync")


def test_missing_virtual_server_and_its_real_servers(kernel: FakeKernel) -> None:
    key = web_key()
    del kernel.services[key]
    del kernel.destinations[key]
    assert drift_of(kernel) == [
        Drift(Change.MISSING, "virtual server", "TCP 10.96.0.10:80", "rr"),
        Drift(
            Change.MISSING, "real server", "TCP 10.96.0.10:80 -> 10.244.1.1:8080", "Masq weight 1"
        ),
        Drift(
            Change.MISSING, "real server", "TCP 10.96.0.10:80 -> 10.244.2.1:8080", "Masq weight 1"
        ),
    ]


def test_extra_virtual_server_on_an_owned_address(kernel: FakeKernel) -> None:
    extra = VirtualServer(WEB, Protocol.TCP, 8443, scheduler="wlc")
    kernel.execute([AddVirtualServer(extra)])
    assert drift_of(kernel) == [Drift(Change.EXTRA, "virtual server", "TCP 10.96.0.10:8443", "wlc")]


def test_virtual_servers_of_others_and_excluded_ones_are_not_drift(kernel: FakeKernel) -> None:
    foreign = VirtualServer(ipaddress.ip_address("192.0.2.1"), Protocol.TCP, 80)
    kernel.execute([AddVirtualServer(foreign)])  # not on kube-ipvs0: someone else's
    assert drift_of(kernel) == []
    kernel.execute([AddVirtualServer(VirtualServer(WEB, Protocol.TCP, 9999))])
    assert drift_of(kernel, exclude_cidrs=(ipaddress.ip_network("10.96.0.0/24"),)) == []


def test_weight_and_extra_real_server(kernel: FakeKernel) -> None:
    key = web_key()
    servers = kernel.destinations[key]
    first = next(iter(servers))
    servers[first] = RealServer(first.address, first.port, weight=0)
    stray = RealServer(ipaddress.ip_address("10.244.9.9"), 8080)
    servers[stray.key] = stray
    assert drift_of(kernel) == [
        Drift(
            Change.DIFFERS,
            "real server",
            "TCP 10.96.0.10:80 -> 10.244.1.1:8080",
            "Masq weight 0, want Masq weight 1",
        ),
        Drift(Change.EXTRA, "real server", "TCP 10.96.0.10:80 -> 10.244.9.9:8080"),
    ]


def test_scheduler_and_persistence_differ(kernel: FakeKernel) -> None:
    key = web_key()
    kernel.services[key] = VirtualServer(
        WEB, Protocol.TCP, 80, scheduler="sh", flags=0x1, timeout=10800
    )
    assert drift_of(kernel) == [
        Drift(
            Change.DIFFERS,
            "virtual server",
            "TCP 10.96.0.10:80",
            "sh persistent 10800, want rr",
        )
    ]


def test_addresses_missing_and_extra(kernel: FakeKernel) -> None:
    kernel.links["kube-ipvs0"].discard(DNS)
    kernel.links["kube-ipvs0"].add(ipaddress.ip_address("10.96.7.7"))
    found = drift_of(kernel)
    assert Drift(Change.MISSING, "address", "10.96.0.53") in found
    assert Drift(Change.EXTRA, "address", "10.96.7.7") in found


def test_missing_interface(kernel: FakeKernel) -> None:
    del kernel.links["kube-ipvs0"]
    found = drift_of(kernel)
    assert found[0] == Drift(Change.MISSING, "interface", "kube-ipvs0")
    assert Drift(Change.MISSING, "address", "10.96.0.10") in found


def test_set_entries_missing_and_extra(kernel: FakeKernel) -> None:
    entry = "10.96.0.10,tcp:80"
    assert entry in kernel.sets["KUBE-CLUSTER-IP"]
    kernel.sets["KUBE-CLUSTER-IP"].discard(entry)
    kernel.sets["KUBE-CLUSTER-IP"].add("10.96.8.8,udp:53")
    assert drift_of(kernel) == [
        Drift(Change.MISSING, "set entry", f"KUBE-CLUSTER-IP {entry}"),
        Drift(Change.EXTRA, "set entry", "KUBE-CLUSTER-IP 10.96.8.8,udp:53"),
    ]


def test_flushed_chain_lists_its_missing_rules(kernel: FakeKernel) -> None:
    rules = list(kernel.tables[IPFamily.V4]["nat"]["KUBE-SERVICES"])
    assert rules
    kernel.tables[IPFamily.V4]["nat"]["KUBE-SERVICES"].clear()
    (found,) = drift_of(kernel)
    assert (found.change, found.kind, found.what) == (
        Change.DIFFERS,
        "chain",
        "IPv4 nat KUBE-SERVICES",
    )
    assert found.detail == f"0 rules, want {len(rules)}"
    assert found.lines == tuple(f"+ {rule}" for rule in rules)


def test_deleted_chain_and_missing_jump_rule(kernel: FakeKernel) -> None:
    del kernel.tables[IPFamily.V4]["nat"]["KUBE-SERVICES"]  # and the jump into it
    kernel.tables[IPFamily.V4]["nat"]["PREROUTING"].clear()
    found = drift_of(kernel)
    assert Drift(Change.MISSING, "chain", "IPv4 nat KUBE-SERVICES") in found
    assert any(
        d.kind == "jump rule" and d.what == "IPv4 nat PREROUTING -j KUBE-SERVICES" for d in found
    )


def test_report_groups_by_kind_with_a_summary() -> None:
    drifts = [
        Drift(Change.MISSING, "virtual server", "TCP 10.96.0.10:80", "rr"),
        Drift(Change.MISSING, "address", "10.96.0.10"),
        Drift(
            Change.DIFFERS, "real server", "TCP 10.96.0.10:80 -> 10.244.1.1:8080", "w 0, want w 1"
        ),
        Drift(Change.DIFFERS, "chain", "IPv4 nat KUBE-SERVICES", "0 rules, want 1", ("+ -j X",)),
        Drift(Change.EXTRA, "address", "10.96.7.7"),
    ]
    assert render_drift(drifts) == (
        "drift: 5 differences (2 missing, 1 extra, 2 differs); + missing, - extra, ~ differs\n"
        "virtual servers:\n"
        "  + TCP 10.96.0.10:80  (rr)\n"
        "addresses:\n"
        "  + 10.96.0.10\n"
        "  - 10.96.7.7\n"
        "real servers:\n"
        "  ~ TCP 10.96.0.10:80 -> 10.244.1.1:8080  (w 0, want w 1)\n"
        "chains:\n"
        "  ~ IPv4 nat KUBE-SERVICES  (0 rules, want 1)\n"
        "      + -j X\n"
    )


# --- the command's input side (the kernel side is tests/kernel/test_verify_kernel.py) --------


def test_verify_files_and_api_server_together_is_bad_input(tmp_path: Path) -> None:
    cluster = tmp_path / "c.yaml"
    cluster.write_text("apiVersion: v1\nkind: List\nitems: []\n")
    assert main(["verify", "-f", str(cluster), "--master", "http://127.0.0.1:1"]) == 2


def test_verify_unreadable_file_is_bad_input(tmp_path: Path) -> None:
    assert main(["verify", "-f", str(tmp_path / "missing.yaml")]) == 2


def test_verify_unreachable_api_server_is_exit_2() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["verify", "--master", f"http://127.0.0.1:{port}"]) == 2


def test_list_once_returns_the_objects_and_stops_before_watching() -> None:
    with TestAPIServer(Store()) as server:
        server.store.create(
            resources.SERVICES,
            "default",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"ports": [{"port": 80}]},
            },
        )
        connection = connect(ClientSettings(master=server.url))
        try:
            services = list_once(SERVICES, connection.transport)
            slices = list_once(ENDPOINT_SLICES, connection.transport)
        finally:
            connection.close()
    assert list(services) == ["default/web"]
    assert slices == {}
