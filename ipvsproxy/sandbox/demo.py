"""The demo: boot the sandbox kernel, sync an example cluster, send traffic through it.

    python -m ipvsproxy.sandbox.demo [-f deploy/demo/cluster.yaml]

Inside the guest, four backend pods and a client pod are network namespaces around the
node's namespace; `ipvsproxy once` programs the node from the cluster file; `ipvsadm -Ln`
shows the result; then 40 TCP requests to a ClusterIP show where they landed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from pathlib import Path

DEFAULT_CLUSTER = Path(__file__).resolve().parents[2] / "deploy" / "demo" / "cluster.yaml"
BACKENDS = {f"pod-{i}": f"10.244.{i}.1" for i in range(1, 5)}


def _show(title: str, argv: list[str]) -> None:
    print(f"\n$ {' '.join(argv)}    # {title}", flush=True)
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    sys.stdout.write(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} exited {result.returncode}")


def in_guest(cluster: str) -> None:
    from ipvsproxy.sandbox.netns import enter_netns
    from ipvsproxy.sandbox.pods import PodNetwork

    with enter_netns("demo-node"), PodNetwork() as network:
        client = network.add_pod("client", "10.244.0.2")
        pods = [network.add_pod(name, ip) for name, ip in BACKENDS.items()]
        network.serve(8080, pods)
        print("pods: client 10.244.0.2; " + ", ".join(f"{n} {ip}" for n, ip in BACKENDS.items()))
        _show("program the node", [sys.executable, "-m", "ipvsproxy.cli", "once", "-f", cluster])
        _show("what the kernel holds", ["ipvsadm", "-Ln"])
        for vip, label in (("10.96.0.10", "web (rr)"), ("10.96.0.20", "web-sticky (ClientIP)")):
            replies = network.tcp_requests(vip, 80, 40, source=client)
            tally = Counter(replies)
            print(f"\n40 TCP requests from the client pod to {vip}:80, {label}:")
            for name in sorted(BACKENDS):
                hits = tally.get(name, 0)
                print(f"  {name} ({BACKENDS[name]}): {hits:3d} {'#' * hits}")
        udp = Counter(network.udp_requests("10.96.0.10", 53, 40, source=client))
        print(
            "\n40 UDP requests to 10.96.0.10:53: " + ", ".join(f"{n} {udp[n]}" for n in sorted(udp))
        )
        _show(
            "remove everything the proxy created",
            [sys.executable, "-m", "ipvsproxy.cli", "cleanup"],
        )
        _show("nothing left", ["ipvsadm", "-Ln"])


def main() -> None:
    parser = argparse.ArgumentParser(description="ipvsproxy demo in a user-mode-linux kernel")
    parser.add_argument("-f", "--filename", default=str(DEFAULT_CLUSTER))
    parser.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cluster = str(Path(args.filename).resolve())
    if args.in_guest:
        in_guest(cluster)
        return

    from ipvsproxy.sandbox.uml import run_in_guest

    print("booting the sandbox kernel (user-mode-linux) ...", flush=True)
    result = run_in_guest(
        [sys.executable, "-m", "ipvsproxy.sandbox.demo", "--in-guest", "-f", cluster],
        timeout=600,
        on_output=lambda chunk: print(chunk, end="", flush=True),
    )
    print(f"\n(guest kernel {result.kernel_release}, booted in {result.boot_seconds:.1f} s)")
    sys.exit(result.exit_status)


if __name__ == "__main__":
    main()
