"""Choosing the rules backend once at start, and building its adapter.

`auto` takes iptables where an iptables command and ipset are installed: the iptables
backend adopts what kube-proxy (IPVS mode) left on a node being migrated, chain for chain
and set for set, and it is what such a node's other components expect. Where either is
missing (distributions are dropping them; RHEL 9 deprecated iptables) and `nft` is
there, it takes nftables. An explicit choice whose tool is missing is an error.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from ipvsproxy.core.model import RulesBackend
from ipvsproxy.dataplane.interfaces import IptablesDataplane, RulesDataplane
from ipvsproxy.dataplane.nftables import NftablesRules, nft_available, remove_leftover_tables
from ipvsproxy.dataplane.xtables_rules import (
    XtablesRules,
    remove_leftovers,
    xtables_tools,
    xtables_traces,
)
from ipvsproxy.errors import ConfigError


@dataclass(frozen=True, slots=True)
class RulesChoice:
    backend: RulesBackend
    reason: str


def choose_rules_backend(
    wanted: str,
    *,
    xtables: Callable[[], bool] = xtables_tools,
    nft: Callable[[], bool] = nft_available,
) -> RulesChoice:
    """The backend for `wanted` ("auto", "iptables" or "nftables"), from the tools on
    the PATH; ConfigError, one line, when the one asked for cannot run here."""
    if wanted == "iptables":
        if not xtables():
            raise ConfigError("rules backend iptables: no iptables and ipset commands found")
        return RulesChoice(RulesBackend.IPTABLES, "asked for")
    if wanted == "nftables":
        if not nft():
            raise ConfigError("rules backend nftables: no nft command found")
        return RulesChoice(RulesBackend.NFTABLES, "asked for")
    if wanted != "auto":
        raise ConfigError(f"rules backend {wanted!r}: one of auto, iptables, nftables")
    if xtables():
        return RulesChoice(RulesBackend.IPTABLES, "iptables and ipset are installed")
    if nft():
        return RulesChoice(RulesBackend.NFTABLES, "no iptables or no ipset, and nft is installed")
    raise ConfigError("no rules backend: neither iptables and ipset nor nft is installed")


def _xtables(iptables_backend: str, *, every_backend: bool) -> XtablesRules:
    """The iptables backend's adapters; detecting iptables' own backend (legacy or nft)
    runs iptables-save, so this is built only once iptables is chosen or has traces."""
    from ipvsproxy.dataplane.ipset import IPSetTool
    from ipvsproxy.dataplane.iptables import (
        BACKENDS,
        EveryBackend,
        IptablesTool,
        available_backends,
        detect_backend,
    )

    if iptables_backend == "auto":
        choice = detect_backend()
        chosen = choice.backend
        logger.info("iptables backend chosen", backend=chosen, reason=choice.reason)
    else:
        chosen = iptables_backend
    iptables: IptablesDataplane = IptablesTool(chosen)
    if every_backend and iptables_backend == "auto":
        present = available_backends()
        others = [IptablesTool(b) for b in BACKENDS if b != chosen and b in present]
        iptables = EveryBackend(IptablesTool(chosen), others)
    return XtablesRules(IPSetTool(), iptables, other_backend=remove_leftover_tables)


def remove_xtables_leftovers() -> list[str]:
    """The iptables backend's chains and ipsets, in every iptables backend whose kernel
    side is there: legacy where ip_tables or ip6_tables is loaded, nft where ip_set is
    (the proxy's rules match its ipsets)."""
    from ipvsproxy.dataplane.ipset import IPSetTool
    from ipvsproxy.dataplane.iptables import EveryBackend, IptablesTool

    traces = xtables_traces()

    def make() -> XtablesRules:
        tools = []
        if {"ip_tables", "ip6_tables"} & set(traces) and shutil.which("iptables-legacy-save"):
            tools.append(IptablesTool("legacy", fingerprint=False))
        if "ip_set" in traces and shutil.which("iptables-nft-save"):
            tools.append(IptablesTool("nft"))
        if not tools:
            tools.append(IptablesTool("legacy" if "ip_tables" in traces else "nft"))
        # No netlink: ip_set is loaded (a trace) and `ipset` reads as well.
        return XtablesRules(IPSetTool(netlink=None), EveryBackend(tools[0], tools[1:]))

    return remove_leftovers(make, traces=lambda: traces)


def open_rules(
    choice: RulesChoice, *, iptables_backend: str = "auto", every_backend: bool = False
) -> RulesDataplane:
    """The chosen backend's adapter, which removes the other's leftovers when asked.

    iptables_backend: iptables' own backend ("auto", "legacy", "nft") for the iptables
    rules backend; every_backend (cleanup): remove chains from both iptables backends."""
    logger.info("rules backend chosen", backend=choice.backend.value, reason=choice.reason)
    if choice.backend is RulesBackend.NFTABLES:
        return NftablesRules(other_backend=remove_xtables_leftovers)
    return _xtables(iptables_backend, every_backend=every_backend)
