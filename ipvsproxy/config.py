"""The proxy's settings, and kube-proxy's KubeProxyConfiguration file read into them.

`ProxyConfig()` holds kube-proxy's defaults for IPVS mode, so the proxy runs without a
file. `load_config` reads the file kube-proxy itself takes with `--config` (the
`config.conf` of the kube-system/kube-proxy ConfigMap, apiVersion
kubeproxy.config.k8s.io/v1alpha1); the ConfigMap itself is accepted too. Like kube-proxy,
empty and null fields take their defaults. Unknown fields are warned about, fields that
only matter to other modes or that ipvsproxy does not implement are accepted silently, and
invalid values raise ConfigError naming the field and the value.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final, TypeVar

import yaml
from loguru import logger

from ipvsproxy.errors import ConfigError
from ipvsproxy.graceful import DEFAULT_DRAIN_TIMEOUT
from ipvsproxy.model import DEFAULT_SCHEDULER, IPAddress, IPNetwork

__all__ = [
    "API_VERSION",
    "BindAddress",
    "ProxyConfig",
    "config_from_dict",
    "load_config",
    "parse_duration",
    "with_overrides",
]

_T = TypeVar("_T")

API_VERSION: Final = "kubeproxy.config.k8s.io/v1alpha1"
KIND: Final = "KubeProxyConfiguration"
LOCAL_MODES: Final = ("ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix")
_INTERFACE_NAME: Final = re.compile(r"[A-Za-z0-9._-]+")

DEFAULT_METRICS_PORT: Final = 10249
DEFAULT_API_QPS: Final = 5.0  # kube-proxy's clientConnection defaults
DEFAULT_API_BURST: Final = 10
DEFAULT_HEALTHZ_PORT: Final = 10256


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

    metrics_bind_address: BindAddress = _DEFAULT_METRICS
    """Prometheus metrics (`metricsBindAddress`). Default 127.0.0.1:10249."""

    healthz_bind_address: BindAddress = _DEFAULT_HEALTHZ
    """/healthz and /livez (`healthzBindAddress`). Default 0.0.0.0:10256."""

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
        if not 0 <= self.masquerade_bit <= 31:
            raise ConfigError(f"masquerade_bit: must be 0-31, got {self.masquerade_bit}")
        if not _one_per_family(self.cluster_cidrs):
            shown = ",".join(str(network) for network in self.cluster_cidrs)
            raise ConfigError(f"cluster_cidrs: at most one network per IP family, got {shown}")
        self._check_detect_local()

    def _check_detect_local(self) -> None:
        mode = self.detect_local_mode
        if mode not in LOCAL_MODES:
            raise ConfigError(
                f"detect_local_mode: must be one of {', '.join(LOCAL_MODES)}, got {mode!r}"
            )
        # iptables takes at most IFNAMSIZ-1 characters, "+" of a prefix included.
        for name, value, wanted, longest in (
            ("bridge_interface", self.bridge_interface, "BridgeInterface", 15),
            ("interface_name_prefix", self.interface_name_prefix, "InterfaceNamePrefix", 14),
        ):
            if mode == wanted and not value:
                raise ConfigError(f"{name}: must be set with detect_local_mode {wanted}")
            if value and (len(value) > longest or not _INTERFACE_NAME.fullmatch(value)):
                raise ConfigError(
                    f"{name}: not an interface name of at most {longest} characters "
                    f"(letters, digits, '.', '-', '_'), got {value!r}"
                )

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
    hostname = None if hostname_override is None else _hostname(hostname_override)
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


def _hostname(text: str) -> str | None:
    # kube-proxy's nodeutil.GetHostname: trimmed and lower-cased.
    return text.strip().lower() or None


def _one_per_family(networks: Sequence[IPNetwork]) -> bool:
    return len(networks) < 2 or (len(networks) == 2 and networks[0].version != networks[1].version)


# --- Go durations --------------------------------------------------------------------------

_DURATION: Final = re.compile(r"([+-]?)((?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+)")
_DURATION_PART: Final = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 micro sign
    "μs": 1e-6,  # U+03BC Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string ("30s", "1m30s", "500ms", "-1.5h", "0").

    Raises ValueError for anything time.ParseDuration would reject.
    """
    if text in ("0", "+0", "-0"):
        return 0.0
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 30s, 1m30s or 500ms")
    seconds = sum(
        float(number) * _UNIT_SECONDS[unit]
        for number, unit in _DURATION_PART.findall(match.group(2))
    )
    return -seconds if match.group(1) == "-" else seconds


# --- KubeProxyConfiguration ----------------------------------------------------------------

