"""A tiny pod network for real traffic tests inside the guest.

The current network namespace plays the node: IPVS, kube-ipvs0 and iptables live there.
Each pod is a namespace joined to the node by a veth pair, wired like Calico does it::

    pod netns                          node (current netns)
    eth0  10.244.1.1/32  <--veth-->    vpN  169.254.1.1/32, fe80::1/64
          default via 169.254.1.1            10.244.1.1/32 dev vpN
          default via fe80::1                (IPv6 the same, /128)

The node answers for its link-local gateway addresses, so neither proxy ARP nor proxy NDP
is needed, and every packet between pods, or between a pod and a service address, is routed
by the node, where IPVS sees it (replies included, which masquerading needs).

``add_external_host`` adds a host outside the cluster: a namespace on its own subnet,
joined to the node by a veth pair whose node end carries a node address (as eth0 would)::

    host netns                              node
    eth0  192.168.50.2/24  <--veth-->       vhN  192.168.50.1/24 (a NodePort address)
          default via 192.168.50.1

Backends answer TCP and UDP on a port with their pod name (``serve(echo_client=True)``:
the name, a space and the client address they saw). One server process serves all
pods of a ``serve`` call: it creates each listening socket inside that pod's namespace, so
the guest pays Python's start-up (about a second there) once instead of once per pod.
Clients run in the calling process, briefly switched into the client pod's namespace.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import IO

from ipvsproxy.errors import SandboxError
from ipvsproxy_testkit.sandbox.netns import ip, netns_path, switch_netns

__all__ = [
    "NODE_GATEWAY_V4",
    "NODE_GATEWAY_V6",
    "ExternalHost",
    "Pod",
    "PodNetwork",
    "tcp_requests",
    "udp_requests",
]

NODE_GATEWAY_V4 = "169.254.1.1"
NODE_GATEWAY_V6 = "fe80::1"

_POD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_networks = itertools.count()
_links = itertools.count()

# Runs with `python -c`: stdlib only, so start-up stays as cheap as the guest allows.
_SERVER = r"""
import ctypes, json, os, selectors, socket, sys

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def setns(fd):
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def listen(kind, port):
    try:
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        host = "::"
    except OSError:
        s = socket.socket(socket.AF_INET, kind)
        host = "0.0.0.0"
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    if kind == socket.SOCK_STREAM:
        s.listen(256)
    s.setblocking(False)
    return s


def client(peer):
    # An IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d.
    return peer[0].removeprefix("::ffff:").encode()


sel = selectors.DefaultSelector()
home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
for path, name, port, echo in json.loads(sys.argv[1]):
    fd = os.open(path, os.O_RDONLY)
    setns(fd)
    os.close(fd)
    reply = (name.encode(), echo)
    sel.register(listen(socket.SOCK_STREAM, port), selectors.EVENT_READ, (True, reply))
    sel.register(listen(socket.SOCK_DGRAM, port), selectors.EVENT_READ, (False, reply))
setns(home)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        stream, (name, echo) = key.data
        try:
            if stream:
                conn, peer = key.fileobj.accept()
                conn.setblocking(True)
                conn.sendall(name + (b" " + client(peer) if echo else b""))
                conn.close()
            else:
                _, peer = key.fileobj.recvfrom(2048)
                key.fileobj.sendto(name + (b" " + client(peer) if echo else b""), peer)
        except OSError as exc:
            print("serve:", exc, file=sys.stderr, flush=True)
"""


@dataclass(frozen=True)
class ExternalHost:
    """A host outside the cluster on its own subnet; node_ips are the node's addresses on
    that subnet (NodePort addresses), ips the host's own."""

    name: str
    netns: str
    ips: tuple[str, ...]
    node_ips: tuple[str, ...]
    node_link: str

    @property
    def ip(self) -> str:
        return self.ips[0]


@dataclass(frozen=True)
class Pod:
    """One pod: its namespace, addresses and the node's end of its veth pair."""

    name: str
    netns: str
    ips: tuple[str, ...]
    node_link: str

    @property
    def ip(self) -> str:
        """The first address."""
        return self.ips[0]


