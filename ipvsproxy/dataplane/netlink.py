"""Batched netlink over a raw socket: the transport under the IPVS and address adapters.

One ``NetlinkSocket`` speaks one netlink protocol (NETLINK_GENERIC for IPVS, NETLINK_ROUTE
for kube-ipvs0 and its addresses); the adapters subclass it and add their own messages.
Design points, each a lesson from existing netlink clients:

- Batching. moby/ipvs and pyroute2 send one request and wait for its ack. Here up to
  ``batch_messages`` requests (or ``batch_bytes``) go out in ONE sendto(); the kernel handles
  them one after another inside that call (netlink_rcv_skb) and queues one ack per request,
  which are then read back and matched by sequence number. A refused request does not stop
  the ones after it in the same write.
- Receive buffer. Each queued ack costs about 770 bytes of receive-buffer space (skb
  truesize, measured on Linux 6.1), so the default 208 KiB holds fewer than 280 of them;
  acks that do not fit are dropped and the next recv() fails with ENOBUFS. The buffer is
  enlarged (SO_RCVBUFFORCE when running as root), the batch is kept to what it can hold,
  and a lost ack is reported as a failure, never guessed to be a success.
- Timeouts. The socket has a receive timeout, so a missing reply raises KernelError instead
  of hanging the proxy.
- Dumps marked NLM_F_DUMP_INTR (the table changed while it was read) are restarted.

Splitting datagrams into messages and reading acks is pure and lives in ``netlink_codec``;
the constants and types that callers need are re-exported here.
Not thread-safe: one socket per thread.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final, NamedTuple, Self, TypeVar

from loguru import logger

from ipvsproxy.dataplane.netlink_codec import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    EncodeError,
    NetlinkDecodeError,
    NetlinkMessage,
    attributes,
    parse_ack,
    parse_done,
    rebuild,
    split_messages,
)
from ipvsproxy.errors import KernelError

__all__ = [
    "NETLINK_GENERIC",
    "NETLINK_ROUTE",
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "NLM_F_ACK",
    "NLM_F_CREATE",
    "NLM_F_DUMP",
    "NLM_F_EXCL",
    "NLM_F_REQUEST",
    "NetlinkDecodeError",
    "NetlinkMessage",
    "NetlinkSocket",
    "Outcome",
    "attributes",
    "rebuild",
]

# Not all of these are in Python's socket module (include/uapi/linux/netlink.h, socket.h).
NETLINK_ROUTE: Final = 0
NETLINK_GENERIC: Final = 16
SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10  # acks for refused requests leave the request's payload out
NETLINK_EXT_ACK: Final = 11  # acks may carry the kernel's error text
NETLINK_GET_STRICT_CHK: Final = 12  # get/dump requests are validated and their filters honoured
SO_SNDBUFFORCE: Final = 32
SO_RCVBUFFORCE: Final = 33

_SOCKET_KIND: Final = {NETLINK_ROUTE: "an rtnetlink", NETLINK_GENERIC: "a generic netlink"}
_DUMP_ATTEMPTS: Final = 5
_RECV_BYTES: Final = 256 * 1024  # a dump skb is at most 32 KiB; an ack far less
_ACK_TRUESIZE: Final = 1024  # receive-buffer cost of one queued ack, with a margin

_Item = TypeVar("_Item")


class Outcome(NamedTuple):
    """What became of one request.

    sent: the kernel answered; code 0 is success, else ``text`` is its extended-ack text
    (often empty). Not sent (encode error, lost ack): ``text`` is the whole reason.
    """

    code: int  # errno, 0 for success
    text: str = ""
    sent: bool = True


_DONE: Final = Outcome(0)


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> int:
    """Enlarge a socket buffer: SO_*BUFFORCE ignores net.core.[rw]mem_max but needs
    CAP_NET_ADMIN; SO_*BUF is capped by the sysctl. Returns the size the kernel granted."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)
    granted: int = sock.getsockopt(socket.SOL_SOCKET, plain)
    return granted


