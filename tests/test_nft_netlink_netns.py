"""The nf_tables netlink reader (dataplane/nft_netlink.py) against the real kernel, in a
private network namespace of the test host: for a table written by the proxy's own writer,
with elements in every kind of set of both families (interval sets, concatenations, empty
sets), the terse listing plus the netlink dump read exactly what `nft list table` and
parse_listing read. Skipped where no such namespace can be made."""

from __future__ import annotations

from private_netns import run_python, unshare_or_skip

SCRIPT = r"""
import subprocess
from ipvsproxy.core import nft_rules
from ipvsproxy.core.model import IPFamily
from ipvsproxy.core.rules import MasqueradeSettings
from ipvsproxy.dataplane.nftables import NftablesTool
from ipvsproxy.dataplane.nft_netlink import NftSetSocket

masq = MasqueradeSettings()
text_tool, netlink_tool = NftablesTool(netlink=False), NftablesTool()
for family in IPFamily:
    assert netlink_tool.read(family) is None, "a missing table is not None"

V4 = {"ip": "10.96.0.{}", "ip,port": "10.96.0.{},tcp:80", "port": "3{:04d}",
      "ip,port,ip": "10.96.0.{0},udp:53,10.244.1.{0}",
      "ip,port,net": "10.96.0.{0},sctp:9,10.{0}.0.0/16"}
V6 = {"ip": "fd00::{}", "ip,port": "fd00::{},udp:443", "port": "3{:04d}",
      "ip,port,ip": "fd00::{0},tcp:8080,::ffff:10.0.0.{0}",
      "ip,port,net": "fd00::{0},tcp:1,fd01:{0}::/64"}
sets = {}
for index, nft_set in enumerate(nft_rules.SETS):
    if index % 5 == 4:
        continue  # some sets stay empty
    for family, patterns in ((IPFamily.V4, V4), (IPFamily.V6, V6)):
        pattern = patterns[nft_set.kind]
        members = {pattern.format(n) for n in range(1, 40)}
        if nft_set.kind == "ip,port,net":
            # a single address and a /8 among the networks, too
            if family is IPFamily.V4:
                members |= {"10.96.0.1,tcp:2,10.9.9.9", "10.96.0.1,tcp:3,11.0.0.0/8"}
            else:
                members |= {"fd00::1,udp:2,fd02::7", "fd00::1,udp:3,fe80::/10"}
        sets[nft_set.spec.name_for(family)] = members
assert text_tool.sync(list(IPFamily), sets, masquerade=masq) == (list(IPFamily), None)
for family in IPFamily:
    by_text, by_netlink = text_tool.read(family), netlink_tool.read(family)
    assert by_text is not None and by_netlink is not None
    assert dict(by_netlink.chains) == dict(by_text.chains)
    assert dict(by_netlink.sets) == dict(by_text.sets), (by_netlink.sets, by_text.sets)
    wanted = {n: frozenset(m) for n, m in sets.items() if nft_rules.nft_set_for(n)[1] is family}
    assert {n: m for n, m in by_netlink.sets.items() if m} == wanted
    assert len(by_netlink.sets) == len(nft_rules.SETS)
    # the dump itself, not a fallback to the listing
    with NftSetSocket() as sock:
        for nft_set in nft_rules.SETS:
            dumped = sock.elements(family, nft_rules.TABLE, nft_set)
            assert dumped == by_text.sets[nft_set.spec.name_for(family)], nft_set.name
        missing = nft_rules.NftSet(nft_rules.SETS[0].spec, "ip")
        assert sock.elements(family, "absent", missing) is None
assert netlink_tool.drifted(list(IPFamily), sets, masquerade=masq) == []

# The chains' fingerprint ignores elements, and sees a rule added by hand.
V4 = IPFamily.V4
with NftSetSocket() as sock:
    before = sock.chains_fingerprint(V4, nft_rules.TABLE)
    subprocess.run(["nft", "add", "element", "ip", "ipvsproxy", "ipvs_ips", "{ 10.1.2.3 }"],
                   check=True)
    assert sock.chains_fingerprint(V4, nft_rules.TABLE) == before, "elements moved it"
    subprocess.run(["nft", "delete", "element", "ip", "ipvsproxy", "ipvs_ips", "{ 10.1.2.3 }"],
                   check=True)
assert netlink_tool.read(V4) == text_tool.read(V4)  # cached chains
subprocess.run(["nft", "add", "rule", "ip", "ipvsproxy", "forward", "accept"], check=True)
changed = netlink_tool.read(V4)
assert changed == text_tool.read(V4) and changed.chains["forward"][-1] == "accept"
assert netlink_tool.drifted(list(IPFamily), sets, masquerade=masq) == [V4]
subprocess.run(["nft", "delete", "table", "ip", "ipvsproxy"], check=True)
assert netlink_tool.read(V4) is None
assert netlink_tool.drifted([IPFamily.V6], sets, masquerade=masq) == []
print("ok")
"""


def test_netlink_reader_matches_the_listing() -> None:
    unshare = unshare_or_skip("nft")
    result = run_python(unshare, SCRIPT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
