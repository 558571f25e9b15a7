"""The live demo: a test kernel, a test API server, `ipvsproxy run`, and the real kubectl.

    python -m ipvsproxy_testkit.sandbox.demo [--shell]

Inside the user-mode-linux guest, five backend pods and a client pod are network
namespaces around the node's namespace. The test API server serves the cluster in
deploy/demo/live-cluster.yaml; `ipvsproxy run` watches it, with deploy/'s own ConfigMap as
its configuration. Then kubectl changes the cluster and the demo times how long the kernel
takes to follow, reading IPVS directly. With --shell, a shell is left in the guest with
all of it still running.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ipvsproxy_testkit.sandbox.pods import PodNetwork
    from ipvsproxy_testkit.testapi import Store

# The repository: the demo reads deploy/ (testkit/ipvsproxy_testkit/sandbox/demo.py -> ../../..)
ROOT = Path(__file__).resolve().parents[3]
# Relative to ROOT, where the guest runs (shorter to read in the commands shown).
CLUSTER = Path("deploy/demo/live-cluster.yaml")
ADDED = Path("deploy/demo/api-service.yaml")
CONFIG = Path("deploy/base/configmap.yaml")
PODS = {f"pod-{i}": f"10.244.{i}.1" for i in range(1, 6)}
NODE = "demo-node"
WEB = ("10.96.0.10", 80)
API = ("10.96.0.30", 80)
# What the agent and verify are told about the node: the same, or verify sees drift.
AGENT_OPTIONS = [
    "--config", str(CONFIG), "--hostname-override", NODE, "--iptables-backend", "legacy"
]  # fmt: skip
METRICS = "http://127.0.0.1:10249/metrics"  # the agent's default metrics address
FOLLOW_TIMEOUT = 10.0  # seconds; the demo fails if the kernel has not followed by then


_ALL_WEB = {PODS[f"pod-{i}"] for i in range(1, 5)}
_ENDPOINTS = ",".join(
    f'{{"addresses":["{ip}"],"conditions":{{"ready":true}}}}' for ip in sorted(_ALL_WEB)
)
# (what, the kubectl command, the real servers the kernel must then hold, for which ClusterIP)
STEPS: tuple[tuple[str, list[str], set[str], tuple[str, int]], ...] = (
    (
        "scale web down to 2 endpoints (what the EndpointSlice controller would write)",
        ["kubectl", "patch", "endpointslice", "web-7xk2p", "--type=json", "-p",
         '[{"op":"remove","path":"/endpoints/3"},{"op":"remove","path":"/endpoints/2"}]'],
        {PODS["pod-1"], PODS["pod-2"]},
        WEB,
    ),
    (
        "scale web back up to 4 endpoints",
        ["kubectl", "patch", "endpointslice", "web-7xk2p", "--type=merge",
         "-p", f'{{"endpoints":[{_ENDPOINTS}]}}'],
        _ALL_WEB,
        WEB,
    ),
    (
        "add a Service, api 10.96.0.30:80 on pod-5",
        ["kubectl", "create", "-f", str(ADDED)],
        {PODS["pod-5"]},
        API,
    ),
)  # fmt: skip


def sync_counts() -> dict[str, int]:
    """Successful syncs by mode, from the agent's own metrics."""
    import urllib.request

    with urllib.request.urlopen(METRICS, timeout=5) as answer:
        text = answer.read().decode()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("ipvsproxy_syncs_total{") and 'result="success"' in line:
            mode = line.split('mode="', 1)[1].split('"', 1)[0]
            counts[mode] = counts.get(mode, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(argv: list[str], *, title: str = "", env: dict[str, str] | None = None) -> str:
    """Run and show a command and its output, as if typed."""
    print(f"\n$ {shlex.join(argv)}" + (f"    # {title}" if title else ""), flush=True)
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    sys.stdout.write(result.stdout + result.stderr)
    sys.stdout.flush()
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} exited {result.returncode}")
    return result.stdout


def real_servers(address: str, port: int) -> set[str] | None:
    """The serving real servers of a TCP virtual server, as the kernel holds them (None:
    no such virtual server). A removed endpoint's real server drains at weight 0 until
    its connections are gone, so only those with a weight count."""
    from ipvsproxy.dataplane.ipvs import IpvsSocket

    with IpvsSocket() as ipvs:
        snapshot = ipvs.snapshot()
    for key, (_, servers) in snapshot.items():
        if str(key.address) == address and key.port == port and key.protocol.value == "TCP":
            return {str(rs.address) for rs in servers.values() if rs.weight > 0}
    return None


