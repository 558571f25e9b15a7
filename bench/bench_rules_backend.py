"""The two rules backends side by side: iptables + ipset against nftables.

    python -m bench.bench_rules_backend [--sizes 1000 5000] [--runs 5] [--json FILE]
                                        [--guest qemu] [--quick]

Both backends hold the same desired state: the 18 sets per family of a realistic cluster
(gen_cluster.build_realistic, seen from one node of it) and the fixed chains. For each size,
round after round, each backend gets a fresh, empty network namespace (unshare(2)) and is
timed, wall clock and CPU (this process and the tools it runs: iptables-restore, ipset,
nft), on:

- cold sync: an empty kernel to every set and chain written, read included, as a full sync
  does it. iptables + ipset: read the ipsets (one netlink dump) and the chains (one
  iptables-save per family), plan (core/full_plan.py), one `ipset restore`, one
  iptables-restore per family. nftables: one `nft -t list table` per family and the set
  elements' netlink dumps, then one `nft -f` transaction (dataplane/nftables.py);
- one change: one endpoint added to a set, then removed (a partial sync's only write):
  one `ipset restore` against one `nft -f`;
- observe: a full sync's read back of the whole state and its drift decision, nothing
  changed: the ipset dump, an iptables-save per family and the plan against the netlink
  digest of the chains (`nft -t list table` only when it moved: not here, where nothing
  changed since the previous read) and the set elements' netlink dumps per family and the
  comparison. The legacy
  tables' fingerprint (read while unchanged, without iptables-save) is shown on its own
  line.

Below the steps, their parts, to show what dominates: the cold sync's writes alone
(apply_plan's ipset restore and iptables-restores; the one `nft -f`), the observe step's
reads alone (the ipset netlink dump, the iptables-saves; the `nft -t list table` processes and the
set elements' netlink dumps) and, as alternative readers, the full `nft list table` text
(what observe read before the netlink dumps: "observe, text read"), its process alone,
and the same listing as JSON (`nft -j`), the process alone.

iptables + ipset runs with each iptables backend whose tools work here (legacy and nft).
The contenders take turns within each round, in a rotating order; medians of --runs rounds
after one warm-up round. It checks its results: after each cold sync and each change, the
backend's own full-sync read must find nothing to repair.

Where it runs: the host, in private network namespaces, when its kernel has nf_tables
(with nat chains), ip_tables and ip_set there; else pass --guest qemu (Debian's generic
kernel under qemu TCG, slow but the same for every contender). The user-mode-linux kernel
lacks the nftables nat chain type, so it cannot hold the nftables table.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
CLONE_NEWNET = 0x40000000

# The node the cluster is seen from: its endpoints are local (hairpin entries), its
# address serves NodePorts.
NODE_NAME = "node-0000"
NODE_ADDRESS = "192.168.0.10"
# The endpoint one change adds and removes: a hairpin entry of a local pod.
CHANGED_POD = "10.255.0.1"

STEPS = ("cold sync", "add one element", "remove one element", "observe")
# Parts and alternatives, shown below the steps.
EXTRA = (
    "cold sync: the writes alone",
    "observe, fingerprint",
    "observe, text read",
    "observe: ipset dump alone",
    "observe: iptables-save alone",
    "observe: nft list alone",
    "observe: nft -j list alone",
    "observe: nft -t list alone",
    "observe: netlink element dumps alone",
)
LEGACY = "iptables-legacy + ipset"
IPT_NFT = "iptables-nft + ipset"
NFT = "nftables"


def fresh_namespace() -> None:
    """Move this process into a new, empty network namespace (the previous one goes away
    with its last user): every round starts from an empty kernel."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise SystemExit(f"unshare(CLONE_NEWNET) failed: {os.strerror(errno)} (needs root)")


def cpu_seconds() -> float:
    """CPU of this process and of the children it waited for (the tools it ran)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall s, CPU s, result) of one call."""
    cpu, start = cpu_seconds(), time.perf_counter()
    result = fn()
    return time.perf_counter() - start, cpu_seconds() - cpu, result


