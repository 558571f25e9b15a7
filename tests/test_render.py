"""Sections printed in the real tools' own formats."""

from __future__ import annotations

from builders import endpoint_slice, service

from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
from ipvsproxy.core.model import KernelState
from ipvsproxy.core.render import render, render_ipsets, render_ipvs
from ipvsproxy.core.rules import JUMP_RULES, quote
from ipvsproxy.dataplane.iptables import parse_save


def example() -> KernelState:
    return desired_state(
        [
            service("web", "10.96.0.10"),
            service("sticky", "10.96.0.11", affinity=10800, ports=(("dns", "UDP", 53),)),
            service("v6", "fd00::a", ports=(("https", "TCP", 443),)),
        ],
        [
            endpoint_slice("web", "10.244.1.1"),
            endpoint_slice("v6", "fd00:10::1234", ports=(("https", "TCP", 8443),)),
        ],
        node=NodeInfo(),
        settings=DesiredSettings(),
    )


def test_ipvsadm_format() -> None:
    # Lines exactly as ipvsadm v1.31 prints them, trailing spaces included.
    assert render_ipvs(example()).splitlines() == [
        "IP Virtual Server version 1.2.1 (size=4096)",
        "Prot LocalAddress:Port Scheduler Flags",
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
        "TCP  10.96.0.10:80 rr",
        "  -> 10.244.1.1:8080              Masq    1      0          0         ",
        "UDP  10.96.0.11:53 rr persistent 10800",
        "TCP  [fd00::a]:443 rr",
        "  -> [fd00:10::1234]:8443         Masq    1      0          0         ",
    ]


def test_ipset_save_format() -> None:
    text = render_ipsets(example().ipsets)
    assert "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\n" in text
    assert "add KUBE-CLUSTER-IP 10.96.0.11,udp:53\n" in text
    assert "create KUBE-6-LOAD-BALANCER-SOURCE-CID hash:ip,port,net family inet6" in text
    assert "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535\n" in text
    assert "add KUBE-6-IPVS-IPS fd00::a\n" in text


def test_iptables_section_is_restore_input_with_every_jump() -> None:
    text = render(example(), "iptables")
    v4 = text.split("# ip6tables-restore (IPv6)\n")[0]
    tables = parse_save(v4)
    assert tables["nat"]["KUBE-MARK-MASQ"] == ("-j MARK --set-xmark 0x4000/0x4000",)
    inserts = [line for line in v4.splitlines() if line.startswith("-I ")]
    assert len(inserts) == len(JUMP_RULES)
    assert "-m set --match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ" in v4


def test_all_sections_under_headers() -> None:
    text = render(example(), None)
    headers = [
        line
        for line in text.splitlines()
        if line in {"# ipvs", "# ipsets", "# iptables", "# addresses"}
    ]
    assert headers == ["# ipvs", "# ipsets", "# iptables", "# addresses"]
    assert text.endswith("10.96.0.10\n10.96.0.11\nfd00::a\n")


def test_quote_like_iptables_save() -> None:
    assert quote("x") == "x"
    assert quote("kube-proxy_1") == "kube-proxy_1"
    assert quote("a.b") == '"a.b"'
    assert quote("") == '""'
    assert quote("a b") == '"a b"'
    assert quote("type 'hash ip:port'") == "\"type \\'hash ip:port\\'\""
