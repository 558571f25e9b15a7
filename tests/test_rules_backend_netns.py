"""The agent's sync path with the real rules backends, in a private network namespace of
the test host (`unshare -n`): IPVS and kube-ipvs0 stay the fake kernel's (the host may
lack them), the rules and sets are the kernel's own, written by nft, iptables and ipset.

Programmed, left alone by an unchanged full sync, changed by elements only, repaired
after drift, switched from iptables to nftables and back with no leftover of the other,
cleaned up. Skipped where no such namespace with nftables and iptables can be made.
"""

from __future__ import annotations

from pathlib import Path

from private_netns import run_python, unshare_or_skip

SCRIPT = r"""
import subprocess, sys
sys.path.insert(0, TESTS)
from agentrig import Harness
from builders import endpoint_slice, service
from ipvsproxy.agent.cleanup import cleanup
from ipvsproxy.core.model import IPFamily, RulesBackend
from ipvsproxy.dataplane.nftables import NftablesRules, NftablesTool, _run
from ipvsproxy.dataplane.rules_backend import RulesChoice, open_rules, remove_xtables_leftovers

NFT, IPT = RulesBackend.NFTABLES, RulesBackend.IPTABLES
WEB, API = service("web", "10.96.0.10"), service("api", "10.96.0.30")
WEB_SLICE = endpoint_slice("web", "10.244.1.1", "10.244.2.1")
API_SLICE = endpoint_slice("api", "10.244.4.1")

def out(*argv):
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout

def xtables_left():
    saves = out("iptables-legacy-save") + out("iptables-nft-save") + out("ip6tables-legacy-save")
    return saves.count("KUBE-") + out("ipset", "list", "-n").count("KUBE-")

def nft_tables():
    return out("nft", "list", "tables").split()

# The iptables backend first, as kube-proxy or an earlier ipvsproxy left the node.
h = Harness(backend=IPT, rules=open_rules(RulesChoice(IPT, "test"), iptables_backend="legacy"))
h.start([WEB], [WEB_SLICE])
assert h.step() and h.agent.last.ok, h.agent.last
assert xtables_left() > 20, "the iptables backend programmed nothing"
assert "ipvsproxy" not in nft_tables()

# Switch to nftables: programmed, and the iptables backend's chains and ipsets gone.
payloads = []
def recording(argv, stdin):
    if stdin is not None:
        payloads.append(stdin)
    return _run(argv, stdin)
rules = NftablesRules(NftablesTool(runner=recording), other_backend=remove_xtables_leftovers)
h = Harness(backend=NFT, rules=rules)
h.start([WEB], [WEB_SLICE])
assert h.step() and h.agent.last.ok, h.agent.last
assert xtables_left() == 0, "iptables leftovers after the switch"
assert "10.96.0.10 . tcp . 80" in out("nft", "list", "set", "ip", "ipvsproxy", "cluster_ip")
assert len(payloads) == 1 and payloads[0].count("delete table") == 2, payloads

# An unchanged full sync writes nothing.
h.agent.resync()
assert h.agent.sync() and h.agent.last.full
assert len(payloads) == 1, payloads[1:]

# An endpoint change is IPVS only; a new Service is its elements, in one transaction.
h.put(endpoint_slice("web", "10.244.1.1"))
assert h.step() and not h.agent.last.full and h.agent.last.ok
assert len(payloads) == 1
h.put(API)
h.put(API_SLICE)
assert h.step() and not h.agent.last.full and h.agent.last.ok
assert len(payloads) == 2 and all(
    line.startswith("add element ") for line in payloads[1].splitlines()
), payloads[1]
assert "10.96.0.30 . tcp . 80" in out("nft", "list", "set", "ip", "ipvsproxy", "cluster_ip")
h.remove(API)
assert h.step() and h.agent.last.ok
assert "10.96.0.30" not in out("nft", "list", "set", "ip", "ipvsproxy", "cluster_ip")
assert "delete element ip ipvsproxy cluster_ip" in payloads[-1]

# Drift from outside: a chain flushed, a stray element; the next full sync repairs both.
subprocess.run(["nft", "flush", "chain", "ip", "ipvsproxy", "forward"], check=True)
subprocess.run(["nft", "add", "element", "ip6", "ipvsproxy", "cluster_ip",
                "{ fd00::9 . tcp . 1 }"], check=True)
h.agent.resync()
assert h.agent.sync() and h.agent.last.full, h.agent.last
assert "mark" in out("nft", "list", "chain", "ip", "ipvsproxy", "forward")
assert "fd00::9" not in out("nft", "list", "table", "ip6", "ipvsproxy")
written = len(payloads)
h.agent.resync()
assert h.agent.sync() and len(payloads) == written, "repaired, yet written again"

# Back to iptables: the nftables tables go.
h = Harness(backend=IPT, rules=open_rules(RulesChoice(IPT, "test"), iptables_backend="legacy"))
h.start([WEB], [WEB_SLICE])
assert h.step() and h.agent.last.ok, h.agent.last
assert "ipvsproxy" not in nft_tables() and xtables_left() > 20

# Cleanup removes both backends' objects, whichever is chosen.
h = Harness(backend=NFT, rules=open_rules(RulesChoice(NFT, "test")))
h.start([WEB], [WEB_SLICE])
assert h.step() and h.agent.last.ok
subprocess.run(["ipset", "create", "KUBE-CLUSTER-IP", "hash:ip,port"], check=True)
assert cleanup(h.agent._dp) == []
assert "ipvsproxy" not in nft_tables() and xtables_left() == 0
print("ok")
"""


def test_sync_path_with_real_rules_backends_in_a_private_network_namespace() -> None:
    unshare = unshare_or_skip(
        "nft",
        "ipset",
        "iptables-legacy-save",
        "iptables-nft-save",
        probe="nft list ruleset && iptables-legacy-save && ipset list -n",
    )
    tests = str(Path(__file__).resolve().parent)
    result = run_python(unshare, f"TESTS = {tests!r}\n{SCRIPT}", timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().endswith("ok")
