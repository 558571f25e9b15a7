"""`ipvsproxy plan` on example clusters, compared with reviewed golden dumps.

After an intended change of output, regenerate with IPVSPROXY_UPDATE_GOLDEN=1 and review
the diff of tests/golden/ like any other change.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from ipvsproxy.cli import EXIT_OK, main

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
CASES = {
    "k8s_example": [ROOT / "tests" / "data" / "k8s_example.yaml"],
    "demo": [ROOT / "deploy" / "demo" / "cluster.yaml"],
}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


@pytest.mark.parametrize("name", sorted(CASES))
def test_plan_matches_golden(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    # The node's interface addresses are given, so that the plan does not depend on the
    # machine the test runs on.
    args = ["plan", "--hostname-override", "node-1", "--local-address", "172.18.0.2"]
    args += ["--local-address", "fc00:f853:ccd:e793::2"]
    for path in CASES[name]:
        args += ["-f", str(path)]
    assert main(args) == EXIT_OK
    output = capsys.readouterr().out
    golden = GOLDEN / f"{name}.plan"
    if os.environ.get("IPVSPROXY_UPDATE_GOLDEN"):
        golden.write_text(output)
    assert output == golden.read_text()
