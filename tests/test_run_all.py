"""bench/run_all.py's reading of the benchmarks' outputs, and the aims judged from them.

The samples are outputs the benchmarks printed (trimmed). A figure that is not found must
stay absent, so that its aim shows as not measured, never as met.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import run_all
from bench.report import aims, figures, plots
from bench.report.aims import MET, MISSED, NOT_MEASURED
from bench.report.readme import Report, Step, readme
from bench.runs import profile_agent

PLAN = """\
input: bench/out/cluster-10000.json
  10000 Services, 11450 EndpointSlices, 114726 endpoints -> 13495 virtual servers, \
143402 real servers, 192917 operations, 156897 IPVS messages (22.4 MB encoded)
median of 5 runs:
  parse     12004.4 ms    1200.4 us/Service
  desired    5826.3 ms     582.6 us/Service
  diff        817.0 ms      81.7 us/Service
  encode     1809.6 ms     181.0 us/Service
  pure       8452.8 ms   (desired + diff + encode)
  total     20457.2 ms
peak RSS: 447 MiB
"""

HOLLOW = """\
load average 6.1 on 2 CPUs
10 hollow agents, 10000 Services, 300 endpoint changes at 5/s (59.9 s)
network programming latency across agents: p50 9.40 s, p99 24.00 s, 31.5% within 1 s \
(3000 observations)
worst agent's p99 26.10 s (agent 3)
cold start (launch to first sync), s: median 110.2, min 107.0, max 123.4
CPU to the first sync, s: median 9.6, min 9.1, max 10.2
CPU during the changes, s: median 0.69, min 0.60, max 0.81 (2.3 ms per change, median)
RSS after the changes, MiB: median 200, min 198, max 203
peak RSS, MiB: median 205, min 201, max 209
API server bytes per agent: first lists 41.0 MiB, watches during the changes 703 KiB \
(2,400 B per change)
"""

DECODE = """\
median of 5 runs; peak = memory allocated while decoding (tracemalloc)
Service: 10,000 objects, list body 6.8 MiB
  list, ours                238.0 us/object        4,202 objects/s   peak     35.0 MiB
  list, client models       524.6 us/object        1,906 objects/s   peak    110.6 MiB
  list: client models take 2.20x the time and 3.2x the peak memory
  watch events, ours        172.1 us/object        5,810 objects/s   peak      6.3 MiB
  watch events, client models    637.2 us/object        1,569 objects/s   peak     90.4 MiB
  watch events: client models take 3.70x the time and 14.3x the peak memory
EndpointSlice: 11,450 objects, list body 32.8 MiB
  list, ours                914.4 us/object        1,094 objects/s   peak    169.8 MiB
  list, client models      2154.3 us/object          464 objects/s   peak    505.0 MiB
  list: client models take 2.36x the time and 3.0x the peak memory
"""

CODEC = """\
22,000 messages: 2,000 NEW_SERVICE + 20,000 NEW_DEST; median of 5 runs
  ipvs_codec (struct):           333,393 msg/s
  pyroute2 IPVS objects:             487 msg/s
  ratio:                           684.1x
"""

TESTAPI = """\
10000 Services, 10500 EndpointSlices: load 4.86 s (237 us/object)
  services, one list                   46.9 ms     4.7 us/object      4.2 MiB in 1 response(s)
  services, pages of 500               49.0 ms     4.9 us/object      4.2 MiB in 20 response(s)
  endpointslices, one list            137.2 ms    13.1 us/object     14.9 MiB in 1 response(s)
  watch: 2000 changes to 4 watchers in 0.78 s, 10,300 events/s delivered
30000 Services, 31500 EndpointSlices: load 18.46 s (300 us/object)
  services, one list                  126.2 ms     4.2 us/object     12.7 MiB in 1 response(s)
"""

SOAK = """\
 seconds  changes  RSS MiB   fds threads
       0        0     59.1    15      12
      20     1000     61.2    15      12
1000 changes to 300 Services in 20 s (50.0/s)
RSS 59.3 -> 61.2 MiB, fds 15 -> 15, threads 12 -> 12
final kernel equals the final desired state (0.02 s after the last change)
"""

CRASH = """\
crash test: 3 SIGKILLs (cold@35, partial@38, shrink@3); 382 requests to web, 0 failed
crash test: 3 SIGKILLs (cold@15, partial@10, shrink@13); 410 requests to web, 1 failed
1 passed in 51.03s
"""

PROFILE = """\
== profile: cold start, 10000 Services (list+decode, desired, diff, encode: 9.1 s CPU)
     own ms  share +callees ms     calls  function
      210.0   6.3%       467.0     11666  _plain_endpoint (ipvsproxy/k8s/objects.py:539)