class PodNetwork:
    """Pods around the current ("node") namespace; ``close`` (or ``with``) removes them.

    ``add_pod`` turns on IPv4 forwarding in the node namespace, and IPv6 forwarding when a
    pod has an IPv6 address: the node routes all pod traffic.
    """

    def __init__(self, *, python: str | None = None, ready_timeout: float = 60.0) -> None:
        self._id = f"p{os.getpid()}n{next(_networks)}"
        self._python = python or sys.executable
        self._ready_timeout = ready_timeout
        self._pods: dict[str, Pod] = {}
        self._hosts: dict[str, ExternalHost] = {}
        self._servers: list[subprocess.Popen[str]] = []
        self._logs: list[IO[bytes]] = []
        self._forwarding: set[int] = set()

    @property
    def pods(self) -> dict[str, Pod]:
        return dict(self._pods)

    def add_pod(self, name: str, ip_address: str, *more_ips: str) -> Pod:
        """Create pod ``name`` with one or more addresses (IPv4 and/or IPv6)."""
        if not _POD_NAME.match(name):
            raise SandboxError(f"bad pod name {name!r}")
        if name in self._pods:
            raise SandboxError(f"pod {name!r} exists")
        addrs = [ipaddress.ip_address(a) for a in (ip_address, *more_ips)]
        for version in sorted({a.version for a in addrs}):
            self._enable_forwarding(version)
        pod = Pod(
            name=name,
            netns=f"{self._id}-{name}",
            ips=tuple(str(a) for a in addrs),
            node_link=f"vp{os.getpid()}x{next(_links)}",  # IFNAMSIZ: at most 15 characters
        )
        ip("netns", "add", pod.netns)
        self._pods[name] = pod
        with switch_netns(pod.netns):
            # Links created in the pod inherit "default": no duplicate address detection,
            # so addresses work at once instead of after a second of tentative state.
            for conf in ("all", "default"):
                _sysctl(f"net/ipv6/conf/{conf}/accept_dad", "0", missing_ok=True)
        node = [
            f"link add {pod.node_link} type veth peer name eth0 netns {pod.netns}",
            f"link set {pod.node_link} up",
            f"address add {NODE_GATEWAY_V4}/32 dev {pod.node_link}",
        ]
        inside = ["link set lo up", "link set eth0 up"]
        for addr in addrs:
            if addr.version == 4:
                node.append(f"route add {addr}/32 dev {pod.node_link}")
                inside.append(f"address add {addr}/32 dev eth0")
            else:
                node.append(f"route add {addr}/128 dev {pod.node_link}")
                inside.append(f"address add {addr}/128 dev eth0 nodad")
        if any(a.version == 4 for a in addrs):
            inside.append(f"route add {NODE_GATEWAY_V4}/32 dev eth0 scope link")
            inside.append(f"route add default via {NODE_GATEWAY_V4} dev eth0")
        if any(a.version == 6 for a in addrs):
            node.insert(2, f"address add {NODE_GATEWAY_V6}/64 dev {pod.node_link} nodad")
            inside.append(f"route add ::/0 via {NODE_GATEWAY_V6} dev eth0")
        _ip_batch(node)
        _ip_batch(inside, netns=pod.netns)
        return pod

    def add_external_host(self, name: str, *subnets: str) -> ExternalHost:
        """Create a host outside the cluster, one address per subnet (IPv4 and/or IPv6):
        the node takes the subnet's first address, the host the second and routes
        everything through the node.
        """
        if not _POD_NAME.match(name):
            raise SandboxError(f"bad host name {name!r}")
        if name in self._pods or name in self._hosts:
            raise SandboxError(f"{name!r} exists")
        networks = [ipaddress.ip_network(subnet) for subnet in subnets]
        if not networks:
            raise SandboxError("add_external_host: no subnet")
        for version in sorted({n.version for n in networks}):
            self._enable_forwarding(version)
        node_ips = [str(n.network_address + 1) for n in networks]
        ips = [str(n.network_address + 2) for n in networks]
        host = ExternalHost(
            name=name,
            netns=f"{self._id}-{name}",
            ips=tuple(ips),
            node_ips=tuple(node_ips),
            node_link=f"vh{os.getpid()}x{next(_links)}",
        )
        ip("netns", "add", host.netns)
        self._hosts[name] = host
        with switch_netns(host.netns):
            for conf in ("all", "default"):
                _sysctl(f"net/ipv6/conf/{conf}/accept_dad", "0", missing_ok=True)
        node = [
            f"link add {host.node_link} type veth peer name eth0 netns {host.netns}",
            f"link set {host.node_link} up",
        ]
        inside = ["link set lo up", "link set eth0 up"]
        for network, node_ip, own_ip in zip(networks, node_ips, ips, strict=True):
            nodad = " nodad" if network.version == 6 else ""
            node.append(f"address add {node_ip}/{network.prefixlen} dev {host.node_link}{nodad}")
            inside.append(f"address add {own_ip}/{network.prefixlen} dev eth0{nodad}")
            default = "default" if network.version == 4 else "::/0"
            inside.append(f"route add {default} via {node_ip} dev eth0")
        _ip_batch(node)
        _ip_batch(inside, netns=host.netns)
        return host

    def serve(
        self, port: int, pods: Iterable[Pod | str] | None = None, *, echo_client: bool = False
    ) -> None:
        """Start answering TCP and UDP ``port`` in each pod (default: all) with its name,
        followed by a space and the client's address with ``echo_client``.

        Returns when every socket is listening.
        """
        chosen = [self._pod(p) for p in pods] if pods is not None else list(self._pods.values())
        if not chosen:
            raise SandboxError("serve: no pods")
        spec = json.dumps([[netns_path(p.netns), p.name, port, echo_client] for p in chosen])
        # A file, not a pipe, for the server's complaints: nobody reads them while it runs,
        # and a full pipe would stall it.
        log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self._logs.append(log)
        proc = subprocess.Popen(
            [self._python, "-c", _SERVER, spec],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        self._servers.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], self._ready_timeout)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            proc.kill()
            proc.wait()
            log.seek(0)
            err = log.read().decode(errors="replace").strip()
            raise SandboxError(f"pod server did not start: {err or 'timed out'}")

    def server_log(self) -> str:
        """What the pod servers wrote to stderr so far (errors serving a request)."""
        text = []
        for log in self._logs:
            log.seek(0)
            text.append(log.read().decode(errors="replace"))
        return "".join(text)

    def tcp_requests(
        self,
        ip_address: str,
        port: int,
        count: int,
        *,
        source: Pod | ExternalHost | str | None = None,
        timeout: float = 10.0,
    ) -> list[str]:
        """``count`` TCP requests from pod ``source`` (default: the node); the replies."""
        return tcp_requests(ip_address, port, count, netns=self._netns(source), timeout=timeout)

    def udp_requests(
        self,
        ip_address: str,
        port: int,
        count: int,
        *,
        source: Pod | ExternalHost | str | None = None,
        timeout: float = 5.0,
    ) -> list[str]:
        """``count`` UDP requests from pod ``source`` (default: the node); the replies."""
        return udp_requests(ip_address, port, count, netns=self._netns(source), timeout=timeout)

    def close(self) -> None:
        """Stop the servers and delete the pods (their veth pairs and routes go with them)."""
        for proc in self._servers:
            proc.kill()
            proc.communicate()
        self._servers.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        errors = []
        names = [p.netns for p in self._pods.values()] + [h.netns for h in self._hosts.values()]
        for netns in names:
            try:
                ip("netns", "delete", netns)
            except SandboxError as exc:
                errors.append(str(exc))
        self._pods.clear()
        self._hosts.clear()
        if errors:
            raise SandboxError("; ".join(errors))

    def __enter__(self) -> PodNetwork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _pod(self, pod: Pod | str) -> Pod:
        name = pod.name if isinstance(pod, Pod) else pod
        try:
            return self._pods[name]
        except KeyError:
            raise SandboxError(f"no pod {name!r}") from None

    def _netns(self, source: Pod | ExternalHost | str | None) -> str | None:
        if source is None:
            return None
        name = source if isinstance(source, str) else source.name
        if name in self._hosts:
            return self._hosts[name].netns
        return self._pod(name).netns

    def _enable_forwarding(self, version: int) -> None:
        if version in self._forwarding:
            return
        if version == 4:
            _sysctl("net/ipv4/ip_forward", "1")
        else:
            _sysctl("net/ipv6/conf/all/forwarding", "1")
        self._forwarding.add(version)