class Backend(Protocol):
    name: str
    parts: dict[str, tuple[float, float]]

    def cold_sync(self) -> bool: ...

    def observe(self) -> bool:
        """A full sync's read and drift decision: True when nothing needs repairing."""
        ...

    def change(self, add: bool) -> bool: ...


@dataclass
class Desired:
    """What both backends are given: the desired state and the one changed element."""

    state: Any  # KernelState
    rules_only: Any  # KernelState without IPVS and addresses: the rules backend's share
    masquerade: Any  # MasqueradeSettings
    changed: tuple[str, str]  # (ipset name, entry in ipset syntax)

    @property
    def families(self) -> list[Any]:
        return list(self.state.iptables)


class IptablesIpset:
    """Today's backend: ipsets and fixed chains, through the project's own adapters."""

    def __init__(self, name: str, iptables_backend: str, desired: Desired) -> None:
        from ipvsproxy.dataplane.fake import FakeKernel
        from ipvsproxy.dataplane.interfaces import Dataplanes
        from ipvsproxy.dataplane.ipset import IPSetTool
        from ipvsproxy.dataplane.iptables import IptablesTool
        from ipvsproxy.dataplane.xtables_rules import XtablesRules

        self.name = name
        self.desired = desired
        # A rules-only plan has no IPVS or address operation: those adapters are never used.
        unused = FakeKernel()
        self.ipsets = IPSetTool()
        self.iptables = IptablesTool(iptables_backend, fingerprint=False)
        self.dataplanes = Dataplanes(
            ipvs=unused, links=unused, rules=XtablesRules(self.ipsets, self.iptables)
        )
        self.fingerprinted = IptablesTool(iptables_backend, fingerprint=True)
        self.parts: dict[str, tuple[float, float]] = {}  # (wall s, CPU s) of the last sync

    def _observed(self, iptables: Any) -> Any:
        from ipvsproxy.core.ipsets import all_set_names
        from ipvsproxy.core.model import KernelState

        wanted = self.desired.rules_only
        return KernelState(
            virtual_servers={},
            real_servers={},
            addresses=frozenset(),
            ipsets=self.ipsets.read(all_set_names()),
            iptables={f: iptables.read(f) for f in self.desired.families},
            dummy_interface=True,
            steering=wanted.steering,
        )

    def _plan(self, iptables: Any) -> Any:
        from ipvsproxy.core.full_plan import plan_sync

        return plan_sync(self.desired.rules_only, self._observed(iptables))

    def cold_sync(self) -> bool:
        from ipvsproxy.agent.apply import apply_plan

        plan = self._plan(self.iptables)
        wall, cpu, result = timed(lambda: apply_plan(plan, self.dataplanes))
        self.parts["cold sync: the writes alone"] = (wall, cpu)
        return not result.failures

    def ipset_dump(self) -> bool:
        from ipvsproxy.core.ipsets import all_set_names

        return bool(self.ipsets.read(all_set_names()))

    def iptables_save(self) -> bool:
        return all(self.iptables.read(f).tables for f in self.desired.families)

    def observe(self) -> bool:
        return not self._plan(self.iptables)

    def observe_fingerprinted(self) -> bool:
        return not self._plan(self.fingerprinted)

    def change(self, add: bool) -> bool:
        from ipvsproxy.core.operations import AddIPSetEntry, DeleteIPSetEntry

        name, entry = self.desired.changed
        op = AddIPSetEntry(name, entry) if add else DeleteIPSetEntry(name, entry)
        return not self.ipsets.apply([op])


