"""One contract for the iptables adapters, run against every kernel that implements them.

The same tests run against the fake kernel (on the host), iptables-legacy in the
user-mode-linux guest and iptables-nft in the qemu guest, so the three cannot drift apart.
Each test reads the tables back independently of the adapter under test (for the real
backends, with the backend's own iptables-save) and covers both address families.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ipvsproxy.core import ipsets
from ipvsproxy.core.model import IPFamily, IptablesRuleset
from ipvsproxy.core.operations import CreateIPSet, RestoreChains
from ipvsproxy.core.rules import CHAINS, JUMP_RULES, MasqueradeSettings, build_ruleset
from ipvsproxy.dataplane.fake import FakeIptables, FakeKernel
from ipvsproxy.dataplane.interfaces import IptablesDataplane
from ipvsproxy.dataplane.ipset import IPSetTool
from ipvsproxy.dataplane.iptables import IptablesTool, parse_save

Tables = dict[str, dict[str, tuple[str, ...]]]


@dataclass
class Backend:
    tool: IptablesDataplane
    saved: Callable[[IPFamily], Tables]  # the tables, read independently of ``tool``
    add_foreign: Callable[[IPFamily, str, str, str], None]  # family, table, chain, rule


def _fake() -> Backend:
    kernel = FakeKernel()

    def saved(family: IPFamily) -> Tables:
        return {t: dict(c) for t, c in kernel.read_rules(family).tables.items()}

    def add_foreign(family: IPFamily, table: str, chain: str, rule: str) -> None:
        kernel.tables[family][table][chain].append(rule)

    return Backend(FakeIptables(kernel), saved, add_foreign)


def _real(backend: str) -> Backend:
    # The rules match the proxy's ipsets: the kernel refuses rules naming missing sets.
    sets = [
        CreateIPSet(spec.name_for(family), spec.create_args(family))
        for family in IPFamily
        for spec in ipsets.IPSETS
    ]
    assert IPSetTool().apply(sets) == []

    def command(family: IPFamily, tool: str = "") -> str:
        return f"{'iptables' if family is IPFamily.V4 else 'ip6tables'}-{backend}{tool}"

    def saved(family: IPFamily) -> Tables:
        text = subprocess.run(
            [command(family, "-save")], capture_output=True, text=True, check=True
        ).stdout
        return parse_save(text)

    def add_foreign(family: IPFamily, table: str, chain: str, rule: str) -> None:
        argv = [command(family), "-t", table, "-A", chain, *shlex.split(rule)]
        subprocess.run(argv, capture_output=True, text=True, check=True)

    return Backend(IptablesTool(backend), saved, add_foreign)


@pytest.fixture(
    params=[
        pytest.param("fake"),
        pytest.param("legacy", marks=pytest.mark.kernel),
        pytest.param("nft", marks=pytest.mark.kernel_qemu),
    ]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    return _fake() if request.param == "fake" else _real(request.param)


def ruleset(family: IPFamily, *, every_rule: bool = True) -> IptablesRuleset:
    """The proxy's chains; ``every_rule`` with every set non-empty (all conditional rules)."""
    nonempty = {spec.name_for(family) for spec in ipsets.IPSETS} if every_rule else set()
    return build_ruleset(family, masquerade=MasqueradeSettings(mark=0x4000), nonempty_sets=nonempty)


def ours(tables: Tables) -> Tables:
    return {
        table: {chain: rules for chain, rules in chains.items() if chain in CHAINS.get(table, ())}
        for table, chains in tables.items()
        if table in CHAINS
    }


def jump_counts(tables: Tables) -> list[int]:
    return [tables[j.table].get(j.chain, ()).count(j.rule) for j in JUMP_RULES]


@pytest.mark.parametrize("family", list(IPFamily))
def test_restore_reads_back_exactly_the_ruleset_and_each_jump_once(
    backend: Backend, family: IPFamily
) -> None:
    want = ruleset(family)
    assert backend.tool.restore(RestoreChains(want, JUMP_RULES)) is None
    seen = backend.saved(family)
    assert ours(seen) == {t: dict(c) for t, c in want.tables.items()}
    assert jump_counts(seen) == [1] * len(JUMP_RULES)
    # The adapter's own read agrees with the independent one.
    assert ours(dict(backend.tool.read(family).tables)) == ours(seen)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", list(IPFamily))
def test_a_second_restore_replaces_the_chains_and_adds_no_jump(
    backend: Backend, family: IPFamily
) -> None:
    assert backend.tool.restore(RestoreChains(ruleset(family), JUMP_RULES)) is None
    smaller = ruleset(family, every_rule=False)
    assert smaller != ruleset(family)
    assert backend.tool.restore(RestoreChains(smaller, ())) is None
    seen = backend.saved(family)
    assert ours(seen) == {t: dict(c) for t, c in smaller.tables.items()}
    assert jump_counts(seen) == [1] * len(JUMP_RULES)


@pytest.mark.parametrize("family", list(IPFamily))
def test_foreign_rules_stay_behind_our_jumps_and_survive_removal(
    backend: Backend, family: IPFamily
) -> None:
    foreign = "-m comment --comment site-policy -j RETURN"
    backend.add_foreign(family, "nat", "POSTROUTING", foreign)
    backend.add_foreign(family, "filter", "INPUT", foreign)
    assert backend.tool.restore(RestoreChains(ruleset(family), JUMP_RULES)) is None
    seen = backend.saved(family)
    postrouting = [j.rule for j in JUMP_RULES if j.chain == "POSTROUTING"]
    assert seen["nat"]["POSTROUTING"] == (*postrouting, foreign)
    assert seen["filter"]["INPUT"][-1] == foreign

    backend.tool.remove(family)
    seen = backend.saved(family)
    assert ours(seen) == {table: {} for table in CHAINS if table in seen}
    assert seen["nat"]["POSTROUTING"] == (foreign,)
    assert seen["filter"]["INPUT"] == (foreign,)


@pytest.mark.parametrize("family", list(IPFamily))
def test_remove_is_idempotent(backend: Backend, family: IPFamily) -> None:
    backend.tool.remove(family)  # nothing there yet
    assert backend.tool.restore(RestoreChains(ruleset(family), JUMP_RULES)) is None
    backend.tool.remove(family)
    backend.tool.remove(family)
    seen = backend.saved(family)
    assert all(not chains for chains in ours(seen).values())
    assert jump_counts(seen) == [0] * len(JUMP_RULES)
