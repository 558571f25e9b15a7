"""The product's wheel holds the product only: no test kit, no tests, no benchmarks."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_no_test_code(tmp_path: Path) -> None:
    # Built from a copy of what the Dockerfile copies, so no build/ folder left in the
    # working tree by an earlier build can add stale files to the wheel.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "ipvsproxy", source / "ipvsproxy", ignore=shutil.ignore_patterns("__pycache__")
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
            "--disable-pip-version-check", "-w", str(wheels), str(source),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("ipvsproxy-*.whl")
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
