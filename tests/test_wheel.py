"""The product's wheel holds the product only: no test kit, no tests, no benchmarks."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_no_test_code(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
            "--disable-pip-version-check", "-w", str(tmp_path), str(ROOT),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("ipvsproxy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[0] for name in names}
    assert packages == {"ipvsproxy", next(p for p in packages if p.endswith(".dist-info"))}
    # The product's parts are all there (an empty wheel would pass the checks below).
    for part in ("core", "agent", "serve", "config", "dataplane", "k8s"):
        assert f"ipvsproxy/{part}/__init__.py" in names
    assert "ipvsproxy/py.typed" in names
    test_code = [
        name
        for name in names
        if any(word in name for word in ("sandbox", "testapi", "testkit", "pytest", "/tests/"))
        or name.endswith(".c")
    ]
    assert test_code == []
