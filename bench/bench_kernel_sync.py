"""Program a real kernel (the sandbox) with a synthetic cluster; time each subsystem.

    python bench/bench_kernel_sync.py [--services 500] [--endpoints 10]

Boots the user-mode-linux kernel and, in a fresh network namespace, runs a cold sync of
the cluster, then a no-op sync, timing every adapter call. Then, in another fresh namespace,
it programs the same IPVS content with `ipvsadm -R` and the same ipset entries with one
`ipset restore`, side by side. The guest kernel is slow (every system call traps to the
host), so only the ratios between lines of one run mean anything, never absolute figures.
It checks its own result: the kernel must hold exactly the desired virtual and real servers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_cluster import build

from ipvsproxy.apply import Dataplanes
from ipvsproxy.desired import DesiredSettings, NodeInfo, desired_state
from ipvsproxy.k8s.files import read_cluster
from ipvsproxy.model import KernelState
from ipvsproxy.render import ipvsadm_dest_line


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


def in_guest(cluster_file: str) -> int:
    from loguru import logger

    from ipvsproxy.dataplane.ipset import IPSetTool
    from ipvsproxy.dataplane.iptables import IptablesTool
    from ipvsproxy.dataplane.ipvs import IpvsSocket
    from ipvsproxy.dataplane.links import LinkTool
    from ipvsproxy.dataplane.sysctl import ensure_sysctls
    from ipvsproxy.proxier import sync
    from ipvsproxy.sandbox.netns import enter_netns

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    cluster = read_cluster([cluster_file])
    state = desired_state(
        cluster.services, cluster.slices, node=NodeInfo(), settings=DesiredSettings()
    )
    real = sum(len(v) for v in state.real_servers.values())
    print(
        f"cluster: {len(cluster.services)} Services -> {len(state.virtual_servers)} virtual "
        f"servers, {real} real servers, {len(state.addresses)} addresses"
    )
    ok = True
    with enter_netns("bench-proxy"):
        ensure_sysctls()
        for label in ("cold sync", "no-op sync"):
            table: dict[str, float] = defaultdict(float)
            links = LinkTool()
            with IpvsSocket() as ipvs:
                dataplanes = Dataplanes(
                    ipvs=Timed("ipvs", ipvs, table),
                    links=Timed("links", links, table),
                    ipsets=Timed("ipset", IPSetTool(), table),
                    iptables=Timed("iptables", IptablesTool("legacy"), table),
                )
                seconds, outcome = clock(lambda: sync(state, dataplanes))  # noqa: B023
                writes = ipvs.writes
            links.close()
            print(
                f"\n{label}: {seconds:.2f} s, {len(outcome.plan)} operations, {writes} IPVS writes"
            )
            for name, spent in sorted(table.items(), key=lambda item: -item[1]):
                print(f"  {name:<28} {spent:7.2f} s")
            ok = ok and outcome.result.ok
        listed = subprocess.run(["ipvsadm", "-Ln"], capture_output=True, text=True, check=True)
        dests = sum(line.startswith("  -> ") for line in listed.stdout.splitlines()[3:])
        services = sum(not line.startswith("  -> ") for line in listed.stdout.splitlines()[3:])
        ok = ok and (services, dests) == (len(state.virtual_servers), real)
        sample = next(iter(next(iter(state.real_servers.values())).values()))
        ok = ok and ipvsadm_dest_line(sample) in listed.stdout

    with enter_netns("bench-tools"):
        rules = ipvsadm_rules(state)
        seconds, _ = clock(
            lambda: subprocess.run(["ipvsadm", "-R"], input=rules, text=True, check=True)
        )
        print(f"\nipvsadm -R, same IPVS content: {seconds:.2f} s")
        payload = "".join(
            f"create {name} hash:ip,port family {'inet6' if '-6-' in name else 'inet'} -exist\n"
            + "".join(f"add {name} {e}\n" for e in entries)
            for name, entries in state.ipsets.items()
            if entries and name.endswith("CLUSTER-IP")
        )
        seconds, _ = clock(
            lambda: subprocess.run(
                ["ipset", "restore", "-exist"], input=payload, text=True, check=True
            )
        )
        print(f"ipset restore, the CLUSTER-IP entries: {seconds:.2f} s")
    print("\nresult check:", "ok" if ok else "WRONG")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--in-guest", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_guest:
        return in_guest(args.in_guest)

    from ipvsproxy.sandbox.uml import run_in_guest, shared_tempdir

    workdir = shared_tempdir("ipvsproxy-bench-")
    try:
        cluster_file = os.path.join(workdir, "cluster.json")
        with open(cluster_file, "w") as out:
            json.dump(build(args.services, args.endpoints), out)
        result = run_in_guest(
            [sys.executable, os.path.abspath(__file__), "--in-guest", cluster_file],
            timeout=1800,
            on_output=lambda chunk: print(chunk, end="", flush=True),
        )
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    print(f"(guest kernel {result.kernel_release})")
    return result.exit_status


if __name__ == "__main__":
    sys.exit(main())