def wait_until(check: Callable[[], bool], *, timeout: float, progress: str = "") -> float:
    """Seconds until check() held; polls every 10 ms, prints a dot a second if asked."""
    start = time.monotonic()
    next_dot = start + 1.0
    while not check():
        now = time.monotonic()
        if now - start > timeout:
            raise SystemExit(f"\ngave up after {timeout:g} s")
        if progress and now >= next_dot:
            print(progress, end="", flush=True)
            next_dot += 1.0
        time.sleep(0.01)
    return time.monotonic() - start


def tally(network: PodNetwork, address: str, port: int, count: int = 40) -> None:
    replies = Counter(network.tcp_requests(address, port, count, source="client"))
    print(f"{count} TCP requests from the client pod to {address}:{port} landed on:")
    for name in sorted(PODS):
        if replies.get(name):
            print(f"  {name} ({PODS[name]}) {replies[name]:3d} {'#' * replies[name]}")


def follow(
    title: str,
    argv: list[str],
    *,
    env: dict[str, str],
    store: Store,
    expected: set[str],
    vip: tuple[str, int],
) -> float:
    """Change the cluster with kubectl; the seconds from the API server's last write to
    the kernel holding the expected real servers, both polled every 10 ms."""
    say(title)
    print(f"$ {shlex.join(argv)}", flush=True)
    before = store.resource_version
    kubectl = subprocess.Popen(argv, env=env)
    written: float | None = None
    followed: float | None = None
    deadline = time.monotonic() + FOLLOW_TIMEOUT
    while followed is None or kubectl.poll() is None:
        now = time.monotonic()
        if followed is None and store.resource_version != before:
            written = now  # the last write before the kernel followed
            before = store.resource_version
        if written is not None and followed is None and real_servers(*vip) == expected:
            followed = now
        if now > deadline:
            kubectl.kill()
            raise SystemExit(f"the kernel did not follow within {FOLLOW_TIMEOUT:g} s")
        time.sleep(0.01)
    if kubectl.returncode != 0:
        raise SystemExit(f"kubectl exited {kubectl.returncode}")
    assert written is not None
    seconds = followed - written
    print(
        f"-> the kernel followed {seconds:.2f} s after the API server's write: "
        f"{vip[0]}:{vip[1]} now sends to {len(expected)} real server(s)"
        " (removed ones drain at weight 0 until their connections end)",
        flush=True,
    )
    return seconds


