"""The nftables adapter (dataplane/nftables.py) against the real nft, in a private network
namespace of the test host: written, read back without drift, changed by elements only,
repaired after drift, removed. Skipped where no such namespace can be made."""

from __future__ import annotations

from private_netns import run_python, unshare_or_skip

SCRIPT = r"""
import subprocess
from ipvsproxy.core.model import IPFamily
from ipvsproxy.core.rules import MasqueradeSettings
from ipvsproxy.dataplane.nftables import NftablesTool

V4, V6 = IPFamily.V4, IPFamily.V6
masq = MasqueradeSettings()
sets = {"KUBE-CLUSTER-IP": {"10.96.0.1,tcp:443"}, "KUBE-IPVS-IPS": {"10.96.0.1"},
        "KUBE-6-CLUSTER-IP": {"fd00::1,udp:53"}}
tool = NftablesTool()
assert tool.read(V4) is None
assert tool.sync([V4, V6], sets, masquerade=masq) == ([V4, V6], None)
assert tool.sync([V4, V6], sets, masquerade=masq) == ([], None), "an unchanged table is rewritten"

# A partial sync: one element added, one deleted; the table then matches the new sets.
assert tool.apply_elements([("KUBE-CLUSTER-IP", "10.96.0.2,tcp:80")],
                           [("KUBE-6-CLUSTER-IP", "fd00::1,udp:53")]) is None
sets = {"KUBE-CLUSTER-IP": {"10.96.0.1,tcp:443", "10.96.0.2,tcp:80"},
        "KUBE-IPVS-IPS": {"10.96.0.1"}}
assert tool.drifted([V4, V6], sets, masquerade=masq) == []

# Drift: a rule flushed by hand and a stray element; the next full sync repairs both.
subprocess.run(["nft", "flush", "chain", "ip", "ipvsproxy", "forward"], check=True)
subprocess.run(["nft", "add", "element", "ip6", "ipvsproxy", "cluster_ip",
                "{ fd00::9 . tcp . 1 }"], check=True)
assert tool.drifted([V4, V6], sets, masquerade=masq) == [V4, V6]
assert tool.sync([V4, V6], sets, masquerade=masq) == ([V4, V6], None)
assert tool.drifted([V4, V6], sets, masquerade=masq) == []

assert tool.remove([V4, V6]) is None
assert tool.read(V4) is None and tool.read(V6) is None
assert tool.remove([V4, V6]) is None, "removing absent tables fails"
print("ok")
"""


def test_adapter_in_a_private_network_namespace() -> None:
    unshare = unshare_or_skip("nft")
    result = run_python(unshare, SCRIPT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
