"""As deployed: `kubectl kustomize deploy/`, the image built from the Dockerfile, and the
agent, together, through a node's life, in the sandbox kernel.

The DaemonSet's init container and container run from the image's root filesystem under
crun, translated from the pod spec as kubelet would (ipvsproxy_testkit.sandbox.kubelet:
args with $(NODE_NAME), env, securityContext, volumes, host network); the probes are
polled as kubelet polls them. The API server (the test API server) answers only on a node
address, reached through kube-proxy's kubeconfig.conf as deploy/ mounts it. A client
sends requests to a Service the whole time; each step prints how many failed:

- a cold start: init container, then the agent, until the readiness probe passes;
- the container killed (SIGKILL) and restarted, as kubelet restarts it;
- a rolling update: SIGTERM, then a new pod, init container included;
- a NodePort Service deleted while no agent runs: gone after the next start;
- a reboot: the kernel emptied, then the pod started again;
- the switch-over: the kernel as kube-proxy's IPVS mode leaves it
  (ipvsproxy_testkit.sandbox.kube_proxy_state), then the pod, which adopts it with no
  IPVS message; the guide's node checks; the rollback: kube-proxy's first sync again, only
  the steering objects deploy/README.md lists left, and its commands removing them.

A hollow agent's pod (deploy/hollow) runs from the same image on a pod network namespace.

The image is built (or found, by content) on the host before the guest boots
(tests/kernel/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentproc import (
    CLUSTER_IP,
    Traffic,
    cli,
    endpoint_slice,
    metric,
    service,
    tool,
    wait_for,
)
from guide import guide_block
from ipvsproxy_testkit.sandbox.guest import GUEST_SCRATCH
from ipvsproxy_testkit.sandbox.kernel_snapshot import kernel_snapshot
from ipvsproxy_testkit.sandbox.kube_proxy_state import (
    KubeProxyState,
    desired_state,
    node_addresses,
    program,
)
from ipvsproxy_testkit.sandbox.kubelet import (
    Container,
    PodContext,
    PodRunner,
    image_config,
    probe,
)
from ipvsproxy_testkit.sandbox.netns import netns_path
from ipvsproxy_testkit.sandbox.pods import PodNetwork
from ipvsproxy_testkit.testapi import TestAPIServer
from ipvsproxy_testkit.testapi.resources import ENDPOINT_SLICES, SERVICES

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
NODE = "node-a"
NODE_ADDRESS = "192.168.50.1"
NODE_PORT = 30080
READY_TIMEOUT = 120.0  # the agent imports the kubernetes client in a slow guest


def built_image() -> dict[str, Any]:
    error = os.environ.get("IPVSPROXY_IMAGE_ERROR")
    if error:
        pytest.fail(f"the image could not be built on the host: {error}")
    raw = os.environ.get("IPVSPROXY_IMAGE")
    if not raw:
        pytest.fail("IPVSPROXY_IMAGE is not set: tests/kernel/conftest.py builds the image")
    info: dict[str, Any] = json.loads(raw)
    return info


def kustomize() -> list[dict[str, Any]]:
    text = tool("kubectl", "kustomize", str(ROOT / "deploy"))
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def kube_proxy_kubeconfig(server: str) -> str:
    """kubeadm's kube-proxy ConfigMap's kubeconfig.conf, pointing at this API server."""
    document = yaml.safe_load(
        (ROOT / "deploy/overlays/without-kube-proxy/kubeconfig.conf").read_text()
    )
    document["clusters"][0]["cluster"]["server"] = server
    return yaml.safe_dump(document)


def node_port_service() -> dict[str, Any]:
    obj = service()
    obj["metadata"]["name"] = "np"
    obj["spec"].update(type="NodePort", clusterIP="10.96.0.11", clusterIPs=["10.96.0.11"])
    obj["spec"]["ports"][0]["nodePort"] = NODE_PORT
    return obj


def node_port_slice() -> dict[str, Any]:
    obj = endpoint_slice("10.244.1.1")
    obj["metadata"].update(name="np-1", labels={"kubernetes.io/service-name": "np"})
    return obj


def virtual_servers() -> set[str]:
    return {
        " ".join(line.split()[:2])
        for line in tool("ipvsadm", "-Ln").splitlines()[3:]
        if not line.startswith("  ->")
    }


def test_the_image_holds_the_agent_and_no_test_code() -> None:
    rootfs = Path(built_image()["rootfs"])
    (site,) = (rootfs / "opt/ipvsproxy/lib").glob("python3*/site-packages")
    packages = {p.name for p in site.iterdir()}
    assert "ipvsproxy" in packages
    assert not {p for p in packages if p.startswith(("ipvsproxy_testkit", "pip", "setuptools"))}
    assert not list(site.glob("ipvsproxy*/**/sandbox")) and not list(site.glob("**/testapi"))
    assert (rootfs / "opt/ipvsproxy/bin/ipvsproxy").exists()
    assert not (rootfs / "src").exists()  # the build stage's tree stays there
    # What the agent executes is there; what only built the venv is not, nor full perl
    # (perl-base, which dpkg needs, stays, as in debian:12-slim).
    for binary in ("ipset", "nft", "iptables-legacy-restore", "iptables-nft-restore"):
        assert (rootfs / "usr/sbin" / binary).exists(), binary
    for gone in ("usr/share/perl", "usr/bin/pip3", "usr/share/python-wheels", "etc/ssl/certs"):
        assert not (rootfs / gone).exists(), gone
    # Bytecode was compiled in the build: nothing is compiled at start on the read-only root.
    assert list((site / "kubernetes/client/__pycache__").glob("api_client.*.pyc"))


class Node:
    """The pod on this node, started and stopped as kubelet would."""

    def __init__(self, objects: list[dict[str, Any]], api: TestAPIServer, workdir: Path) -> None:
        info = built_image()
        self.image = image_config(Path(info["rootfs"]), info["entrypoint"], info["env"])
        self.rootfs = Path(info["rootfs"])
        self.template = find(objects, "DaemonSet", "ipvsproxy")["spec"]["template"]
        config = dict(find(objects, "ConfigMap", "ipvsproxy")["data"])
        # As kind's kube-proxy configuration says: the conntrack table's size is global,
        # read-only outside the initial network namespace the test runs in.
        conf = yaml.safe_load(config["config.conf"])
        conf["conntrack"] = {"maxPerCore": 0}
        config["config.conf"] = yaml.safe_dump(conf)
        self.config_maps = {
            "ipvsproxy": config,
            "kube-proxy": {"kubeconfig.conf": kube_proxy_kubeconfig(api.url)},
        }
        self.workdir = workdir
        self.pods = 0
        self.agent: Container | None = None
        self.runner: PodRunner | None = None

    def start_pod(self) -> float:
        """A new pod: init containers, then the agent until ready; seconds it took."""
        started = time.monotonic()
        self.pods += 1
        context = PodContext(
            NODE,
            self.config_maps,
            pod_name=f"ipvsproxy-{self.pods}",
            host_paths={"/lib/modules": f"{GUEST_SCRATCH}/lib/modules"},
        )
        self.runner = PodRunner(
            self.template, self.rootfs, self.image, context, self.workdir / f"pod{self.pods}"
        )
        self.runner.run_init_containers()
        self.start_container()
        return time.monotonic() - started

    def start_container(self) -> None:
        assert self.runner is not None
        self.agent = self.runner.start(self.runner.container("ipvsproxy"))
        self.wait_ready()

    def wait_ready(self) -> None:
        assert self.runner is not None and self.agent is not None
        spec = self.runner.container("ipvsproxy")
        agent = self.agent

        def ready() -> bool:
            if agent.process.poll() is not None:
                raise AssertionError(f"container exited {agent.process.returncode}:\n{agent.log()}")
            return probe(spec["readinessProbe"]) == 200

        try:
            wait_for("the readiness probe", ready, READY_TIMEOUT, 0.5)
        except AssertionError:
            print(agent.log()[-5000:])
            raise
        assert probe(spec["livenessProbe"]) == 200

    def log(self) -> str:
        return self.agent.log() if self.agent is not None else ""


def ensure_cgroup2() -> None:
    """crun reads the cgroup mode from /sys/fs/cgroup, even with no cgroup manager; a
    node has it mounted, the sandbox guest not until asked."""
    mounts = Path("/proc/mounts").read_text().split()
    if "/sys/fs/cgroup" not in mounts:
        tool("mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup")


def node_link() -> None:
    """The node's own address, where the API server answers."""
    tool("ip", "link", "add", "node0", "type", "dummy")
    tool("ip", "addr", "add", f"{NODE_ADDRESS}/24", "dev", "node0")
    tool("ip", "link", "set", "node0", "up")


