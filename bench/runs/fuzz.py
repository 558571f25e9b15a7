"""Run the fuzz properties of tests/test_fuzz.py longer than ./test.sh does and print how
many cases each ran.

    .venv/bin/python -m bench.runs.fuzz [examples per property, default 2000]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    examples = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    env = {**os.environ, "IPVSPROXY_FUZZ_EXAMPLES": str(examples)}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--hypothesis-show-statistics",
            str(ROOT / "tests" / "test_fuzz.py"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    total = 0
    test = ""
    for line in run.stdout.splitlines():
        if line.startswith("tests/test_fuzz.py::"):
            test = line.split("::", 1)[1].rstrip(":")
        found = re.search(r"(\d+) passing, (\d+) failing", line)
        if found and test:
            passing, failing = int(found[1]), int(found[2])
            total += passing + failing
            print(f"{test:50} {passing:7d} passing {failing:4d} failing")
    print(f"{'total cases':50} {total:7d}")
    print(run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr)
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
