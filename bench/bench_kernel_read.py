"""Reading the kernel: the full resync's observe step against the real tools, side by side.

    python -m bench.bench_kernel_read [--sizes 1000 5000] [--endpoints 3] [--runs 5] [--quick]

Boots the user-mode-linux kernel once; for each size (a number of IPVS virtual servers) it
programs a synthetic cluster with ipvsproxy in a fresh network namespace, then, round after
round, times the observe step of a full resync (IPVS, kube-ipvs0 addresses, ipsets,
iptables) and its parts, the real tools reading the same state (`ipvsadm -Ln`, `ipset save`,
`iptables-legacy-save` for each family), alternative ways to read ipsets (one netlink dump,
or `ipset save` and its text) and iptables (the legacy tables' fingerprint while they are
unchanged; a process per family or per table and family, one after another or all at
once), and alternative ways to read IPVS:

- one socket, one GET_DEST dump per virtual server (what ipvsadm does, and the old reader);
- several sockets, one dump in flight on each (the kernel runs one dump per socket);
- one GET_SERVICE dump for the services plus one read of /proc/net/ip_vs for the real
  servers (the file lacks service flags, so services still come from netlink).

Medians of --runs rounds, the contenders interleaved within each round. The guest kernel is
slow and the host shared: only the ratios of one run mean anything. It checks its results:
every IPVS reader must return exactly what the kernel was programmed with.
"""

from __future__ import annotations

import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.lib import kernel_bench
from bench.lib.gen_cluster import build

SOCKETS = 4


# Figures per size, written as JSON for the host (kernel_bench.finish_in_guest).
RESULTS: dict[str, dict[str, Any]] = {}


def elapsed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def multi_socket_snapshot(sockets: list[Any]) -> dict[Any, Any]:
    """Every virtual server with its real servers, one GET_DEST dump in flight per socket."""
    from ipvsproxy.dataplane.ipvs_codec import (
        encode_get_dests,
    )
    from ipvsproxy.dataplane.ipvs_decode import (
        SkippedEntry,
        address_af,
        parse_dest,
    )
    from ipvsproxy.dataplane.netlink import NLMSG_DONE, NLMSG_ERROR

    first = sockets[0]
    family_id = first.family_id
    pending = iter(first.virtual_servers())
    result: dict[Any, Any] = {}
    inflight: dict[int, list[Any]] = {}
    poller = select.poll()

    def start(sock: Any) -> bool:
        server = next(pending, None)
        if server is None:
            return False
        seq = sock._next_seq()
        sock._send(encode_get_dests(server.key, family_id=family_id, seq=seq))
        inflight[sock._sock.fileno()] = [sock, server, seq, []]
        return True

    for sock in sockets:
        if start(sock):
            poller.register(sock._sock.fileno(), select.POLLIN)
    while inflight:
        for fd, _event in poller.poll(10_000):
            sock, server, seq, payloads = inflight[fd]
            done = False
            for message in sock._recv_checked():
                if message.seq != seq:
                    continue
                if message.type == family_id:
                    payloads.append(message.payload)
                elif message.type in (NLMSG_DONE, NLMSG_ERROR):
                    done = True
            if done:
                af = address_af(server.address)
                reals = [parse_dest(p, service_af=af) for p in payloads]
                result[server.key] = (
                    server,
                    {r.key: r for r in reals if not isinstance(r, SkippedEntry)},
                )
                del inflight[fd]
                if not start(sock):
                    poller.unregister(fd)
    return result