def test_daemonset_from_the_image_through_a_nodes_life(tmp_path: Path) -> None:
    ensure_cgroup2()
    objects = kustomize()
    node_link()
    counts: list[str] = []
    with PodNetwork() as pods, TestAPIServer(host=NODE_ADDRESS).start() as api:
        for index in (1, 2):
            pods.add_pod(f"web{index}", f"10.244.{index}.1")
        pods.serve(8080)
        api.store.create(SERVICES, "shop", service())
        api.store.create(ENDPOINT_SLICES, "shop", endpoint_slice("10.244.1.1", "10.244.2.1"))
        api.store.create(SERVICES, "shop", node_port_service())
        api.store.create(ENDPOINT_SLICES, "shop", node_port_slice())
        node = Node(objects, api, tmp_path)
        try:
            # Cold start on an empty kernel.
            took = node.start_pod()
            assert virtual_servers() >= {f"TCP {CLUSTER_IP}:80", f"TCP {NODE_ADDRESS}:{NODE_PORT}"}
            # The container ran as the spec says: $(NODE_NAME) expanded, capabilities.
            assert node.agent is not None
            args = node.agent.spec["process"]["args"]
            assert args[:2] == ["ipvsproxy", "run"] and f"--hostname-override={NODE}" in args
            assert node.agent.spec["process"]["capabilities"]["effective"] == [
                "CAP_NET_ADMIN",
                "CAP_NET_RAW",
            ]
            counts.append(f"cold start: ready after {took:.1f} s")
            with Traffic() as traffic:
                traffic.wait_replies(5)

                def step(what: str, action: Any) -> None:
                    before = len(traffic.failures)
                    started = time.monotonic()
                    action()
                    traffic.wait_replies(5)
                    failed = len(traffic.failures) - before
                    counts.append(
                        f"{what}: {failed} failed requests, {time.monotonic() - started:.1f} s"
                    )

                def crash_and_restart() -> None:
                    assert node.agent is not None
                    node.agent.kill()
                    node.start_container()

                step("container SIGKILLed and restarted", crash_and_restart)

                def rolling_update() -> None:
                    assert node.agent is not None and node.runner is not None
                    code = node.agent.stop(node.runner.grace)
                    assert code == 0, node.log()  # SIGTERM: a clean exit within the grace
                    node.start_pod()

                step("rolling update (SIGTERM, new pod)", rolling_update)

                def node_port_deleted_while_down() -> None:
                    assert node.agent is not None
                    node.agent.kill()
                    api.store.delete(ENDPOINT_SLICES, "shop", "np-1")
                    api.store.delete(SERVICES, "shop", "np")
                    node.start_container()
                    wait_for(
                        "the NodePort's virtual server gone",
                        lambda: f"TCP {NODE_ADDRESS}:{NODE_PORT}" not in virtual_servers(),
                        30,
                    )

                step("NodePort Service deleted while down", node_port_deleted_while_down)
                assert traffic.failures == [], traffic.failures[:5]

                def reboot() -> None:
                    assert node.agent is not None
                    node.agent.kill()
                    # What a reboot leaves: none of the proxy's kernel state.
                    cli("cleanup")
                    wait_for("the Service down", lambda: traffic.failures != [], 30)
                    node.start_pod()

                step("reboot (empty kernel, new pod)", reboot)
                assert {"web1", "web2"} <= set(traffic.replies[-10:])
        finally:
            if node.agent is not None:
                node.agent.kill()
            print("node life under traffic:", *counts, sep="\n  ")


