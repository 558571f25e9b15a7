"""iptables through iptables-save / iptables-restore, legacy or nft backend.

Reading runs one iptables-save per family; with the legacy backend, not even that while the
tables' fingerprint (``xtables_stamp``: their rules as the kernel holds them, counters
aside) is the one of the last save.

The backend is chosen at start as kube-proxy's iptables-wrapper does (see ``choose_backend``).
Both backends print the same rule text for every rule the proxy writes (iptables 1.8.9,
checked rule by rule in the sandbox kernels); what differs is around the rules, and the
parser handles it:

- iptables-nft-save lists tables in the kernel's order (filter before nat) and a table or
  built-in chain only once something created it; legacy lists every loaded table.
- With rules in both backends, iptables-nft-save warns ("# Warning: iptables-legacy tables
  present, ...") on stderr or, in some versions, as a comment line in its output.
- A table that also holds chains written with ``nft`` itself: iptables-nft-save 1.8.9 adds
  "# Table `nat' contains incompatible base-chains, ..." and prints the rest (seen in the
  sandbox; the proxy's chains stay visible). Versions that cannot show such a table at all
  print "# Table `nat' is incompatible, use 'nft' tool." instead of it; the proxy could
  not see its own chains there, so ``parse_save`` raises KernelError naming the table
  rather than letting every sync restore the chains again.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from loguru import logger

from ipvsproxy.core.model import IPFamily, IptablesRuleset
from ipvsproxy.core.operations import OperationFailure, RestoreChains
from ipvsproxy.core.rules import (
    CHAINS,
    JUMP_RULES,
    JumpRule,
    restore_payload,
    without_misplaced_jumps,
)
from ipvsproxy.dataplane.ipset_netlink import set_names
from ipvsproxy.dataplane.xtables_stamp import stamp
from ipvsproxy.errors import KernelError

BACKENDS = ("legacy", "nft")
# The tables ipvsproxy writes (mangle: steering) and so reads back.
TABLES = ("nat", "filter", "mangle")
# Kubelet (1.17+) creates one of these in the mangle table of the backend it uses.
_KUBELET_CHAIN = re.compile(r"^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY)[ \n]", re.MULTILINE)
_INCOMPATIBLE = re.compile(r"^# Table `(\w+)' is incompatible", re.MULTILINE)
# Wait up to 5 s for the xtables lock when kubelet, firewalld or another writer holds it,
# as kube-proxy does, instead of failing the sync at once. (-W, the poll interval, is
# deprecated since iptables 1.8.9 and only adds a warning to every error message.)
_RESTORE_ARGS = ("--noflush", "-w", "5")


def parse_save(
    text: str, only: Collection[str] | None = None
) -> dict[str, dict[str, tuple[str, ...]]]:
    """iptables-save output (either backend) as table -> chain -> rules (after "-A <chain> ").

    only: the tables to keep (None: all). KernelError if iptables-nft-save could not show
    one of them (see the module docstring).
    """
    for incompatible in _INCOMPATIBLE.finditer(text):
        if only is None or incompatible.group(1) in only:
            raise KernelError(
                f"iptables-nft-save cannot show the {incompatible.group(1)} table: it holds "
                "rules written with nft that iptables cannot represent; inspect it with "
                "`nft list ruleset`"
            )
    tables: dict[str, dict[str, list[str]]] = {}
    chains: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("*"):
            chains = tables.setdefault(line[1:].strip(), {})
        elif line.startswith(":"):
            chains.setdefault(line[1:].split(" ", 1)[0], [])
        elif line.startswith("-A "):
            chain, _, rule = line[3:].partition(" ")
            chains.setdefault(chain, []).append(rule)
    return {
        table: {chain: tuple(rules) for chain, rules in table_chains.items()}
        for table, table_chains in tables.items()
        if only is None or table in only
    }


def _command(backend: str, family: IPFamily, tool: str) -> str:
    base = "iptables" if family is IPFamily.V4 else "ip6tables"
    return f"{base}-{backend}{tool}"


def _run(
    argv: Sequence[str], stdin: str | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(f"cannot run {argv[0]}: {exc}") from exc


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    reason: str


def choose_backend(saves: Mapping[str, str], nft_works: Callable[[], bool]) -> BackendChoice:
    """The backend iptables-wrapper (kubernetes-sigs/iptables-wrappers) would choose.

    ``saves`` maps each backend whose save tool runs to its iptables-save and ip6tables-save
    output together. In order: the backend holding kubelet's KUBE-IPTABLES-HINT or
    KUBE-KUBELET-CANARY chain (nft checked first, as the wrapper does); else legacy if it
    holds more rules ("-" lines) than nft; else nft. One addition: where the wrapper would
    pick nft with no rules to go by, nft must really create a nat chain (``nft_works``);
    kernels without nf_tables IPv4 nat (the user-mode-linux test kernel) get legacy.
    """
    if not saves:
        raise KernelError("neither iptables-legacy-save nor iptables-nft-save works")
    for backend in ("nft", "legacy"):
        if backend in saves and _KUBELET_CHAIN.search(saves[backend]):
            return BackendChoice(backend, "kubelet's chains are there")
    counts = {
        backend: sum(line.startswith("-") for line in text.splitlines())
        for backend, text in saves.items()
    }
    legacy, nft = counts.get("legacy", 0), counts.get("nft", 0)
    rules = f"{legacy} legacy rules, {nft} nft rules"
    if legacy > nft:
        return BackendChoice("legacy", rules)
    if "nft" in saves and (nft > 0 or nft_works()):
        return BackendChoice("nft", rules)
    if "legacy" in saves:
        return BackendChoice("legacy", f"{rules}; nft cannot create a nat chain here")
    raise KernelError("iptables-legacy-save does not work and nft cannot create a nat chain")


def available_backends() -> dict[str, str]:
    """Each backend whose save tools run, with their IPv4 and IPv6 output together."""
    saves: dict[str, str] = {}
    for backend in BACKENDS:
        texts = []
        for family in IPFamily:
            try:
                result = _run([_command(backend, family, "-save")], timeout=30.0)
            except KernelError:
                break
            if result.returncode != 0:
                break
            texts.append(result.stdout)
        else:
            saves[backend] = "".join(texts)
    return saves


def detect_backend() -> BackendChoice:
    """Pick the backend the node's other components use (see ``choose_backend``)."""
    return choose_backend(available_backends(), _nft_usable)


