"""Crash consistency: `ipvsproxy run` killed with SIGKILL at a random point of a cold sync,
of a partial sync and of a shrinking sync, then restarted, in the sandbox kernel.

The point is picked per seed: the agent runs under a small wrapper that counts the kernel
operations its adapters are given (IPVS messages, addresses, ipset lines, iptables
restores) and SIGKILLs the process after the Nth, part-way through a batch. After each
restart the kernel must hold exactly what the objects ask for, another tool's virtual
server, address, chain and set must be untouched, and a client sending requests to an
unchanged Service the whole time must see no failure. bench/runs/crash_sweep.py runs more seeds.

Half of the Services are NodePorts, whose virtual servers sit on host addresses (the
other tool's address among them) rather than on kube-ipvs0: those deleted during a killed
sync, or while no agent ran at all, must be gone after the restart, and `cleanup` must
remove the rest, leaving the other tool's virtual server on the same address.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentproc import AGENT_CONFIG, CLUSTER_IP, Agent, Traffic, tool, wait_for
from ipvsproxy_testkit.sandbox.pods import PodNetwork
from ipvsproxy_testkit.testapi import TestAPIServer, kubeconfig
from ipvsproxy_testkit.testapi.resources import ENDPOINT_SLICES, SERVICES

pytestmark = pytest.mark.kernel

# One seed per kind of sync here (each restart of the agent costs half a minute in the
# guest); bench/runs/crash_sweep.py runs more.
SEEDS = [int(s) for s in os.environ.get("IPVSPROXY_CRASH_SEEDS", "1").split(",")]
OTHERS = 40  # Services besides `web`, three endpoints each (no pods behind: IPVS needs none)
NODE_PORT_FROM = 20  # s20 and up are NodePorts, 30000 + i
FOREIGN = "192.0.2.10"
WEB_ENDPOINTS = ("10.244.1.1", "10.244.2.1")

WRAPPER = '''
"""ipvsproxy run, SIGKILLed after the Nth kernel operation once the arm file names N."""
import os, signal, sys

ARM = os.environ["IPVSPROXY_TEST_CRASH_FILE"]
left = None


def budget():
    global left
    if left is None:
        try:
            with open(ARM) as f:
                left = int(f.read())
        except (OSError, ValueError):
            return None
    return left


def wrap(cls, name, index):
    original = getattr(cls, name)

    def wrapped(self, *args):
        global left
        n = budget()
        if n is None:
            return original(self, *args)
        items = args[index]
        many = isinstance(items, (list, tuple))
        ops = list(items) if many else [items]
        if len(ops) < n:
            left = n - len(ops)
            return original(self, *args)
        if many and n > 0:
            part = list(args)
            part[index] = ops[:n]
            original(self, *part)
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(cls, name, wrapped)


from ipvsproxy.dataplane.ipset import IPSetTool
from ipvsproxy.dataplane.iptables import IptablesTool
from ipvsproxy.dataplane.ipvs import IpvsSocket
from ipvsproxy.dataplane.links import LinkTool

wrap(IpvsSocket, "execute", 0)
wrap(LinkTool, "bind", 1)
wrap(LinkTool, "unbind", 1)
wrap(IPSetTool, "apply", 0)
wrap(IPSetTool, "destroy", 0)
wrap(IptablesTool, "restore", 0)

from ipvsproxy.cli import main

sys.exit(main(sys.argv[1:]))
'''


def node_port(name: str) -> int:
    index = int(name[1:]) if name[0] == "s" and name[1:].isdigit() else -1
    return 30000 + index if index >= NODE_PORT_FROM else 0


def service(name: str, ip: str) -> dict[str, Any]:
    port: dict[str, Any] = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}
    spec: dict[str, Any] = {"clusterIP": ip, "clusterIPs": [ip], "ports": [port]}
    if node_port(name):
        port["nodePort"] = node_port(name)
        spec["type"] = "NodePort"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "crash"},
        "spec": spec,
    }


def endpoint_slice(name: str, addresses: tuple[str, ...]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-1",
            "namespace": "crash",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
    }


class Cluster:
    """The API server's objects and what the kernel must hold for them."""

    def __init__(self, api: TestAPIServer) -> None:
        self.api = api
        self.services: dict[str, tuple[str, tuple[str, ...]]] = {"web": (CLUSTER_IP, WEB_ENDPOINTS)}
        for i in range(OTHERS):
            self.services[f"s{i}"] = (
                f"10.96.1.{i + 1}",
                tuple(f"10.250.{i}.{k}" for k in (1, 2, 3)),
            )
        for name, (ip, endpoints) in self.services.items():
            api.store.create(SERVICES, "crash", service(name, ip))
            api.store.create(ENDPOINT_SLICES, "crash", endpoint_slice(name, endpoints))

    def move(self, name: str, endpoints: tuple[str, ...]) -> None:
        ip, _ = self.services[name]
        self.services[name] = (ip, endpoints)
        self.api.store.replace(
            ENDPOINT_SLICES, "crash", f"{name}-1", endpoint_slice(name, endpoints)
        )

    def add(self, name: str, ip: str, endpoints: tuple[str, ...]) -> None:
        self.services[name] = (ip, endpoints)
        self.api.store.create(SERVICES, "crash", service(name, ip))
        self.api.store.create(ENDPOINT_SLICES, "crash", endpoint_slice(name, endpoints))

    def delete(self, name: str) -> None:
        del self.services[name]
        self.api.store.delete(ENDPOINT_SLICES, "crash", f"{name}-1")
        self.api.store.delete(SERVICES, "crash", name)

    def expected_ipvs(self) -> dict[str, set[str]]:
        expected: dict[str, set[str]] = {}
        hosts = host_addresses()
        for name, (ip, endpoints) in self.services.items():
            servers = {f"{a}:8080 1" for a in endpoints}
            expected[f"TCP {ip}:80 rr"] = servers
            if node_port(name):
                for host in hosts:
                    expected[f"TCP {host}:{node_port(name)} rr"] = servers
        return expected

    def converged(self) -> bool:
        ours = {k: v for k, v in ipvs_view().items() if k != FOREIGN_SERVER}
        if ours != self.expected_ipvs():
            return False
        bound = {
            line.split()[3].split("/")[0]
            for line in tool("ip", "-o", "-4", "addr", "show", "dev", "kube-ipvs0").splitlines()
        }
        members = {
            line.split()[2]
            for line in tool("ipset", "save", "KUBE-CLUSTER-IP").splitlines()
            if line.startswith("add ")
        }
        ips = {ip for ip, _ in self.services.values()}
        return bound == ips and members == {f"{ip},tcp:80" for ip in ips}


