"""bench/lib/gen_cluster.py's realistic profile: what it promises, and that both the test API
server and the file reader accept every object it writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ipvsproxy_testkit.testapi.store import Store

from bench.lib.gen_cluster import SLICE_SIZE, build_realistic
from ipvsproxy.k8s.files import load_documents, read_cluster

SERVICES = 1500


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return build_realistic(SERVICES, seed=7)


def _of(cluster: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [item for item in cluster["items"] if item["kind"] == kind]


def test_same_seed_same_cluster(cluster: dict[str, Any]) -> None:
    assert build_realistic(SERVICES, seed=7) == cluster
    assert build_realistic(SERVICES, seed=8) != cluster


def test_long_tailed_endpoints_split_into_slices(cluster: dict[str, Any]) -> None:
    per_service: dict[str, int] = {}
    slices_per_service: dict[str, int] = {}
    for item in _of(cluster, "EndpointSlice"):
        assert len(item["endpoints"]) <= SLICE_SIZE
        if item["addressType"] == "IPv4":
            key = item["metadata"]["labels"]["kubernetes.io/service-name"]
            key = f"{item['metadata']['namespace']}/{key}"
            per_service[key] = per_service.get(key, 0) + len(item["endpoints"])
            slices_per_service[key] = slices_per_service.get(key, 0) + 1
    counts = sorted(per_service.values())
    assert len(counts) == SERVICES
    assert counts[len(counts) // 2] <= 3  # most have 1-3
    assert sum(1 <= c <= 3 for c in counts) > 0.6 * SERVICES
    assert sum(100 <= c < 1000 for c in counts) >= 5  # some hundreds
    big = [key for key, c in per_service.items() if c >= 1000]
    assert 2 <= len(big) <= 10  # a few 1,000+
    assert all(slices_per_service[key] >= 10 for key in big)


def test_types_ports_families(cluster: dict[str, Any]) -> None:
    services = _of(cluster, "Service")
    kinds = [s["spec"]["type"] for s in services]
    assert kinds.count("NodePort") > 0 and kinds.count("LoadBalancer") > 0
    assert any(s["spec"].get("externalTrafficPolicy") == "Local" for s in services)
    assert any(len(s["spec"]["ports"]) > 1 for s in services)
    assert any(p["protocol"] == "UDP" for s in services for p in s["spec"]["ports"])
    assert any(len(s["spec"]["clusterIPs"]) == 2 for s in services)
    node_ports = [p["nodePort"] for s in services for p in s["spec"]["ports"] if "nodePort" in p]
    node_ports += [
        s["spec"]["healthCheckNodePort"] for s in services if "healthCheckNodePort" in s["spec"]
    ]
    assert len(node_ports) == len(set(node_ports))
    assert all(30000 <= port <= 32767 for port in node_ports)
    names = [(s["metadata"]["namespace"], s["metadata"]["name"]) for s in services]
    assert len(names) == len(set(names))


def test_the_test_api_server_takes_every_object(cluster: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(cluster))
    store = Store()
    assert store.load(loaded.obj for loaded in load_documents(path)) == []


def test_the_file_reader_takes_every_object(cluster: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(cluster))
    read = read_cluster([path])
    assert not read.skipped
    assert len(read.services) == SERVICES
    assert len(read.slices) == len(_of(cluster, "EndpointSlice"))