== profile: endpoint change, 1000 Services (the slowest 2 of 200: 60.91-63.52 ms CPU each)
     own ms  share +callees ms     calls  function
       16.0  13.0%        77.0         4  select_endpoints (ipvsproxy/core/endpoints.py:124)
"""


def agent_json(sizes: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """bench_agent.py --json's shape: seconds and MiB."""
    rows = []
    for services, f in sizes.items():
        cold = f["cold"]  # list+decode, desired, diff, encode CPU seconds
        row: dict[str, Any] = {
            "services": services,
            "endpoints": services * 11,
            "peak_rss": f["rss"] + 4,
            "steady_rss": f["rss"],
            "after_rss": f["rss"],
            "agent cold sync": {"wall": 1.0, "cpu": 0.9},
            "steady full sync": {"wall": 0.5, "cpu": 0.4},
        }
        for stage, cpu in zip(("list+decode", "desired", "diff", "encode"), cold, strict=True):
            row[f"cold {stage}"] = {"wall": cpu * 1.5, "cpu": cpu}
        for kind, (p50, p99) in f["changes"].items():
            row[kind] = {
                "p50 wall": p50 / 1e3,
                "p99 wall": p99 / 1e3 * 2,
                "p50 cpu": p50 / 1e3,
                "p99 cpu": p99 / 1e3,
            }
        rows.append(row)
    return {"sizes": rows}


# Today's figures on main (CPU): 1k's endpoint change p99 and both RSS aims are missed.
BASELINE = agent_json(
    {
        1000: {
            "cold": (0.28, 0.17, 0.02, 0.07),
            "rss": 60,
            "changes": {"endpoint": (0.29, 8.79), "add": (0.25, 0.4), "delete": (0.13, 0.26)},
        },
        10000: {
            "cold": (1.74, 1.12, 0.14, 0.47),
            "rss": 206,
            "changes": {"endpoint": (0.21, 4.74), "add": (0.3, 0.3), "delete": (0.15, 0.2)},
        },
        30000: {
            "cold": (5.79, 3.52, 0.56, 1.50),
            "rss": 513,
            "changes": {"endpoint": (0.20, 3.24), "add": (0.2, 0.2), "delete": (0.1, 0.13)},
        },
    }
)


def kernel_json(sizes: dict[int, dict[str, float]], ok: bool = True) -> dict[str, Any]:
    return {
        "ok": ok,
        "sizes": {
            str(vs): {"virtual_servers": vs, "real_servers": vs * 3, "medians": medians}
            for vs, medians in sizes.items()
        },
    }


READ = kernel_json(
    {
        1041: {
            "observe (whole)": 1.603,
            "IPVS: services dump + /proc/net/ip_vs": 0.158,
            "ipsets (ipset save + parse)": 0.524,
            "iptables (save + parse, each family)": 0.798,
            "ipvsadm -Ln": 1.039,
            "ipset save": 0.579,
            "the tools together": 2.115,
        },
        5196: {"observe (whole)": 6.436, "ipvsadm -Ln": 5.617, "the tools together": 8.902},
    }
)

SYNC = kernel_json(
    {
        1041: {
            "cold sync": 1.73,
            "cold sync: ipvs.execute": 0.234,
            "cold sync: ipset.apply": 0.71,
            "cold sync: iptables.restore": 0.32,
            "ipvsadm -R": 2.61,
            "ipset restore": 0.51,
        },
        5196: {
            "cold sync": 6.72,
            "cold sync: ipvs.execute": 2.53,
            "cold sync: ipset.apply": 1.99,
            "ipvsadm -R": 9.47,
            "ipset restore": 1.96,
        },
    }
)


def baseline() -> aims.Measured:
    return aims.Measured(
        agent=figures.agent(BASELINE),
        hollow={"N=10": figures.hollow(HOLLOW)},
        kernel_read=figures.kernel(READ),
        kernel_sync=figures.kernel(SYNC),
        profiles=figures.profiles(PROFILE),
    )


def rows_by_aim(measured: aims.Measured) -> dict[str, aims.Row]:
    return {row.aim: row for row in aims.judge_all(measured)}


def row(measured: aims.Measured, start: str) -> aims.Row:
    (found,) = [r for aim, r in rows_by_aim(measured).items() if aim.startswith(start)]
    return found


# --- reading the outputs ----------------------------------------------------------------------


