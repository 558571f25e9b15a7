"""A cheap fingerprint of the legacy iptables tables, to skip iptables-save when nothing changed.

iptables-save prints the rules from the table blob the kernel hands out (the
IPT_SO_GET_ENTRIES socket option); the same blob always prints as the same text, with two
exceptions this fingerprint covers:

- each rule's packet and byte counters change with traffic; they are zeroed here (the text
  the proxy reads has no counters);
- an ipset match holds the set's kernel index, and the tool prints the name found at that
  index. Linux 6.1 refuses to rename or destroy a set a rule refers to (`ipset swap` keeps
  the names at their indices), but kernels that allowed it would change the text of an
  unchanged blob, so the names of all sets in index order (one netlink dump of names only)
  are part of the fingerprint.

Reading a blob is two socket options per table, against a process start, the loading of
the tool's extensions and the printing and parsing of every rule. The nft backend has no such
blob; only the legacy one uses this. Any error gives None, and the caller runs the tool.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from collections.abc import Sequence
from typing import Final

from ipvsproxy.core.model import IPFamily

SO_GET_INFO: Final = 64  # IPT_SO_GET_INFO / IP6T_SO_GET_INFO
SO_GET_ENTRIES: Final = 65
_GETINFO: Final = struct.Struct("=32sI5I5III")  # struct ipt_getinfo: 84 bytes
_GET_ENTRIES_HEADER: Final = 40  # struct ipt_get_entries: name[32], size, padding
# (offset of next_offset, offset of the counters) in struct ipt_entry / ip6t_entry
_ENTRY: Final = {IPFamily.V4: (90, 96), IPFamily.V6: (142, 152)}
_LEVEL: Final = {IPFamily.V4: socket.IPPROTO_IP, IPFamily.V6: socket.IPPROTO_IPV6}
_AF: Final = {IPFamily.V4: socket.AF_INET, IPFamily.V6: socket.AF_INET6}
_U16: Final = struct.Struct("=H")

_libc = ctypes.CDLL(None, use_errno=True)


def _getsockopt(fd: int, level: int, option: int, request: bytes, size: int) -> bytes:
    """getsockopt with an input buffer (Python's own cannot pass the table name in)."""
    buffer = ctypes.create_string_buffer(request, size)
    length = ctypes.c_uint32(size)
    if _libc.getsockopt(fd, level, option, buffer, ctypes.byref(length)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, errno.errorcode.get(code, str(code)))
    return buffer.raw[: length.value]


def normalise(blob: bytes, family: IPFamily) -> bytes | None:
    """The entries of a table blob with every rule's counters zeroed; None if the entries
    do not tile the blob exactly."""
    next_at, counters_at = _ENTRY[family]
    out = bytearray(blob)
    offset = 0
    while offset < len(out):
        if offset + counters_at + 16 > len(out):
            return None
        out[offset + counters_at : offset + counters_at + 16] = bytes(16)
        step: int = _U16.unpack_from(out, offset + next_at)[0]
        if step < counters_at + 16:
            return None
        offset += step
    return bytes(out) if offset == len(out) else None


def table_blob(sock: socket.socket, family: IPFamily, table: str) -> bytes | None:
    """One table's normalised blob; b"" when the namespace has no such table."""
    level = _LEVEL[family]
    name = table.encode().ljust(32, b"\0")
    try:
        info = _getsockopt(sock.fileno(), level, SO_GET_INFO, name, _GETINFO.size)
    except OSError as exc:
        return b"" if exc.errno == errno.ENOENT else None
    if len(info) != _GETINFO.size:
        return None
    fields = _GETINFO.unpack(info)
    size = fields[-1]
    request = name + struct.pack("=I", size)
    try:
        # EAGAIN: the table changed between the two calls; the tool then reads it
        raw = _getsockopt(sock.fileno(), level, SO_GET_ENTRIES, request, _GET_ENTRIES_HEADER + size)
    except OSError:
        return None
    blob = normalise(raw[_GET_ENTRIES_HEADER:], family)
    if blob is None:
        return None
    return info[32:] + blob  # hooks, underflows, counts and the rules


def stamp(family: IPFamily, tables: Sequence[str], set_names: Sequence[str]) -> bytes | None:
    """A fingerprint of the named tables and of the sets their rules can name; None when a
    table cannot be read this way (the caller then runs iptables-save)."""
    parts = [b"\0".join(name.encode() for name in set_names)]
    try:
        sock = socket.socket(_AF[family], socket.SOCK_RAW, socket.IPPROTO_RAW)
    except OSError:
        return None
    with sock:
        for table in tables:
            blob = table_blob(sock, family, table)
            if blob is None:
                return None
            parts.append(table.encode() + struct.pack("=I", len(blob)) + blob)
    return b"\n".join(parts)