class Nftables:
    """The nftables backend: one table per family, through dataplane/nftables.py."""

    def __init__(self, desired: Desired) -> None:
        from ipvsproxy.dataplane.nftables import NftablesTool

        self.name = NFT
        self.desired = desired
        self.tool = NftablesTool(runner=self._timed_run)
        self.text_tool = NftablesTool(netlink=False)
        self.parts: dict[str, tuple[float, float]] = {}  # (wall s, CPU s) of the last sync

    def _timed_run(self, argv: list[str], stdin: str | None) -> Any:
        """The tool's runner, timing its writes (`nft -f`)."""

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(argv, input=stdin, text=True, capture_output=True, check=False)

        wall, cpu, result = timed(run)
        if "-f" in argv:
            self.parts["cold sync: the writes alone"] = (wall, cpu)
        return result

    def cold_sync(self) -> bool:
        families = self.desired.families
        written, error = self.tool.sync(
            families, self.desired.state.ipsets, masquerade=self.desired.masquerade
        )
        if error:
            print(f"  nft -f refused the table: {error[:500]}")
        return error is None and written == families

    def observe(self) -> bool:
        drifted = self.tool.drifted(
            self.desired.families, self.desired.state.ipsets, masquerade=self.desired.masquerade
        )
        return not drifted

    def text_observe(self) -> bool:
        """The same read from the full `nft list table` text, elements and all."""
        drifted = self.text_tool.drifted(
            self.desired.families, self.desired.state.ipsets, masquerade=self.desired.masquerade
        )
        return not drifted

    def terse_listings(self) -> bool:
        """The observe step's processes alone: `nft -t list table` of each family."""
        for family in self.desired.families:
            table = "ip" if family.value == 4 else "ip6"
            argv = ["nft", "-t", "list", "table", table, "ipvsproxy"]
            if subprocess.run(argv, capture_output=True, check=False).returncode != 0:
                return False
        return True

    def element_dumps(self) -> bool:
        """The observe step's netlink dumps alone: every set of each family."""
        from ipvsproxy.core import nft_rules
        from ipvsproxy.dataplane.nft_netlink import NftSetSocket

        with NftSetSocket() as sock:
            for family in self.desired.families:
                for nft_set in nft_rules.SETS:
                    if sock.elements(family, nft_rules.TABLE, nft_set) is None:
                        return False
        return True

    def listings(self) -> bool:
        """The observe step's processes alone: `nft list table` of each family."""
        return all(self.tool.listing(f) is not None for f in self.desired.families)

    def json_listings(self) -> bool:
        """What the same read would cost as JSON (`nft -j`), the process alone."""
        for family in self.desired.families:
            table = "ip" if family.value == 4 else "ip6"
            argv = ["nft", "-j", "list", "table", table, "ipvsproxy"]
            if subprocess.run(argv, capture_output=True, check=False).returncode != 0:
                return False
        return True

    def change(self, add: bool) -> bool:
        changed = [self.desired.changed]
        error = (
            self.tool.apply_elements(changed, []) if add else self.tool.apply_elements([], changed)
        )
        return error is None


def desired_for(size: int) -> Desired:
    """The desired state of a realistic cluster of ``size`` Services, seen from one node."""
    import ipaddress

    from bench.lib.gen_cluster import build_realistic
    from ipvsproxy.core import ipsets
    from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
    from ipvsproxy.k8s.files import read_cluster

    with tempfile.NamedTemporaryFile("w", suffix=".json") as out:
        json.dump(build_realistic(size), out)
        out.flush()
        cluster = read_cluster([out.name])
    address = ipaddress.ip_address(NODE_ADDRESS)
    node = NodeInfo(name=NODE_NAME, addresses=(address,), local_addresses=frozenset({address}))
    settings = DesiredSettings()
    state = desired_state(cluster.services, cluster.slices, node=node, settings=settings)
    rules_only = replace(state, virtual_servers={}, real_servers={}, addresses=frozenset())
    key = min(state.virtual_servers, key=str)
    entry = ipsets.ip_port_ip_entry(
        ipaddress.ip_address(CHANGED_POD), key.protocol, 8080, ipaddress.ip_address(CHANGED_POD)
    )
    changed = (ipsets.LOOP_BACK.name, entry)
    return Desired(state, rules_only, settings.masquerade, changed)