EXTERNAL_IP = "192.168.50.20"  # on the node's subnet: kube-proxy binds it, we steer it
CLUSTER_CIDR = "10.244.0.0/16"  # deploy/base/configmap.yaml's clusterCIDR


def external_ip_service() -> dict[str, Any]:
    obj = service()
    obj["metadata"]["name"] = "ext"
    obj["spec"].update(clusterIP="10.96.0.12", clusterIPs=["10.96.0.12"], externalIPs=[EXTERNAL_IP])
    return obj


def external_ip_slice() -> dict[str, Any]:
    obj = endpoint_slice("10.244.2.1")
    obj["metadata"].update(name="ext-1", labels={"kubernetes.io/service-name": "ext"})
    return obj


# Objects of ours that kube-proxy does not know (the steering of external IPs), by name.
STEERING = ("KUBE-IPVS-STEER", "KUBE-IPVS-UNMARK", "KUBE-6-IPVS-STEERED", "19280")


def steering_objects(snapshot: set[str]) -> set[str]:
    return {line for line in snapshot if any(name in line for name in STEERING)}


def node_shell(workdir: Path, agent: Container | None = None) -> dict[str, str]:
    """The environment of a shell on the node: iptables is the legacy backend the agent
    chose here; `ipvsproxy` runs in the agent's container (as `kubectl exec` would), where
    the guide's paths (/etc/ipvsproxy/config.conf) and $NODE_NAME are the pod's."""
    shim = workdir / "node-bin"
    shim.mkdir(exist_ok=True)
    for name in ("iptables", "ip6tables", "iptables-save"):
        link = shim / name
        if not link.exists():
            legacy = name.replace("tables", "tables-legacy")
            link.symlink_to(shutil.which(legacy) or f"/usr/sbin/{legacy}")
    if agent is not None:
        program = shim / "ipvsproxy"
        program.write_text(f'#!/bin/sh\nexec crun exec {agent.name} ipvsproxy "$@"\n')
        program.chmod(0o755)
    return {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "NODE_NAME": NODE}