# The fields of v1alpha1 (k8s.io/kube-proxy/config/v1alpha1), by section. A field missing
# here is warned about; sections missing here (logging, featureGates) are not looked into.
_KNOWN_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "": frozenset(
        {
            "apiVersion",
            "kind",
            "featureGates",
            "clientConnection",
            "logging",
            "hostnameOverride",
            "bindAddress",
            "syncPeriod",
            "minSyncPeriod",
            "healthzBindAddress",
            "metricsBindAddress",
            "bindAddressHardFail",
            "enableProfiling",
            "showHiddenMetricsForVersion",
            "mode",
            "iptables",
            "ipvs",
            "nftables",
            "winkernel",
            "detectLocalMode",
            "detectLocal",
            "clusterCIDR",
            "nodePortAddresses",
            "oomScoreAdj",
            "conntrack",
            "configSyncPeriod",
            "portRange",
            "windowsRunAsService",
            "udpIdleTimeout",  # removed with the userspace proxier; old files still have it
        }
    ),
    "iptables": frozenset(
        {
            "masqueradeBit",
            "masqueradeAll",
            "localhostNodePorts",
            "snatNodeInternalIP",
            "syncPeriod",
            "minSyncPeriod",
        }
    ),
    "ipvs": frozenset(
        {
            "syncPeriod",
            "minSyncPeriod",
            "scheduler",
            "excludeCIDRs",
            "strictARP",
            "tcpTimeout",
            "tcpFinTimeout",
            "udpTimeout",
            "ipSet",
            "gracefulTerminationTimeout",  # ipvsproxy's own
        }
    ),
    "nftables": frozenset({"masqueradeBit", "masqueradeAll", "syncPeriod", "minSyncPeriod"}),
    "conntrack": frozenset(
        {
            "maxPerCore",
            "min",
            "tcpEstablishedTimeout",
            "tcpCloseWaitTimeout",
            "tcpBeLiberal",
            "udpTimeout",
            "udpStreamTimeout",
        }
    ),
    "clientConnection": frozenset(
        {"kubeconfig", "acceptContentTypes", "contentType", "qps", "burst"}
    ),
    "detectLocal": frozenset({"bridgeInterface", "interfaceNamePrefix"}),
    "winkernel": frozenset(
        {"networkName", "sourceVip", "enableDSR", "rootHnsEndpointName", "forwardHealthCheckVip"}
    ),
}

