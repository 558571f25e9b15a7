"""The demo finds the files it shows from the repository root it computes."""

from __future__ import annotations

from ipvsproxy_testkit.sandbox import demo


def test_demo_reads_its_files_from_the_repository() -> None:
    for relative in (demo.CLUSTER, demo.ADDED, demo.CONFIG):
        assert (demo.ROOT / relative).is_file(), relative
    assert (demo.ROOT / "demo.sh").is_file()
