"""The proxy's settings.

`ProxyConfig()` holds kube-proxy's defaults for IPVS mode, so the proxy runs without a
file; `ipvsproxy.config.kubeproxy_file` reads kube-proxy's KubeProxyConfiguration into one.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final, TypeVar

from ipvsproxy.core.desired import DesiredSettings
from ipvsproxy.core.frontends import NodePortSettings
from ipvsproxy.core.graceful import DEFAULT_DRAIN_TIMEOUT
from ipvsproxy.core.model import DEFAULT_SCHEDULER, IPAddress, IPNetwork
from ipvsproxy.core.rules import MasqueradeSettings
from ipvsproxy.errors import ConfigError

__all__ = [
    "API_VERSION",
    "RULES_BACKENDS",
    "BindAddress",
    "ConntrackSettings",
    "ProxyConfig",
    "hostname_override_value",
    "one_per_family",
    "with_overrides",
]

_T = TypeVar("_T")

API_VERSION: Final = "kubeproxy.config.k8s.io/v1alpha1"
KIND: Final = "KubeProxyConfiguration"
RULES_BACKENDS: Final = ("auto", "iptables", "nftables")
LOCAL_MODES: Final = ("ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix")
INTERFACE_NAME: Final = re.compile(r"[A-Za-z0-9._-]+")
# detectLocal's interface fields: (ProxyConfig field, KubeProxyConfiguration field, the
# detectLocalMode that needs it, longest name: iptables takes IFNAMSIZ-1 characters, the
# "+" of a prefix included).
LOCAL_INTERFACE_FIELDS: Final = (
    ("bridge_interface", "detectLocal.bridgeInterface", "BridgeInterface", 15),
    ("interface_name_prefix", "detectLocal.interfaceNamePrefix", "InterfaceNamePrefix", 14),
)

DEFAULT_METRICS_PORT: Final = 10249
DEFAULT_API_QPS: Final = 5.0  # kube-proxy's clientConnection defaults
DEFAULT_API_BURST: Final = 10
DEFAULT_HEALTHZ_PORT: Final = 10256
DEFAULT_OOM_SCORE_ADJ: Final = -999  # kubelet's qos.KubeProxyOOMScoreAdj


# --- values --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BindAddress:
    """An IP address and TCP port a server listens on."""

    host: IPAddress
    port: int

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"bind address {self}: port out of range 1-65535")

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.host.version == 6 else str(self.host)
        return f"{host}:{self.port}"

    @staticmethod
    def parse(text: str, *, default_port: int) -> BindAddress:
        """Parse "ip:port", "[ipv6]:port", or a bare IP that gets default_port.

        Raises ValueError when text is none of these.
        """
        text = text.strip()
        try:  # a bare address: kube-proxy appends the default port (AppendPortIfNeeded)
            return BindAddress(ipaddress.ip_address(text.strip("[]")), default_port)
        except ValueError:
            pass
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"{text!r} is not IP:port")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"{text!r}: an IPv6 address needs brackets, as in [::1]:{port}")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"{text!r}: port {port} is out of range 1-65535")
        return BindAddress(address, int(port))


# --- settings ------------------------------------------------------------------------------

# kube-proxy caps the scaled table size (newest kube-proxy, cmd/kube-proxy's
# getConntrackMax): a per-core figure times many cores would cost too much memory.
CONNTRACK_MAX_LIMIT: Final = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ConntrackSettings:
    """kube-proxy's `conntrack` section: node-wide netfilter settings the long-running
    proxy applies at start. Defaults are kube-proxy's; a 0 leaves the kernel's value."""

    max_per_core: int = 32 * 1024
    """`maxPerCore`: nf_conntrack_max is this times the online CPUs, at least `min`
    (a product above 1,048,576 is capped there); 0 leaves the table size alone."""

    min: int = 128 * 1024
    """`min`: the smallest nf_conntrack_max set when max_per_core is not 0."""

    tcp_established_timeout: int = 24 * 3600
    """`tcpEstablishedTimeout`, seconds: nf_conntrack_tcp_timeout_established. 1 day."""

    tcp_close_wait_timeout: int = 3600
    """`tcpCloseWaitTimeout`, seconds: nf_conntrack_tcp_timeout_close_wait. 1 hour."""

    tcp_be_liberal: bool = False
    """`tcpBeLiberal`: set nf_conntrack_tcp_be_liberal to 1 (never back to 0)."""

    udp_timeout: int = 0
    """`udpTimeout`, seconds: nf_conntrack_udp_timeout. Default 0 (the kernel's)."""

    udp_stream_timeout: int = 0
    """`udpStreamTimeout`, seconds: nf_conntrack_udp_timeout_stream. Default 0."""

    def __post_init__(self) -> None:
        for name in (
            "max_per_core",
            "min",
            "tcp_established_timeout",
            "tcp_close_wait_timeout",
            "udp_timeout",
            "udp_stream_timeout",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"conntrack {name}: must be >= 0, got {getattr(self, name)}")

    def table_size(self, cpus: int) -> int:
        """nf_conntrack_max for a node with `cpus` online CPUs; 0: leave it alone."""
        if self.max_per_core <= 0:
            return 0
        scaled = self.max_per_core * cpus
        if scaled > CONNTRACK_MAX_LIMIT:  # the cap wins over `min`, as in kube-proxy
            return CONNTRACK_MAX_LIMIT
        return max(scaled, self.min)

    def netfilter_values(self) -> tuple[tuple[str, int], ...]:
        """The per-namespace sysctls under net/netfilter to set, by name; zeros left out."""
        values = (
            ("nf_conntrack_tcp_timeout_established", self.tcp_established_timeout),
            ("nf_conntrack_tcp_timeout_close_wait", self.tcp_close_wait_timeout),
            ("nf_conntrack_tcp_be_liberal", int(self.tcp_be_liberal)),
            ("nf_conntrack_udp_timeout", self.udp_timeout),
            ("nf_conntrack_udp_timeout_stream", self.udp_stream_timeout),
        )
        return tuple((name, value) for name, value in values if value > 0)


_DEFAULT_METRICS: Final = BindAddress(ipaddress.IPv4Address("127.0.0.1"), DEFAULT_METRICS_PORT)
_DEFAULT_HEALTHZ: Final = BindAddress(ipaddress.IPv4Address("0.0.0.0"), DEFAULT_HEALTHZ_PORT)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    """Every setting of the proxy; `ProxyConfig()` holds kube-proxy's IPVS-mode defaults.

    Flat, so that `dataclasses.replace(config, scheduler="lc")` works; the fields come in
    groups below. Every instance is valid: construction raises ConfigError otherwise.
    """

    # -- node

    hostname_override: str | None = None
    """Name of this node's Node object; None uses the hostname."""

    # -- IPVS (`ipvs:`)

    scheduler: str = DEFAULT_SCHEDULER
    """Scheduler of every virtual server, passed to the kernel as is. Default "rr"."""

    exclude_cidrs: tuple[IPNetwork, ...] = ()
    """Virtual servers in these networks are never deleted as stale. Default none."""

    strict_arp: bool = False
    """Set arp_ignore=1 and arp_announce=2 so kube-ipvs0 addresses are not announced."""

    tcp_timeout: int = 0
    """Idle timeout of IPVS TCP connections, in seconds; 0 keeps the kernel's value."""

    tcp_fin_timeout: int = 0
    """Timeout of IPVS TCP connections after a FIN, in seconds; 0 keeps the kernel's."""

    udp_timeout: int = 0
    """Timeout of IPVS UDP connections, in seconds; 0 keeps the kernel's value."""

    graceful_termination_timeout: float = DEFAULT_DRAIN_TIMEOUT
    """Longest time a removed TCP real server drains at weight 0 before it is deleted,
    in seconds; 0 deletes at once (`ipvs.gracefulTerminationTimeout`, ipvsproxy's own
    field: kube-proxy has no limit). Default 900 (15 minutes)."""

    rules_backend: str = "auto"
    """What holds the sets and the fixed rules: "iptables" (ipsets and iptables chains),
    "nftables" (one nftables table per family) or "auto", decided at start: iptables
    where an iptables and ipset are installed, else nftables where nft is
    (`ipvs.rulesBackend`, ipvsproxy's own field; flag --rules-backend)."""

    # -- conntrack (`conntrack:`)

    conntrack: ConntrackSettings = ConntrackSettings()
    """Table size and timeouts `run` and `sysctls` set at start (kube-proxy's defaults)."""

    # -- sync (`ipvs.syncPeriod`, `ipvs.minSyncPeriod`)

    sync_period: float = 30.0
    """Longest time between full syncs, in seconds (> 0). Default 30."""

    min_sync_period: float = 0.0
    """Shortest time between syncs, in seconds; 0 syncs on every change. Default 0."""

    # -- masquerading (`iptables.masqueradeAll`, `iptables.masqueradeBit`, `clusterCIDR`)

    masquerade_all: bool = False
    """SNAT all traffic to cluster IPs, not only traffic from outside the cluster CIDRs."""

    masquerade_bit: int = 14
    """Bit of the packet mark that flags packets to SNAT, 0-31. Default 14 (0x4000)."""

    cluster_cidrs: tuple[IPNetwork, ...] = ()
    """Pod networks, at most one per family; with detect_local_mode ClusterCIDR, traffic
    from outside them to a cluster IP is SNATed. Empty: only node-originated traffic
    from a service VIP is."""

    detect_local_mode: str = "ClusterCIDR"
    """How pod traffic is told from the rest (`detectLocalMode`): ClusterCIDR
    (cluster_cidrs), NodeCIDR (the Node's spec.podCIDRs), BridgeInterface (arrives on
    bridge_interface) or InterfaceNamePrefix (on an interface named
    interface_name_prefix...)."""

    bridge_interface: str = ""
    """`detectLocal.bridgeInterface`, for detect_local_mode BridgeInterface."""

    interface_name_prefix: str = ""
    """`detectLocal.interfaceNamePrefix`, for detect_local_mode InterfaceNamePrefix."""

    # -- NodePorts (`nodePortAddresses`)

    node_port_addresses: tuple[IPNetwork, ...] = ()
    """Serve NodePorts on node addresses inside these networks. Empty (and not
    node_port_primary): on every node address, kube-proxy's default in IPVS mode.
    Loopback addresses never serve NodePorts in IPVS mode."""

    node_port_primary: bool = False
    """Serve NodePorts on the Node object's primary IPs too (keyword "primary")."""

    # -- servers

    metrics_bind_address: BindAddress | None = _DEFAULT_METRICS
    """Prometheus metrics (`metricsBindAddress`). Default 127.0.0.1:10249; None (an
    empty --metrics-bind-address, or --metrics-port=0) serves none."""

    healthz_bind_address: BindAddress | None = _DEFAULT_HEALTHZ
    """/healthz and /livez (`healthzBindAddress`). Default 0.0.0.0:10256; None serves
    none."""

    bind_address: IPAddress | None = None
    """`bindAddress`: the node's primary IP when not 0.0.0.0 or :: (None then)."""

    oom_score_adj: int | None = DEFAULT_OOM_SCORE_ADJ
    """`oomScoreAdj`, written to /proc/self/oom_score_adj by `run`; -1000 to 1000."""

    feature_gates: tuple[tuple[str, bool], ...] = ()
    """`featureGates` as given, sorted by name (none changes what is programmed)."""

    # -- API server connection (`clientConnection`)

    kubeconfig: str | None = None
    """kubeconfig file (`clientConnection.kubeconfig`, `--kubeconfig`); None: in-cluster."""

    api_qps: float = DEFAULT_API_QPS
    """Requests per second to the API server (`qps`); negative: unlimited. Default 5."""

    api_burst: int = DEFAULT_API_BURST
    """Requests allowed at once above api_qps (`burst`), >= 1. Default 10."""

    api_content_type: str = "application/json"
    """`contentType` as configured. Only JSON is spoken: the client warns about another."""

    def __post_init__(self) -> None:
        if not self.scheduler:
            raise ConfigError("scheduler: must not be empty")
        for name in ("tcp_timeout", "tcp_fin_timeout", "udp_timeout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0 seconds, got {getattr(self, name)}")
        if self.sync_period <= 0:
            raise ConfigError(f"sync_period: must be > 0 seconds, got {self.sync_period}")
        if self.rules_backend not in RULES_BACKENDS:
            raise ConfigError(
                f"rules_backend: one of {', '.join(RULES_BACKENDS)}, got {self.rules_backend!r}"
            )
        if not 0 <= self.graceful_termination_timeout < math.inf:
            raise ConfigError(
                "graceful_termination_timeout: must be >= 0 seconds, "
                f"got {self.graceful_termination_timeout}"
            )
        if not 0 <= self.min_sync_period <= self.sync_period:
            raise ConfigError(
                f"min_sync_period: must be between 0 and sync_period ({self.sync_period:g}),"
                f" got {self.min_sync_period:g}"
            )
        if not math.isfinite(self.api_qps):
            raise ConfigError(f"api_qps: must be a finite number, got {self.api_qps}")
        if self.api_burst < 1:
            raise ConfigError(f"api_burst: must be >= 1, got {self.api_burst}")
        if self.oom_score_adj is not None and not -1000 <= self.oom_score_adj <= 1000:
            raise ConfigError(f"oom_score_adj: must be -1000 to 1000, got {self.oom_score_adj}")
        if not 0 <= self.masquerade_bit <= 31:
            raise ConfigError(f"masquerade_bit: must be 0-31, got {self.masquerade_bit}")
        if not one_per_family(self.cluster_cidrs):
            shown = ",".join(str(network) for network in self.cluster_cidrs)
            raise ConfigError(f"cluster_cidrs: at most one network per IP family, got {shown}")
        self._check_detect_local()

    def _check_detect_local(self) -> None:
        mode = self.detect_local_mode
        if mode not in LOCAL_MODES:
            raise ConfigError(
                f"detect_local_mode: must be one of {', '.join(LOCAL_MODES)}, got {mode!r}"
            )
        for name, _, needed_by, longest in LOCAL_INTERFACE_FIELDS:
            value = getattr(self, name)
            problem = local_interface_problem(
                value, mode=mode, needed_by=needed_by, longest=longest
            )
            if problem is not None:
                raise ConfigError(f"{name}: {problem}, got {value!r}")

    @property
    def local_interface(self) -> str:
        """The `-i` match of an interface detector ("" for the CIDR ones)."""
        if self.detect_local_mode == "BridgeInterface":
            return self.bridge_interface
        if self.detect_local_mode == "InterfaceNamePrefix":
            return self.interface_name_prefix + "+"
        return ""

    @property
    def masquerade_mark(self) -> int:
        """The packet mark that flags SNAT, e.g. 0x4000 for bit 14."""
        return 1 << self.masquerade_bit

    @property
    def node_port_all_addresses(self) -> bool:
        """Whether every node address serves NodePorts."""
        if self.node_port_primary:
            return False
        networks = self.node_port_addresses
        return not networks or any(network.prefixlen == 0 for network in networks)

    def desired_settings(self) -> DesiredSettings:
        """What the desired state is computed with, before this node's own facts."""
        return DesiredSettings(
            scheduler=self.scheduler,
            masquerade=MasqueradeSettings(
                mark=self.masquerade_mark,
                masquerade_all=self.masquerade_all,
                cluster_cidrs=self.cluster_cidrs if self.detect_local_mode == "ClusterCIDR" else (),
                local_interface=self.local_interface,
                node_cidrs=self.detect_local_mode == "NodeCIDR",
            ),
            node_ports=NodePortSettings(
                networks=self.node_port_addresses, primary=self.node_port_primary
            ),
        )

    @property
    def ipvs_timeouts(self) -> tuple[int, int, int] | None:
        """(tcp, tcp_fin, udp) seconds for `ipvsadm --set`; None when all are 0."""
        timeouts = (self.tcp_timeout, self.tcp_fin_timeout, self.udp_timeout)
        return timeouts if any(timeouts) else None


def with_overrides(
    config: ProxyConfig,
    *,
    hostname_override: str | None = None,
    scheduler: str | None = None,
    masquerade_all: bool | None = None,
    cluster_cidrs: Sequence[IPNetwork] | None = None,
    sync_period: float | None = None,
    min_sync_period: float | None = None,
    metrics_bind_address: BindAddress | None = None,
    healthz_bind_address: BindAddress | None = None,
    kubeconfig: str | None = None,
) -> ProxyConfig:
    """config with the settings given on the command line replaced; None keeps a setting.

    As with kube-proxy, flags win over the file. Raises ConfigError when the result is
    invalid (e.g. min_sync_period above sync_period).
    """
    hostname = None if hostname_override is None else hostname_override_value(hostname_override)
    return replace(
        config,
        hostname_override=hostname if hostname_override is not None else config.hostname_override,
        scheduler=_keep(scheduler, config.scheduler),
        masquerade_all=_keep(masquerade_all, config.masquerade_all),
        cluster_cidrs=_keep(
            None if cluster_cidrs is None else tuple(cluster_cidrs), config.cluster_cidrs
        ),
        sync_period=_keep(sync_period, config.sync_period),
        min_sync_period=_keep(min_sync_period, config.min_sync_period),
        metrics_bind_address=_keep(metrics_bind_address, config.metrics_bind_address),
        healthz_bind_address=_keep(healthz_bind_address, config.healthz_bind_address),
        kubeconfig=_keep(kubeconfig or None, config.kubeconfig),
    )


def _keep(value: _T | None, current: _T) -> _T:
    return current if value is None else value


def local_interface_problem(value: str, *, mode: str, needed_by: str, longest: int) -> str | None:
    """What is wrong with a detectLocal interface field (see LOCAL_INTERFACE_FIELDS) under
    detectLocalMode `mode`; None when nothing is."""
    if mode == needed_by and not value:
        return f"must be set with detectLocalMode {needed_by}"
    if value and (len(value) > longest or not INTERFACE_NAME.fullmatch(value)):
        return (
            f"not an interface name of at most {longest} characters (letters, digits, '.', '-',"
            " '_')"
        )
    return None


def hostname_override_value(text: str) -> str | None:
    """A hostname override as kube-proxy's nodeutil.GetHostname takes it: trimmed and
    lower-cased; None when empty."""
    return text.strip().lower() or None


def one_per_family(networks: Sequence[IPNetwork]) -> bool:
    """At most two networks, and then one of each family (kube-proxy's dual-stack rule)."""
    return len(networks) < 2 or (len(networks) == 2 and networks[0].version != networks[1].version)
