"""The nftables renderer (core/nft_rules.py): fixed chains, sets that grow, valid syntax."""

from __future__ import annotations

import dataclasses
import ipaddress
import shutil
import subprocess

import pytest
from builders import endpoint_slice, service

from ipvsproxy.core import nft_rules
from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
from ipvsproxy.core.model import IPFamily, KernelState, Protocol, Service, ServicePort
from ipvsproxy.core.rules import MasqueradeSettings

NODE = NodeInfo(
    name="node-a",
    addresses=(ipaddress.ip_address("172.18.0.2"),),
    local_addresses=frozenset({ipaddress.ip_address("172.18.0.2")}),
)
MASQ = MasqueradeSettings(cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),))


def _lb(name: str, index: int, **changes: object) -> Service:
    base = service(name, f"10.96.{index // 250}.{index % 250 + 1}")
    port = ServicePort("http", Protocol.TCP, 80, node_port=30000 + index)
    fields: dict[str, object] = {
        "type": "LoadBalancer",
        "ports": (port,),
        "load_balancer_ips": (ipaddress.ip_address(f"192.0.{2 + index // 250}.{index % 250 + 1}"),),
    }
    fields.update(changes)
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def _state(services: list[Service]) -> KernelState:
    slices = [endpoint_slice(s.name, "10.244.1.5") for s in services]
    return desired_state(services, slices, node=NODE, settings=DesiredSettings())


def _rule_lines(text: str) -> list[str]:
    skip = ("table ", "set ", "chain ", "type ", "flags ", "elements ", "}", "delete ")
    return [line.strip() for line in text.splitlines() if not line.strip().startswith(skip)]


def _elements(text: str, set_name: str) -> str:
    lines = text.splitlines()
    start = lines.index(f"\tset {set_name} {{")
    for line in lines[start + 1 :]:
        if line.strip() == "}":
            return ""
        if line.strip().startswith("elements = "):
            return line.strip()
    return ""


def test_rule_count_does_not_grow_with_services() -> None:
    few = _state([_lb("web-1", 1)])
    many = _state([_lb(f"web-{i}", i) for i in range(300)])
    render = nft_rules.render_table
    small = render(IPFamily.V4, few.ipsets, masquerade=MASQ)
    large = render(IPFamily.V4, many.ipsets, masquerade=MASQ)
    assert _rule_lines(small) == _rule_lines(large)
    assert len(large) > len(small)  # the sets grew
    assert "192.0.3.50 . tcp . 80" in _elements(large, "load_balancer")


def test_each_feature_fills_its_set() -> None:
    web = _lb(
        "web",
        1,
        external_ips=(ipaddress.ip_address("203.0.113.9"),),
        external_traffic_local=True,
        load_balancer_source_ranges=(
            ipaddress.ip_network("198.51.100.0/24"),
            ipaddress.ip_network("172.18.0.0/24"),
        ),
        health_check_node_port=32000,
    )
    sctp = dataclasses.replace(
        service("sig", "10.96.9.9"),
        type="NodePort",
        ports=(ServicePort("s", Protocol.SCTP, 9, node_port=31999),),
    )
    text = nft_rules.render_table(IPFamily.V4, _state([web, sctp]).ipsets, masquerade=MASQ)
    expected = {
        "cluster_ip": "10.96.0.2 . tcp . 80",
        "external_ip_local": "203.0.113.9 . tcp . 80",
        "load_balancer": "192.0.2.2 . tcp . 80",
        "load_balancer_local": "192.0.2.2 . tcp . 80",
        "load_balancer_fw": "192.0.2.2 . tcp . 80",
        "load_balancer_source_cidr": "192.0.2.2 . tcp . 80 . 198.51.100.0/24",
        # The node is inside a source range: its own traffic is admitted.
        "load_balancer_source_ip": "192.0.2.2 . tcp . 80 . 192.0.2.2",
        "node_port_local_tcp": "30001",
        "node_port_tcp": "30001",
        "node_port_sctp_hash": "172.18.0.2 . sctp . 31999",
        "health_check_node_port": "32000",
        "ipvs_ips": "10.96.0.2",
        "ipvs_steered": "192.0.2.2 . tcp . 80",
    }
    for set_name, element in expected.items():
        assert element in _elements(text, set_name), set_name
    assert "203.0.113.9 . tcp . 80" in _elements(text, "ipvs_steered")
    assert "flags interval" in text.split("set load_balancer_source_cidr {")[1].split("}")[0]


@pytest.mark.parametrize(
    ("masquerade", "rule"),
    [
        (MasqueradeSettings(masquerade_all=True), "ip daddr . meta l4proto . th dport @cluster_ip"),
        (MasqueradeSettings(local_interface="veth+"), 'iifname != "veth*" ip daddr'),
        (MASQ, "ip saddr != 10.244.0.0/16 ip daddr"),
        (MasqueradeSettings(), "ip saddr . meta l4proto . th dport @cluster_ip"),
    ],
    ids=["masquerade-all", "interface", "cluster-cidr", "no-detector"],
)
def test_cluster_ip_masquerade_per_detect_local_mode(
    masquerade: MasqueradeSettings, rule: str
) -> None:
    services = nft_rules.chain_rules(IPFamily.V4, masquerade)["services"]
    (masq,) = [r for r in services if "@cluster_ip" in r]
    assert masq.startswith(rule) and masq.endswith("jump mark-masq")


