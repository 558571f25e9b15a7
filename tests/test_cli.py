"""The command line on bad and good input, without a kernel (plan only)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from ipvsproxy.cli import EXIT_INPUT, EXIT_OK, main

GOOD = """\
apiVersion: v1
kind: Service
metadata: {name: good, namespace: ns}
spec:
  clusterIP: 10.96.0.1
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: bad-ip, namespace: ns}
spec:
  clusterIP: 10.96.0.300
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: bad-port, namespace: ns}
spec:
  clusterIP: 10.96.0.2
  ports: [{name: http, port: 70000}]
---
apiVersion: v1
kind: Service
metadata: {name: bad-protocol, namespace: ns}
spec:
  clusterIP: 10.96.0.3
  ports: [{name: http, port: 80, protocol: ICMP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: no-label, namespace: ns}
addressType: IPv4
endpoints: [{addresses: [10.244.0.9]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: good-1
  namespace: ns
  labels: {kubernetes.io/service-name: good}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.0.5]}]
"""


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_needs_no_rules_tool_on_the_machine_it_runs_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(GOOD)
    monkeypatch.setenv("PATH", str(tmp_path))  # no iptables, ipset or nft here
    for backend, section in (("nftables", "table ip ipvsproxy"), ("auto", "KUBE-SERVICES")):
        code, out, err = run(capsys, "plan", "-f", str(path), "--rules-backend", backend)
        assert code == EXIT_OK, err
        assert section in out


def test_invalid_objects_are_skipped_with_one_warning_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(GOOD)
    code, out, err = run(capsys, "plan", "-f", str(path), "--section", "ipvs")
    assert code == EXIT_OK
    assert out.splitlines()[3:] == [
        "TCP  10.96.0.1:80 rr",
        "  -> 10.244.0.5:8080              Masq    1      0          0         ",
    ]
    warnings = [line for line in err.splitlines() if line.startswith("W")]  # klog's W lines
    for name in ("ns/bad-ip", "ns/bad-port", "ns/bad-protocol", "ns/no-label"):
        assert sum(name in line for line in warnings) == 1, (name, warnings)
    assert len(warnings) == 4
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("kind: Service\nmetadata: {name: x\n", "line", id="yaml-syntax"),
        pytest.param('{"kind": "List", "items": [}', "line 1", id="json-syntax"),
        pytest.param("kind: Service\n---\n- a list\n", "line 3", id="not-a-mapping"),
    ],
)
def test_malformed_file_exits_2_naming_file_and_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(content)
    code, out, err = run(capsys, "plan", "-f", str(path))
    assert code == EXIT_INPUT
    assert out == ""
    assert "broken.yaml" in err
    assert expected in err
    assert "Traceback" not in err


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "plan", "-f", str(tmp_path / "nope.yaml"))
    assert code == EXIT_INPUT
    assert "nope.yaml" in err


def test_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = tmp_path / "c.yaml"
    cluster.write_text(GOOD)
    config = tmp_path / "kpc.yaml"
    config.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
        "iptables: {masqueradeBit: 40}\n"
    )
    code, _, err = run(capsys, "plan", "-f", str(cluster), "--config", str(config))
    assert code == EXIT_INPUT
    assert "masqueradeBit" in err


def test_config_scheduler_cluster_cidr_and_mark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = tmp_path / "c.yaml"
    cluster.write_text(GOOD)
    config = tmp_path / "kpc.yaml"
    config.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
        "mode: ipvs\nclusterCIDR: 10.244.0.0/16\niptables: {masqueradeBit: 15}\n"
        "ipvs: {scheduler: wlc}\nsomethingNew: true\n"
    )
    code, out, err = run(capsys, "plan", "-f", str(cluster), "--config", str(config))
    assert code == EXIT_OK
    assert "TCP  10.96.0.1:80 wlc" in out
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x8000/0x8000" in out
    assert "! -s 10.244.0.0/16 -m comment" in out
    assert "somethingNew" in err


@pytest.mark.parametrize(
    ("mode", "node", "expected"),
    [
        ("detectLocalMode: NodeCIDR", "node-1", "! -s 10.244.3.0/24 -m comment"),  # the Node's
        ("detectLocalMode: NodeCIDR", "other", "KUBE-CLUSTER-IP src,dst"),  # no Node: none
        (
            "detectLocalMode: BridgeInterface\ndetectLocal: {bridgeInterface: cbr0}",
            "node-1",
            "! -i cbr0 -m comment",
        ),
        (
            "detectLocalMode: InterfaceNamePrefix\ndetectLocal: {interfaceNamePrefix: cali}",
            "node-1",
            "! -i cali+ -m comment",
        ),
    ],
)
def test_detect_local_modes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str, node: str, expected: str
) -> None:
    cluster = tmp_path / "c.yaml"
    cluster.write_text(
        GOOD + "---\napiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n"
        "spec: {podCIDR: 10.244.3.0/24, podCIDRs: [10.244.3.0/24]}\n"
    )
    config = tmp_path / "kpc.yaml"
    config.write_text(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
        f"clusterCIDR: 10.0.0.0/8\nhostnameOverride: {node}\n{mode}\n"
    )
    code, out, _ = run(
        capsys, "plan", "-f", str(cluster), "--config", str(config), "--section", "iptables"
    )
    assert code == EXIT_OK
    assert expected in out
    assert "10.0.0.0/8" not in out  # clusterCIDR is for mode ClusterCIDR only


def test_example_cluster_plans(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).parents[1] / "deploy" / "demo" / "cluster.yaml"
    code, out, _ = run(capsys, "plan", "-f", str(example), "--section", "addresses")
    assert code == EXIT_OK
    assert out == "10.96.0.10\n10.96.0.20\n"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # main() points loguru at the captured stderr, which pytest closes after the test.
    yield
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def test_fields_are_not_repeated_when_the_message_spells_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(GOOD)
    _, _, err = run(capsys, "plan", "-f", str(path), "--section", "addresses")
    (line,) = [line for line in err.splitlines() if "ns/bad-ip" in line]
    assert line.count("ns/bad-ip") == 1


ZONED = """\
apiVersion: v1
kind: Node
metadata:
  name: worker-a
  labels: {topology.kubernetes.io/zone: zone-a}