def host_addresses() -> set[str]:
    """The node's IPv4 addresses that serve NodePorts: all but loopback and kube-ipvs0's."""
    found = set()
    for line in tool("ip", "-o", "-4", "addr", "show").splitlines():
        fields = line.split()
        if fields[1] not in ("lo", "kube-ipvs0"):
            found.add(fields[3].split("/")[0])
    return found


FOREIGN_SERVER = f"TCP {FOREIGN}:443 wlc"


def ipvs_view() -> dict[str, set[str]]:
    """Virtual server -> its real servers with weights, from `ipvsadm -Ln`."""
    view: dict[str, set[str]] = {}
    current = ""
    for line in tool("ipvsadm", "-Ln").splitlines()[3:]:
        fields = line.split()
        if line.startswith("  -> "):
            view[current].add(f"{fields[1]} {fields[3]}")
        else:
            current = " ".join(fields[:3])
            view[current] = set()
    return view


def add_foreign() -> None:
    """Another tool's state: a keepalived-style virtual server on its own address (a host
    address, so the NodePorts are served there too), a chain and a set of its own."""
    tool("ipvsadm", "-A", "-t", "192.0.2.10:443", "-s", "wlc")
    tool("ipvsadm", "-a", "-t", "192.0.2.10:443", "-r", "10.1.1.1:443", "-m")
    tool("ip", "link", "add", "foreign0", "type", "dummy")
    tool("ip", "addr", "add", "192.0.2.10/32", "dev", "foreign0")
    tool("iptables-legacy", "-t", "nat", "-N", "FOREIGN")
    tool(
        "iptables-legacy",
        "-t",
        "nat",
        "-A",
        "FOREIGN",
        "-p",
        "tcp",
        "--dport",
        "443",
        "-j",
        "RETURN",
    )
    tool("ipset", "create", "FOREIGN-SET", "hash:ip")
    tool("ipset", "add", "FOREIGN-SET", "192.0.2.10")


