"""The nftables rules backend's tables, written with `nft -f -`, read with `nft -t list
table` (the chains) and nf_tables netlink (the set elements, dataplane/nft_netlink.py).

Every write is one `nft -f` transaction, applied by the kernel atomically:
- a full sync reads both families' tables back (one `nft list table` each) and, only when
  a set or a chain differs from the desired one, replaces the table whole (declare, delete,
  write again: core/nft_rules.full_payload);
- a partial sync adds and deletes only the set elements that changed (element_payload).

The text is nftables' own (core/nft_rules.py renders rules exactly as `nft list` prints
them), so reading the chains back is one terse listing per family and a parse of its
output; the elements, which grow with Services, skip the text (listing() keeps the full
text, for show).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path

from ipvsproxy.core import nft_rules
from ipvsproxy.core.model import IPFamily, RulesBackend
from ipvsproxy.core.nft_rules import NftTableState
from ipvsproxy.core.operations import (
    AddIPSetEntry,
    DeleteIPSetEntry,
    IPSetOperation,
    OperationFailure,
    ReplaceNftTable,
    RulesOperation,
)
from ipvsproxy.core.rules import MasqueradeSettings
from ipvsproxy.dataplane.interfaces import RulesState
from ipvsproxy.dataplane.netlink_codec import NetlinkDecodeError
from ipvsproxy.dataplane.nft_netlink import NftSetSocket
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

    def __init__(self, nft: str = "nft", runner: Runner = _run, *, netlink: bool = True) -> None:
        """netlink: read set elements over nf_tables netlink (read()); off, from the
        full `nft list table` text."""
        self._nft = nft
        self._run = runner
        self._netlink = netlink
        # per family: the chains' netlink fingerprint and the chains last listed with it
        self._chains_seen: dict[IPFamily, tuple[bytes, Mapping[str, tuple[str, ...]]]] = {}

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
        """The family's table as values; None when it does not exist. The elements come
        from one netlink dump per set (dataplane/nft_netlink.py): printing thousands of
        elements is most of what `nft list table` costs. The chains come from the terse
        listing (`nft -t`, no elements, but nft still fetches them all), run only when
        the netlink dump of the table's chains and rules differs from the one taken with
        the chains listed last. Falls back to the full listing when the netlink reader
        cannot open its socket or print an element exactly."""
        if not self._netlink:
            return self._read_listing(family)
        try:
            with NftSetSocket() as sock:
                fingerprint = sock.chains_fingerprint(family, nft_rules.TABLE)
                seen = self._chains_seen.get(family)
                if seen is not None and seen[0] == fingerprint:
                    chains = seen[1]
                else:
                    terse = self._read_terse(family)
                    if terse is None:
                        self._chains_seen.pop(family, None)
                        return None
                    chains = terse.chains
                    # taken before the listing: a change in between shows next time
                    self._chains_seen[family] = (fingerprint, chains)
                sets: dict[str, frozenset[str]] = {}
                for nft_set in nft_rules.SETS:
                    members = sock.elements(family, nft_rules.TABLE, nft_set)
                    if members is not None:
                        sets[nft_set.spec.name_for(family)] = members
        except NetlinkDecodeError:
            return self._read_listing(family)  # an element it cannot print exactly
        except KernelError as exc:
            if exc.errno:  # the socket or a dump failed; an nft failure has no errno
                return self._read_listing(family)
            raise
        # A set the listing shows but the dump missed (replaced meanwhile) stays absent,
        # which counts as drift: the next full sync rewrites the table.
        return NftTableState(family, sets, chains)

    def _read_terse(self, family: IPFamily) -> NftTableState | None:
        """The chains from `nft -t list table` (no set elements); None: no table."""
        result = self._run(
            [self._nft, "-t", "list", "table", _table_family(family), nft_rules.TABLE], None
        )
        if result.returncode != 0:
            if "No such file or directory" in result.stderr:
                return None
            raise KernelError(f"nft list table failed: {result.stderr.strip()}")
        return nft_rules.parse_listing(family, result.stdout)

    def _read_listing(self, family: IPFamily) -> NftTableState | None:
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


def _none() -> list[str]:
    return []


class NftablesRules:
    """The nftables rules backend behind the RulesDataplane interface: the sets and the
    fixed chains of one table per family. Runs nothing but `nft`: no iptables, no ipset,
    and so loads neither ip_tables nor ip_set."""

    def __init__(
        self,
        tool: NftablesTool | None = None,
        *,
        other_backend: Callable[[], list[str]] = _none,
    ) -> None:
        """other_backend: removes the iptables backend's chains and ipsets, if any."""
        self.tool = tool or NftablesTool()
        self._other_backend = other_backend
        self.transactions = 0  # `nft -f` runs, for tests and metrics

    @property
    def backend(self) -> RulesBackend:
        return RulesBackend.NFTABLES

    def read(self, families: Iterable[IPFamily]) -> RulesState:
        """Every family's table (ownership needs all sets), NftablesTool.read each."""
        wanted = set(families)
        sets: dict[str, frozenset[str]] = {}
        chains: dict[IPFamily, dict[str, tuple[str, ...]]] = {}
        for family in IPFamily:
            table = self.tool.read(family)
            if table is None:
                continue
            sets.update(table.sets)
            if family in wanted:
                chains[family] = dict(table.chains)
        return RulesState(sets=sets, nftables=chains)

    def _write(self, payload: str) -> str | None:
        self.transactions += 1
        return self.tool.write(payload)

    def apply_sets(self, ops: Sequence[IPSetOperation]) -> list[OperationFailure]:
        """Every element added and deleted in one transaction: all or nothing. Creating
        a set is no operation here: the sets come with their table."""
        added = [(op.set_name, op.entry) for op in ops if isinstance(op, AddIPSetEntry)]
        removed = [(op.set_name, op.entry) for op in ops if isinstance(op, DeleteIPSetEntry)]
        error = self._write(nft_rules.element_payload(added, removed))
        if error is None:
            return []
        return [OperationFailure(op, 0, f"nft -f: {error}") for op in ops]

    def write_rules(self, ops: Sequence[RulesOperation]) -> list[OperationFailure]:
        """Every table that drifted, in one transaction: all or nothing."""
        if not all(isinstance(op, ReplaceNftTable) for op in ops):
            reason = "the nftables backend runs no iptables-restore"
            return [OperationFailure(op, 0, reason) for op in ops]
        payload = "".join(
            nft_rules.table_payload(op.family, dict(op.sets), dict(op.chains))
            for op in ops
            if isinstance(op, ReplaceNftTable)
        )
        error = self._write(payload)
        return [] if error is None else [OperationFailure(op, 0, f"nft -f: {error}") for op in ops]

    def remove(self, families: Iterable[IPFamily], *, keep_sets: bool = False) -> list[str]:
        """The tables, whole; with keep_sets only their chains (the sets, which record
        virtual servers, stay)."""
        families = tuple(families)
        payload = (
            nft_rules.chains_delete_payload(families)
            if keep_sets
            else nft_rules.delete_payload(families)
        )
        error = self._write(payload)
        return [] if error is None else [f"removing nftables tables: {error}"]

    def remove_other_backend(self) -> list[str]:
        return self._other_backend()


def nf_tables_present(root: Path = Path("/")) -> bool:
    """Whether running `nft` would load no module: nf_tables is loaded, or built in, or
    no module can be loaded here at all (no module tree for this kernel). Looking loads
    nothing."""
    if (root / "sys/module/nf_tables").exists():
        return True
    tree = root / "lib/modules" / os.uname().release
    if not tree.is_dir():
        return True
    builtin = tree / "modules.builtin"
    return builtin.is_file() and "/nf_tables.ko" in builtin.read_text()


def remove_leftover_tables(
    tool: NftablesTool | None = None, *, loads_nothing: Callable[[], bool] = nf_tables_present
) -> list[str]:
    """Remove the nftables backend's tables after a switch to iptables: only when
    nf_tables is in the kernel (`nft` would load it otherwise, on a node that may never
    have used it) and `nft` is there and lists one of them; nothing said otherwise."""
    if not loads_nothing() or not nft_available():
        return []
    tool = tool or NftablesTool()
    try:
        present = [family for family in IPFamily if tool.listing(family) is not None]
    except KernelError:
        return []  # no nf_tables here (the user-mode-linux test kernel): nothing of ours
    if not present:
        return []
    error = tool.remove(present)
    return [] if error is None else [f"removing nftables tables: {error}"]
