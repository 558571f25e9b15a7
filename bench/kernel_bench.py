"""What the sandbox-kernel benchmarks share: their command line, and running themselves in
the user-mode-linux guest with the figures read back as JSON.

A kernel benchmark's main() calls ``arguments`` for the options every one of them takes
(--sizes, --endpoints, --quick, --json and the hidden --in-guest), then, on the host,
``run_on_host`` with one cluster file per size; inside the guest the same script runs
with ``--in-guest FILE...`` and ends with ``finish_in_guest``, which prints the result
check and writes the figures where the host asked for them (run_all.py reads that JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

# Virtual servers per generated Service on average (gen_cluster.build: one Service in ten
# has a UDP port, one in twenty is dual-stack).
VS_PER_SERVICE = 1.1 * 1.05

# The variable naming the file, inside the guest, that the figures are written to.
JSON_ENV = "BENCH_JSON"


def arguments(
    doc: str,
    *,
    sizes: Sequence[int],
    quick: str,
    runs: int | None = None,
    endpoints_help: str | None = None,
) -> argparse.ArgumentParser:
    """A parser with the options every kernel benchmark takes (--runs if runs is given);
    add your own, then parse. quick: the help of --quick, saying what it shrinks to."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(sizes))
    parser.add_argument("--endpoints", type=int, default=3, help=endpoints_help)
    if runs is not None:
        parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", metavar="FILE", help="also write the figures here, as JSON")
    parser.add_argument("--in-guest", nargs="+", metavar="FILE", help=argparse.SUPPRESS)
    return parser


def services_for(virtual_servers: int) -> int:
    """How many Services gen_cluster.build needs for about this many virtual servers."""
    return round(virtual_servers / VS_PER_SERVICE)


def quiet_logs() -> None:
    """Inside the guest: only warnings, so that the figures are not buried."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def finish_in_guest(ok: bool, results: dict[str, dict[str, Any]]) -> int:
    """Print the result check, write the figures for the host; the guest's exit status."""
    print("\nresult check:", "ok" if ok else "WRONG")
    if os.environ.get(JSON_ENV):
        with open(os.environ[JSON_ENV], "w") as out:
            json.dump({"ok": ok, "sizes": results}, out, indent=1)
    return 0 if ok else 1


def run_on_host(
    script: str,
    *,
    sizes: Sequence[int],
    cluster: Callable[[int], dict[str, Any]],
    guest_args: Sequence[str],
    json_target: str | None,
) -> int:
    """Write cluster(size) for each size, boot the guest once and run `script --in-guest`
    there on those files, echoing its output; copy its figures to json_target if asked."""
    from ipvsproxy_testkit.sandbox.uml import run_in_guest, shared_tempdir

    workdir = shared_tempdir("ipvsproxy-bench-")
    results = os.path.join(workdir, "results.json")
    try:
        files = []
        for size in sizes:
            path = os.path.join(workdir, f"cluster-{size}.json")
            with open(path, "w") as out:
                json.dump(cluster(size), out)
            files.append(path)
        result = run_in_guest(
            [sys.executable, os.path.abspath(script), *guest_args, "--in-guest", *files],
            timeout=1800,
            env={JSON_ENV: results},
            on_output=lambda chunk: print(chunk, end="", flush=True),
        )
        if json_target and os.path.exists(results):
            subprocess.run(["cp", results, json_target], check=True)
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    print(f"(guest kernel {result.kernel_release}; {os.cpu_count()} host cores, shared)")
    return result.exit_status
