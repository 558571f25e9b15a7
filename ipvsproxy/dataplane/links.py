"""The kube-ipvs0 dummy interface and its addresses, through pyroute2's rtnetlink.

The interface is left DOWN, as kube-proxy leaves it: the kernel still adds local routes for
addresses on a down dummy link, so traffic to them is delivered locally where IPVS takes it.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ipvsproxy.errors import KernelError
from ipvsproxy.model import IPAddress, IPFamily
from ipvsproxy.operations import BindAddress, OperationFailure, UnbindAddress

IFA_F_NODAD = 0x02  # no duplicate address detection: an IPv6 VIP is usable at once


def _prefix(address: IPAddress) -> int:
    return 32 if address.version == 4 else 128


class LinkTool:
    """A small typed wrapper over pyroute2.IPRoute (one netlink socket)."""

    def __init__(self) -> None:
        try:
            self._ipr: Any = IPRoute()
        except OSError as exc:
            raise KernelError(
                f"cannot open an rtnetlink socket: {exc}", errno=exc.errno or 0
            ) from exc
        self.writes = 0  # address and link changes sent, for tests and metrics

    def close(self) -> None:
        self._ipr.close()

    def _index(self, name: str) -> int | None:
        found = self._ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None

    def interface_exists(self, name: str) -> bool:
        return self._index(name) is not None

    def ensure_interface(self, name: str) -> None:
        if self._index(name) is not None:
            return
        try:
            self.writes += 1
            self._ipr.link("add", ifname=name, kind="dummy")
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise KernelError(
                    f"cannot create dummy interface {name}: {exc} "
                    "(is the dummy link driver available?)",
                    errno=exc.code,
                ) from exc

    def delete_interface(self, name: str) -> None:
        index = self._index(name)
        if index is None:
            return
        try:
            self.writes += 1
            self._ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise KernelError(f"cannot delete interface {name}: {exc}", errno=exc.code) from exc

    def addresses(self, name: str) -> frozenset[IPAddress]:
        from ipaddress import ip_address

        index = self._index(name)
        if index is None:
            return frozenset()
        found: set[IPAddress] = set()
        for message in self._ipr.get_addr(index=index):
            value = message.get("IFA_ADDRESS")
            if value:
                found.add(ip_address(value))
        return frozenset(found)

    def bind(self, name: str, addresses: Sequence[IPAddress]) -> list[OperationFailure]:
        return self._change("add", name, addresses)

    def unbind(self, name: str, addresses: Sequence[IPAddress]) -> list[OperationFailure]:
        return self._change("del", name, addresses)

    def _change(
        self, command: str, name: str, addresses: Sequence[IPAddress]
    ) -> list[OperationFailure]:
        if not addresses:
            return []
        index = self._index(name)
        failures: list[OperationFailure] = []
        for address in addresses:
            op = BindAddress(address) if command == "add" else UnbindAddress(address)
            if index is None:
                failures.append(OperationFailure(op, errno.ENODEV, f"{name} does not exist"))
                continue
            extra = {"flags": IFA_F_NODAD} if IPFamily.of(address) is IPFamily.V6 else {}
            try:
                self.writes += 1
                self._ipr.addr(
                    command, index=index, address=str(address), prefixlen=_prefix(address), **extra
                )
            except NetlinkError as exc:
                # Adding a bound address or removing an absent one leaves the wanted state.
                if (command, exc.code) in (
                    ("add", errno.EEXIST),
                    ("del", errno.EADDRNOTAVAIL),
                    ("del", errno.ENOENT),
                ):
                    continue
                verb = "bind" if command == "add" else "unbind"
                failures.append(
                    OperationFailure(op, exc.code, f"{verb} {address} on {name}: {exc}")
                )
        return failures
