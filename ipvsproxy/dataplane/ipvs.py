"""IPVS adapter: a generic-netlink socket that dumps and programs IPVS in batches.

The side-effecting half of the IPVS data plane; ``ipvs_codec`` and ``ipvs_decode`` (pure)
build and parse the bytes, and ``netlink.NetlinkSocket`` carries them: many requests per
socket write, acks matched by sequence number, a receive buffer sized for the batch, a
receive timeout and restarted dumps (see that module for the kernel behaviour each relies
on). IPVS adds:

- Idempotency (the reconciler's rule "deleting a non-existing object is not an error"):
  DEL_SERVICE answered with ESRCH and DEL_DEST with ENOENT (or ESRCH: its service is gone)
  count as done; an Add answered with EEXIST is sent again as the matching Set, so the end
  state is the requested one. Every other refusal becomes an OperationFailure.
- A lost ack (receive buffer overrun) is reported as a failure, never guessed to be a
  success.

Not thread-safe: one IpvsSocket per thread.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from loguru import logger

from ipvsproxy.core.model import IpvsStats, RealServer, VirtualServer, VirtualServerKey
from ipvsproxy.core.operations import (
    AddRealServer,
    AddVirtualServer,
    DeleteRealServer,
    DeleteVirtualServer,
    IpvsOperation,
    OperationFailure,
    UpdateRealServer,
    UpdateVirtualServer,
)
from ipvsproxy.dataplane.interfaces import IpvsSnapshot
from ipvsproxy.dataplane.ipvs_codec import (
    IPVS_GENL_NAME,
    describe_operation,
    encode_get_config,
    encode_get_dests,
    encode_get_services,
    encode_operation,
    encode_set_config,
)
from ipvsproxy.dataplane.ipvs_decode import (
    SkippedEntry,
    address_af,
    parse_config,
    parse_dest,
    parse_service,
)
from ipvsproxy.dataplane.ipvs_proc import parse_proc_ip_vs
from ipvsproxy.dataplane.ipvs_stats import parse_service_stats
from ipvsproxy.dataplane.netlink import (
    NETLINK_GENERIC,
    NetlinkDecodeError,
    NetlinkSocket,
    Outcome,
)
from ipvsproxy.dataplane.netlink_codec import (
    GENL_ID_CTRL,
    EncodeError,
    encode_get_family,
    parse_family_id,
)
from ipvsproxy.errors import KernelError

__all__ = ["EncodeOnlySink", "IpvsSocket"]


class IpvsSocket(NetlinkSocket):
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
        super().__init__(
            protocol=NETLINK_GENERIC,
            name="IPVS",
            timeout=timeout,
            batch_messages=batch_messages,
            batch_bytes=batch_bytes,
            buffer_bytes=buffer_bytes,
        )
        # /proc/thread-self/net follows the calling thread's network namespace, the socket
        # the one it was opened in: the file is used only while both are the same.
        self._netns = _netns_inode()
        try:
            self.family_id = self._resolve_family()
        except BaseException:
            self.close()
            raise

    def _resolve_family(self) -> int:
        """The IPVS family id, asked of the generic netlink controller (CTRL_CMD_GETFAMILY).

        The transport is this socket. Encoded and parsed here rather than with pyroute2's
        ctrlmsg schema, whose import
        alone (some 160 modules, sqlite3 and unittest.mock among them) took about 10 MiB
        of the agent's resident memory.
        """
        replies, err, text = self._request(lambda seq: encode_get_family(IPVS_GENL_NAME, seq=seq))
        if err == errno.ENOENT:
            raise KernelError(
                "the kernel has no IPVS generic netlink family: is the ip_vs module loaded?",
                errno=err,
            )
        if err:
            raise KernelError(
                f"looking up the IPVS netlink family failed: {os.strerror(err)}"
                + (f" ({text})" if text else ""),
                errno=err,
            )
        family_id: int | None = None
        for message in replies:
            if message.type == GENL_ID_CTRL:
                value = parse_family_id(message.payload)
                if value is None:
                    raise KernelError("the netlink controller reply has no family id")
                family_id = value
        if family_id is None:
            raise KernelError("the netlink controller acked without a reply")
        return family_id

    # --- reading --------------------------------------------------------------------------

    def virtual_servers(self) -> list[VirtualServer]:
        """Every TCP/UDP/SCTP virtual server (fwmark and other services are skipped)."""
        family_id = self.family_id
        servers: list[VirtualServer] = []
        skipped: list[str] = []
        for payload in self._dump(
            lambda seq: encode_get_services(family_id=family_id, seq=seq), reply_type=family_id
        ):
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
        for payload in self._dump(
            lambda seq: encode_get_dests(key, family_id=family_id, seq=seq), reply_type=family_id
        ):
            entry = parse_dest(payload, service_af=af)
            if isinstance(entry, SkippedEntry):
                logger.debug("ipvs dump skipped a real server", reason=entry.reason)
            else:
                servers.append(entry)
        return servers

    def snapshot(self) -> IpvsSnapshot:
        """Every virtual server with its real servers.

        Services come from one GET_SERVICE dump (netlink has every field). Real servers come
        from one read of /proc/net/ip_vs, which lists them all: netlink would need one
        GET_DEST dump per service (the kernel runs one dump at a time per socket), and that
        read was several times slower than `ipvsadm -Ln` at 1,000 services and more
        (bench/bench_kernel_read.py). A service the file does not list (added between the
        two reads), or the whole file when it cannot be read or is in another network
        namespace than this socket, falls back to the per-service dumps.
        """
        services = self.virtual_servers()
        listed = self._proc_real_servers() if services else None
        result: IpvsSnapshot = {}
        for server in services:
            reals = None if listed is None else listed.get(server.key)
            if reals is None:
                reals = self.real_servers(server.key)
            result[server.key] = (server, {real.key: real for real in reals})
        return result

    def _proc_real_servers(self) -> dict[VirtualServerKey, list[RealServer]] | None:
        """The real servers in /proc/net/ip_vs, or None when that cannot be trusted."""
        if self._netns is None or _netns_inode() != self._netns:
            return None
        try:
            with open(PROC_IP_VS, encoding="ascii", errors="replace") as listing:
                text = listing.read()
        except OSError as exc:
            logger.debug("cannot read {}; dumping per service", PROC_IP_VS, error=str(exc))
            return None
        try:
            return parse_proc_ip_vs(text)
        except NetlinkDecodeError as exc:
            logger.warning("unexpected {}; dumping per service", PROC_IP_VS, error=str(exc))
            return None

    def stats(self) -> dict[VirtualServerKey, IpvsStats]:
        """The traffic counters of every TCP/UDP/SCTP virtual server (`ipvsadm -Ln --stats`),
        from one service dump: the kernel sends them with each service."""
        family_id = self.family_id
        result: dict[VirtualServerKey, IpvsStats] = {}
        for payload in self._dump(
            lambda seq: encode_get_services(family_id=family_id, seq=seq), reply_type=family_id
        ):
            entry = parse_service_stats(payload)
            if not isinstance(entry, SkippedEntry):
                result[entry[0]] = entry[1]
        return result

    def timeouts(self) -> tuple[int, int, int]:
        """The tcp, tcpfin and udp connection timeouts in seconds (`ipvsadm -L --timeout`)."""
        family_id = self.family_id
        replies, err, text = self._request(
            lambda seq: encode_get_config(family_id=family_id, seq=seq)
        )
        if err:
            raise KernelError(
                f"reading IPVS timeouts failed: {os.strerror(err)} {text}".strip(), errno=err
            )
        for message in replies:
            if message.type == family_id:
                return parse_config(message.payload)
        raise KernelError("the kernel sent no IPVS configuration")

    def set_timeouts(self, timeouts: tuple[int, int, int]) -> bool:
        """Set the tcp, tcpfin and udp timeouts (0 keeps a value); False if already so.

        Like `ipvsadm --set`; kube-proxy applies its tcpTimeout, tcpFinTimeout and udpTimeout
        this way. Nothing is written when the kernel already holds these values.
        """
        current = self.timeouts()
        if all(value in (0, held) for value, held in zip(timeouts, current, strict=True)):
            return False
        family_id = self.family_id
        try:
            _, err, text = self._request(
                lambda seq: encode_set_config(timeouts, family_id=family_id, seq=seq)
            )
        except EncodeError as exc:
            raise KernelError(str(exc)) from exc
        if err:
            raise KernelError(
                f"setting IPVS timeouts {timeouts} failed: {os.strerror(err)} {text}".strip(),
                errno=err,
            )
        self.writes += 1
        return True

    # --- writing --------------------------------------------------------------------------

    def execute(self, ops: Sequence[IpvsOperation]) -> list[OperationFailure]:
        """Apply ``ops`` in order, batched; returns the failures (in ``ops`` order).

        An Add refused with EEXIST is retried as the matching Set after the other
        operations, so a plan must not both add and delete the same object in one call.
        """
        outcomes = self._transact_ops(ops)
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
            retried = self._transact_ops(retry_ops)
            for index, retry, outcome in zip(retry_index, retry_ops, retried, strict=True):
                if outcome.code:
                    op = ops[index]
                    why = _failure(retry, outcome).message
                    message = f"{describe_operation(op)}: exists; {why}"
                    failed.append((index, OperationFailure(op, outcome.code, message)))
        failed.sort(key=lambda item: item[0])
        return [failure for _, failure in failed]

    def _transact_ops(self, ops: Sequence[IpvsOperation]) -> list[Outcome]:
        """Encode, send in batches, and collect one outcome per operation."""
        family_id = self.family_id
        return self._transact(
            ops, lambda op, seq: encode_operation(op, family_id=family_id, seq=seq)
        )


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

    def real_servers(self, key: VirtualServerKey) -> list[RealServer]:
        return []

    def stats(self) -> dict[VirtualServerKey, IpvsStats]:
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
                failures.append(_failure(op, Outcome(errno.EINVAL, str(exc), sent=False)))
        self._seq = seq
        self.writes += len(encoded)
        self.bytes += sum(map(len, encoded))
        if self.keep:
            self.messages.extend(encoded)
        return failures


# /proc/self/net would show the thread-group leader's namespace, not this thread's.
PROC_IP_VS = "/proc/thread-self/net/ip_vs"


def _netns_inode() -> int | None:
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return None


# --- outcome rules (pure) -----------------------------------------------------------------


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


def _failure(op: IpvsOperation, outcome: Outcome) -> OperationFailure:
    if not outcome.sent:
        return OperationFailure(op, outcome.code, f"{describe_operation(op)}: {outcome.text}")
    reason = os.strerror(outcome.code)
    if outcome.code == errno.ENOENT and isinstance(op, AddVirtualServer | UpdateVirtualServer):
        # ip_vs_add_service/ip_vs_edit_service: an unknown scheduler is ENOENT
        reason += f" (is the scheduler {op.server.scheduler!r} available?)"
    if outcome.text:
        reason += f" ({outcome.text})"
    return OperationFailure(op, outcome.code, f"{describe_operation(op)}: {reason}")
