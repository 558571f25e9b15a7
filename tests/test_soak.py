"""A short churn soak (bench/runs/soak.py runs the long one): endpoints of 200 Services change
50 times a second for 15 s through the test API server, the real reflectors and the agent
on the fake kernel. Every change lands (the final kernel equals the final desired state),
and file descriptors and threads do not grow."""

from __future__ import annotations

from bench.runs.soak import soak


def test_short_churn_soak() -> None:
    lines: list[str] = []
    result = soak(seconds=15, rate=50, services=200, report_every=5, out=lines.append)
    print("\n".join(lines))
    assert result.changes > 0  # how many depends on the machine's speed; all must land
    assert result.converged_after is not None, result.mismatches[:10]
    first, last = result.samples[0], result.samples[-1]
    assert last.fds <= first.fds + 2, lines
    assert last.threads <= first.threads, lines
    # Memory: no growth with the number of changes beyond allocator noise.
    assert last.rss_kib - first.rss_kib < 40 * 1024, lines
