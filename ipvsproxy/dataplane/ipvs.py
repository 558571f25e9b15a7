"""IPVS adapter: a raw generic-netlink socket that dumps and programs IPVS in batches.

The side-effecting half of the IPVS data plane; ``ipvs_codec`` (pure) builds and parses the
bytes. Design points, each a lesson from existing IPVS clients:

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
- Idempotency (the reconciler's rule "deleting a non-existing object is not an error"):
  DEL_SERVICE answered with ESRCH and DEL_DEST with ENOENT (or ESRCH: its service is gone)
  count as done; an Add answered with EEXIST is sent again as the matching Set, so the end
  state is the requested one. Every other refusal becomes an OperationFailure.
- Timeouts. The socket has a receive timeout, so a missing reply raises KernelError instead
  of hanging the proxy.
- Dumps marked NLM_F_DUMP_INTR (the table changed while it was read) are restarted.

Not thread-safe: one IpvsSocket per thread.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import struct
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final, NamedTuple

from loguru import logger
from pyroute2.netlink import CTRL_CMD_GETFAMILY, GENL_ID_CTRL, ctrlmsg

from ipvsproxy.dataplane.interfaces import IpvsSnapshot
from ipvsproxy.dataplane.ipvs_codec import (
    IPVS_GENL_NAME,
    NLM_F_ACK,
    NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    EncodeError,
    NetlinkMessage,
    SkippedEntry,
    address_af,
    describe_operation,
    encode_get_dests,
    encode_get_services,
    encode_operation,
    parse_ack,
    parse_dest,
    parse_done,
    parse_service,
    split_messages,
)
from ipvsproxy.errors import KernelError
from ipvsproxy.model import RealServer, VirtualServer, VirtualServerKey
from ipvsproxy.operations import (
    AddRealServer,
    AddVirtualServer,
    DeleteRealServer,
    DeleteVirtualServer,
    IpvsOperation,
    OperationFailure,
    UpdateRealServer,
    UpdateVirtualServer,
)

__all__ = ["EncodeOnlySink", "IpvsSocket"]

# Not all of these are in Python's socket module (include/uapi/linux/netlink.h, socket.h).
NETLINK_GENERIC: Final = 16
SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10  # acks for refused requests leave the request's payload out
NETLINK_EXT_ACK: Final = 11  # acks may carry the kernel's error text
SO_SNDBUFFORCE: Final = 32
SO_RCVBUFFORCE: Final = 33

_DUMP_ATTEMPTS: Final = 5
_RECV_BYTES: Final = 256 * 1024  # a dump skb is at most 32 KiB; an ack far less
_ACK_TRUESIZE: Final = 1024  # receive-buffer cost of one queued ack, with a margin
_NLMSGHDR: Final = struct.Struct("=IHHII")


class _Outcome(NamedTuple):
    """What became of one operation.

    sent: the kernel answered; code 0 is success, else ``text`` is its extended-ack text
    (often empty). Not sent (encode error, lost ack): ``text`` is the whole reason.
    """

    code: int  # errno, 0 for success
    text: str = ""
    sent: bool = True


_DONE: Final = _Outcome(0)


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> int:
    """Enlarge a socket buffer: SO_*BUFFORCE ignores net.core.[rw]mem_max but needs
    CAP_NET_ADMIN; SO_*BUF is capped by the sysctl. Returns the size the kernel granted."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)
    granted: int = sock.getsockopt(socket.SOL_SOCKET, plain)
    return granted