def run_tool(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def per_service_snapshot(ipvs: Any) -> dict[Any, Any]:
    """The previous reader: one GET_SERVICE dump, then one GET_DEST dump per service."""
    return {
        server.key: (server, {real.key: real for real in ipvs.real_servers(server.key)})
        for server in ipvs.virtual_servers()
    }


def proc_alone() -> object:
    from ipvsproxy.dataplane.ipvs import PROC_IP_VS
    from ipvsproxy.dataplane.ipvs_proc import parse_proc_ip_vs

    with open(PROC_IP_VS) as listing:
        return parse_proc_ip_vs(listing.read())


def concurrently(*fns: Callable[[], object]) -> list[object]:
    """Run the calls in threads at once (each waits on a process or a socket)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(fns)) as pool:
        return [future.result() for future in [pool.submit(fn) for fn in fns]]


def per_table_read(family: Any) -> object:
    """The previous iptables read: a `-t` process for each table ipvsproxy writes."""
    from ipvsproxy.dataplane.iptables import TABLES, parse_save

    tool = f"{'iptables' if family.value == 4 else 'ip6tables'}-legacy-save"
    text = "".join(
        subprocess.run([tool, "-t", t], check=True, capture_output=True, text=True).stdout
        for t in TABLES
    )
    return parse_save(text)


def measure(path: str, runs: int) -> bool:
    """Program one cluster in a fresh namespace and time every reader; True if all agree."""
    from ipvsproxy_testkit.sandbox.netns import enter_netns

    from ipvsproxy.agent.full_sync import full_sync, observe
    from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
    from ipvsproxy.core.ipsets import all_set_names
    from ipvsproxy.core.model import DUMMY_INTERFACE, IPFamily
    from ipvsproxy.dataplane.interfaces import Dataplanes
    from ipvsproxy.dataplane.ipset import IPSetTool
    from ipvsproxy.dataplane.ipset_netlink import read_sets
    from ipvsproxy.dataplane.iptables import IptablesTool
    from ipvsproxy.dataplane.ipvs import IpvsSocket
    from ipvsproxy.dataplane.links import LinkTool
    from ipvsproxy.dataplane.sysctl import ensure_sysctls
    from ipvsproxy.dataplane.xtables_rules import XtablesRules
    from ipvsproxy.k8s.files import read_cluster

    cluster = read_cluster([path])
    state = desired_state(
        cluster.services, cluster.slices, node=NodeInfo(), settings=DesiredSettings()
    )
    real = sum(len(v) for v in state.real_servers.values())
    families = tuple(state.iptables)
    print(
        f"\n== {len(state.virtual_servers)} virtual servers, {real} real servers, "
        f"{len(state.addresses)} addresses ({len(cluster.services)} Services); "
        f"medians of {runs} rounds"
    )
    ok = True
    with enter_netns(f"read-{len(state.virtual_servers)}"):
        ensure_sysctls()
        links = LinkTool()
        ipvs = IpvsSocket()
        socks = [IpvsSocket() for _ in range(SOCKETS)]
        dataplanes = Dataplanes(
            ipvs=ipvs, links=links, rules=XtablesRules(IPSetTool(), IptablesTool("legacy"))
        )
        ok = full_sync(state, dataplanes).result.ok
        expected = {
            key: (server, dict(state.real_servers[key]))
            for key, server in state.virtual_servers.items()
        }
        readers: dict[str, Callable[[], dict[Any, Any]]] = {
            "one socket, a dump per service": lambda: per_service_snapshot(ipvs),
            f"{SOCKETS} sockets, dumps in flight": lambda: multi_socket_snapshot(socks),
            "services dump + /proc/net/ip_vs": ipvs.snapshot,
        }
        for name, reader in readers.items():
            got = reader()
            if got.keys() != expected.keys() or not all(
                got[k][0].same_settings(expected[k][0]) and got[k][1] == expected[k][1]
                for k in expected
            ):
                print(f"WRONG: the reader '{name}' disagrees with the programmed state")
                ok = False
        names = all_set_names()
        save_tool = IPSetTool(netlink=None)
        if read_sets(names) != save_tool.read(names):
            print("WRONG: the netlink ipset read disagrees with ipset save")
            ok = False
        iptables = IptablesTool("legacy", fingerprint=False)
        assert isinstance(dataplanes.rules, XtablesRules)
        steady = dataplanes.rules.iptables  # fingerprints the tables, saves only when they change
        saving = Dataplanes(ipvs=ipvs, links=links, rules=XtablesRules(IPSetTool(), iptables))
        if any(
            iptables.read(f).tables != per_table_read(f) or steady.read(f) != iptables.read(f)
            for f in families
        ):
            print("WRONG: the one-process iptables read disagrees with the per-table one")
            ok = False
        contenders: dict[str, Callable[[], object]] = {
            "observe (whole)": lambda: observe(dataplanes, families),
            "observe, iptables changed (saved)": lambda: observe(saving, families),
        }
        contenders.update({f"  IPVS: {name}": fn for name, fn in readers.items()})
        contenders.update(
            {
                "  IPVS: /proc/net/ip_vs alone (incomplete)": proc_alone,
                "  kube-ipvs0 addresses": lambda: links.addresses(DUMMY_INTERFACE),
                "  ipsets: one netlink dump": lambda: read_sets(names),
                "  ipsets: ipset save + parse": lambda: save_tool.read(names),
                "  iptables: fingerprint, unchanged": lambda: [steady.read(f) for f in families],
                "  iptables: a save per family": lambda: [iptables.read(f) for f in families],
                "  iptables: a save per family, at once": lambda: concurrently(
                    *[lambda f=f: iptables.read(f) for f in families]
                ),
                "  iptables: a save per table and family": lambda: [
                    per_table_read(f) for f in families
                ],
                "  all but IPVS at once": lambda: concurrently(
                    lambda: links.addresses(DUMMY_INTERFACE),
                    lambda: read_sets(names),
                    *[lambda f=f: iptables.read(f) for f in families],
                ),
                "ipvsadm -Ln": lambda: run_tool("ipvsadm", "-Ln"),
                "ipset save": lambda: run_tool("ipset", "save"),
                "iptables-legacy-save": lambda: run_tool("iptables-legacy-save"),
            }
        )
        if IPFamily.V6 in families:
            contenders["ip6tables-legacy-save"] = lambda: run_tool("ip6tables-legacy-save")
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(runs):
            for name, fn in contenders.items():
                times[name].append(elapsed(fn))
        med = {name: statistics.median(values) for name, values in times.items()}
        tools = ["ipvsadm -Ln", "ipset save", "iptables-legacy-save", "ip6tables-legacy-save"]
        med["the tools together"] = sum(med.get(t, 0.0) for t in tools)
        ipvsadm = med["ipvsadm -Ln"]
        print(f"  {'':46} {'median s':>9} {'/ ipvsadm -Ln':>14}")
        for name, value in med.items():
            print(f"  {name:46} {value:9.3f} {value / ipvsadm:14.2f}")
        ratio = med["observe (whole)"] / med["the tools together"]
        RESULTS[str(len(state.virtual_servers))] = {
            "virtual_servers": len(state.virtual_servers),
            "real_servers": real,
            "medians": {name.strip(): value for name, value in med.items()},
        }
        print(f"  ratio observe / the tools together: {ratio:.2f}")
        for sock in socks:
            sock.close()
        ipvs.close()
        links.close()
    return ok


def main() -> int:
    return kernel_bench.main(
        __doc__,
        "bench.bench_kernel_read",
        sizes=[1000, 5000],
        options={"runs": (5, None)},
        quick={"sizes": [100], "runs": 2},
        quick_help="100 virtual servers, 2 rounds",
        cluster=lambda size, endpoints: build(kernel_bench.services_for(size), endpoints),
        measure=lambda files, args: all([measure(path, args.runs) for path in files]),
        results=RESULTS,
    )


if __name__ == "__main__":
    sys.exit(main())
