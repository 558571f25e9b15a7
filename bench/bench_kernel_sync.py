"""Program a real kernel (the sandbox) with a synthetic cluster, side by side with the tools.

    python -m bench.bench_kernel_sync [--sizes 1000 5000] [--endpoints 3] [--runs 3] [--quick]

Boots the user-mode-linux kernel once. For each size (a number of IPVS virtual servers) and
each round, in a fresh network namespace, it runs a cold sync of the cluster with ipvsproxy,
timing every adapter call, then a no-op sync; then, in another fresh namespace, it programs
the same IPVS content with `ipvsadm -R` and the same ipset operations (every set, as our
adapter would send them) with one bare `ipset restore`. Medians of the rounds; the guest
kernel is slow (every system call traps to the host) and the host is shared, so only the
ratios between lines of one run mean anything, never absolute figures. It checks its own
result: the kernel must hold exactly the desired virtual and real servers.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from bench.lib import kernel_bench
from bench.lib.gen_cluster import build
from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
from ipvsproxy.core.model import KernelState
from ipvsproxy.core.render import ipvsadm_dest_line
from ipvsproxy.dataplane.interfaces import Dataplanes
from ipvsproxy.dataplane.xtables_rules import XtablesRules
from ipvsproxy.k8s.files import read_cluster


class Timed:
    """Wraps an adapter; adds each method call's seconds to a shared table."""

    def __init__(self, name: str, inner: Any, table: dict[str, float]) -> None:
        self._name, self._inner, self._table = name, inner, table

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._inner, attr)
        if not callable(value):
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self._table[f"{self._name}.{attr}"] += time.perf_counter() - start

        return timed


def ipvsadm_rules(state: KernelState) -> str:
    """The desired IPVS content as `ipvsadm -R` input."""
    flag = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}
    lines = []
    for key, server in state.virtual_servers.items():
        host = str(key.address) if key.address.version == 4 else f"[{key.address}]"
        target = f"{flag[key.protocol.value]} {host}:{key.port}"
        lines.append(f"-A {target} -s {server.scheduler}")
        for rs in state.real_servers[key].values():
            rs_host = str(rs.address) if rs.address.version == 4 else f"[{rs.address}]"
            lines.append(f"-a {target} -r {rs_host}:{rs.port} -m -w {rs.weight}")
    return "\n".join(lines) + "\n"


