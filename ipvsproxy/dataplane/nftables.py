"""The nftables rules backend's tables, written with `nft -f -` and read with `nft list table`.

Every write is one `nft -f` transaction, applied by the kernel atomically:
- a full sync reads both families' tables back (one `nft list table` each) and, only when
  a set or a chain differs from the desired one, replaces the table whole (declare, delete,
  write again: core/nft_rules.full_payload);
- a partial sync adds and deletes only the set elements that changed (element_payload).

The text is nftables' own (core/nft_rules.py renders rules exactly as `nft list` prints
them), so reading back is one process per family and a parse of its output.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Collection, Iterable, Mapping

from ipvsproxy.core import nft_rules
from ipvsproxy.core.model import IPFamily
from ipvsproxy.core.nft_rules import NftTableState
from ipvsproxy.core.rules import MasqueradeSettings
from ipvsproxy.errors import KernelError

Runner = Callable[[list[str], str | None], subprocess.CompletedProcess[str]]

_TIMEOUT = 60.0


def _run(argv: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, input=stdin, text=True, capture_output=True, check=False, timeout=_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(f"cannot run {argv[0]}: {exc}") from exc


def nft_available() -> bool:
    """Whether the `nft` command is on the PATH."""
    return shutil.which("nft") is not None


def _table_family(family: IPFamily) -> str:
    return "ip" if family is IPFamily.V4 else "ip6"


class NftablesTool:
    """The proxy's nftables tables, through the nft command."""

    def __init__(self, nft: str = "nft", runner: Runner = _run) -> None:
        self._nft = nft
        self._run = runner

    def listing(self, family: IPFamily) -> str | None:
        """`nft list table` of the family's table; None when it does not exist."""
        result = self._run(
            [self._nft, "list", "table", _table_family(family), nft_rules.TABLE], None
        )
        if result.returncode == 0:
            return result.stdout
        if "No such file or directory" in result.stderr:
            return None
        raise KernelError(f"nft list table failed: {result.stderr.strip()}")

    def read(self, family: IPFamily) -> NftTableState | None:
        """The family's table as values; None when it does not exist."""
        text = self.listing(family)
        return None if text is None else nft_rules.parse_listing(family, text)

    def write(self, payload: str) -> str | None:
        """One `nft -f -` transaction; the error text when the kernel refused it."""
        if not payload:
            return None
        result = self._run([self._nft, "-f", "-"], payload)
        return None if result.returncode == 0 else (result.stderr.strip() or "nft -f failed")

    def drifted(
        self,
        families: Iterable[IPFamily],
        sets: Mapping[str, Collection[str]],
        *,
        masquerade: MasqueradeSettings,
    ) -> list[IPFamily]:
        """The families whose table is missing or differs from the desired one."""
        result = []
        for family in families:
            observed = self.read(family)
            if observed is None or not _matches(observed, sets, masquerade):
                result.append(family)
        return result

    def sync(
        self,
        families: Iterable[IPFamily],
        sets: Mapping[str, Collection[str]],
        *,
        masquerade: MasqueradeSettings,
    ) -> tuple[list[IPFamily], str | None]:
        """A full sync: read back, and rewrite (one transaction) the tables that drifted.
        Returns the families rewritten and the error, if the write failed."""
        drifted = self.drifted(families, sets, masquerade=masquerade)
        if not drifted:
            return [], None
        return drifted, self.write(nft_rules.full_payload(drifted, sets, masquerade=masquerade))

    def apply_elements(
        self, added: Iterable[tuple[str, str]], removed: Iterable[tuple[str, str]]
    ) -> str | None:
        """A partial sync: only the changed elements, in one transaction."""
        return self.write(nft_rules.element_payload(added, removed))

    def remove(self, families: Iterable[IPFamily]) -> str | None:
        """Delete the tables (cleanup, or a switch back to iptables); absent ones are fine."""
        return self.write(nft_rules.delete_payload(families))


def _matches(
    observed: NftTableState,
    sets: Mapping[str, Collection[str]],
    masquerade: MasqueradeSettings,
) -> bool:
    family = observed.family
    if dict(observed.chains) != nft_rules.desired_chains(family, masquerade):
        return False
    for nft_set in nft_rules.SETS:
        name = nft_set.spec.name_for(family)
        if name not in observed.sets:
            return False
        if observed.sets[name] != frozenset(sets.get(name, ())):
            return False
    return True