def tools_work(argv: Sequence[str], stdin: str) -> bool:
    """Whether a tool accepts this input in a fresh namespace (a probe, then discarded)."""
    fresh_namespace()
    try:
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    except OSError:
        return False
    return result.returncode == 0


def available(desired: Desired) -> list[Backend]:
    """The contenders whose tools and kernel support work here."""
    ipset_ok = tools_work(["ipset", "restore"], "create PROBE hash:ip\n")
    found: list[Backend] = []
    for name, backend in ((LEGACY, "legacy"), (IPT_NFT, "nft")):
        probe = "*nat\n:KUBE-PROBE - [0:0]\n-A KUBE-PROBE -j MASQUERADE\nCOMMIT\n"
        if ipset_ok and tools_work([f"iptables-{backend}-restore"], probe):
            found.append(IptablesIpset(name, backend, desired))
        else:
            print(f"  ({name}: its tools or the kernel's support are missing here; left out)")
    nat = "table ip probe {\n\tchain c {\n\t\ttype nat hook postrouting priority srcnat;\n\t}\n}\n"
    if tools_work(["nft", "-f", "-"], nat):
        found.append(Nftables(desired))
    else:
        print(f"  ({NFT}: nft or the kernel's nat chain type is missing here; left out)")
    return found


def set_entries(desired: Desired) -> int:
    return sum(len(entries) for entries in desired.state.ipsets.values())


def measure(size: int, runs: int) -> tuple[dict[str, Any], bool]:
    desired = desired_for(size)
    backends = available(desired)
    families = "+".join(f"IPv{f.value}" for f in desired.families)
    print(
        f"\n== {size} Services: {set_entries(desired)} set entries in "
        f"{sum(1 for e in desired.state.ipsets.values() if e)} non-empty sets ({families}); "
        f"medians of {runs} rounds after one warm-up, wall and CPU (process + tools) in ms"
    )
    times: dict[str, dict[str, list[tuple[float, float]]]] = {
        b.name: {step: [] for step in (*STEPS, *EXTRA)} for b in backends
    }
    ok = bool(backends)
    for round_ in range(runs + 1):
        order = backends[round_ % len(backends) :] + backends[: round_ % len(backends)]
        for backend in order:
            fresh_namespace()
            results: list[tuple[str, float, float, bool]] = []
            wall, cpu, done = timed(backend.cold_sync)
            results += [(step, w, c, True) for step, (w, c) in backend.parts.items()]
            results.append(("cold sync", wall, cpu, done and backend.observe()))
            wall, cpu, done = timed(backend.observe)
            results.append(("observe", wall, cpu, done))
            if isinstance(backend, IptablesIpset) and backend.fingerprinted.backend == "legacy":
                backend.observe_fingerprinted()  # the first read saves; later ones need not
                wall, cpu, done = timed(backend.observe_fingerprinted)
                results.append(("observe, fingerprint", wall, cpu, done))
            if isinstance(backend, IptablesIpset):
                for step, fn in (
                    ("observe: ipset dump alone", backend.ipset_dump),
                    ("observe: iptables-save alone", backend.iptables_save),
                ):
                    wall, cpu, done = timed(fn)
                    results.append((step, wall, cpu, done))
            if isinstance(backend, Nftables):
                for step, fn in (
                    ("observe: nft list alone", backend.listings),
                    ("observe: nft -j list alone", backend.json_listings),
                    ("observe, text read", backend.text_observe),
                    ("observe: nft -t list alone", backend.terse_listings),
                    ("observe: netlink element dumps alone", backend.element_dumps),
                ):
                    wall, cpu, done = timed(fn)
                    results.append((step, wall, cpu, done))
            for step, add in (("add one element", True), ("remove one element", False)):
                wall, cpu, done = timed(partial(backend.change, add))
                results.append((step, wall, cpu, done))
            # after adding and removing, the kernel must hold the desired state again
            results[-1] = (*results[-1][:3], results[-1][3] and backend.observe())
            for step, wall, cpu, good in results:
                if not good:
                    print(f"  WRONG: {backend.name}, {step}: the kernel does not hold the state")
                    ok = False
                if round_:  # the first round warms up (modules, page cache)
                    times[backend.name][step].append((wall, cpu))
    return report(size, desired, times), ok