def foreign() -> tuple[object, ...]:
    return (
        {k: v for k, v in ipvs_view().items() if k == FOREIGN_SERVER},
        tool("ip", "-o", "addr", "show", "dev", "foreign0"),
        [
            line
            for line in tool("iptables-legacy-save", "-t", "nat").splitlines()
            if "FOREIGN" in line
        ],
        tool("ipset", "save", "FOREIGN-SET"),
    )


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Cluster, Path, Path]]:
    with PodNetwork() as pods, TestAPIServer().start() as api:
        for index, address in enumerate(WEB_ENDPOINTS, 1):
            pods.add_pod(f"web{index}", address)
        pods.serve(8080)
        cluster = Cluster(api)
        kubeconfig_path = tmp_path / "kubeconfig"
        kubeconfig_path.write_text(kubeconfig(api.url))
        config = tmp_path / "kube-proxy.yaml"
        config.write_text(AGENT_CONFIG)
        add_foreign()
        yield cluster, kubeconfig_path, config


class Runner:
    """Starts agents under the crash wrapper; arms the next kill."""

    def __init__(self, workdir: Path, kubeconfig_path: Path, config: Path) -> None:
        self.workdir = workdir
        self.kubeconfig_path = kubeconfig_path
        self.config = config
        self.wrapper = workdir / "crashing_agent.py"
        self.wrapper.write_text(WRAPPER)
        self.arm_file = workdir / "crash-after"
        self.env = {**os.environ, "IPVSPROXY_TEST_CRASH_FILE": str(self.arm_file)}
        self.agents: list[Agent] = []
        self.events: list[tuple[float, str]] = []  # (monotonic time, what), for failures

    def start(self) -> Agent:
        agent = Agent(
            self.workdir, self.kubeconfig_path, self.config, entry=[str(self.wrapper)], env=self.env
        )
        self.agents.append(agent)
        self.events.append((time.monotonic(), "agent started"))
        return agent

    def arm(self, operations: int) -> None:
        self.arm_file.write_text(str(operations))

    def disarm(self) -> None:
        self.arm_file.unlink(missing_ok=True)

    def killed(self, agent: Agent) -> None:
        wait_for("the agent to kill itself mid-sync", lambda: agent.process.poll() is not None, 90)
        assert agent.process.returncode == -signal.SIGKILL, agent.log()
        self.events.append((time.monotonic(), "agent killed"))
        agent.stop()  # closes its log

    def converged(self, agent: Agent, cluster: Cluster, before: tuple[object, ...]) -> None:
        try:
            agent.wait_synced()
            wait_for("the kernel to hold the desired state", cluster.converged, 30, 0.5)
        except AssertionError:
            print("--- agent log ---", agent.log(), ipvs_view(), sep="\n")
            for argv in (
                ["ss", "-ltn"],
                ["ss", "-tan"],
                ["iptables-legacy-save"],
                ["ip", "-o", "addr"],
                ["ip", "route", "show", "table", "local"],
                ["ipset", "list", "-t"],
            ):
                done = subprocess.run(argv, capture_output=True, text=True, check=False)
                print(f"--- {' '.join(argv)}", done.stdout[-3000:], sep="\n")
            raise
        assert foreign() == before

    def close(self) -> None:
        for agent in self.agents:
            if agent.process.poll() is None:
                agent.stop(signal.SIGKILL)


def cleanup() -> None:
    """What a node without the proxy holds: everything of ours removed, others' kept."""
    from ipvsproxy.agent.cleanup import cleanup as remove_ours
    from ipvsproxy.cli import _dataplanes, _rules_choice

    # As `ipvsproxy cleanup` opens them: every backend's objects are removed.
    with _dataplanes("legacy", _rules_choice("iptables"), every_backend=True) as dataplanes:
        assert remove_ours(dataplanes) == []
    assert set(ipvs_view()) == {FOREIGN_SERVER}