def in_guest(shell: bool) -> int:
    from loguru import logger

    from ipvsproxy.k8s.files import load_documents
    from ipvsproxy_testkit.sandbox.netns import enter_netns
    from ipvsproxy_testkit.sandbox.pods import NODE_GATEWAY_V4, PodNetwork
    from ipvsproxy_testkit.testapi import Store, TestAPIServer, kubeconfig

    logger.remove()  # the API server's request log would drown the demo
    logger.add(sys.stderr, level="WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="ipvsproxy-demo-"))
    # What the DaemonSet's privileged init container does, here in the guest's initial
    # network namespace: the only one where the conntrack table size can be raised.
    run(["ipvsproxy", "sysctls", "--config", str(CONFIG)], title="the init container's step")
    with enter_netns(NODE), PodNetwork() as network:
        network.add_pod("client", "10.244.0.2")
        network.serve(8080, [network.add_pod(name, ip) for name, ip in PODS.items()])
        print("pods: client 10.244.0.2, " + ", ".join(f"{n} {ip}" for n, ip in PODS.items()))

        store = Store()
        store.load(loaded.obj for loaded in load_documents(str(CLUSTER)))
        server = TestAPIServer(store).start()
        config_file = workdir / "kubeconfig"
        config_file.write_text(kubeconfig(server.url, namespace="demo"))
        env = {**os.environ, "KUBECONFIG": str(config_file)}
        print(f"test API server: {server.url}, serving {CLUSTER}")

        agent_log = workdir / "agent.log"
        agent_argv = ["ipvsproxy", "run", "--master", server.url, *AGENT_OPTIONS]
        say("start the agent: " + shlex.join(agent_argv))
        with open(agent_log, "w") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "ipvsproxy.cli", *agent_argv[1:]],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            print("waiting for its first sync (the guest takes ~7 s to load the kubernetes client)")
            seconds = wait_until(
                lambda: real_servers(*WEB) == _ALL_WEB,
                timeout=90,
                progress=".",
            )
            print(f"\nfirst sync done {seconds:.1f} s after start")
            run(["ipvsadm", "-Ln"], title="what the kernel holds now")
            say("traffic through the web ClusterIP")
            tally(network, *WEB)
            say("traffic through web's NodePort, on the node's address the pods route through")
            tally(network, NODE_GATEWAY_V4, 30080, count=20)
            udp = Counter(network.udp_requests("10.96.0.53", 53, 20, source="client"))
            print(
                "20 UDP requests to dns 10.96.0.53:53: "
                + ", ".join(f"{n} {udp[n]}" for n in sorted(udp))
            )

            times = []
            for title, argv, expected, vip in STEPS:
                times.append(follow(title, argv, env=env, store=store, expected=expected, vip=vip))
                tally(network, *vip, count=40 if vip == WEB else 10)
            run(["kubectl", "get", "services,endpointslices", "-A"], env=env)
            run(["ipvsadm", "-Ln"], title="the kernel now")
            run(
                ["ipvsproxy", "verify", "--master", server.url, *AGENT_OPTIONS],
                title="the whole node checked against the API server",
            )
            syncs = sync_counts()
            print(f"\nthe agent's syncs so far (from its /metrics): {syncs}")

            say("what this showed")
            print(
                "ipvsproxy ran as a node agent against an API server and programmed a real Linux\n"
                "kernel's IPVS: requests to each ClusterIP were spread over the Service's pods.\n"
                "Each change made with kubectl (endpoints down from 4 to 2, back up to 4, a new\n"
                f"Service) reached the kernel within {max(times):.2f} s of the API server\n"
                f"taking it ({', '.join(f'{t:.2f} s' for t in times)}), through partial syncs\n"
                "that touched only the changed Service "
                f"({syncs.get('partial', 0)} partial, {syncs.get('full', 0)} full so far)."
            )
            if shell:
                return _shell(env, server.url, agent_log)
            return 0
        except BaseException:
            print(f"\nthe agent's log ({agent_log}), last lines:", flush=True)
            print("".join(agent_log.read_text().splitlines(keepends=True)[-30:]), flush=True)
            raise
        finally:
            agent.terminate()
            agent.wait(timeout=10)
            server.stop()


def _shell(env: dict[str, str], url: str, agent_log: Path) -> int:
    say("a shell in the guest (exit or Ctrl-D to leave)")
    print(
        f"The API server ({url}), the agent and kubectl are running; try:\n"
        "  kubectl get endpointslices -A\n"
        "  kubectl delete service -n demo api; ipvsadm -Ln\n"
        f"  ipvsproxy verify --master $MASTER {shlex.join(AGENT_OPTIONS)}\n"
        f"  tail {agent_log}",
        flush=True,
    )
    shell_env = {**env, "MASTER": url, "PS1": "guest# "}
    return subprocess.call(["/bin/bash", "--norc", "-i"], env=shell_env)


def main() -> None:
    parser = argparse.ArgumentParser(description="ipvsproxy live demo in a user-mode-linux kernel")
    parser.add_argument("--shell", action="store_true", help="leave a shell in the guest")
    parser.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_guest:
        sys.exit(in_guest(args.shell))

    from ipvsproxy_testkit.sandbox.uml import run_in_guest

    print("booting the sandbox kernel (user-mode-linux) ...", flush=True)
    argv = [sys.executable, "-m", "ipvsproxy_testkit.sandbox.demo", "--in-guest"]
    if args.shell:
        argv.append("--shell")
    result = run_in_guest(
        argv,
        timeout=600 if not args.shell else 24 * 3600,
        env={"PYTHONUNBUFFERED": "1", "TERM": os.environ.get("TERM", "dumb")},
        interactive=args.shell,
        cwd=str(ROOT),
        on_output=lambda chunk: print(chunk, end="", flush=True),
    )
    print(f"\n(guest kernel {result.kernel_release}, booted in {result.boot_seconds:.1f} s)")
    sys.exit(result.exit_status)


if __name__ == "__main__":
    main()
