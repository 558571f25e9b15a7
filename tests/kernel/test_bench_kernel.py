"""The kernel benchmarks' own result checks, on a small cluster in the sandbox kernel.

Each benchmark's ``measure`` programs the cluster and returns whether every figure it took
came from a correct state (readers agree with the programmed table, the kernel holds the
desired servers, connections reach the right backends through both modes). Timings are
printed by the benchmarks, never checked here.
"""

from __future__ import annotations

import json

import pytest

from bench import bench_datapath, bench_kernel_read, bench_kernel_sync
from bench.lib.gen_cluster import build

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def cluster_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("bench") / "cluster.json"
    path.write_text(json.dumps(build(40, 3)))
    return str(path)


def test_read_benchmark_readers_agree(cluster_file: str) -> None:
    assert bench_kernel_read.measure(cluster_file, runs=1)
    figures = next(iter(bench_kernel_read.RESULTS.values()))["medians"]
    assert {"observe (whole)", "ipvsadm -Ln", "IPVS: services dump + /proc/net/ip_vs"} <= set(
        figures
    )


def test_sync_benchmark_programs_the_cluster(cluster_file: str) -> None:
    from ipvsproxy.core.desired import DesiredSettings, NodeInfo, desired_state
    from ipvsproxy.k8s.files import read_cluster

    cluster = read_cluster([cluster_file])
    state = desired_state(
        cluster.services, cluster.slices, node=NodeInfo(), settings=DesiredSettings()
    )
    figures, ok = bench_kernel_sync.one_round(state, "test")
    assert ok
    assert figures["ipset entries"] > 0 and figures["operations"] > len(state.virtual_servers)


def test_datapath_benchmark_reaches_backends_through_both_modes(cluster_file: str) -> None:
    assert bench_datapath.measure(cluster_file, connects=3, changes=1)
