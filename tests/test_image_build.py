"""The image builder's cache key: every file the build reads, and nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

from ipvsproxy_testkit.image import ROOT, source_digest


def tree(tmp_path: Path) -> Path:
    copy = tmp_path / "tree"
    copy.mkdir()
    for name in ("Dockerfile", "requirements.lock", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(
        ROOT / "ipvsproxy", copy / "ipvsproxy", ignore=shutil.ignore_patterns("__pycache__")
    )
    return copy


def test_the_digest_follows_every_input_and_ignores_the_rest(tmp_path: Path) -> None:
    copy = tree(tmp_path)
    first = source_digest(copy)
    assert source_digest(copy) == first  # unchanged tree: the cached image is found
    (copy / "tests").mkdir()
    (copy / "tests" / "test_x.py").write_text("x = 1\n")  # not in the image
    (copy / "ipvsproxy" / "__pycache__").mkdir(exist_ok=True)
    (copy / "ipvsproxy" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"\0")
    assert source_digest(copy) == first
    seen = {first}
    for name in ("Dockerfile", "requirements.lock", "pyproject.toml", "ipvsproxy/cli.py"):
        path = copy / name
        path.write_text(path.read_text() + "\n# changed\n")
        digest = source_digest(copy)
        assert digest not in seen, name
        seen.add(digest)
    (copy / "ipvsproxy" / "new_module.py").write_text("")  # a new file is an input too
    assert source_digest(copy) not in seen