def test_sigkill_at_random_points_then_restart(
    setup: tuple[Cluster, Path, Path], tmp_path: Path
) -> None:
    cluster, kubeconfig_path, config = setup
    before = foreign()
    runner = Runner(tmp_path, kubeconfig_path, config)
    kills: list[str] = []
    try:
        # Cold syncs: a clean node, killed after N of about 250 operations.
        agent: Agent | None = None
        for seed in SEEDS:
            if agent is not None:
                agent.stop(signal.SIGKILL)
                cleanup()
            point = random.Random(seed).randint(1, 160)
            runner.arm(point)
            runner.killed(runner.start())
            runner.disarm()
            agent = runner.start()
            runner.converged(agent, cluster, before)
            runner.events.append((time.monotonic(), "converged"))
            kills.append(f"cold@{point}")
        assert agent is not None

        with Traffic() as traffic:
            traffic.wait_replies(5)
            # Partial syncs: 20 Services' endpoints all change (60 and more operations).
            for seed in SEEDS:
                rng = random.Random(100 + seed)
                point = rng.randint(1, 60)
                runner.arm(point)
                runner.events.append((time.monotonic(), "armed; endpoints change"))
                for i in range(20):
                    cluster.move(f"s{i}", tuple(f"10.251.{i}.{seed * 3 + k}" for k in (1, 2, 3)))
                runner.killed(agent)
                runner.disarm()
                agent = runner.start()
                runner.converged(agent, cluster, before)
                runner.events.append((time.monotonic(), "converged"))
                traffic.wait_replies(3)
                kills.append(f"partial@{point}")
            # Shrinking syncs: 6 Services deleted (18 and more operations).
            for seed in SEEDS:
                deletable = sorted(set(cluster.services) - {"web"} - {f"s{i}" for i in range(20)})
                if len(deletable) < 6:  # grown back first (longer sweeps)
                    for i in range(20, OTHERS):
                        if f"s{i}" not in cluster.services:
                            cluster.add(f"s{i}", f"10.96.1.{i + 1}", (f"10.250.{i}.1",))
                    wait_for("the Services back", cluster.converged, 30)
                    deletable = sorted(
                        set(cluster.services) - {"web"} - {f"s{i}" for i in range(20)}
                    )
                point = random.Random(200 + seed).randint(1, 18)
                runner.arm(point)
                runner.events.append((time.monotonic(), "armed; Services deleted"))
                for name in deletable[:6]:
                    cluster.delete(name)
                runner.killed(agent)
                runner.disarm()
                agent = runner.start()
                runner.converged(agent, cluster, before)
                runner.events.append((time.monotonic(), "converged"))
                traffic.wait_replies(3)
                kills.append(f"shrink@{point}")
            # NodePort Services deleted while no agent runs (a restart, a switch-over):
            # the next agent has only the kernel to tell it their virtual servers are its.
            agent.stop(signal.SIGKILL)
            gone = sorted(n for n in cluster.services if node_port(n))[:2]
            assert len(gone) == 2, cluster.services
            for name in gone:
                cluster.delete(name)
            agent = runner.start()
            runner.converged(agent, cluster, before)
            assert not any(f":{node_port(n)} " in k for n in gone for k in ipvs_view())
            traffic.wait_replies(3)
            kills.append("stopped, 2 NodePorts deleted")
        agent.stop(signal.SIGKILL)
        cleanup()  # checks that only the other tool's virtual server is left
        assert foreign() == before
        print(
            f"crash test: {len(kills)} SIGKILLs ({', '.join(kills)}); "
            f"{len(traffic.replies)} requests to web, {len(traffic.failures)} failed"
        )
        if traffic.failures:
            start = runner.events[0][0]
            for t, what in sorted(
                [*runner.events, *((t, "request failed") for t in traffic.failed_at)]
            ):
                print(f"{t - start:7.1f} s  {what}")
        assert traffic.failures == [], traffic.failures[:5]
        assert {"web1", "web2"} <= set(traffic.replies)
    finally:
        runner.close()