def tcp_requests(
    ip_address: str, port: int, count: int, *, netns: str | None = None, timeout: float = 10.0
) -> list[str]:
    """Open ``count`` connections to ip:port one after another and read each reply to EOF.

    Runs from namespace ``netns`` (default: the current one). Every connection stays open
    until all are done so each gets its own source port: IPVS schedules per connection,
    and a reused port could land on an old connection entry.
    """
    family = _family(ip_address)
    replies: list[str] = []
    held: list[socket.socket] = []
    try:
        with _maybe_netns(netns):
            for _ in range(count):
                s = socket.socket(family, socket.SOCK_STREAM)
                held.append(s)
                s.settimeout(timeout)
                s.connect((ip_address, port))
                replies.append(_read_all(s).decode(errors="replace"))
    except OSError as exc:
        raise SandboxError(
            f"TCP request {len(replies) + 1}/{count} to {_hostport(ip_address, port)} "
            f"from {netns or 'the node'}: {exc}"
        ) from exc
    finally:
        for s in held:
            s.close()
    return replies


def udp_requests(
    ip_address: str,
    port: int,
    count: int,
    *,
    netns: str | None = None,
    timeout: float = 5.0,
    attempts: int = 3,
) -> list[str]:
    """Send ``count`` datagrams to ip:port, each from a new socket, and collect the replies.

    The sockets are connected, so a reply only counts if it comes back from ip:port, which
    is what a client behind IPVS masquerading needs. As with TCP, every socket stays open
    until all are done so no source port, and no IPVS connection entry, is reused.
    A lost datagram is resent (same socket) up to ``attempts`` times.
    """
    family = _family(ip_address)
    replies: list[str] = []
    held: list[socket.socket] = []
    try:
        with _maybe_netns(netns):
            for _ in range(count):
                s = socket.socket(family, socket.SOCK_DGRAM)
                held.append(s)
                s.settimeout(timeout)
                s.connect((ip_address, port))
                replies.append(_ask(s, attempts).decode(errors="replace"))
    except OSError as exc:
        raise SandboxError(
            f"UDP request {len(replies) + 1}/{count} to {_hostport(ip_address, port)} "
            f"from {netns or 'the node'}: {exc}"
        ) from exc
    finally:
        for s in held:
            s.close()
    return replies