def verify_the_node_as_the_guide_says(workdir: Path, agent: Container) -> None:
    """README.md's "Verifying a node" block, run as printed: every look finds the
    Service, and `ipvsproxy verify`, its last command, exits 0 (in sync)."""
    script = guide_block(ROOT / "README.md", "Verifying a node")
    result = subprocess.run(
        ["sh", "-c", script],
        env=node_shell(workdir, agent),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"TCP  {CLUSTER_IP}:80 rr" in result.stdout  # ipvsadm -Ln
    assert f"{CLUSTER_IP},tcp:80" in result.stdout  # ipset list KUBE-CLUSTER-IP
    assert "-A KUBE-SERVICES" in result.stdout  # iptables-save -t nat | grep KUBE-
    assert "table ip kube-proxy" not in result.stdout  # nft list tables


def remove_steering_leftovers(workdir: Path) -> None:
    """deploy/README.md's commands, as a node's shell runs them."""
    script = guide_block(ROOT / "deploy/README.md", "steering leftovers")
    subprocess.run(["sh", "-c", script], env=node_shell(workdir), check=False, capture_output=True)


def kube_proxys_sync(api: TestAPIServer) -> KubeProxyState:
    """kube-proxy's IPVS-mode sync of what the API server holds, written to the kernel."""
    services, _ = api.store.snapshot(SERVICES)
    slices, _ = api.store.snapshot(ENDPOINT_SLICES)
    state = desired_state(
        [stored.load() for stored in services],
        [stored.load() for stored in slices],
        node_name=NODE,
        node_addresses=node_addresses(),
        cluster_cidr=CLUSTER_CIDR,
    )
    program(state)
    return state


def test_switch_over_from_kube_proxys_ipvs_state_and_back(tmp_path: Path) -> None:
    """The switch-over: the kernel as kube-proxy's IPVS mode leaves it, then the DaemonSet's
    pod adopts it under traffic, sending no IPVS message; the rollback: the pod stopped,
    kube-proxy's first sync over what it left, and what remains of ours is what the
    migration guide lists, removed by the guide's commands."""
    ensure_cgroup2()
    objects = kustomize()
    node_link()
    counts: list[str] = []
    with PodNetwork() as pods, TestAPIServer(host=NODE_ADDRESS).start() as api:
        for index in (1, 2):
            pods.add_pod(f"web{index}", f"10.244.{index}.1")
        pods.serve(8080)
        api.store.create(SERVICES, "shop", service())
        api.store.create(ENDPOINT_SLICES, "shop", endpoint_slice("10.244.1.1", "10.244.2.1"))
        api.store.create(SERVICES, "shop", node_port_service())
        api.store.create(ENDPOINT_SLICES, "shop", node_port_slice())
        api.store.create(SERVICES, "shop", external_ip_service())
        api.store.create(ENDPOINT_SLICES, "shop", external_ip_slice())
        kube_proxys_sync(api)
        kube_proxy = kernel_snapshot()
        node = Node(objects, api, tmp_path)
        try:
            with Traffic() as traffic:
                traffic.wait_replies(5)  # kube-proxy's state carries the Service
                assert traffic.failures == [], traffic.failures[:5]

                def step(what: str, action: Any) -> None:
                    before = len(traffic.failures)
                    started = time.monotonic()
                    action()
                    traffic.wait_replies(5)
                    failed = len(traffic.failures) - before
                    counts.append(
                        f"{what}: {failed} failed requests, {time.monotonic() - started:.1f} s"
                    )

                step("switch-over from kube-proxy's IPVS state (new pod)", node.start_pod)
                # Ready: the first sync is done. Nothing of IPVS was rewritten; one address
                # went: the external IP, steered by port instead of bound to kube-ipvs0.
                assert metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 0
                assert metric('ipvsproxy_netlink_messages_sent_total{subsystem="ipvs"}') == 0
                assert metric('ipvsproxy_netlink_messages_sent_total{subsystem="addresses"}') == 1
                adopted = kernel_snapshot()
                steering = steering_objects(adopted)
                assert kube_proxy - adopted == {
                    f"address {EXTERNAL_IP}/32",
                    f"ipset add KUBE-IPVS-IPS {EXTERNAL_IP}",
                }, node.log()
                assert adopted - kube_proxy == steering, node.log()
                assert {line for line in adopted if line.startswith("ipvs ")} == {
                    line for line in kube_proxy if line.startswith("ipvs ")
                }
                assert node.agent is not None
                verify_the_node_as_the_guide_says(tmp_path, node.agent)

                def rollback() -> None:
                    assert node.agent is not None and node.runner is not None
                    assert node.agent.stop(node.runner.grace) == 0, node.log()
                    kube_proxys_sync(api)

                step("rollback to kube-proxy (SIGTERM, kube-proxy's first sync)", rollback)
                # What kube-proxy does not know stays: the steering objects, nothing else.
                assert kernel_snapshot() - kube_proxy == steering
                assert kube_proxy <= kernel_snapshot()
                step(
                    "the guide's steering leftovers removed",
                    lambda: remove_steering_leftovers(tmp_path),
                )
                assert kernel_snapshot() == kube_proxy
                assert traffic.failures == [], traffic.failures[:5]
        finally:
            if node.agent is not None:
                node.agent.kill()
            print("switch-over and rollback under traffic:", *counts, sep="\n  ")


def scrape(address: str, name: str) -> float:
    """The sum of a metric's samples (`name` may carry labels) at a pod's /metrics."""
    with urllib.request.urlopen(f"http://{address}:10249/metrics", timeout=10) as reply:
        text = reply.read().decode()
    assert f"# HELP {name.split('{', 1)[0].removesuffix('_total')}" in text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name)] in " {"
    )


