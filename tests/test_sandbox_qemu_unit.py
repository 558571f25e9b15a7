"""The qemu sandbox's host-side pieces, without booting it: initramfs, checks, apt parsing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ipvsproxy_testkit.sandbox import qemu

from ipvsproxy.errors import SandboxError


def test_newc_archive_is_read_back_by_cpio(tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox missing: ./setup.sh installs busybox-static")
    archive = qemu.newc_archive(
        [
            ("bin", 0o40755, b""),
            ("bin/tool", 0o100755, b"#!/bin/sh\necho odd-length\n"),
            ("init", 0o100755, b"x"),
        ]
    )
    (tmp_path / "a.cpio").write_bytes(archive)
    listed = subprocess.run(
        [busybox, "cpio", "-t", "-F", "a.cpio"], cwd=tmp_path, capture_output=True, text=True
    )
    assert listed.stdout.split() == ["bin", "bin/tool", "init"]
    subprocess.run(
        [busybox, "cpio", "-i", "-d", "-F", "a.cpio"], cwd=tmp_path, check=True, capture_output=True
    )
    assert (tmp_path / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho odd-length\n"
    assert (tmp_path / "init").stat().st_mode & 0o777 == 0o755


def test_static_elf_check() -> None:
    assert qemu.is_static_elf(Path("/bin/busybox").read_bytes())  # busybox-static
    assert not qemu.is_static_elf(Path(sys.executable).resolve().read_bytes())
    assert not qemu.is_static_elf(b"#!/bin/sh\n")


def test_missing_qemu_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda *a, **k: None)
    with pytest.raises(SandboxError, match="Debian package qemu-system-x86"):
        qemu.run_in_qemu(["true"], timeout=1)


def test_dynamic_busybox_names_the_static_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu, "BUSYBOX", str(Path(sys.executable).resolve()))
    with pytest.raises(SandboxError, match="Debian package busybox-static"):
        qemu.prepare_kernel()


def test_kernel_package_from_apt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    answers = {
        "depends": "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n",
        "policy": "linux-image-6.1.0-56-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-2\n",
    }
    monkeypatch.delenv(qemu.PACKAGE_ENV, raising=False)
    monkeypatch.setattr(qemu, "_apt", lambda argv: answers[argv[1]])
    assert qemu._kernel_package(tmp_path) == ("linux-image-6.1.0-56-amd64", "6.1.192-2")
    monkeypatch.setenv(qemu.PACKAGE_ENV, "linux-image-6.1.0-56-cloud-amd64")
    with pytest.raises(SandboxError, match="not a generic amd64 kernel package"):
        qemu._kernel_package(tmp_path)


def test_offline_apt_falls_back_to_the_cached_kernel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(qemu.PACKAGE_ENV, raising=False)
    monkeypatch.setattr(qemu, "_apt", lambda argv: None)
    with pytest.raises(SandboxError, match="apt-get update"):
        qemu._kernel_package(tmp_path)
    (tmp_path / "linux-image-6.1.0-50-amd64_6.1.180-1").mkdir()
    (tmp_path / "linux-image-6.1.0-50-amd64_6.1.180-1" / "ready").write_text("")
    assert qemu._kernel_package(tmp_path) == ("linux-image-6.1.0-50-amd64", "6.1.180-1")