class IpvsSocket:
    """Programs and reads IPVS in the current network namespace over generic netlink.

    Raises KernelError when the socket cannot be opened or the IPVS family is missing
    (ip_vs not loaded). Use as a context manager, or call close().
    """

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        batch_messages: int = 256,
        batch_bytes: int = 64 * 1024,
        buffer_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        """timeout: seconds to wait for any reply; batch_messages / batch_bytes: upper
        bounds of one socket write (whichever is reached first; both are lowered if the
        kernel grants buffers too small for them); buffer_bytes: requested send and receive
        buffer size."""
        #: change messages written to the kernel (dump requests not counted)
        self.writes = 0
        #: sendto() calls that carried change messages
        self.socket_writes = 0
        self._seq = itertools.count(1)
        self._recv_buffer = bytearray(_RECV_BYTES)
        self._recv_view = memoryview(self._recv_buffer)
        self._timeout = timeout
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        except OSError as exc:
            raise KernelError(
                f"cannot open a generic netlink socket: {exc.strerror}", errno=exc.errno or 0
            ) from exc
        try:
            self._sock.bind((0, 0))
            self._sock.settimeout(timeout)
            sndbuf = _set_buffer(self._sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, buffer_bytes)
            rcvbuf = _set_buffer(self._sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, buffer_bytes)
            for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
                # older kernels lack them: acks are merely larger / carry no text
                with contextlib.suppress(OSError):
                    self._sock.setsockopt(SOL_NETLINK, option, 1)
            self._batch_messages = max(1, min(batch_messages, rcvbuf // _ACK_TRUESIZE))
            # netlink_sendmsg refuses a write larger than the send buffer (EMSGSIZE)
            self._batch_bytes = max(1024, min(batch_bytes, sndbuf - 1024))
            self.family_id = self._resolve_family()
        except OSError as exc:
            self._sock.close()
            raise KernelError(
                f"cannot set up the IPVS netlink socket: {exc.strerror}", errno=exc.errno or 0
            ) from exc
        except BaseException:
            self._sock.close()
            raise

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> IpvsSocket:
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
                f"IPVS netlink write of {len(data)} bytes failed: {exc.strerror}",
                errno=exc.errno or 0,
            ) from exc

    def _recv(self) -> list[NetlinkMessage]:
        """One datagram from the kernel. ENOBUFS (acks were dropped) propagates as OSError."""
        try:
            size = self._sock.recv_into(self._recv_buffer, 0, socket.MSG_TRUNC)
        except TimeoutError as exc:
            raise KernelError(
                f"no reply from the kernel's IPVS within {self._timeout:g} s",
                errno=errno.ETIMEDOUT,
            ) from exc
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise
            raise KernelError(
                f"IPVS netlink read failed: {exc.strerror}", errno=exc.errno or 0
            ) from exc
        if size > len(self._recv_buffer):
            raise KernelError(f"a {size}-byte netlink reply did not fit the receive buffer")
        return split_messages(bytes(self._recv_view[:size]))

    def _recv_checked(self) -> list[NetlinkMessage]:
        try:
            return self._recv()
        except OSError as exc:
            raise KernelError(
                "IPVS netlink receive buffer overrun: replies were lost", errno=errno.ENOBUFS
            ) from exc

    def _resolve_family(self) -> int:
        """The IPVS family id, asked of the generic netlink controller (CTRL_CMD_GETFAMILY).

        pyroute2's ctrlmsg schema encodes the request and decodes the reply; the transport is
        this socket (pyroute2's own socket would bring its event loop along, and it logs a
        missing family through the root logger before raising).
        """
        seq = self._next_seq()
        request = ctrlmsg()
        request["cmd"] = CTRL_CMD_GETFAMILY
        request["version"] = 1
        request["attrs"].append(["CTRL_ATTR_FAMILY_NAME", IPVS_GENL_NAME])
        request["header"]["type"] = GENL_ID_CTRL
        request["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
        request["header"]["sequence_number"] = seq
        request.encode()
        self._send(bytes(request.data))
        family_id: int | None = None
        while True:
            for message in self._recv_checked():
                if message.seq != seq:
                    continue
                if message.type == NLMSG_ERROR:
                    err, text = parse_ack(message.payload, message.flags)
                    if err == errno.ENOENT:
                        raise KernelError(
                            "the kernel has no IPVS generic netlink family: "
                            "is the ip_vs module loaded?",
                            errno=err,
                        )
                    if err:
                        raise KernelError(
                            f"looking up the IPVS netlink family failed: {os.strerror(err)}"
                            + (f" ({text})" if text else ""),
                            errno=err,
                        )
                    if family_id is None:
                        raise KernelError("the netlink controller acked without a reply")
                    return family_id
                if message.type == GENL_ID_CTRL:
                    reply = ctrlmsg(_rebuild(message))
                    reply.decode()
                    value = reply.get_attr("CTRL_ATTR_FAMILY_ID")
                    if not isinstance(value, int):
                        raise KernelError("the netlink controller reply has no family id")
                    family_id = value

    def _dump(self, request: Callable[[int], bytes]) -> list[bytes]:
        """Payloads of one dump, restarted when the kernel marks it interrupted."""
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
                    if message.type == self.family_id:
                        payloads.append(message.payload)
                    elif message.type == NLMSG_DONE:
                        status = parse_done(message.payload)
                        if status:
                            raise KernelError(
                                f"IPVS dump failed: {os.strerror(status)}", errno=status
                            )
                        done = True
                    elif message.type == NLMSG_ERROR:
                        err, text = parse_ack(message.payload, message.flags)
                        if err:
                            raise KernelError(
                                f"IPVS dump refused: {os.strerror(err)}"
                                + (f" ({text})" if text else ""),
                                errno=err,
                            )
            if not interrupted:
                return payloads
            logger.debug("ipvs dump interrupted; restarting", attempt=_attempt + 1)
        raise KernelError(f"IPVS dump interrupted {_DUMP_ATTEMPTS} times in a row")

    # --- reading --------------------------------------------------------------------------

    def virtual_servers(self) -> list[VirtualServer]:
        """Every TCP/UDP/SCTP virtual server (fwmark and other services are skipped)."""
        family_id = self.family_id
        servers: list[VirtualServer] = []
        skipped: list[str] = []
        for payload in self._dump(lambda seq: encode_get_services(family_id=family_id, seq=seq)):
            entry = parse_service(payload)
            if isinstance(entry, SkippedEntry):
                skipped.append(entry.reason)
            else:
                servers.append(entry)
        if skipped:
            logger.debug("ipvs dump skipped services", count=len(skipped), first=skipped[0])
        return servers

    def real_servers(self, key: VirtualServerKey) -> list[RealServer]:
        """The real servers of one virtual server (empty if it does not exist)."""
        family_id = self.family_id
        af = address_af(key.address)
        servers: list[RealServer] = []
        for payload in self._dump(lambda seq: encode_get_dests(key, family_id=family_id, seq=seq)):
            entry = parse_dest(payload, service_af=af)
            if isinstance(entry, SkippedEntry):
                logger.debug("ipvs dump skipped a real server", reason=entry.reason)
            else:
                servers.append(entry)
        return servers

    def snapshot(self) -> IpvsSnapshot:
        """Every virtual server with its real servers: one dump for the services, then one
        per service (the kernel runs one dump at a time per socket, so they cannot be
        pipelined)."""
        result: IpvsSnapshot = {}
        for server in self.virtual_servers():
            reals = self.real_servers(server.key)
            result[server.key] = (server, {real.key: real for real in reals})
        return result

    # --- writing --------------------------------------------------------------------------

    def execute(self, ops: Sequence[IpvsOperation]) -> list[OperationFailure]:
        """Apply ``ops`` in order, batched; returns the failures (in ``ops`` order).

        An Add refused with EEXIST is retried as the matching Set after the other
        operations, so a plan must not both add and delete the same object in one call.
        """
        outcomes = self._transact(ops)
        failed: list[tuple[int, OperationFailure]] = []
        retry_index: list[int] = []
        retry_ops: list[IpvsOperation] = []
        for index, (op, outcome) in enumerate(zip(ops, outcomes, strict=True)):
            if outcome.code == 0 or (outcome.sent and _already_done(op, outcome.code)):
                continue
            retry = _retry_as_set(op, outcome.code) if outcome.sent else None
            if retry is not None:
                retry_index.append(index)
                retry_ops.append(retry)
            else:
                failed.append((index, _failure(op, outcome)))
        if retry_ops:
            retried = self._transact(retry_ops)
            for index, retry, outcome in zip(retry_index, retry_ops, retried, strict=True):
                if outcome.code:
                    op = ops[index]
                    why = _failure(retry, outcome).message
                    message = f"{describe_operation(op)}: exists; {why}"
                    failed.append((index, OperationFailure(op, outcome.code, message)))
        failed.sort(key=lambda item: item[0])
        return [failure for _, failure in failed]

    def _transact(self, ops: Sequence[IpvsOperation]) -> list[_Outcome]:
        """Encode, send in batches, and collect one outcome per operation."""
        outcomes: list[_Outcome] = [_DONE] * len(ops)
        family_id = self.family_id
        limit_messages = self._batch_messages
        limit_bytes = self._batch_bytes
        parts: list[bytes] = []
        pending: dict[int, int] = {}  # seq -> index in ops
        size = 0
        for index, op in enumerate(ops):
            seq = self._next_seq()
            try:
                data = encode_operation(op, family_id=family_id, seq=seq)
            except EncodeError as exc:
                outcomes[index] = _Outcome(errno.EINVAL, str(exc), sent=False)
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

    def _flush(self, parts: list[bytes], pending: dict[int, int], outcomes: list[_Outcome]) -> None:
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

    def _drain_after_overrun(self, pending: dict[int, int], outcomes: list[_Outcome]) -> None:
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
                        f"IPVS netlink read failed: {exc.strerror}", errno=exc.errno or 0
                    ) from exc
                if size <= len(self._recv_buffer):
                    _take_acks(split_messages(bytes(self._recv_view[:size])), pending, outcomes)
        finally:
            self._sock.settimeout(self._timeout)
        lost = _Outcome(
            errno.ENOBUFS,
            "its acknowledgement was lost (netlink receive buffer overrun); "
            "whether the kernel applied it is unknown",
            sent=False,
        )
        for index in pending.values():
            outcomes[index] = lost
        pending.clear()


class EncodeOnlySink:
    """Encodes operations exactly like IpvsSocket.execute but sends nothing.

    For benchmarks (controller CPU without a kernel) and tests. ``writes`` counts encoded
    messages, ``bytes`` their size; with ``keep=True`` the messages are kept in
    ``messages``. It holds no state: snapshot() is always empty.
    """

    def __init__(self, *, family_id: int = 0x20, keep: bool = False) -> None:
        self.family_id = family_id
        self.keep = keep
        self.writes = 0
        self.bytes = 0
        self.messages: list[bytes] = []
        self._seq = 0

    def snapshot(self) -> IpvsSnapshot:
        return {}

    def execute(self, ops: Sequence[IpvsOperation]) -> list[OperationFailure]:
        failures: list[OperationFailure] = []
        family_id = self.family_id
        seq = self._seq
        encoded: list[bytes] = []
        for op in ops:
            seq += 1
            try:
                encoded.append(encode_operation(op, family_id=family_id, seq=seq & 0xFFFFFFFF))
            except EncodeError as exc:
                failures.append(_failure(op, _Outcome(errno.EINVAL, str(exc), sent=False)))
        self._seq = seq
        self.writes += len(encoded)
        self.bytes += sum(map(len, encoded))
        if self.keep:
            self.messages.extend(encoded)
        return failures


# --- outcome rules (pure) -----------------------------------------------------------------


def _take_acks(
    messages: list[NetlinkMessage], pending: dict[int, int], outcomes: list[_Outcome]
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
            outcomes[index] = _Outcome(err, text)


def _already_done(op: IpvsOperation, err: int) -> bool:
    """Deleting what is not there is success: ip_vs_genl_set_cmd answers ESRCH for a
    missing service, ip_vs_del_dest ENOENT for a missing dest."""
    if isinstance(op, DeleteVirtualServer):
        return err == errno.ESRCH
    if isinstance(op, DeleteRealServer):
        return err in (errno.ENOENT, errno.ESRCH)
    return False


def _retry_as_set(op: IpvsOperation, err: int) -> IpvsOperation | None:
    if err != errno.EEXIST:
        return None
    if isinstance(op, AddVirtualServer):
        return UpdateVirtualServer(op.server)
    if isinstance(op, AddRealServer):
        return UpdateRealServer(op.virtual, op.server)
    return None


def _failure(op: IpvsOperation, outcome: _Outcome) -> OperationFailure:
    if not outcome.sent:
        return OperationFailure(op, outcome.code, f"{describe_operation(op)}: {outcome.text}")
    reason = os.strerror(outcome.code)
    if outcome.code == errno.ENOENT and isinstance(op, AddVirtualServer | UpdateVirtualServer):
        # ip_vs_add_service/ip_vs_edit_service: an unknown scheduler is ENOENT
        reason += f" (is the scheduler {op.server.scheduler!r} available?)"
    if outcome.text:
        reason += f" ({outcome.text})"
    return OperationFailure(op, outcome.code, f"{describe_operation(op)}: {reason}")


def _rebuild(message: NetlinkMessage) -> bytes:
    """The raw bytes of a split message, for decoders that want the whole message."""
    header = _NLMSGHDR.pack(
        16 + len(message.payload), message.type, message.flags, message.seq, message.pid
    )
    return header + message.payload
