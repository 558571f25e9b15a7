"""Sysctls against a fake /proc/sys tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipvsproxy.dataplane.sysctl import REQUIRED, STRICT_ARP, ensure_sysctls


def tree(root: Path, entries: tuple[tuple[str, str, str], ...], value: str) -> None:
    for path, _, _ in entries:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(value + "\n")


@pytest.mark.parametrize("strict_arp", [False, True])
def test_values_are_set(tmp_path: Path, strict_arp: bool) -> None:
    tree(tmp_path, REQUIRED + STRICT_ARP, "0")
    assert ensure_sysctls(strict_arp=strict_arp, root=str(tmp_path)) == []
    for path, value, _ in REQUIRED:
        assert (tmp_path / path).read_text() == value
    arp = (tmp_path / STRICT_ARP[0][0]).read_text().strip()
    assert arp == ("1" if strict_arp else "0")


def test_missing_entry_is_reported_not_raised(tmp_path: Path) -> None:
    tree(tmp_path, REQUIRED[1:], "1")
    failures = ensure_sysctls(root=str(tmp_path))
    assert [f.path for f in failures] == [REQUIRED[0][0]]