_SUPPORTED_MODES: Final = frozenset({"", "ipvs"})
_NODE_PORT_KEYWORDS: Final[Mapping[str, tuple[IPNetwork, ...]]] = {
    "all": (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0")),
    "localhost": (ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv6Network("::1/128")),
}


def load_config(path: str | os.PathLike[str]) -> ProxyConfig:
    """Read a KubeProxyConfiguration (v1alpha1) file, or a ConfigMap holding one.

    Raises ConfigError naming the file when it cannot be read or parsed, and naming the
    field and value when a value is invalid.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{name}: cannot read: {reason}") from exc
    document = _parse_yaml(name, text)
    if isinstance(document, dict) and document.get("kind") == "ConfigMap":
        document = _parse_yaml(name, _config_map_data(name, document))
    return config_from_dict(document, source=name)


def _parse_yaml(name: str, text: str) -> object:
    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{name}: line {mark.line + 1}" if mark is not None else name
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from exc


def _config_map_data(name: str, config_map: Mapping[str, object]) -> str:
    # kubeadm's kube-proxy ConfigMap keeps the file under data["config.conf"].
    data = config_map.get("data")
    if isinstance(data, dict):
        if isinstance(data.get("config.conf"), str):
            return str(data["config.conf"])
        texts = [value for value in data.values() if isinstance(value, str) and KIND in value]
        if len(texts) == 1:
            return texts[0]
    raise ConfigError(f"{name}: ConfigMap has no data entry holding a {KIND}")


def config_from_dict(document: object, *, source: str = "configuration") -> ProxyConfig:
    """A ProxyConfig from a parsed KubeProxyConfiguration; see load_config."""
    if not isinstance(document, dict):
        got = "an empty file" if document is None else type(document).__name__
        raise ConfigError(f"{source}: expected a {KIND} mapping, got {got}")
    reader = _Reader(source, document)
    return reader.config()


class _Reader:
    """Reads one KubeProxyConfiguration; every error names the field at fault."""

    def __init__(self, source: str, document: Mapping[str, object]) -> None:
        self._source = source
        self._doc = document

    def _fail(self, path: str, value: object, reason: str) -> ConfigError:
        return ConfigError(f"{self._source}: {path}: invalid value {value!r}: {reason}")

    def config(self) -> ProxyConfig:
        doc = self._doc
        kind, api_version = doc.get("kind"), doc.get("apiVersion")
        if kind != KIND:
            raise self._fail("kind", kind, f"expected {KIND}")
        if api_version != API_VERSION:
            raise self._fail("apiVersion", api_version, f"only {API_VERSION} is supported")
        self._warn_unknown("", doc)

        mode = self._str("mode", "")
        if mode not in _SUPPORTED_MODES:
            logger.warning(
                "{source}: mode {mode!r} ignored: only ipvs mode is implemented",
                source=self._source,
                mode=mode,
            )
        local_mode, bridge, prefix = self._detect_local()

        bind = self._str("bindAddress", "") or "0.0.0.0"
        try:
            bind_v6 = ipaddress.ip_address(bind).version == 6
        except ValueError:
            raise self._fail("bindAddress", bind, "not an IP address") from None

        sync_period, min_sync_period = self._sync_periods()
        qps, burst = self._client_rates()
        node_port_addresses, node_port_primary = self._node_port_addresses()
        return ProxyConfig(
            hostname_override=_hostname(self._str("hostnameOverride", "")),
            scheduler=self._str("ipvs.scheduler", "") or DEFAULT_SCHEDULER,
            exclude_cidrs=tuple(
                self._network(f"ipvs.excludeCIDRs[{index}]", text)
                for index, text in enumerate(self._str_list("ipvs.excludeCIDRs"))
            ),
            strict_arp=self._bool("ipvs.strictARP"),
            tcp_timeout=self._timeout("ipvs.tcpTimeout"),
            tcp_fin_timeout=self._timeout("ipvs.tcpFinTimeout"),
            udp_timeout=self._timeout("ipvs.udpTimeout"),
            graceful_termination_timeout=self._drain_timeout(),
            sync_period=sync_period,
            min_sync_period=min_sync_period,
            masquerade_all=self._bool("iptables.masqueradeAll"),
            masquerade_bit=self._masquerade_bit(),
            cluster_cidrs=self._cluster_cidrs(),
            detect_local_mode=local_mode,
            bridge_interface=bridge,
            interface_name_prefix=prefix,
            node_port_addresses=node_port_addresses,
            node_port_primary=node_port_primary,
            metrics_bind_address=self._bind(
                "metricsBindAddress", "[::1]" if bind_v6 else "127.0.0.1", DEFAULT_METRICS_PORT
            ),
            healthz_bind_address=self._bind(
                "healthzBindAddress", "[::]" if bind_v6 else "0.0.0.0", DEFAULT_HEALTHZ_PORT
            ),
            kubeconfig=self._str("clientConnection.kubeconfig", "") or None,
            api_qps=qps,
            api_burst=burst,
            api_content_type=self._str("clientConnection.contentType", "") or "application/json",
        )

    # -- fields that need more than a type check

    def _drain_timeout(self) -> float:
        path = "ipvs.gracefulTerminationTimeout"
        if self._get(path) in (None, ""):
            return DEFAULT_DRAIN_TIMEOUT
        seconds = self._duration(path)
        if seconds < 0:
            raise self._fail(path, self._get(path), "must be >= 0")
        return seconds

    def _detect_local(self) -> tuple[str, str, str]:
        # kube-proxy's defaulting and validation: "" is ClusterCIDR; the interface
        # modes need their field.
        mode = self._str("detectLocalMode", "") or "ClusterCIDR"
        if mode not in LOCAL_MODES:
            raise self._fail("detectLocalMode", mode, f"must be one of {', '.join(LOCAL_MODES)}")
        found = []
        for path, wanted, longest in (
            ("detectLocal.bridgeInterface", "BridgeInterface", 15),
            ("detectLocal.interfaceNamePrefix", "InterfaceNamePrefix", 14),
        ):
            value = self._str(path, "")
            if mode == wanted and not value:
                raise self._fail(path, value, f"must be set with detectLocalMode {wanted}")
            if value and (len(value) > longest or not _INTERFACE_NAME.fullmatch(value)):
                raise self._fail(
                    path, value, f"not an interface name of at most {longest} characters"
                )
            found.append(value)
        return mode, found[0], found[1]

    def _sync_periods(self) -> tuple[float, float]:
        # Newer files set syncPeriod / minSyncPeriod at the top level; the ipvs section's
        # are the older spelling, used when the top-level ones are absent.
        # kube-proxy's defaulting: a zero syncPeriod becomes 30s; IPVS has no minimum.
        period_path = "syncPeriod" if self._get("syncPeriod") else "ipvs.syncPeriod"
        min_path = "minSyncPeriod" if self._get("minSyncPeriod") else "ipvs.minSyncPeriod"
        period = self._duration(period_path) or 30.0
        min_period = self._duration(min_path)
        if period < 0:
            raise self._fail(period_path, self._get(period_path), "must be > 0")
        if min_period < 0:
            raise self._fail(min_path, self._get(min_path), "must be >= 0")
        if min_period > period:
            raise self._fail(
                min_path,
                self._get(min_path),
                f"must not exceed {period_path} ({period:g}s)",
            )
        return period, min_period

    def _client_rates(self) -> tuple[float, int]:
        # Zero means "default", as kube-proxy's defaulting does; a negative qps turns the
        # client-side limit off (client-go builds no rate limiter then).
        qps = self._get("clientConnection.qps")
        if qps is None or qps == 0:
            qps = DEFAULT_API_QPS
        if not isinstance(qps, int | float) or isinstance(qps, bool) or not math.isfinite(qps):
            raise self._fail("clientConnection.qps", qps, "expected a number")
        burst = self._get("clientConnection.burst")
        if burst is None or burst == 0:
            burst = DEFAULT_API_BURST
        if not isinstance(burst, int) or isinstance(burst, bool):
            raise self._fail("clientConnection.burst", burst, "expected an integer")
        if burst < 0:
            raise self._fail("clientConnection.burst", burst, "must be non-negative")
        return float(qps), burst

    def _masquerade_bit(self) -> int:
        bit = self._get("iptables.masqueradeBit")
        if bit is None:
            return 14
        if not isinstance(bit, int) or isinstance(bit, bool) or not 0 <= bit <= 31:
            raise self._fail("iptables.masqueradeBit", bit, "must be an integer 0-31")
        return bit

    def _cluster_cidrs(self) -> tuple[IPNetwork, ...]:
        text = self._str("clusterCIDR", "")
        if not text.strip():
            return ()
        cidrs = tuple(self._network("clusterCIDR", part.strip()) for part in text.split(","))
        if not _one_per_family(cidrs):
            raise self._fail("clusterCIDR", text, "at most one CIDR per IP family")
        return cidrs

    def _node_port_addresses(self) -> tuple[tuple[IPNetwork, ...], bool]:
        networks: list[IPNetwork] = []
        primary = False
        for index, text in enumerate(self._str_list("nodePortAddresses")):
            if text == "primary":
                primary = True
            elif text in _NODE_PORT_KEYWORDS:
                networks.extend(_NODE_PORT_KEYWORDS[text])
            else:
                networks.append(self._network(f"nodePortAddresses[{index}]", text))
        return tuple(dict.fromkeys(networks)), primary

    def _bind(self, path: str, default_host: str, default_port: int) -> BindAddress:
        text = self._str(path, "")
        try:
            return BindAddress.parse(text or default_host, default_port=default_port)
        except ValueError as exc:
            raise self._fail(path, text, str(exc)) from None

    # -- field access

    def _get(self, path: str) -> object:
        section, _, name = path.rpartition(".")
        container: object = self._doc
        if section:
            container = self._doc.get(section)
            if container is None:
                return None
            if not isinstance(container, dict):
                raise self._fail(section, container, "expected a mapping")
        assert isinstance(container, dict)
        return container.get(name)

    def _str(self, path: str, default: str) -> str:
        value = self._get(path)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self._fail(path, value, "expected a string")
        return value

    def _bool(self, path: str) -> bool:
        value = self._get(path)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._fail(path, value, "expected true or false")
        return value

    def _str_list(self, path: str) -> list[str]:
        value = self._get(path)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._fail(path, value, "expected a list of strings")
        return value

    def _duration(self, path: str) -> float:
        value = self._get(path)
        if value is None or value == "":
            return 0.0
        if not isinstance(value, str):
            # metav1.Duration only unmarshals from a string; a bare 30 is an error there too.
            raise self._fail(path, value, 'expected a duration string such as "30s"')
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self._fail(path, value, str(exc)) from None

    def _timeout(self, path: str) -> int:
        seconds = self._duration(path)
        if seconds < 0:
            raise self._fail(path, self._get(path), "must be >= 0")
        return int(seconds)  # kube-proxy: int(d.Seconds()), whole seconds for the kernel

    def _network(self, path: str, text: str) -> IPNetwork:
        try:
            # Go's net.ParseCIDR accepts host bits ("10.0.0.1/8") and masks them off.
            return ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise self._fail(path, text, "not a CIDR such as 10.0.0.0/8") from None

    def _warn_unknown(self, section: str, mapping: Mapping[str, object]) -> None:
        known = _KNOWN_FIELDS[section]
        for key in mapping:
            path = f"{section}.{key}" if section else str(key)
            if key not in known:
                logger.warning(
                    "{source}: unknown field {field} ignored", source=self._source, field=path
                )
            elif not section and key in _KNOWN_FIELDS and isinstance(mapping[key], dict):
                value = mapping[key]
                assert isinstance(value, dict)
                self._warn_unknown(key, value)