---
apiVersion: v1
kind: Service
metadata: {name: near, namespace: ns}
spec:
  clusterIP: 10.96.0.7
  trafficDistribution: PreferClose
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: near-1
  namespace: ns
  labels: {kubernetes.io/service-name: near}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.1.1], zone: zone-a, hints: {forZones: [{name: zone-a}]}}
- {addresses: [10.244.2.1], zone: zone-b, hints: {forZones: [{name: zone-b}]}}
"""


@pytest.mark.parametrize(
    ("node", "expected"),
    [("worker-a", ["10.244.1.1:8080"]), ("worker-z", ["10.244.1.1:8080", "10.244.2.1:8080"])],
    ids=["node-object-gives-the-zone", "no-node-object-no-zone"],
)
def test_plan_takes_the_zone_from_the_node_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], node: str, expected: list[str]
) -> None:
    path = tmp_path / "zoned.yaml"
    path.write_text(ZONED)
    argv = ["plan", "-f", str(path), "--hostname-override", node, "--section", "ipvs"]
    assert main(argv) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()[3:]  # after ipvsadm's three header lines
    shown = [line.split()[1] for line in lines if line.startswith("  -> ")]
    assert sorted(shown) == expected


@pytest.mark.parametrize(
    "flags",
    [
        ["--healthz-bind-address", "nonsense:1"],
        ["--metrics-bind-address", "127.0.0.1:99999"],
        ["--node-ip", "not-an-ip"],
    ],
)
def test_run_rejects_bad_flags_before_touching_the_kernel(flags: list[str]) -> None:
    assert main(["run", "--master", "http://127.0.0.1:1", *flags]) == EXIT_INPUT


def test_without_a_conntrack_table_stale_udp_flows_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from contextlib import ExitStack

    from ipvsproxy import cli
    from ipvsproxy.dataplane import stale_udp_conntrack as conntrack
    from ipvsproxy.errors import KernelError

    def refuse(**_: object) -> None:
        raise KernelError("cannot open a netfilter netlink socket: Protocol not supported")

    monkeypatch.setattr(conntrack, "ConntrackSocket", refuse)
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING")
    try:
        with ExitStack() as stack:
            assert cli._conntrack(stack) is None
    finally:
        logger.remove(sink)
    assert messages == ["stale UDP conntrack entries will not be deleted"]