def test_a_hollow_agent_pod_from_the_image_syncs_against_the_api_server(
    tmp_path: Path,
) -> None:
    """deploy/hollow's pod, from the image under crun on the pod network (the namespace a
    CNI plugin would have set up): it lists and watches the test API server through the
    kubeconfig the manifest mounts, syncs into its in-memory kernel, passes its readiness
    probe at the pod's address, and leaves the node's kernel alone."""
    ensure_cgroup2()
    text = tool("kubectl", "kustomize", str(ROOT / "deploy/hollow"))
    objects = [doc for doc in yaml.safe_load_all(text) if doc]
    node_link()
    with PodNetwork() as pods, TestAPIServer(host=NODE_ADDRESS).start() as api:
        web = pods.add_pod("web1", "10.244.1.1")
        hollow = pods.add_pod("hollow", "10.244.9.1")
        api.store.create(SERVICES, "shop", service())
        api.store.create(ENDPOINT_SLICES, "shop", endpoint_slice(web.ip))
        info = built_image()
        context = PodContext(
            NODE,
            {
                "ipvsproxy-hollow": find(objects, "ConfigMap", "ipvsproxy-hollow")["data"],
                "ipvsproxy-hollow-kubeconfig": {"kubeconfig.conf": kube_proxy_kubeconfig(api.url)},
            },
            namespace="ipvsproxy-hollow",
            pod_name="ipvsproxy-hollow-7d9f8-x2v4k",
            network_namespace=netns_path(hollow.netns),
        )
        template = find(objects, "Deployment", "ipvsproxy-hollow")["spec"]["template"]
        runner = PodRunner(
            template,
            Path(info["rootfs"]),
            image_config(Path(info["rootfs"]), info["entrypoint"], info["env"]),
            context,
            tmp_path / "hollow",
        )
        spec = runner.container("ipvsproxy")
        started = time.monotonic()
        agent = runner.start(spec)
        try:

            def ready() -> bool:
                if agent.process.poll() is not None:
                    raise AssertionError(f"exited {agent.process.returncode}:\n{agent.log()}")
                return probe(spec["readinessProbe"], host=hollow.ip) == 200

            wait_for("the hollow agent's readiness probe", ready, READY_TIMEOUT, 0.5)
            took = time.monotonic() - started
            assert probe(spec["livenessProbe"], host=hollow.ip) == 200
            assert agent.spec["process"]["args"][-2:] == [
                "--hostname-override=ipvsproxy-hollow-7d9f8-x2v4k",
                "--dataplane=fake",
            ]
            assert agent.spec["process"]["user"]["uid"] == 65534
            # Synced into its fake kernel: the Service's virtual server and real server.
            assert scrape(hollow.ip, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 0
            assert scrape(hollow.ip, 'ipvsproxy_netlink_messages_sent_total{subsystem="ipvs"}') >= 2
            # A change reaches it too: a second endpoint, one more real server.
            before = scrape(hollow.ip, 'ipvsproxy_netlink_messages_sent_total{subsystem="ipvs"}')
            api.store.replace(
                ENDPOINT_SLICES, "shop", "web-1", endpoint_slice(web.ip, "10.244.2.1")
            )
            wait_for(
                "the change synced",
                lambda: (
                    scrape(hollow.ip, 'ipvsproxy_netlink_messages_sent_total{subsystem="ipvs"}')
                    > before
                ),
                60,
            )
            # Nothing of it in the node's kernel, nor in the pod's.
            assert virtual_servers() == set()
            assert "kube-ipvs0" not in tool("ip", "link", "show")
            print(f"hollow agent pod: ready after {took:.1f} s")
        except BaseException:
            print(agent.log()[-5000:])
            raise
        finally:
            agent.kill()