def test_plan_stages_rss_and_endpoints() -> None:
    f = figures.plan(PLAN)
    assert f["parse"] == 12004.4 and f["total"] == 20457.2
    assert f["peak RSS MiB"] == 447 and f["endpoints"] == 114726


def test_agent_json_in_cpu_seconds_and_ms() -> None:
    f = figures.agent(BASELINE)[10000]
    assert f["cold total cpu"] == pytest.approx(1.74 + 1.12 + 0.14 + 0.47)
    assert f["cold list+decode cpu"] == 1.74
    assert f["endpoint p99 cpu ms"] == pytest.approx(4.74)
    assert f["steady_rss"] == 206 and f["full cold cpu ms"] == pytest.approx(900)


def test_agent_json_missing_or_odd_gives_nothing(tmp_path: Path) -> None:
    assert figures.agent(figures.read_json(tmp_path / "absent.json")) == {}
    (tmp_path / "bad.json").write_text("{not json")
    assert figures.agent(figures.read_json(tmp_path / "bad.json")) == {}
    odd = {"sizes": [{"services": "many"}, {"services": 1000, "endpoint": {"p99 cpu": None}}]}
    assert figures.agent(odd) == {1000: {}}


def test_hollow_run() -> None:
    f = figures.hollow(HOLLOW)
    assert (f["agents"], f["services"], f["changes"], f["rate"]) == (10, 10000, 300, 5)
    assert (f["p50"], f["p99"], f["within_1s"], f["worst_p99"]) == (9.4, 24.0, 31.5, 26.1)
    assert f["cpu_per_change_ms"] == 2.3 and f["cpu_first_sync"] == 9.6
    assert (f["rss"], f["peak_rss"], f["list_mib"]) == (200, 205, 41.0)
    assert f["watch_bytes_per_change"] == 2400 and f["cold_start"] == 110.2
    assert (f["load"], f["cpus"]) == (6.1, 2)


def test_hollow_that_failed_has_no_latency() -> None:
    assert figures.hollow("FAILED: agent 3's first sync not within 600 s\n") == {}
    # A latency line whose figures moved: no p99, rather than a wrong one.
    f = figures.hollow("network programming latency across agents: p99 n/a\n")
    assert "p99" not in f


def test_smaller_benchmarks() -> None:
    decode = figures.decode(DECODE)
    assert decode["Service list"] == {
        "ours_us": 238.0,
        "theirs_us": 524.6,
        "time_x": 2.2,
        "memory_x": 3.2,
    }
    assert decode["Service watch events"]["memory_x"] == 14.3
    assert decode["EndpointSlice list"]["time_x"] == 2.36
    assert "EndpointSlice watch events" not in decode  # trimmed from the sample
    assert figures.codec(CODEC) == {"ours": 333393, "pyroute2": 487, "ratio": 684.1}
    api = figures.testapi(TESTAPI)
    assert api[10000]["load_us"] == 237 and api[10000]["watch_events_s"] == 10300
    assert api[30000] == {"load_us": 300, "services_list_ms": 126.2}
    assert figures.convert(
        "this tree: 1169 slices, 13846 endpoints: 87 us CPU per slice, 7.33 us per endpoint"
    ) == {"us_per_slice": 87, "us_per_endpoint": 7.33}
    soak = figures.soak(SOAK)
    assert (soak["changes"], soak["services"], soak["seconds"]) == (1000, 300, 20)
    assert (soak["rss first"], soak["rss last"], soak["converged_after"]) == (59.3, 61.2, 0.02)
    assert figures.crash(CRASH) == {"kills": 6, "requests": 792, "failed": 1}
    assert figures.crash("1 failed in 3.0s") == {}


def test_kernel_json_only_when_the_result_check_passed() -> None:
    assert sorted(figures.kernel(READ)) == [1041, 5196]
    failed = kernel_json({1041: {"observe (whole)": 0.5, "ipvsadm -Ln": 1.0}}, ok=False)
    assert figures.kernel(failed) == {}
    assert figures.kernel({}) == {}


def test_profile_sections() -> None:
    sections = figures.profiles(PROFILE)
    assert set(sections) == {("cold start", 10000), ("endpoint change", 1000)}
    assert "select_endpoints" in sections[("endpoint change", 1000)][-1]


# --- the aims -------------------------------------------------------------------------------------


def test_nothing_measured_is_never_met() -> None:
    rows = aims.judge_all(aims.Measured())
    assert rows and all(r.status == NOT_MEASURED for r in rows)


