"""kube-proxy's KubeProxyConfiguration file, read into the proxy's settings.

`load_config` reads the file kube-proxy itself takes with `--config` (the `config.conf` of
the kube-system/kube-proxy ConfigMap, apiVersion kubeproxy.config.k8s.io/v1alpha1); the
ConfigMap itself is accepted too. Like kube-proxy, empty and null fields take their
defaults. Unknown fields are warned about, fields that only matter to other modes or that
ipvsproxy does not implement are accepted silently, and invalid values raise ConfigError
naming the field and the value.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from typing import Final

import yaml
from loguru import logger

from ipvsproxy.config.settings import (
    API_VERSION,
    DEFAULT_API_BURST,
    DEFAULT_API_QPS,
    DEFAULT_HEALTHZ_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_OOM_SCORE_ADJ,
    KIND,
    LOCAL_INTERFACE_FIELDS,
    LOCAL_MODES,
    RULES_BACKENDS,
    BindAddress,
    ConntrackSettings,
    ProxyConfig,
    hostname_override_value,
    local_interface_problem,
    one_per_family,
)
from ipvsproxy.core.graceful import DEFAULT_DRAIN_TIMEOUT
from ipvsproxy.core.model import DEFAULT_SCHEDULER, IPNetwork
from ipvsproxy.errors import ConfigError

__all__ = [
    "CONFIGZ_GROUP",
    "config_document",
    "config_from_dict",
    "configz_document",
    "format_duration",
    "load_config",
    "load_document",
    "parse_duration",
]

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
            "rulesBackend",  # ipvsproxy's own
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
    return config_from_dict(load_document(path), source=os.fspath(path))


def load_document(path: str | os.PathLike[str]) -> object:
    """The parsed YAML of a KubeProxyConfiguration file (or of the one a ConfigMap
    holds), unchecked; ConfigError when it cannot be read or parsed."""
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
    return document


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
            bind_ip = ipaddress.ip_address(bind)
        except ValueError:
            raise self._fail("bindAddress", bind, "not an IP address") from None
        bind_v6 = bind_ip.version == 6

        sync_period, min_sync_period = self._sync_periods()
        qps, burst = self._client_rates()
        node_port_addresses, node_port_primary = self._node_port_addresses()
        return ProxyConfig(
            hostname_override=hostname_override_value(self._str("hostnameOverride", "")),
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
            rules_backend=self._rules_backend(),
            conntrack=self._conntrack(),
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
            bind_address=None if bind_ip.is_unspecified else bind_ip,
            oom_score_adj=self._oom_score_adj(),
            feature_gates=self._feature_gates(),
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

    def _rules_backend(self) -> str:
        path = "ipvs.rulesBackend"
        value = self._str(path, "") or "auto"
        if value not in RULES_BACKENDS:
            raise self._fail(path, value, f"must be one of {', '.join(RULES_BACKENDS)}")
        return value

    def _conntrack(self) -> ConntrackSettings:
        # kube-proxy's defaulting: an absent field takes the default, 0 turns it off.
        default = ConntrackSettings()
        return ConntrackSettings(
            max_per_core=self._count("conntrack.maxPerCore", default.max_per_core),
            min=self._count("conntrack.min", default.min),
            tcp_established_timeout=self._timeout(
                "conntrack.tcpEstablishedTimeout", default.tcp_established_timeout
            ),
            tcp_close_wait_timeout=self._timeout(
                "conntrack.tcpCloseWaitTimeout", default.tcp_close_wait_timeout
            ),
            tcp_be_liberal=self._bool("conntrack.tcpBeLiberal"),
            udp_timeout=self._timeout("conntrack.udpTimeout"),
            udp_stream_timeout=self._timeout("conntrack.udpStreamTimeout"),
        )

    def _detect_local(self) -> tuple[str, str, str]:
        # kube-proxy's defaulting and validation: "" is ClusterCIDR; the interface
        # modes need their field.
        mode = self._str("detectLocalMode", "") or "ClusterCIDR"
        if mode not in LOCAL_MODES:
            raise self._fail("detectLocalMode", mode, f"must be one of {', '.join(LOCAL_MODES)}")
        found = []
        for _, path, needed_by, longest in LOCAL_INTERFACE_FIELDS:
            value = self._str(path, "")
            problem = local_interface_problem(
                value, mode=mode, needed_by=needed_by, longest=longest
            )
            if problem is not None:
                raise self._fail(path, value, problem)
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

    def _oom_score_adj(self) -> int:
        value = self._get("oomScoreAdj")
        if value is None:
            return DEFAULT_OOM_SCORE_ADJ
        if not isinstance(value, int) or isinstance(value, bool) or not -1000 <= value <= 1000:
            raise self._fail("oomScoreAdj", value, "must be an integer -1000 to 1000")
        return value

    def _feature_gates(self) -> tuple[tuple[str, bool], ...]:
        gates = self._get("featureGates")
        if gates is None:
            return ()
        if not isinstance(gates, dict) or not all(
            isinstance(k, str) and isinstance(v, bool) for k, v in gates.items()
        ):
            raise self._fail("featureGates", gates, "expected a mapping of names to true/false")
        return tuple(sorted(gates.items()))

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
        if not one_per_family(cidrs):
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

    def _count(self, path: str, default: int) -> int:
        value = self._get(path)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 31:
            raise self._fail(path, value, "must be an integer >= 0")
        return value

    def _timeout(self, path: str, default: int = 0) -> int:
        if self._get(path) in (None, ""):
            return default
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


# --- and back ------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """Seconds as Go's Duration.String() spells them: "30s", "1m30s", "24h0m0s", "500ms"."""
    if seconds == 0:
        return "0s"
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    if seconds < 1:
        for unit, scale in (("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
            if seconds >= scale:
                return f"{sign}{seconds / scale:g}{unit}"
        return "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.9f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{sign}{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{sign}{int(minutes)}m{text}"
    return sign + text


def config_document(config: ProxyConfig) -> dict[str, object]:
    """`config` as a KubeProxyConfiguration (v1alpha1) that `config_from_dict` reads back
    into an equal ProxyConfig: what --write-config-to writes and /configz serves. It
    holds no credential: the kubeconfig is named by its path."""
    conntrack = config.conntrack
    cidrs = ",".join(str(network) for network in config.cluster_cidrs)
    node_ports = [str(network) for network in config.node_port_addresses]
    if config.node_port_primary:
        node_ports.append("primary")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "bindAddress": str(config.bind_address) if config.bind_address else "0.0.0.0",
        "clientConnection": {
            "kubeconfig": config.kubeconfig or "",
            "contentType": config.api_content_type,
            "acceptContentTypes": "",
            "qps": config.api_qps,
            "burst": config.api_burst,
        },
        "clusterCIDR": cidrs,
        "conntrack": {
            "maxPerCore": conntrack.max_per_core,
            "min": conntrack.min,
            "tcpEstablishedTimeout": format_duration(conntrack.tcp_established_timeout),
            "tcpCloseWaitTimeout": format_duration(conntrack.tcp_close_wait_timeout),
            "tcpBeLiberal": conntrack.tcp_be_liberal,
            "udpTimeout": format_duration(conntrack.udp_timeout),
            "udpStreamTimeout": format_duration(conntrack.udp_stream_timeout),
        },
        "detectLocal": {
            "bridgeInterface": config.bridge_interface,
            "interfaceNamePrefix": config.interface_name_prefix,
        },
        "detectLocalMode": config.detect_local_mode,
        "featureGates": dict(config.feature_gates),
        "healthzBindAddress": str(config.healthz_bind_address or ""),
        "hostnameOverride": config.hostname_override or "",
        "iptables": {
            "masqueradeAll": config.masquerade_all,
            "masqueradeBit": config.masquerade_bit,
        },
        "ipvs": {
            "scheduler": config.scheduler,
            "excludeCIDRs": [str(network) for network in config.exclude_cidrs],
            "strictARP": config.strict_arp,
            "tcpTimeout": format_duration(config.tcp_timeout),
            "tcpFinTimeout": format_duration(config.tcp_fin_timeout),
            "udpTimeout": format_duration(config.udp_timeout),
            "gracefulTerminationTimeout": format_duration(config.graceful_termination_timeout),
            "rulesBackend": config.rules_backend,
        },
        "metricsBindAddress": str(config.metrics_bind_address or ""),
        "minSyncPeriod": format_duration(config.min_sync_period),
        "mode": "ipvs",
        "nodePortAddresses": node_ports,
        "oomScoreAdj": config.oom_score_adj,
        "syncPeriod": format_duration(config.sync_period),
    }


CONFIGZ_GROUP: Final = "kubeproxy.config.k8s.io"


def configz_document(
    config: ProxyConfig, *, verbosity: int = 0, log_format: str = "text"
) -> dict[str, object]:
    """`config` as kube-proxy's /configz shows it: its internal KubeProxyConfiguration
    (v1.31 and later layout), Go field names as keys, under "kubeproxy.config.k8s.io".
    No credential: the kubeconfig is named by its path."""
    conntrack = config.conntrack
    internal: dict[str, object] = {
        "Linux": {
            "Conntrack": {
                "MaxPerCore": conntrack.max_per_core,
                "Min": conntrack.min,
                "TCPEstablishedTimeout": format_duration(conntrack.tcp_established_timeout),
                "TCPCloseWaitTimeout": format_duration(conntrack.tcp_close_wait_timeout),
                "TCPBeLiberal": conntrack.tcp_be_liberal,
                "UDPTimeout": format_duration(conntrack.udp_timeout),
                "UDPStreamTimeout": format_duration(conntrack.udp_stream_timeout),
            },
            "MasqueradeAll": config.masquerade_all,
            "OOMScoreAdj": config.oom_score_adj,
        },
        "Windows": {"RunAsService": False},
        "FeatureGates": dict(config.feature_gates),
        "ClientConnection": {
            "Kubeconfig": config.kubeconfig or "",
            "AcceptContentTypes": "",
            "ContentType": config.api_content_type,
            "QPS": config.api_qps,
            "Burst": config.api_burst,
        },
        "Logging": {
            "format": log_format,
            "flushFrequency": "5s",
            "verbosity": verbosity,
            "options": {"text": {"infoBufferSize": "0"}, "json": {"infoBufferSize": "0"}},
        },
        "HostnameOverride": config.hostname_override or "",
        "BindAddress": str(config.bind_address) if config.bind_address else "0.0.0.0",
        "HealthzBindAddress": str(config.healthz_bind_address or ""),
        "MetricsBindAddress": str(config.metrics_bind_address or ""),
        "BindAddressHardFail": False,
        "EnableProfiling": False,
        "ShowHiddenMetricsForVersion": "",
        "Mode": "ipvs",
        "IPTables": {"MasqueradeBit": config.masquerade_bit, "LocalhostNodePorts": True},
        "IPVS": {
            "Scheduler": config.scheduler,
            "ExcludeCIDRs": [str(network) for network in config.exclude_cidrs] or None,
            "StrictARP": config.strict_arp,
            "TCPTimeout": format_duration(config.tcp_timeout),
            "TCPFinTimeout": format_duration(config.tcp_fin_timeout),
            "UDPTimeout": format_duration(config.udp_timeout),
        },
        "Winkernel": {
            "NetworkName": "",
            "SourceVip": "",
            "EnableDSR": False,
            "RootHnsEndpointName": "",
            "ForwardHealthCheckVip": False,
        },
        "NFTables": {"MasqueradeBit": config.masquerade_bit},
        "DetectLocalMode": config.detect_local_mode,
        "DetectLocal": {
            "BridgeInterface": config.bridge_interface,
            "ClusterCIDRs": [str(network) for network in config.cluster_cidrs] or None,
            "InterfaceNamePrefix": config.interface_name_prefix,
        },
        "NodePortAddresses": (
            [str(network) for network in config.node_port_addresses]
            + (["primary"] if config.node_port_primary else [])
        )
        or None,
        "SyncPeriod": format_duration(config.sync_period),
        "MinSyncPeriod": format_duration(config.min_sync_period),
        "ConfigSyncPeriod": "15m0s",
    }
    return {CONFIGZ_GROUP: internal}
