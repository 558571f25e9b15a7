"""iptables through iptables-save / iptables-restore, legacy or nft backend.

The backend is chosen at start as kube-proxy's iptables-wrapper does: the one that holds
kubelet's KUBE-IPTABLES-HINT / KUBE-KUBELET-CANARY chains, else the one with more rules,
else nft when it works, else legacy.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from ipvsproxy.errors import KernelError
from ipvsproxy.model import IPFamily, IptablesRuleset
from ipvsproxy.operations import OperationFailure, RestoreChains
from ipvsproxy.rules import CHAINS, JUMP_RULES, restore_payload

BACKENDS = ("legacy", "nft")
_TABLES = ("nat", "filter")
_KUBELET_CHAINS = (":KUBE-IPTABLES-HINT", ":KUBE-KUBELET-CANARY")
# Wait up to 5 s for the xtables lock when kubelet, firewalld or another writer holds it,
# as kube-proxy does, instead of failing the sync at once. (-W, the poll interval, is
# deprecated since iptables 1.8.9 and only adds a warning to every error message.)
_RESTORE_ARGS = ("--noflush", "-w", "5")


def parse_save(text: str) -> dict[str, dict[str, tuple[str, ...]]]:
    """iptables-save output as table -> chain -> rules (text after "-A <chain> ")."""
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


def detect_backend() -> str:
    """Pick the backend the node's other components use (see module docstring)."""
    outputs: dict[str, str] = {}
    for backend in BACKENDS:
        try:
            result = _run([_command(backend, IPFamily.V4, "-save")], timeout=30.0)
        except KernelError:
            continue
        if result.returncode == 0:
            outputs[backend] = result.stdout
    if not outputs:
        raise KernelError("neither iptables-legacy-save nor iptables-nft-save works")
    hinted = [b for b, text in outputs.items() if any(c in text for c in _KUBELET_CHAINS)]
    if len(hinted) == 1:
        return hinted[0]
    counts = {
        b: sum(line.startswith("-A ") for line in text.splitlines()) for b, text in outputs.items()
    }
    if len(counts) == 2 and counts["legacy"] != counts["nft"]:
        return max(counts, key=lambda b: counts[b])
    return "nft" if "nft" in outputs and _nft_usable() else "legacy"


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

    def __init__(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise KernelError(f"unknown iptables backend {backend!r}; use legacy or nft")
        self.backend = backend
        self.restores = 0  # restore processes run, for tests and metrics

    def save_text(self, family: IPFamily) -> str:
        parts = []
        for table in _TABLES:
            result = _run([_command(self.backend, family, "-save"), "-t", table])
            if result.returncode != 0:
                raise KernelError(
                    f"{_command(self.backend, family, '-save')} -t {table} failed: "
                    f"{result.stderr.strip()}"
                )
            parts.append(result.stdout)
        return "".join(parts)

    def read(self, family: IPFamily) -> IptablesRuleset:
        return IptablesRuleset(family=family, tables=parse_save(self.save_text(family)))

    def _restore(self, family: IPFamily, payload: str) -> subprocess.CompletedProcess[str]:
        self.restores += 1
        return _run([_command(self.backend, family, "-restore"), *_RESTORE_ARGS], payload)

    def restore(self, op: RestoreChains) -> OperationFailure | None:
        family = op.ruleset.family
        result = self._restore(family, restore_payload(op.ruleset, op.missing_jumps))
        if result.returncode != 0:
            reason = result.stderr.strip() or f"exit status {result.returncode}"
            return OperationFailure(op, 0, f"IPv{family.value} iptables-restore: {reason}")
        return None

    def remove(self, family: IPFamily) -> None:
        """Delete the jump rules, then flush and delete the proxy's chains."""
        current = parse_save(self.save_text(family))
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