class NetlinkSocket:
    """A netlink socket of one protocol in the current network namespace, for subclasses
    that encode and decode that protocol's messages.

    Raises KernelError when the socket cannot be opened or set up. Use as a context
    manager, or call close().
    """

    def __init__(
        self,
        *,
        protocol: int,
        name: str,
        timeout: float = 10.0,
        batch_messages: int = 256,
        batch_bytes: int = 64 * 1024,
        buffer_bytes: int = 4 * 1024 * 1024,
        strict: bool = False,
    ) -> None:
        """protocol: NETLINK_GENERIC, NETLINK_ROUTE, ...; name: the kernel subsystem, for
        error messages ("IPVS"); timeout: seconds to wait for any reply; batch_messages /
        batch_bytes: upper bounds of one socket write (whichever is reached first; both are
        lowered if the kernel grants buffers too small for them); buffer_bytes: requested
        send and receive buffer size; strict: ask the kernel to validate get and dump
        requests and honour their filters (NETLINK_GET_STRICT_CHK, Linux 4.20; older
        kernels ignore the filters, so callers filter replies too)."""
        #: change messages written to the kernel (dumps and single requests not counted)
        self.writes = 0
        #: sendto() calls that carried change messages
        self.socket_writes = 0
        self._name = name
        self._seq = itertools.count(1)
        self._recv_buffer = bytearray(_RECV_BYTES)
        self._recv_view = memoryview(self._recv_buffer)
        self._timeout = timeout
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        except OSError as exc:
            kind = _SOCKET_KIND.get(protocol, f"a protocol {protocol} netlink")
            raise KernelError(
                f"cannot open {kind} socket: {exc.strerror}", errno=exc.errno or 0
            ) from exc
        try:
            self._sock.bind((0, 0))
            self._sock.settimeout(timeout)
            sndbuf = _set_buffer(self._sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, buffer_bytes)
            rcvbuf = _set_buffer(self._sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, buffer_bytes)
            options = [NETLINK_CAP_ACK, NETLINK_EXT_ACK]
            if strict:
                options.append(NETLINK_GET_STRICT_CHK)
            for option in options:
                # older kernels lack them: acks are merely larger / carry no text
                with contextlib.suppress(OSError):
                    self._sock.setsockopt(SOL_NETLINK, option, 1)
            self._batch_messages = max(1, min(batch_messages, rcvbuf // _ACK_TRUESIZE))
            # netlink_sendmsg refuses a write larger than the send buffer (EMSGSIZE)
            self._batch_bytes = max(1024, min(batch_bytes, sndbuf - 1024))
        except OSError as exc:
            self._sock.close()
            raise KernelError(
                f"cannot set up the {name} netlink socket: {exc.strerror}", errno=exc.errno or 0
            ) from exc

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- low level ------------------------------------------------------------------------

    def _next_seq(self) -> int:
        return next(self._seq) & 0xFFFFFFFF

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendto(data, (0, 0))
        except OSError as exc:
            raise KernelError(
                f"{self._name} netlink write of {len(data)} bytes failed: {exc.strerror}",
                errno=exc.errno or 0,
            ) from exc

    def _recv(self) -> list[NetlinkMessage]:
        """One datagram from the kernel. ENOBUFS (acks were dropped) propagates as OSError."""
        try:
            size = self._sock.recv_into(self._recv_buffer, 0, socket.MSG_TRUNC)
        except TimeoutError as exc:
            raise KernelError(
                f"no reply from the kernel's {self._name} within {self._timeout:g} s",
                errno=errno.ETIMEDOUT,
            ) from exc
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise
            raise KernelError(
                f"{self._name} netlink read failed: {exc.strerror}", errno=exc.errno or 0
            ) from exc
        if size > len(self._recv_buffer):
            raise KernelError(f"a {size}-byte netlink reply did not fit the receive buffer")
        return split_messages(bytes(self._recv_view[:size]))

    def _recv_checked(self) -> list[NetlinkMessage]:
        try:
            return self._recv()
        except OSError as exc:
            raise KernelError(
                f"{self._name} netlink receive buffer overrun: replies were lost",
                errno=errno.ENOBUFS,
            ) from exc

    def _request(self, request: Callable[[int], bytes]) -> tuple[list[NetlinkMessage], int, str]:
        """Send one request (``request(seq)`` must set NLM_F_ACK) and wait for its ack.

        Returns the replies that came before the ack, the ack's errno (0: success) and the
        kernel's extended-ack text. Not counted in ``writes``.
        """
        seq = self._next_seq()
        self._send(request(seq))
        replies: list[NetlinkMessage] = []
        while True:
            for message in self._recv_checked():
                if message.seq != seq:
                    continue  # a late reply to an earlier request
                if message.type == NLMSG_ERROR:
                    err, text = parse_ack(message.payload, message.flags)
                    return replies, err, text
                replies.append(message)

    def _dump(self, request: Callable[[int], bytes], *, reply_type: int) -> list[bytes]:
        """Payloads of the ``reply_type`` messages of one dump, restarted when the kernel
        marks it interrupted."""
        for _attempt in range(_DUMP_ATTEMPTS):
            seq = self._next_seq()
            self._send(request(seq))
            payloads: list[bytes] = []
            interrupted = False
            done = False
            while not done:
                for message in self._recv_checked():
                    if message.seq != seq:
                        continue  # a late reply to an earlier request
                    if message.flags & NLM_F_DUMP_INTR:
                        interrupted = True
                    if message.type == reply_type:
                        payloads.append(message.payload)
                    elif message.type == NLMSG_DONE:
                        status = parse_done(message.payload)
                        if status:
                            raise KernelError(
                                f"{self._name} dump failed: {os.strerror(status)}", errno=status
                            )
                        done = True
                    elif message.type == NLMSG_ERROR:
                        err, text = parse_ack(message.payload, message.flags)
                        if err:
                            raise KernelError(
                                f"{self._name} dump refused: {os.strerror(err)}"
                                + (f" ({text})" if text else ""),
                                errno=err,
                            )
            if not interrupted:
                return payloads
            logger.debug(
                "netlink dump interrupted; restarting", name=self._name, attempt=_attempt + 1
            )
        raise KernelError(f"{self._name} dump interrupted {_DUMP_ATTEMPTS} times in a row")

    # --- batched changes ------------------------------------------------------------------

    def _transact(
        self, items: Sequence[_Item], encode: Callable[[_Item, int], bytes]
    ) -> list[Outcome]:
        """Encode each item (``encode(item, seq)``, a request with NLM_F_ACK), send them in
        batches, and collect one outcome per item. An item whose encoding raises
        EncodeError fails alone (EINVAL, not sent)."""
        outcomes: list[Outcome] = [_DONE] * len(items)
        limit_messages = self._batch_messages
        limit_bytes = self._batch_bytes
        parts: list[bytes] = []
        pending: dict[int, int] = {}  # seq -> index in items
        size = 0
        for index, item in enumerate(items):
            seq = self._next_seq()
            try:
                data = encode(item, seq)
            except EncodeError as exc:
                outcomes[index] = Outcome(errno.EINVAL, str(exc), sent=False)
                continue
            if parts and size + len(data) > limit_bytes:
                self._flush(parts, pending, outcomes)
                parts, pending, size = [], {}, 0
            parts.append(data)
            pending[seq] = index
            size += len(data)
            if len(parts) >= limit_messages:
                self._flush(parts, pending, outcomes)
                parts, pending, size = [], {}, 0
        if parts:
            self._flush(parts, pending, outcomes)
        return outcomes

    def _flush(self, parts: list[bytes], pending: dict[int, int], outcomes: list[Outcome]) -> None:
        """Write one batch and read its acks into ``outcomes``."""
        self._send(b"".join(parts))
        self.writes += len(parts)
        self.socket_writes += 1
        while pending:
            try:
                messages = self._recv()
            except OSError:  # ENOBUFS: the kernel dropped acks that did not fit
                self._drain_after_overrun(pending, outcomes)
                return
            _take_acks(messages, pending, outcomes)

    def _drain_after_overrun(self, pending: dict[int, int], outcomes: list[Outcome]) -> None:
        """Read the acks that did fit, then call the rest lost.

        The kernel processed the whole batch inside sendto(), so every ack it will ever send
        is queued already: read without waiting until the queue is empty. Emptying it also
        clears the socket's congestion state (NETLINK_S_CONGESTED); left set, the next
        overrun would drop acks without reporting ENOBUFS and the reader would wait forever.
        """
        self._sock.settimeout(0)
        try:
            while True:
                try:
                    size = self._sock.recv_into(self._recv_buffer, 0, socket.MSG_TRUNC)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        continue
                    raise KernelError(
                        f"{self._name} netlink read failed: {exc.strerror}", errno=exc.errno or 0
                    ) from exc
                if size <= len(self._recv_buffer):
                    _take_acks(split_messages(bytes(self._recv_view[:size])), pending, outcomes)
        finally:
            self._sock.settimeout(self._timeout)
        lost = Outcome(
            errno.ENOBUFS,
            "its acknowledgement was lost (netlink receive buffer overrun); "
            "whether the kernel applied it is unknown",
            sent=False,
        )
        for index in pending.values():
            outcomes[index] = lost
        pending.clear()


# --- pure helpers -------------------------------------------------------------------------


def _take_acks(
    messages: list[NetlinkMessage], pending: dict[int, int], outcomes: list[Outcome]
) -> None:
    """Record the acks among ``messages`` that answer a pending request."""
    for message in messages:
        if message.type != NLMSG_ERROR:
            continue
        index = pending.pop(message.seq, -1)
        if index < 0:
            continue  # a late reply to an earlier request
        err, text = parse_ack(message.payload, message.flags)
        if err:
            outcomes[index] = Outcome(err, text)