def report(
    size: int, desired: Desired, times: dict[str, dict[str, list[tuple[float, float]]]]
) -> dict[str, Any]:
    """Print the table of medians and ratios; the figures as JSON-ready values."""
    names = list(times)
    medians: dict[str, dict[str, dict[str, float]]] = {
        name: {
            step: {
                "wall_ms": statistics.median(w for w, _ in samples) * 1000,
                "cpu_ms": statistics.median(c for _, c in samples) * 1000,
            }
            for step, samples in steps.items()
            if samples
        }
        for name, steps in times.items()
    }
    baselines = [name for name in names if name != NFT]
    width = max(len(name) for name in names) if names else 10
    head = "".join(f"{name:>{width + 2}}" for name in names)
    ratios = "".join(f"{'nft / ' + name.split(' ')[0]:>{width + 2}}" for name in baselines)
    print(f"  {'step':36}{head}{ratios if NFT in names else ''}")
    rows: list[dict[str, Any]] = []
    for step in (*STEPS, *EXTRA):
        for unit in ("wall_ms", "cpu_ms"):
            values = {n: medians[n][step][unit] for n in names if step in medians[n]}
            if not values:
                continue
            label = f"{step}, {'wall' if unit == 'wall_ms' else 'CPU'}"
            cells = "".join(
                f"{values[n]:>{width + 2}.2f}" if n in values else f"{'-':>{width + 2}}"
                for n in names
            )
            row: dict[str, Any] = {"step": step, "unit": unit, "values": values, "ratios": {}}
            if NFT in values:
                for base in baselines:
                    if base in values and values[base] > 0:
                        row["ratios"][base] = values[NFT] / values[base]
                cells += "".join(
                    f"{row['ratios'][b]:>{width + 2}.2f}" if b in row["ratios"] else ""
                    for b in baselines
                )
            rows.append(row)
            print(f"  {label:36}{cells}")
    return {
        "services": size,
        "set_entries": set_entries(desired),
        "families": [f.value for f in desired.families],
        "backends": names,
        "medians": medians,
        "rows": rows,
    }


def in_guest(args: argparse.Namespace) -> int:
    """Run this command again inside the qemu guest; its output is echoed."""
    from ipvsproxy_testkit.sandbox.qemu import run_in_qemu

    argv = [sys.executable, "-m", "bench.bench_rules_backend", "--here"]
    argv += ["--sizes", *map(str, args.sizes), "--runs", str(args.runs)]
    target = None
    if args.json:
        target = os.path.abspath(args.json)
        argv += ["--json", target]
    result = run_in_qemu(
        argv,
        timeout=3600,
        mem="2G",
        cwd=str(ROOT),
        on_output=lambda chunk: print(chunk, end="", flush=True),
    )
    print(f"(guest kernel {result.kernel_release}, qemu TCG; {os.cpu_count()} host cores, shared)")
    return result.exit_status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100 Services, 2 rounds")
    parser.add_argument("--guest", choices=["qemu"], help="run in this test kernel instead")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here, as JSON")
    parser.add_argument("--here", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.runs = [100], 2
    if args.guest and not args.here:
        return in_guest(args)
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    print(f"kernel {os.uname().release}; {os.cpu_count()} cores, shared")
    results: dict[str, Any] = {}
    ok = True
    for size in args.sizes:
        figures, good = measure(size, args.runs)
        results[str(size)] = figures
        ok = ok and good
    print("\nresult check:", "ok" if ok else "WRONG")
    if args.json:
        Path(args.json).write_text(json.dumps({"ok": ok, "sizes": results}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
