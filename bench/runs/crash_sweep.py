"""More seeds of the crash test (tests/kernel/test_crash_kernel.py) than ./test.sh runs:
SIGKILL at a random point of a cold, a partial and a shrinking sync per seed, in the
sandbox kernel, with a client sending requests to an unchanged Service all the while.
Prints the kill points and how many requests failed.

    .venv/bin/python -m bench.runs.crash_sweep [seeds, default 10]
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    seeds = ",".join(str(seed) for seed in range(1, count + 1))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "kernel",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "kernel" / "test_crash_kernel.py"),
        ],
        cwd=ROOT,
        env={**os.environ, "IPVSPROXY_CRASH_SEEDS": seeds},
        capture_output=True,
        text=True,
        check=False,
    )
    for line in run.stdout.splitlines():
        if line.startswith("crash test:") or "passed" in line or "failed" in line:
            print(line)
    if run.returncode:
        print(run.stdout[-4000:], run.stderr[-2000:])
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
