"""Reading every ipset in one netlink dump, without starting the ipset tool.

In the sandbox kernel `ipset save` costs a process start and the parsing of its text; the
same dump over a socket of the proxy's own costs neither. ``ipset_codec`` decodes it.
"""

from __future__ import annotations

from collections.abc import Collection

from ipvsproxy.dataplane.ipset_codec import (
    IPSET_CMD_LIST,
    NETLINK_NETFILTER,
    decode_names,
    decode_save,
    encode_names_request,
    encode_save_request,
    message_type,
)
from ipvsproxy.dataplane.netlink import NetlinkSocket


class IPSetSocket(NetlinkSocket):
    """An nfnetlink socket for the ipset subsystem, in the current network namespace."""

    def __init__(self, *, timeout: float = 10.0) -> None:
        super().__init__(
            protocol=NETLINK_NETFILTER, name="ipset", timeout=timeout, buffer_bytes=1024 * 1024
        )

    def save(self, names: Collection[str]) -> dict[str, frozenset[str]]:
        """Entries of the named sets, as `ipset save` prints them; sets not present are
        absent. KernelError (NetlinkDecodeError, UnsupportedIPSet) when the kernel refuses
        the dump or sends what the decoder cannot print exactly."""
        payloads = self._dump(encode_save_request, reply_type=message_type(IPSET_CMD_LIST))
        return decode_save(payloads, names)

    def names(self) -> list[str]:
        """Every set's name, in the kernel's index order (what iptables rules refer to)."""
        payloads = self._dump(encode_names_request, reply_type=message_type(IPSET_CMD_LIST))
        return decode_names(payloads)


def read_sets(names: Collection[str]) -> dict[str, frozenset[str]]:
    """``IPSetSocket.save`` on a socket of its own, so the read happens in whichever
    namespace the caller is in, as a process would."""
    with IPSetSocket() as sock:
        return sock.save(names)


def set_names() -> list[str]:
    """``IPSetSocket.names`` on a socket of its own, in the caller's namespace."""
    with IPSetSocket() as sock:
        return sock.names()
