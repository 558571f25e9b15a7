"""bench/bench_rules_backend.py at a tiny size: it runs, checks its own results and prints
figures that parse, for every contender whose tools work here. Not timed: the figures
are only checked to be positive numbers, with a ratio where nftables ran."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from private_netns import unshare_or_skip

from bench.report import aims
from bench.report import figures as report_figures
from bench.report.readme import Report, Step, rules_backend_tables

ROOT = Path(__file__).resolve().parents[1]


def test_short_run_prints_parseable_figures(tmp_path: Path) -> None:
    unshare_or_skip("nft")  # the benchmark makes its own namespaces
    target = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bench_rules_backend",
            "--sizes",
            "30",
            "--runs",
            "1",
            "--json",
            str(target),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "result check: ok" in result.stdout
    data = json.loads(target.read_text())
    figures = data["sizes"]["30"]
    assert figures["services"] == 30 and figures["set_entries"] > 30
    assert "nftables" in figures["backends"] and len(figures["backends"]) >= 2
    for backend in figures["backends"]:
        for step in ("cold sync", "add one element", "remove one element", "observe"):
            cell = figures["medians"][backend][step]
            assert cell["wall_ms"] > 0 and cell["cpu_ms"] > 0, (backend, step, cell)
    cold = [row for row in figures["rows"] if row["step"] == "cold sync"]
    assert {row["unit"] for row in cold} == {"wall_ms", "cpu_ms"}
    for row in cold:
        assert row["ratios"] and all(ratio > 0 for ratio in row["ratios"].values())
    # The printed table carries the same figures: one line per step and unit.
    lines = [line.split() for line in result.stdout.splitlines()]
    wall = next(line for line in lines if line[:3] == ["cold", "sync,", "wall"])
    printed = [float(cell) for cell in wall[3:]]
    values = next(row for row in cold if row["unit"] == "wall_ms")["values"]
    expected = [values[name] for name in figures["backends"]]
    assert printed[: len(expected)] == pytest.approx(expected, abs=0.01)

    # run_all's README table, from the same figures: a row per step and unit.
    steps = [Step("rules_backend", "rules", "cmd", data=report_figures.kernel(data, "services"))]
    lines = rules_backend_tables(Report([], steps, aims.Measured()))
    header = next(line for line in lines if line.startswith("| step |"))
    assert "| nftables |" in header and "nftables / " in header
    assert sum(line.startswith("| cold sync, ") for line in lines) == 2