def _nft_usable() -> bool:
    """Whether the nft backend can really create a nat chain.

    iptables-nft-save succeeds on kernels without nf_tables' IPv4 nat support (the test
    kernel is one), so create and delete a probe chain in one transaction instead.
    """
    probe = "*nat\n:KUBE-PROXY-PROBE - [0:0]\n-X KUBE-PROXY-PROBE\nCOMMIT\n"
    try:
        result = _run(
            [_command("nft", IPFamily.V4, "-restore"), *_RESTORE_ARGS], probe, timeout=30.0
        )
    except KernelError:
        return False
    return result.returncode == 0


class IptablesTool:
    """The nat and filter tables of one backend."""

    def __init__(self, backend: str, *, fingerprint: bool = True) -> None:
        """fingerprint: with the legacy backend, skip iptables-save while the tables'
        fingerprint (``xtables_stamp``) is the one of the last save."""
        if backend not in BACKENDS:
            raise KernelError(f"unknown iptables backend {backend!r}; use legacy or nft")
        self.backend = backend
        self._per_table = False  # set once the save of all tables failed
        self._fingerprint = fingerprint and backend == "legacy"
        self._last: dict[IPFamily, tuple[bytes, IptablesRuleset]] = {}
        self.restores = 0  # restore processes run, for tests and metrics
        self.saves = 0  # save processes run, for tests and metrics

    def save_text(self, family: IPFamily) -> str:
        """The nat and filter tables of one family, and whatever other tables the kernel
        holds (mangle, raw), which the parsers leave out.

        One process for all tables: each process start is costly (most of all in the
        sandbox kernel). Should that fail (a foreign table the tool cannot print), the
        tables are read one process each from then on, as ``-t`` limits the tool to them.
        """
        command = _command(self.backend, family, "-save")
        self.saves += 1
        if not self._per_table:
            result = _run([command])
            if result.returncode == 0:
                return result.stdout
            logger.warning(
                f"{command} of all tables failed; reading the nat and filter tables alone "
                "from now on",
                error=result.stderr.strip(),
            )
            self._per_table = True
        parts = []
        for table in TABLES:
            result = _run([command, "-t", table])
            if result.returncode != 0:
                raise KernelError(f"{command} -t {table} failed: {result.stderr.strip()}")
            parts.append(result.stdout)
        return "".join(parts)

    def read(self, family: IPFamily) -> IptablesRuleset:
        """The nat and filter tables; the last save's when the fingerprint says they are
        unchanged (taken before the save, so a change during the save is seen next time)."""
        fingerprint = self._stamp(family) if self._fingerprint else None
        last = self._last.get(family)
        if fingerprint is not None and last is not None and last[0] == fingerprint:
            return last[1]
        # A jump behind a rule that would steal Service traffic reads as missing, so that
        # the sync puts it back on top (rules.jump_out_of_place).
        tables = without_misplaced_jumps(parse_save(self.save_text(family), TABLES))
        ruleset = IptablesRuleset(family=family, tables=tables)
        if fingerprint is not None:
            self._last[family] = (fingerprint, ruleset)
        return ruleset

    def _stamp(self, family: IPFamily) -> bytes | None:
        try:
            names = set_names()
        except KernelError:
            return None
        return stamp(family, TABLES, names)

    def _restore(self, family: IPFamily, payload: str) -> subprocess.CompletedProcess[str]:
        self.restores += 1
        return _run([_command(self.backend, family, "-restore"), *_RESTORE_ARGS], payload)

    def restore(self, op: RestoreChains) -> OperationFailure | None:
        family = op.ruleset.family
        stray: list[JumpRule] = []
        if op.missing_jumps:
            # A "missing" jump may be one read as out of place: delete every copy the
            # kernel holds before inserting it on top (rare: a fresh save is affordable).
            current = parse_save(self.save_text(family), TABLES)
            for jump in op.missing_jumps:
                copies = current.get(jump.table, {}).get(jump.chain, ()).count(jump.rule)
                stray += [jump] * copies
        result = self._restore(family, restore_payload(op.ruleset, op.missing_jumps, stray))
        if result.returncode != 0:
            reason = result.stderr.strip() or f"exit status {result.returncode}"
            return OperationFailure(op, 0, f"IPv{family.value} iptables-restore: {reason}")
        return None

    def remove(self, family: IPFamily) -> None:
        """Delete the jump rules, then flush and delete the proxy's chains."""
        current = parse_save(self.save_text(family), TABLES)
        lines: list[str] = []
        for table, chains in CHAINS.items():
            present = current.get(table, {})
            ours = [chain for chain in chains if chain in present]
            jumps = [
                j for j in JUMP_RULES if j.table == table and j.rule in present.get(j.chain, ())
            ]
            if not ours and not jumps:
                continue
            lines.append(f"*{table}")
            lines += [f":{chain} - [0:0]" for chain in ours]
            lines += [f"-D {j.chain} {j.rule}" for j in jumps]
            lines += [f"-X {chain}" for chain in ours]
            lines.append("COMMIT")
        if not lines:
            return
        result = self._restore(family, "\n".join(lines) + "\n")
        if result.returncode != 0:
            raise KernelError(f"removing iptables chains failed: {result.stderr.strip()}")


class EveryBackend:
    """One backend for reading and writing; removal from every backend that has our chains.

    For ``cleanup``: after a node switched backends (or someone ran the other one), the
    proxy's chains may sit in both, and the kernel runs both, so a cleanup that left either
    would leave masquerading and filtering rules active.
    """

    def __init__(self, primary: IptablesTool, others: Sequence[IptablesTool]) -> None:
        self.primary = primary
        self.others = tuple(others)

    def read(self, family: IPFamily) -> IptablesRuleset:
        return self.primary.read(family)

    def restore(self, op: RestoreChains) -> OperationFailure | None:
        return self.primary.restore(op)

    def remove(self, family: IPFamily) -> None:
        problems = []
        for tool in (self.primary, *self.others):
            try:
                tool.remove(family)
            except KernelError as exc:
                problems.append(f"{tool.backend}: {exc}")
        if problems:
            raise KernelError("; ".join(problems))
