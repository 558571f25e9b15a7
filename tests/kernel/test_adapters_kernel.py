"""The ipset and iptables adapters against the real kernel and tools."""

from __future__ import annotations

import pytest

from ipvsproxy.core import ipsets
from ipvsproxy.core.model import IPFamily
from ipvsproxy.core.operations import AddIPSetEntry, CreateIPSet, DeleteIPSetEntry
from ipvsproxy.dataplane.ipset import IPSetTool

pytestmark = pytest.mark.kernel

CLUSTER_IP = ipsets.CLUSTER_IP.name
CREATE = CreateIPSet(CLUSTER_IP, ipsets.CLUSTER_IP.create_args(IPFamily.V4))


def test_ipset_bulk_apply_and_read_back() -> None:
    tool = IPSetTool()
    entries = [f"10.96.{i // 250}.{i % 250 + 1},tcp:80" for i in range(3000)]
    assert tool.apply([CREATE, *(AddIPSetEntry(CLUSTER_IP, e) for e in entries)]) == []
    assert tool.restores == 1  # 3,001 lines, one process
    assert tool.read([CLUSTER_IP]) == {CLUSTER_IP: frozenset(entries)}
    assert tool.apply([DeleteIPSetEntry(CLUSTER_IP, entries[0])]) == []
    assert entries[0] not in tool.read([CLUSTER_IP])[CLUSTER_IP]


def test_ipset_refused_line_is_reported_and_the_rest_applied() -> None:
    tool = IPSetTool()
    bad = AddIPSetEntry(CLUSTER_IP, "10.96.0.300,tcp:80")
    good = [AddIPSetEntry(CLUSTER_IP, f"10.96.0.{i},tcp:80") for i in (1, 2, 3)]
    failures = tool.apply([CREATE, good[0], bad, good[1], good[2]])
    assert [f.operation for f in failures] == [bad]
    assert "10.96.0.300" in failures[0].message
    assert tool.read([CLUSTER_IP])[CLUSTER_IP] == {op.entry for op in good}


def test_ipset_missing_set_fails_its_lines_at_once() -> None:
    tool = IPSetTool()
    missing = [AddIPSetEntry("KUBE-NO-SUCH-SET", f"10.0.0.{i},tcp:80") for i in range(1, 50)]
    failures = tool.apply([CREATE, *missing, AddIPSetEntry(CLUSTER_IP, "10.96.0.1,tcp:80")])
    assert [f.operation for f in failures] == missing
    assert tool.restores == 2  # not one process per doomed line
    assert tool.read([CLUSTER_IP])[CLUSTER_IP] == {"10.96.0.1,tcp:80"}