def clock(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


# Figures per size, written as JSON for the host (kernel_bench.finish_in_guest).
RESULTS: dict[str, dict[str, Any]] = {}


def one_round(state: KernelState, name: str) -> tuple[dict[str, float], bool]:
    """One cold sync and one no-op sync by ipvsproxy, then the tools on the same content,
    each in a fresh namespace. Returns the timings and whether the result was right."""
    from ipvsproxy_testkit.sandbox.netns import enter_netns

    from ipvsproxy.agent.full_sync import full_sync
    from ipvsproxy.core.operations import AddIPSetEntry, CreateIPSet, DeleteIPSetEntry
    from ipvsproxy.dataplane.ipset import IPSetTool, restore_line
    from ipvsproxy.dataplane.iptables import IptablesTool
    from ipvsproxy.dataplane.ipvs import IpvsSocket
    from ipvsproxy.dataplane.links import LinkTool
    from ipvsproxy.dataplane.sysctl import ensure_sysctls

    real = sum(len(v) for v in state.real_servers.values())
    figures: dict[str, float] = {}
    ok = True
    with enter_netns(f"sync-{name}"):
        ensure_sysctls()
        for label in ("cold sync", "no-op sync"):
            table: dict[str, float] = defaultdict(float)
            links = LinkTool()
            with IpvsSocket() as ipvs:
                dataplanes = Dataplanes(
                    ipvs=Timed("ipvs", ipvs, table),
                    links=Timed("links", links, table),
                    rules=XtablesRules(
                        Timed("ipset", IPSetTool(), table),
                        Timed("iptables", IptablesTool("legacy"), table),
                    ),
                )
                seconds, outcome = clock(lambda: full_sync(state, dataplanes))  # noqa: B023
            links.close()
            figures[label] = seconds
            for call, spent in table.items():
                figures[f"{label}: {call}"] = spent
            ok = ok and outcome.result.ok
            if label == "cold sync":
                ipset_ops = [
                    op
                    for op in outcome.plan.operations
                    if isinstance(op, CreateIPSet | AddIPSetEntry | DeleteIPSetEntry)
                ]
                figures["operations"] = len(outcome.plan)
        listed = subprocess.run(["ipvsadm", "-Ln"], capture_output=True, text=True, check=True)
        lines = listed.stdout.splitlines()[3:]
        dests = sum(line.startswith("  -> ") for line in lines)
        ok = ok and (len(lines) - dests, dests) == (len(state.virtual_servers), real)
        sample = next(iter(next(iter(state.real_servers.values())).values()))
        ok = ok and ipvsadm_dest_line(sample) in listed.stdout

    with enter_netns(f"tools-{name}"):
        rules = ipvsadm_rules(state)
        figures["ipvsadm -R"], _ = clock(
            lambda: subprocess.run(["ipvsadm", "-R"], input=rules, text=True, check=True)
        )
        payload = "".join(restore_line(op) + "\n" for op in ipset_ops)
        figures["ipset restore"], _ = clock(
            lambda: subprocess.run(
                ["ipset", "restore", "-exist"], input=payload, text=True, check=True
            )
        )
    figures["ipset entries"] = sum(isinstance(op, AddIPSetEntry) for op in ipset_ops)
    return figures, ok


def in_guest(cluster_files: list[str], runs: int) -> bool:
    ok = True
    for path in cluster_files:
        cluster = read_cluster([path])
        state = desired_state(
            cluster.services, cluster.slices, node=NodeInfo(), settings=DesiredSettings()
        )
        real = sum(len(v) for v in state.real_servers.values())
        rounds: list[dict[str, float]] = []
        for index in range(runs):
            figures, good = one_round(state, f"{len(state.virtual_servers)}-{index}")
            rounds.append(figures)
            ok = ok and good
        med = {
            key: statistics.median(r.get(key, 0.0) for r in rounds)
            for key in sorted({k for r in rounds for k in r})
        }
        ipvs_messages = len(state.virtual_servers) + real
        print(
            f"\n== {len(state.virtual_servers)} virtual servers, {real} real servers "
            f"({ipvs_messages} IPVS messages), {int(med['ipset entries'])} ipset entries, "
            f"{len(state.addresses)} addresses ({len(cluster.services)} Services); "
            f"medians of {runs} rounds, seconds"
        )
        for label in ("cold sync", "no-op sync"):
            print(f"  {label:<40} {med[label]:8.2f}")
            parts = {k.split(": ", 1)[1]: v for k, v in med.items() if k.startswith(label + ": ")}
            for call, spent in sorted(parts.items(), key=lambda item: -item[1]):
                if spent >= 0.005:
                    print(f"    {call:<38} {spent:8.2f}")
        RESULTS[str(len(state.virtual_servers))] = {
            "virtual_servers": len(state.virtual_servers),
            "real_servers": real,
            "medians": med,
        }
        ours, theirs = med["cold sync: ipvs.execute"], med["ipvsadm -R"]
        print(f"  {'ipvsadm -R, same IPVS content':<40} {theirs:8.2f}")
        print(f"  {'ratio ipvsadm -R / our IPVS writes':<40} {theirs / ours:8.2f}")
        ours, theirs = med["cold sync: ipset.apply"], med["ipset restore"]
        print(f"  {'ipset restore, same ipset lines':<40} {theirs:8.2f}")
        print(f"  {'ratio ipset restore / our ipset writes':<40} {theirs / ours:8.2f}")
    return ok


def main() -> int:
    return kernel_bench.main(
        __doc__,
        "bench.bench_kernel_sync",
        sizes=[1000, 5000],
        options={"runs": (3, None)},
        quick={"sizes": [100], "runs": 2},
        quick_help="100 virtual servers, 2 rounds",
        cluster=lambda size, endpoints: build(kernel_bench.services_for(size), endpoints),
        measure=lambda files, args: in_guest(files, args.runs),
        results=RESULTS,
        endpoints_help="ready endpoints per Service",
    )


if __name__ == "__main__":
    sys.exit(main())
