"""The iptables rules backend: the 17 ipsets per family and the fixed iptables chains,
behind the RulesDataplane interface (the nftables backend is dataplane/nftables.py).

It also knows how to find and remove its own leftovers when the nftables backend took
over (remove_leftovers), without loading a kernel module that is not already there.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ipvsproxy.core.ipsets import all_set_names
from ipvsproxy.core.model import IPFamily, RulesBackend
from ipvsproxy.core.operations import (
    IPSetOperation,
    OperationFailure,
    RestoreChains,
    RulesOperation,
)
from ipvsproxy.dataplane.interfaces import IPSetDataplane, IptablesDataplane, RulesState
from ipvsproxy.errors import KernelError

# Kernel modules without which none of the proxy's iptables chains or ipsets can exist,
# and where each shows when it is loaded or built in: the proxy's rules match its ipsets
# (xt_set needs ip_set, whose parameters give it a /sys/module entry even built in); the
# legacy tables need ip_tables / ip6_tables, which list their tables in /proc/net.
# Looking at these files loads nothing.
_XTABLES_MODULES = (
    ("ip_set", ("/sys/module/ip_set",)),
    ("ip_tables", ("/sys/module/ip_tables", "/proc/net/ip_tables_names")),
    ("ip6_tables", ("/sys/module/ip6_tables", "/proc/net/ip6_tables_names")),
)


def xtables_traces(root: Path = Path("/")) -> list[str]:
    """The iptables/ipset kernel modules present (loaded or built in)."""
    return [
        name
        for name, paths in _XTABLES_MODULES
        if any((root / path.lstrip("/")).exists() for path in paths)
    ]


def xtables_tools() -> bool:
    """Whether an iptables and the ipset command are on the PATH."""
    has_iptables = any(
        shutil.which(name) for name in ("iptables", "iptables-legacy", "iptables-nft")
    )
    return has_iptables and shutil.which("ipset") is not None


def _none() -> list[str]:
    return []


class XtablesRules:
    """ipsets and iptables chains, through their two adapters."""

    def __init__(
        self,
        ipsets: IPSetDataplane,
        iptables: IptablesDataplane,
        *,
        other_backend: Callable[[], list[str]] = _none,
    ) -> None:
        """other_backend: removes the nftables backend's tables, if any (a switch)."""
        self.ipsets = ipsets
        self.iptables = iptables
        self._other_backend = other_backend

    @property
    def backend(self) -> RulesBackend:
        return RulesBackend.IPTABLES

    def read(self, families: Iterable[IPFamily]) -> RulesState:
        iptables = {family: self.iptables.read(family) for family in families}
        return RulesState(sets=self.ipsets.read(all_set_names()), iptables=iptables)

    def apply_sets(self, ops: Sequence[IPSetOperation]) -> list[OperationFailure]:
        return self.ipsets.apply(ops)

    def write_rules(self, ops: Sequence[RulesOperation]) -> list[OperationFailure]:
        failures = []
        for op in ops:
            if not isinstance(op, RestoreChains):
                failure: OperationFailure | None = OperationFailure(
                    op, 0, "the iptables backend writes no nftables table"
                )
            else:
                failure = self.iptables.restore(op)
            if failure is not None:
                failures.append(failure)
        return failures

    def remove(self, families: Iterable[IPFamily], *, keep_sets: bool = False) -> list[str]:
        problems: list[str] = []
        for family in families:
            # Rules first: the kernel refuses to destroy a set a rule still matches.
            try:
                self.iptables.remove(family)
            except KernelError as exc:
                problems.append(f"removing IPv{family.value} iptables chains: {exc}")
        if keep_sets:
            return problems
        try:
            problems += [f.message for f in self.ipsets.destroy(all_set_names())]
        except KernelError as exc:
            problems.append(f"destroying ipsets: {exc}")
        return problems

    def remove_other_backend(self) -> list[str]:
        return self._other_backend()


def remove_leftovers(
    make: Callable[[], XtablesRules],
    *,
    traces: Callable[[], list[str]] = xtables_traces,
    tools: Callable[[], bool] = xtables_tools,
) -> list[str]:
    """Remove the iptables backend's chains and ipsets after a switch to nftables.

    Only where they can exist: with none of ip_set, ip_tables and ip6_tables in the
    kernel there are none, and running iptables or ipset would load those modules
    (the point of the nftables backend is a node without them); without the tools,
    nothing can be done either (and nothing is said: a node without iptables is the
    normal case).
    """
    found = traces()
    if not found or not tools():
        return []
    # Without ip_set no ipset can exist, and running `ipset` would load it.
    return make().remove(tuple(IPFamily), keep_sets="ip_set" not in found)
