"""bench/bench_hollow.py, small: hollow agents (`ipvsproxy run --dataplane fake`, each its
own process) against one test API server. Checks what they did, never how fast."""

from __future__ import annotations

from pathlib import Path

from bench.bench_hollow import exact_quantile, quantile, run_hollow

CHANGES = 12


def test_every_agent_programs_every_endpoint_change(tmp_path: Path) -> None:
    result = run_hollow(agents=2, services=60, changes=CHANGES, rate=20, workdir=tmp_path)
    assert len(result.agents) == 2
    for agent in result.agents:
        # One programming latency per change (run_hollow checks it too), each change at
        # least one IPVS message: the moved endpoint, ready, is a new real server.
        assert agent.buckets[float("inf")] == CHANGES
        assert agent.ipvs_messages >= CHANGES
        assert agent.cpu > 0 and agent.rss > 0 and agent.peak_rss >= agent.rss
        # The exact latencies from its log, one per change, each the sum of its parts.
        assert len(agent.latencies) == CHANGES
        for latency, delivery, wait, sync in agent.latencies:
            assert wait >= 0 and sync >= 0
            assert abs(latency - (delivery + wait + sync)) < 1e-5
    # Each agent listed the whole cluster, and its slice watch carried every change: at
    # least the changed slice's name per agent and change.
    assert result.list_bytes > 2 * 60 * 100
    assert result.watch_bytes >= 2 * CHANGES * len('{"type":"MODIFIED","object":{}}')
    merged = result.merged()
    assert merged[float("inf")] == 2 * CHANGES
    assert 0 <= quantile(merged, 0.5) <= quantile(merged, 0.99)


def test_exact_quantile_is_the_nearest_rank() -> None:
    values = [float(n) for n in range(100, 0, -1)]
    assert exact_quantile(values, 0.5) == 50.0
    assert exact_quantile(values, 0.99) == 99.0
    assert exact_quantile(values, 1.0) == 100.0
    assert exact_quantile([3.0], 0.99) == 3.0


def test_quantile_interpolates_within_the_bucket() -> None:
    buckets = {0.0: 0.0, 0.25: 50.0, 0.5: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert quantile(buckets, 0.5) == 0.25
    assert quantile(buckets, 0.7) == 0.25 + 0.25 * (20 / 40)
    assert quantile(buckets, 0.99) == 0.5 + 0.5 * (9 / 10)
