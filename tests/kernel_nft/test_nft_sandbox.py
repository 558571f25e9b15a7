"""The qemu guest itself: Debian's generic kernel, with nf_tables nat, IPVS and ipset."""

from __future__ import annotations

import subprocess

import pytest

pytestmark = pytest.mark.kernel_qemu


def run(*argv: str, stdin: str | None = None) -> str:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True).stdout


def test_the_guest_kernel_has_nft_nat_ipvs_and_ipset(guest_kernel: str | None) -> None:
    assert guest_kernel == "qemu"
    run("iptables-nft", "-t", "nat", "-N", "KUBE-PROBE")
    run("iptables-nft", "-t", "nat", "-A", "KUBE-PROBE", "-j", "MASQUERADE")
    assert "-A KUBE-PROBE -j MASQUERADE" in run("iptables-nft-save", "-t", "nat")
    assert "IP Virtual Server" in run("ipvsadm", "-Ln")
    run("ipset", "create", "KUBE-PROBE", "hash:ip,port")
    assert run("ipset", "list", "-n").split() == ["KUBE-PROBE"]
