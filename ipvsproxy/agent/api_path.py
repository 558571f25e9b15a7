"""Catch the bootstrap trap: a service proxy that reaches the API server through a Service.

In-cluster configuration dials KUBERNETES_SERVICE_HOST, which kubelet sets to the
`kubernetes` Service's ClusterIP. That address works only once a service proxy has
programmed the node: on a rebooted node (an empty kernel) the proxy can never list the
Services that would make it reachable, and waits forever. kube-proxy avoids it by using
kubeadm's kubeconfig, which names the control plane's own address.

`check_api_path` runs once at start on a thread of its own: when the address to dial
cannot be reached and looks like a Service IP (in-cluster configuration, or no route to it
but the default one), or is the ClusterIP of a Service once they are listed, it logs one
line naming the fix.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Final
from urllib.parse import urlsplit

from loguru import logger

from ipvsproxy.core.model import IPAddress, Service

FIX: Final = (
    "give ipvsproxy the control plane's own address: --kubeconfig with kube-proxy's "
    "kubeconfig.conf (as deploy/ does), or KUBERNETES_SERVICE_HOST and "
    "KUBERNETES_SERVICE_PORT set to the control-plane endpoint"
)
PROBE_TIMEOUT: Final = 3.0


def dial_address(server: str) -> tuple[IPAddress, int] | None:
    """The IP and port a server URL dials; None when it names a host (not an address)."""
    parts = urlsplit(server)
    try:
        address = ipaddress.ip_address(parts.hostname or "")
        port = parts.port
    except ValueError:
        return None
    return address, port or (443 if parts.scheme == "https" else 80)


def unreachable(address: IPAddress, port: int, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why a TCP connection to address:port fails to reach any host; None when a host
    answered (accepted, or refused: then the address is a real host's)."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((str(address), port))
        except TimeoutError:
            return f"no answer within {timeout:g} s"
        except ConnectionRefusedError:
            return None
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc))
    return None


def only_default_route(address: IPAddress, routes: str | None) -> bool:
    """Whether the main IPv4 table (/proc/net/route text) reaches `address` by nothing
    more specific than a default route. Unknown (IPv6, unreadable) counts as False."""
    if address.version != 4 or routes is None:
        return False
    value = int(address)
    for line in routes.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:  # network byte order printed as a host-order (little-endian) hex number
            destination = int.from_bytes(bytes.fromhex(fields[1]), "little")
            mask = int.from_bytes(bytes.fromhex(fields[7]), "little")
        except ValueError:
            continue
        if mask and value & mask == destination:
            return False
    return True


def service_named(address: IPAddress, port: int, services: Iterable[Service]) -> str | None:
    """namespace/name of a Service whose ClusterIP and port are address:port."""
    for service in services:
        if address in service.cluster_ips and any(p.port == port for p in service.ports):
            return f"{service.namespace}/{service.name}"
    return None


def _read_routes() -> str | None:
    try:
        with open("/proc/net/route", encoding="ascii") as stream:
            return stream.read()
    except OSError:
        return None


def check_api_path(
    server: str,
    *,
    in_cluster: bool,
    listed: Callable[[], list[Service] | None],
    stop: threading.Event,
    probe: Callable[[IPAddress, int], str | None] = unreachable,
    routes: Callable[[], str | None] = _read_routes,
    poll: float = 0.5,
) -> str | None:
    """Log (and return) the one line about the trap, if the API server path has it.

    listed: the Services once both lists are done, else None (polled until `stop`).
    """
    dialled = dial_address(server)
    if dialled is None:
        return None
    address, port = dialled
    why = probe(address, port)
    if why is not None:
        if not in_cluster and not only_default_route(address, routes()):
            return None  # a real host that is down: the reflectors' errors say so
        how = "in-cluster configuration's KUBERNETES_SERVICE_HOST" if in_cluster else "it"
        line = (
            f"the API server address {server} cannot be reached ({why}) and looks like a "
            f"Service IP ({how}): nothing can sync until a proxy programs it; {FIX}"
        )
        logger.error(line)
        return line
    while not stop.is_set():
        services = listed()
        if services is not None:
            name = service_named(address, port, services)
            if name is None:
                return None
            line = (
                f"the API server address {server} is the ClusterIP of Service {name}: it "
                f"works only while the node's Service rules survive, not after a reboot; {FIX}"
            )
            logger.warning(line)
            return line
        stop.wait(poll)
    return None