def test_aims_from_todays_figures() -> None:
    m = baseline()
    cold = row(m, "cold start")
    assert cold.status == MET and "3.47 s" in cold.measured
    change = row(m, "one change: endpoint change")
    assert change.status == MISSED
    assert change.margin == "at 1k: by 3.79 ms (76% over)"
    assert change.dominates[0].startswith("endpoint change, 1000 Services")  # its profile
    assert row(m, "one change: Service added").status == MET
    flat = row(m, "one change flat")
    assert flat.status == MET  # 30k's costs are below 1k's
    assert flat.margin == "Service added p50: 0.70x (47%) to spare"
    rss10 = row(m, "steady RSS at 10k")
    assert rss10.status == MISSED and rss10.margin == "by 6 MiB (3% over)"
    assert rss10.dominates == ("(no memory profile at 10k)",)
    assert row(m, "steady RSS at 30k").margin == "by 13 MiB (3% over)"
    observe = row(m, "observe step")
    assert observe.status == MISSED and observe.margin == "at 1,041: by 54% (1.54x)"
    assert "ipsets (ipset save + parse) 0.50x" in observe.dominates[0]
    assert "ipvsadm -Ln" not in observe.dominates[0].split(": ", 1)[1]
    assert row(m, "cold sync, IPVS").status == MET
    ipset = row(m, "cold sync, ipsets")
    assert ipset.status == MISSED and ipset.margin.startswith("at 1,041: by 28%")
    assert "ipset.apply 0.71" in ipset.dominates[0]
    hollow = row(m, "hollow agents: network programming latency p99, 10 agents")
    assert hollow.status == MISSED and hollow.margin == "by 23.00 s (2300% over)"
    assert "2.3 ms CPU per change" in hollow.dominates[0]
    assert hollow.dominates[1].startswith("the changes alone kept 0.11 of the 2 cores busy")
    assert row(m, "hollow agents: network programming latency p99, 50 agents").status == (
        NOT_MEASURED
    )


def test_a_missed_cold_start_says_which_stage_and_function_dominate() -> None:
    slow = json.loads(json.dumps(BASELINE))
    slow["sizes"][1]["cold list+decode"]["cpu"] = 3.5
    m = baseline()
    m.agent = figures.agent(slow)
    cold = row(m, "cold start")
    assert cold.status == MISSED and cold.margin == "by 0.23 s (5% over)"
    assert cold.dominates[0].startswith("stages, CPU: list+decode 3.50 s (67%), desired 1.12 s")
    assert any("_plain_endpoint" in line for line in cold.dominates)


def test_a_size_not_measured_is_not_met() -> None:
    only_small = aims.Measured(agent={1000: figures.agent(BASELINE)[1000]})
    only_small.agent[1000]["endpoint p99 cpu ms"] = 1.0
    change = row(only_small, "one change: endpoint change")
    assert change.status == NOT_MEASURED and change.margin == "no figure at 10k, 30k"
    assert row(only_small, "cold start").status == NOT_MEASURED
    assert row(only_small, "one change flat").status == NOT_MEASURED
    # Hollow agents at another size than the aim's.
    small = aims.Measured(hollow={"N=10": {**figures.hollow(HOLLOW), "services": 1000}})
    hollow = row(small, "hollow agents: network programming latency p99, 10 agents")
    assert hollow.status == NOT_MEASURED and hollow.margin == "measured at 1,000 Services"
    # The kernel at 300 virtual servers is not the aim's 1k or 5k.
    tiny = kernel_json({300: {"observe (whole)": 0.1, "ipvsadm -Ln": 1.0}})
    assert row(aims.Measured(kernel_read=figures.kernel(tiny)), "observe").status == NOT_MEASURED


def test_met_only_when_every_size_is_met() -> None:
    fast = aims.Measured(kernel_read=figures.kernel(READ))
    for r in fast.kernel_read.values():
        r["medians"]["observe (whole)"] = r["medians"]["ipvsadm -Ln"] * 0.9
    observe = row(fast, "observe step")
    assert observe.status == MET and observe.margin.startswith("worst at")
    del fast.kernel_read[5196]
    assert row(fast, "observe step").status == NOT_MEASURED


def test_hollow_side_by_side_run_is_quoted() -> None:
    m = baseline()
    m.hollow["N=10, syncPeriod 3600 s"] = {"p50": 0.13, "p99": 0.24}
    hollow = row(m, "hollow agents: network programming latency p99, 10 agents")
    assert "side by side, N=10, syncPeriod 3600 s: p50 0.13 s, p99 0.24 s" in hollow.dominates


# --- the README -----------------------------------------------------------------------------------