def test_ipv6_table_and_steering_mark() -> None:
    chains = nft_rules.chain_rules(IPFamily.V6, MasqueradeSettings(mark=0x2000))
    assert chains["steer"] == (
        "ip6 daddr . meta l4proto . th dport @ipvs_steered meta mark set meta mark | 0x00001000",
    )
    assert chains["services"][0] == "ip6 saddr ::1 return"
    assert chains["ipvs-filter"][-1] == "ct state new ip6 daddr @ipvs_ips reject"


def test_element_round_trip() -> None:
    for entry in ("10.96.0.1,tcp:443", "fd00::1,udp:53,fd00::1", "1.2.3.4,tcp:80,10.0.0.0/8"):
        found = nft_rules.nft_set_for("KUBE-CLUSTER-IP")
        assert found is not None
        assert nft_rules.entry(found[0], nft_rules.element(entry)) == entry
    assert nft_rules.element("30080") == "30080"


def test_partial_sync_payload_touches_only_elements() -> None:
    payload = nft_rules.element_payload(
        [("KUBE-CLUSTER-IP", "10.96.0.2,tcp:80"), ("not-ours", "x")],
        [("KUBE-6-CLUSTER-IP", "fd00::1,udp:53")],
    )
    assert payload.splitlines() == [
        "delete element ip6 ipvsproxy cluster_ip { fd00::1 . udp . 53 }",
        "add element ip ipvsproxy cluster_ip { 10.96.0.2 . tcp . 80 }",
    ]
    assert nft_rules.element_payload([], []) == ""


def _nft_check(payload: str) -> subprocess.CompletedProcess[str] | None:
    nft = shutil.which("nft")
    if nft is None:
        return None
    result = subprocess.run(
        [nft, "-c", "-f", "-"], input=payload, text=True, capture_output=True, check=False
    )
    if "Operation not permitted" in result.stderr or "Could not process rule" in result.stderr:
        return None  # no netlink access here: the syntax cannot be checked
    return result


@pytest.mark.parametrize(
    "masquerade",
    [MASQ, MasqueradeSettings(masquerade_all=True), MasqueradeSettings(local_interface="veth+")],
    ids=["cidr", "all", "interface"],
)
def test_nft_accepts_the_payload(masquerade: MasqueradeSettings) -> None:
    web = _lb(
        "web",
        1,
        load_balancer_source_ranges=(ipaddress.ip_network("198.51.100.0/24"),),
    )
    state = _state([web, service("v6", "fd00::10")])
    payload = nft_rules.full_payload(list(IPFamily), state.ipsets, masquerade=masquerade)
    result = _nft_check(payload)
    if result is None:
        pytest.skip("nft not usable here")
    assert result.returncode == 0, result.stderr


def _listing_state() -> tuple[KernelState, MasqueradeSettings]:
    web = _lb(
        "web",
        1,
        load_balancer_source_ranges=(
            ipaddress.ip_network("198.51.100.0/24"),
            ipaddress.ip_network("203.0.113.7/32"),
        ),
    )
    return _state([web, _lb("db", 2)]), MasqueradeSettings(local_interface="veth+")


def test_parse_listing_gives_back_the_desired_sets_and_chains() -> None:
    state, masquerade = _listing_state()
    text = nft_rules.render_table(IPFamily.V4, state.ipsets, masquerade=masquerade)
    parsed = nft_rules.parse_listing(IPFamily.V4, text)
    v4 = {name: set(v) for name, v in state.ipsets.items() if not name.startswith("KUBE-6-")}
    assert {name: set(v) for name, v in parsed.sets.items()} == v4
    assert parsed.chains == nft_rules.desired_chains(IPFamily.V4, masquerade)


def test_kernel_listing_reads_back_equal() -> None:
    """Written into a private network namespace and listed by nft: the listing parses back
    to exactly the desired sets and chains, so an unchanged table shows no drift."""
    state, masquerade = _listing_state()
    payload = nft_rules.full_payload([IPFamily.V4], state.ipsets, masquerade=masquerade)
    unshare, nft = shutil.which("unshare"), shutil.which("nft")
    if unshare is None or nft is None:
        pytest.skip("needs unshare and nft")
    result = subprocess.run(
        [unshare, "-n", "sh", "-c", f"{nft} -f - && {nft} list table ip ipvsproxy"],
        input=payload,
        text=True,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"no private network namespace with nftables here: {result.stderr[:200]}")
    parsed = nft_rules.parse_listing(IPFamily.V4, result.stdout)
    v4 = {name: set(v) for name, v in state.ipsets.items() if not name.startswith("KUBE-6-")}
    assert {name: set(v) for name, v in parsed.sets.items()} == v4
    assert parsed.chains == nft_rules.desired_chains(IPFamily.V4, masquerade)