def _ask(s: socket.socket, attempts: int) -> bytes:
    for attempt in range(attempts):
        s.send(b"?")
        try:
            return s.recv(2048)
        except TimeoutError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _family(ip_address: str) -> socket.AddressFamily:
    version = ipaddress.ip_address(ip_address).version
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _hostport(ip_address: str, port: int) -> str:
    return f"[{ip_address}]:{port}" if ":" in ip_address else f"{ip_address}:{port}"


def _maybe_netns(name: str | None) -> AbstractContextManager[None]:
    return switch_netns(name) if name is not None else nullcontext()


def _sysctl(name: str, value: str, *, missing_ok: bool = False) -> None:
    """Write /proc/sys/NAME for the calling thread's network namespace."""
    try:
        with open(f"/proc/sys/{name}", "w") as f:
            f.write(value)
    except FileNotFoundError:
        if not missing_ok:
            raise SandboxError(f"no sysctl {name.replace('/', '.')}") from None
    except OSError as exc:
        raise SandboxError(f"sysctl {name.replace('/', '.')}={value}: {exc}") from exc


def _ip_batch(commands: list[str], *, netns: str | None = None) -> None:
    """Run many ``ip`` commands in one process; process start-up is slow in the guest."""
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    proc = subprocess.run(
        argv, input="\n".join(commands) + "\n", capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        where = f" in {netns}" if netns else ""
        raise SandboxError(
            f"ip -batch{where} failed: {proc.stderr.strip()}\ncommands:\n" + "\n".join(commands)
        )
