"""NftablesTool.read's choice of reader, with a fake nft and a fake netlink socket: the
chains from `nft -t` (again only when the chains' fingerprint moves), the elements from
the dump, the full listing when the dump fails."""

from __future__ import annotations

import errno
import subprocess
from types import TracebackType

import pytest

from ipvsproxy.core import nft_rules
from ipvsproxy.core.model import IPFamily
from ipvsproxy.core.nft_rules import NftSet
from ipvsproxy.core.rules import MasqueradeSettings
from ipvsproxy.dataplane import nftables
from ipvsproxy.dataplane.nftables import NftablesTool
from ipvsproxy.errors import KernelError

SETS = {"KUBE-CLUSTER-IP": {"10.96.0.1,tcp:443"}, "KUBE-NODE-PORT-TCP": {"30080"}}
FULL = nft_rules.render_table(IPFamily.V4, SETS, masquerade=MasqueradeSettings())
TERSE = nft_rules.render_table(IPFamily.V4, {}, masquerade=MasqueradeSettings())


class FakeNft:
    def __init__(self, present: bool = True) -> None:
        self.present = present
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        if not self.present:
            return subprocess.CompletedProcess(argv, 1, "", "Error: No such file or directory")
        return subprocess.CompletedProcess(argv, 0, TERSE if "-t" in argv else FULL, "")


class FakeSocket:
    fail = False
    fingerprint = b"one"

    def __enter__(self) -> FakeSocket:
        if FakeSocket.fail:
            raise KernelError("cannot open a netfilter netlink socket", errno=errno.EPERM)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def chains_fingerprint(self, family: IPFamily, table: str) -> bytes:
        return FakeSocket.fingerprint

    def elements(self, family: IPFamily, table: str, nft_set: NftSet) -> frozenset[str]:
        return frozenset(SETS.get(nft_set.spec.name_for(family), ()))


@pytest.fixture(autouse=True)
def fake_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeSocket.fail = False
    FakeSocket.fingerprint = b"one"
    monkeypatch.setattr(nftables, "NftSetSocket", FakeSocket)


def test_chains_from_terse_listing_elements_from_dump() -> None:
    nft = FakeNft()
    state = NftablesTool(runner=nft).read(IPFamily.V4)
    assert state == nft_rules.parse_listing(IPFamily.V4, FULL)
    assert [argv[1] for argv in nft.calls] == ["-t"]


def test_chains_listed_again_only_when_their_fingerprint_moves() -> None:
    nft = FakeNft()
    tool = NftablesTool(runner=nft)
    first = tool.read(IPFamily.V4)
    assert tool.read(IPFamily.V4) == first
    assert len(nft.calls) == 1, "unchanged chains listed again"
    FakeSocket.fingerprint = b"two"
    assert tool.read(IPFamily.V4) == first
    assert len(nft.calls) == 2, "changed chains not listed again"


def test_full_listing_when_the_dump_fails() -> None:
    FakeSocket.fail = True
    nft = FakeNft()
    state = NftablesTool(runner=nft).read(IPFamily.V4)
    assert state == nft_rules.parse_listing(IPFamily.V4, FULL)
    assert [argv[1] for argv in nft.calls] == ["list"]


def test_missing_table() -> None:
    FakeSocket.fail = True  # never opened
    assert NftablesTool(runner=FakeNft(present=False)).read(IPFamily.V4) is None
