"""detectLocalMode: which ClusterIP traffic the fixed chains masquerade, per mode and family.

The rules are kube-proxy's (pkg/proxy/ipvs/proxier.go writeIptablesRules with
pkg/proxy/util/localdetector.go), written in iptables-save's spelling: "! -s CIDR" and
"! -i NAME" come before the -m matches.
"""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from ipvsproxy.core import ipsets
from ipvsproxy.core.desired import DesiredSettings, NodeInfo, settings_for_node
from ipvsproxy.core.model import IPFamily
from ipvsproxy.core.rules import MasqueradeSettings, build_ruleset

MATCH = (
    '-m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" '
    "-m set --match-set {set} {direction} -j KUBE-MARK-MASQ"
)


def masquerade_rule(family: IPFamily, settings: MasqueradeSettings) -> list[str]:
    cluster_ip = ipsets.CLUSTER_IP.name_for(family)
    ruleset = build_ruleset(family, masquerade=settings, nonempty_sets={cluster_ip})
    return [
        rule
        for rule in ruleset.tables["nat"]["KUBE-SERVICES"]
        if f"--match-set {cluster_ip} " in rule and rule.endswith("KUBE-MARK-MASQ")
    ]


V4, V6 = IPFamily.V4, IPFamily.V6
DUAL = (ip_network("10.244.0.0/16"), ip_network("fd00:244::/56"))


@pytest.mark.parametrize(
    ("family", "settings", "prefix", "direction"),
    [
        (V4, MasqueradeSettings(), "", "src,dst"),  # no detector
        (V4, MasqueradeSettings(masquerade_all=True, cluster_cidrs=DUAL), "", "dst,dst"),
        (V4, MasqueradeSettings(cluster_cidrs=DUAL), "! -s 10.244.0.0/16 ", "dst,dst"),
        (V6, MasqueradeSettings(cluster_cidrs=DUAL), "! -s fd00:244::/56 ", "dst,dst"),
        # A family without a CIDR has no detector (kube-proxy's NoOpLocalDetector).
        (V6, MasqueradeSettings(cluster_cidrs=DUAL[:1]), "", "src,dst"),
        (V4, MasqueradeSettings(local_interface="cbr0"), "! -i cbr0 ", "dst,dst"),
        (V6, MasqueradeSettings(local_interface="veth+"), "! -i veth+ ", "dst,dst"),
        # The interface detectors win over CIDRs (the config gives one or the other).
        (
            V4,
            MasqueradeSettings(local_interface="cbr0", cluster_cidrs=DUAL),
            "! -i cbr0 ",
            "dst,dst",
        ),
    ],
)
def test_masquerade_rule_per_detector(
    family: IPFamily, settings: MasqueradeSettings, prefix: str, direction: str
) -> None:
    cluster_ip = ipsets.CLUSTER_IP.name_for(family)
    assert masquerade_rule(family, settings) == [
        prefix + MATCH.format(set=cluster_ip, direction=direction)
    ]


def test_node_cidr_takes_the_first_pod_cidr_of_each_family() -> None:
    settings = DesiredSettings(masquerade=MasqueradeSettings(node_cidrs=True))
    node = NodeInfo(
        name="n1",
        pod_cidrs=(
            ip_network("fd00:1::/64"),
            ip_network("10.244.1.0/24"),
            ip_network("10.245.1.0/24"),
        ),
    )
    resolved = settings_for_node(settings, node)
    assert resolved.masquerade.cluster_cidrs == (
        ip_network("10.244.1.0/24"),
        ip_network("fd00:1::/64"),
    )
    assert masquerade_rule(V4, resolved.masquerade)[0].startswith("! -s 10.244.1.0/24 ")
    # Without pod CIDRs: no detector.
    bare = settings_for_node(settings, NodeInfo(name="n1"))
    assert masquerade_rule(V4, bare.masquerade)[0].endswith("src,dst -j KUBE-MARK-MASQ")


def test_other_modes_ignore_the_node() -> None:
    settings = DesiredSettings(masquerade=MasqueradeSettings(cluster_cidrs=DUAL[:1]))
    node = NodeInfo(name="n1", pod_cidrs=(ip_network("10.244.1.0/24"),))
    assert settings_for_node(settings, node) is settings
