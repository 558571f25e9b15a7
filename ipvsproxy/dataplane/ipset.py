"""ipsets: one netlink dump (or `ipset save`) to read, one `ipset restore` to write.

kube-proxy runs one process per added or removed entry, which dominates its start-up on big
clusters (kubernetes#133773); a restore applies any number of entries in one process.
Reading over netlink spares a process per sync; where that read fails (a kernel speaking
another protocol version, an entry the decoder cannot print) the tool reads from then on.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Collection, Sequence

from loguru import logger

from ipvsproxy.core.operations import (
    AddIPSetEntry,
    CreateIPSet,
    IPSetOperation,
    OperationFailure,
)
from ipvsproxy.dataplane.ipset_netlink import read_sets
from ipvsproxy.errors import KernelError

_ERROR_LINE = re.compile(r"Error in line (\d+): (.*)")
# Reasons that doom every later line of the same set.
_SET_LEVEL = re.compile(r"does not exist|is full|maximal number", re.IGNORECASE)
_MAX_RESTORES = 16  # processes one apply may run when lines keep being refused


def _set_name(op: IPSetOperation) -> str:
    return op.name if isinstance(op, CreateIPSet) else op.set_name


def restore_line(op: IPSetOperation) -> str:
    """The `ipset restore` line that performs one operation."""
    if isinstance(op, CreateIPSet):
        return f"create {op.name} {op.create_args}"
    if isinstance(op, AddIPSetEntry):
        return f"add {op.set_name} {op.entry}"
    return f"del {op.set_name} {op.entry}"


def parse_save(text: str, names: Collection[str]) -> dict[str, frozenset[str]]:
    """Entries of the named sets from `ipset save` output; sets not present are absent."""
    wanted = set(names)
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        name, _, value = rest.partition(" ")
        if name not in wanted:
            continue
        if kind == "create":
            found.setdefault(name, [])
        elif kind == "add":
            found.setdefault(name, []).append(value)
    return {name: frozenset(entries) for name, entries in found.items()}


class IPSetTool:
    """The ipset command-line tool (ipset >= 6 understands save/restore with -exist)."""

    def __init__(
        self,
        binary: str = "ipset",
        *,
        timeout: float = 60.0,
        netlink: Callable[[Collection[str]], dict[str, frozenset[str]]] | None = read_sets,
    ) -> None:
        """netlink: the netlink reader to try first (None: always `ipset save`)."""
        self._binary = binary
        self._timeout = timeout
        self._netlink = netlink
        self.restores = 0  # restore processes run, for tests and metrics

    def _run(self, args: Sequence[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self._binary, *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self._timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KernelError(f"cannot run {self._binary} {args[0]}: {exc}") from exc

    def read(self, names: Collection[str]) -> dict[str, frozenset[str]]:
        if self._netlink is not None:
            try:
                return self._netlink(names)
            except KernelError as exc:
                logger.warning(
                    "reading ipsets over netlink failed; reading with ipset save from now on",
                    error=str(exc),
                )
                self._netlink = None
        return self.save(names)

    def save(self, names: Collection[str]) -> dict[str, frozenset[str]]:
        """The named sets' entries through `ipset save`."""
        result = self._run(["save"])
        if result.returncode != 0:
            raise KernelError(f"ipset save failed: {result.stderr.strip()}")
        return parse_save(result.stdout, names)

    def apply(self, ops: Sequence[IPSetOperation]) -> list[OperationFailure]:
        """Apply in one restore; a refused line is reported and the others sent again.

        When the refusal concerns the whole set (it could not be created, does not exist,
        or is full), the set's remaining lines are failed at once rather than retried one
        process at a time; after _MAX_RESTORES processes the rest fail too.
        """
        failures: list[OperationFailure] = []
        pending = list(ops)
        for _attempt in range(_MAX_RESTORES):
            if not pending:
                break
            self.restores += 1
            payload = "\n".join(restore_line(op) for op in pending) + "\n"
            result = self._run(["restore", "-exist"], payload)
            if result.returncode == 0:
                break
            match = _ERROR_LINE.search(result.stderr)
            if match is None or not 1 <= int(match.group(1)) <= len(pending):
                failures += [OperationFailure(op, 0, result.stderr.strip()) for op in pending]
                break
            # ipset restore stops at the first bad line, and adds it had buffered before that
            # line may not have reached the kernel (seen with ipset 7.17). With -exist every
            # line is idempotent, so all lines but the bad one are simply sent again.
            bad = int(match.group(1)) - 1
            reason = match.group(2).strip()
            refused = pending[bad]
            failures.append(
                OperationFailure(refused, 0, f"ipset {restore_line(refused)}: {reason}")
            )
            pending = pending[:bad] + pending[bad + 1 :]
            if isinstance(refused, CreateIPSet) or _SET_LEVEL.search(reason):
                name = _set_name(refused)
                failures += [
                    OperationFailure(op, 0, f"ipset {restore_line(op)}: not applied, {reason}")
                    for op in pending
                    if _set_name(op) == name
                ]
                pending = [op for op in pending if _set_name(op) != name]
        else:
            reason = f"not retried after {_MAX_RESTORES} ipset restore runs"
            failures += [OperationFailure(op, 0, reason) for op in pending]
        return failures

    def destroy(self, names: Collection[str]) -> list[OperationFailure]:
        present = self.read(names)
        failures: list[OperationFailure] = []
        for name in sorted(present):
            result = self._run(["destroy", name])
            if result.returncode != 0:
                failures.append(OperationFailure(CreateIPSet(name, ""), 0, result.stderr.strip()))
        return failures