def test_readme_puts_the_aims_first_and_marks_failures() -> None:
    m = baseline()
    agent = Step("agent", "controller", "bench_agent.py", "...", 0, 60, 55, m.agent)
    failed = Step("hollow", "hollow agents, N = 50", "bench_hollow.py", "FAILED", 1, 600, 900)
    steps = [agent, failed]
    text = readme(Report(["# Benchmarks"], steps, m))
    assert text.index("## Aims") < text.index("## Controller: cold start")
    assert "| **MISSED** |" in text and "| not measured |" in text
    assert "What dominates where an aim was missed:" in text
    assert "### hollow agents, N = 50 (FAILED: exit status 1)" in text
    assert "| all | 660 | 955 |" in text


MEMORY = """\
10000 Services: RSS 190 MiB (before decoding 40 MiB), traced alive 120.5 MiB

live bytes by allocation site (top 2 of 120.5 MiB):
    MiB  share    blocks  site
  30.00  24.9%    100000  objects.py:539
  20.00  16.6%     50000  desired.py:141

live objects by type (top 2; str/int/bytes/float counted once each):
    MiB     count  type
  25.00    200000  RealServer
  10.00    100000  str
"""


def test_memory_profile_lines_keep_its_tables() -> None:
    lines = run_all.memory_lines(MEMORY)
    assert lines[0].startswith("10000 Services: RSS 190 MiB")
    assert "  30.00  24.9%    100000  objects.py:539" in lines
    assert lines[-1] == "  10.00    100000  str"


def test_profile_agent_finds_each_kind_of_change(capsys: pytest.CaptureFixture[str]) -> None:
    assert profile_agent.main(["--sizes", "200", "--changes", "20", "--top", "3"]) == 0
    sections = figures.profiles(capsys.readouterr().out)
    assert set(sections) == {
        ("cold start", 200),
        ("endpoint change", 200),
        ("Service added", 200),
        ("Service deleted", 200),
    }
    # The header, the column names and three functions, each with its own time.
    assert all(len(lines) == 5 for lines in sections.values())
    assert "the slowest 1 of 20" in sections[("endpoint change", 200)][0]


def test_run_all_writes_a_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One small step end to end: run, read its figures, write the README."""
    readme = tmp_path / "README.md"
    argv = ["bench.run_all", "--quick", "--only", "convert", "--readme", str(readme)]
    monkeypatch.setattr(sys, "argv", argv)
    assert run_all.main() == 0
    text = readme.read_text()
    assert "Generated by `python -m bench.run_all --quick --only convert`" in text
    assert "| EndpointSlice conversion (JSON into model values) |" in text
    assert "us CPU per slice" in text and "| - us CPU per slice" not in text
    assert "| hollow agents: network programming latency p99, 10 agents" in text


def test_plots_of_every_kind(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    m = baseline()
    m.hollow["N=50"] = {**m.hollow["N=10"], "agents": 50, "p99": 30.0}
    path = figures.kernel(
        kernel_json({100: {"ipt first": 0.001, "ipvs first": 0.001}}), "virtual_servers"
    )
    steps = [
        Step("agent", "controller", "bench_agent.py", "", 0, 1, 1, m.agent),
        Step("datapath", "data path", "bench_datapath.py", "", 0, 1, 1, path),
    ]
    written = plots.plots(Report([], steps, m, figures_plan()), tmp_path)
    assert written == [
        "plan.png",
        "agent.png",
        "hollow.png",
        "kernel_read.png",
        "kernel_sync.png",
        "datapath.png",
    ]
    assert all((tmp_path / name).stat().st_size > 1000 for name in written)


def figures_plan() -> dict[int, dict[str, float]]:
    return {10000: figures.plan(PLAN), 1000: {"parse": 1.0, "total": 2.0}}


def test_datapath_nft_table_ratios_and_flatness() -> None:
    from bench.report.readme import datapath_nft_table

    row = {
        "services": 1000,
        "nft_rules": 84,
        "ipt first": 1.0,
        "ipt last": 2.0,
        "ipvs first": 1.0,
        "ipvs last": 1.1,
        "nft first": 1.2,
        "nft last": 1.32,
    }
    step = Step("datapath_nft", "data path, nft", "bench_datapath.py", "", 0, 1, 1, {1000: row})
    lines = datapath_nft_table(Report([], [step], aims.Measured()))
    assert lines[0].startswith("## Data path: IPVS with the nftables rules backend")
    assert "| 1,000 | 84 | 1.20 | 1.20 | 1.10 | 1.10 | 2.00 |" in lines
    failed = Step("datapath_nft", "data path, nft", "bench_datapath.py", "", 1, 1, 1, {1000: row})
    assert datapath_nft_table(Report([], [failed], aims.Measured())) == []
