"""Tests against the test host's own kernel in a private network namespace (`unshare -n`):
skipped where none can be made with the tools they need."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest


def unshare_or_skip(*tools: str, probe: str = "nft list ruleset") -> str:
    """The unshare command, once `probe` has run in a private namespace; else a skip."""
    unshare = shutil.which("unshare")
    if unshare is None or any(shutil.which(tool) is None for tool in tools):
        pytest.skip(f"needs unshare and {', '.join(tools)}")
    result = subprocess.run(
        [unshare, "-n", "sh", "-c", probe], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"no private network namespace with nftables here: {result.stderr[:200]}")
    return unshare


def run_python(
    unshare: str, script: str, *, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`script` run by this interpreter in a private network namespace of its own."""
    return subprocess.run(
        [unshare, "-n", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
