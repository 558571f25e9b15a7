"""Where the proxy's jump rules must sit: ahead of a rule that catches every local
destination (a CNI hostPort entry rule), and nowhere in particular otherwise."""

from __future__ import annotations

from ipvsproxy.core.model import IPFamily, IptablesRuleset
from ipvsproxy.core.rules import (
    JUMP_RULES,
    jump_out_of_place,
    restore_payload,
    without_misplaced_jumps,
)

SERVICES_PREROUTING = next(
    j for j in JUMP_RULES if (j.table, j.chain, j.target) == ("nat", "PREROUTING", "KUBE-SERVICES")
)
POSTROUTING = next(j for j in JUMP_RULES if j.chain == "POSTROUTING")
HOSTPORT = "-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"
CALICO = '-m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING'


def test_behind_a_hostport_rule_is_out_of_place() -> None:
    jump = SERVICES_PREROUTING
    assert jump_out_of_place(jump, (HOSTPORT, jump.rule))
    assert jump_out_of_place(jump, (CALICO, "-m addrtype --dst-type LOCAL,UNICAST -j X", jump.rule))
    assert not jump_out_of_place(jump, (jump.rule, HOSTPORT))
    # Rules that do not catch every local address may stay ahead (no fight for the top).
    assert not jump_out_of_place(jump, (CALICO, jump.rule, HOSTPORT))
    assert not jump_out_of_place(jump, ("-m addrtype ! --dst-type LOCAL -j X", jump.rule))
    assert not jump_out_of_place(jump, ("-m addrtype --dst-type BROADCAST -j X", jump.rule))
    assert not jump_out_of_place(jump, (HOSTPORT,))  # absent: missing, not misplaced
    # Only the nat KUBE-SERVICES jumps are concerned.
    assert not jump_out_of_place(POSTROUTING, (HOSTPORT, POSTROUTING.rule))


def test_misplaced_jump_reads_as_missing_and_is_moved_in_one_restore() -> None:
    jump = SERVICES_PREROUTING
    read = {"nat": {"PREROUTING": (HOSTPORT, jump.rule), "POSTROUTING": (POSTROUTING.rule,)}}
    seen = without_misplaced_jumps(read)
    assert seen["nat"]["PREROUTING"] == (HOSTPORT,)
    assert seen["nat"]["POSTROUTING"] == (POSTROUTING.rule,)
    assert without_misplaced_jumps({"nat": {"PREROUTING": (jump.rule, HOSTPORT)}}) == {
        "nat": {"PREROUTING": (jump.rule, HOSTPORT)}
    }
    ruleset = IptablesRuleset(IPFamily.V4, {"nat": {"KUBE-SERVICES": ()}})
    lines = restore_payload(ruleset, [jump], [jump]).splitlines()
    delete, insert = f"-D PREROUTING {jump.rule}", f"-I PREROUTING 1 {jump.rule}"
    assert lines.index(delete) < lines.index(insert) < lines.index("COMMIT")
